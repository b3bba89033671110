"""Break-even of a hybrid model: what its training data and training cost (force calls, wall
s), what it saves per simulated ps against the best faithful plain method of the same
molecule, and the simulated time after which it has paid for itself.

    break_even_ps = cost / (best plain per ps - hybrid per ps)     (None where it saves nothing)

The data of one mode is shared by all its models; each model's line counts it whole (what a
user who wants only that model pays). Units: force calls, wall s, ps.
"""
from __future__ import annotations

from typing import Any

#: record keys this module fills (None for plain rows and where a figure is unknown)
BREAK_EVEN_KEYS = ("model_source", "model_cost_force_calls", "model_cost_wall_s", "saving_force_calls_per_ps",
                   "saving_wall_s_per_ps", "break_even_ps_force_calls", "break_even_ps_wall")


def model_cost(source: str, card: dict[str, Any] | None, data: dict[str, Any] | None,
               train: dict[str, Any] | None) -> dict[str, Any]:
    """Cost of one model: from its shipped card, or from the bench's own training stats
    (``data``: {force_calls, wall_s} of the training runs; ``train``: {wall_s} of training).
    Keys: source, force_calls, data_wall_s, train_wall_s, wall_s (None where unknown)."""
    if card:
        c = card.get("cost", {})
        return {"source": source, "force_calls": c.get("force_calls"), "data_wall_s": c.get("data_wall_s"),
                "train_wall_s": c.get("train_wall_s"), "wall_s": c.get("total_wall_s")}
    dw = (data or {}).get("wall_s")
    tw = (train or {}).get("wall_s")
    return {"source": source, "force_calls": (data or {}).get("force_calls"), "data_wall_s": dw, "train_wall_s": tw,
            "wall_s": dw + tw if dw is not None and tw is not None else None}


def schedule_cost(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Cost of a stride schedule's models: the training data once (the models share it: the
    largest part's force calls and data wall time) plus every model's training wall time."""
    known = lambda key: [p.get(key) for p in parts] if all(p.get(key) is not None for p in parts) else None  # noqa: E731
    calls, data_w, train_w = known("force_calls"), known("data_wall_s"), known("train_wall_s")
    return {"source": "+".join(p["source"] for p in parts), "force_calls": max(calls) if calls else None,
            "data_wall_s": max(data_w) if data_w else None, "train_wall_s": sum(train_w) if train_w else None,
            "wall_s": max(data_w) + sum(train_w) if data_w and train_w else None}


def break_even_ps(cost: float | None, saving_per_ps: float | None) -> float | None:
    """Simulated ps after which ``cost`` is paid back; None when unknown or nothing is saved."""
    if cost is None or saving_per_ps is None or saving_per_ps <= 0:
        return None
    return float(cost) / saving_per_ps


def _saving(best: dict[str, Any] | None, rec: dict[str, Any], key: str) -> float | None:
    if best is None or best.get(key) is None or rec.get(key) is None:
        return None
    return float(best[key]) - float(rec[key])


def add_break_even(records: list[dict[str, Any]], costs: dict[str, dict[str, Any]]) -> None:
    """Fill :data:`BREAK_EVEN_KEYS` of one molecule's records in place: hybrid rows whose
    method has a cost in ``costs`` (by method name) get it, the saving per ps against the
    molecule's best faithful plain method (``best_plain_method``) and the break-even times."""
    by_name = {r["method"]: r for r in records}
    for r in records:
        for key in BREAK_EVEN_KEYS:
            r[key] = None
        cost = costs.get(r["method"])
        if r["kind"] == "plain" or cost is None:
            continue
        best = by_name.get(r.get("best_plain_method"))
        r["model_source"] = cost["source"]
        r["model_cost_force_calls"] = cost["force_calls"]
        r["model_cost_wall_s"] = cost["wall_s"]
        r["saving_force_calls_per_ps"] = _saving(best, r, "force_calls_per_ps")
        r["saving_wall_s_per_ps"] = _saving(best, r, "wall_s_per_ps")
        r["break_even_ps_force_calls"] = break_even_ps(cost["force_calls"], r["saving_force_calls_per_ps"])
        r["break_even_ps_wall"] = break_even_ps(cost["wall_s"], r["saving_wall_s_per_ps"])
