"""Training runs, model training and their measured cost, shared by ``make models`` and the bench.

Units: nm, ps, kJ/mol, amu, K; dt in fs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mdkstep.config import load_config
from mdkstep.data.windows import build_dataset, write_split_files
from mdkstep.exact.train import ExactTrainConfig, train_shear
from mdkstep.model import ModelConfig
from mdkstep.pipeline.mode import Mode
from mdkstep.training.trainer import TrainConfig, train
from mdkstep.utils import LOG, MdkstepError, atomic_write_json


def ensure_model(mode_name: str, k: int, dataset_trajs: list[Path], out: Path, model_cfg_path: str,
                 model_over: dict[str, Any], train_cfg_path: str, train_over: dict[str, Any],
                 given: str | None, raw_root: Path | None = None,
                 pretrained: Path | None = None, allow_k_change: bool = False) -> tuple[Path, dict[str, Any]]:
    """The checkpoint for jump length k: ``given`` when set (must exist), else trained now into
    ``out`` (dataset of ``dataset_trajs``, time split; initialized from ``pretrained`` when set,
    a checkpoint of another k only with ``allow_k_change``)
    unless ``out/best.pt`` already exists. Returns the checkpoint path and the one-jump test
    metrics (model vs no-move)."""

    if given:
        ck = Path(given)
        if not ck.is_file():
            raise MdkstepError(f"{mode_name}_checkpoints: {ck} (k={k}) not found; remove the entry to train one here")
        return ck, {}
    best, final = out / "best.pt", out / "final_metrics.json"
    if best.is_file() and final.is_file():
        LOG.info("%s k=%d: using the trained %s", mode_name, k, best)
        return best, json.loads(final.read_text())
    ds_file, splits = out / "dataset.npz", out / "splits"
    summary = build_dataset(dataset_trajs, k, ds_file, split="time", raw_root=raw_root)
    write_split_files(splits, summary, [str(ds_file)])
    mcfg = load_config(ModelConfig, model_cfg_path, model_over)
    tcfg = load_config(TrainConfig, train_cfg_path, {**train_over, "k": k})
    LOG.info("%s k=%d: training on %d windows (%s, %s)", mode_name, k, summary["counts"]["train"],
             model_cfg_path, train_cfg_path)
    t0 = time.perf_counter()
    res = train(ds_file, (splits / "train.json", splits / "val.json"), mcfg, tcfg, out,
                resume=(out / "last.pt").is_file(), pretrained=pretrained, test_split=splits / "test.json",
                progress=True, allow_k_change=allow_k_change)
    record_training_cost(out, time.perf_counter() - t0, res)
    return best, json.loads(final.read_text()) if final.is_file() else res.get("final_metrics", {})


def ensure_exact_model(mode_name: str, k: int, dataset_trajs: list[Path], out: Path, model_cfg_path: str,
                       train_cfg_path: str, train_over: dict[str, Any], given: str | None) -> tuple[Path, dict[str, Any]]:
    """Exact mode's shear checkpoint for stride k: ``given`` when set (must exist), else trained
    now into ``out`` (mdkstep.exact.train on a time-split dataset of ``dataset_trajs``) unless
    ``out/best.pt`` exists. Returns it and the teacher-forced |dH| (kJ/mol) before / after
    training on the test split (else val); {} for a given checkpoint."""

    if given:
        ck = Path(given)
        if not ck.is_file():
            raise MdkstepError(f"{mode_name}_exact_checkpoints: {ck} (k={k}) not found; remove the entry to train one here")
        return ck, {}
    best, final = out / "best.pt", out / "final_metrics.json"
    if not (best.is_file() and final.is_file()):
        ds_file, splits = out / "dataset.npz", out / "splits"
        summary = build_dataset(dataset_trajs, k, ds_file, split="time")
        write_split_files(splits, summary, [str(ds_file)])
        mcfg = load_config(ModelConfig, model_cfg_path)
        tcfg = load_config(ExactTrainConfig, train_cfg_path, {**train_over, "k": k})
        LOG.info("%s exact k=%d: training shear kicks on %d windows (%s, %s)", mode_name, k,
                 summary["counts"]["train"], model_cfg_path, train_cfg_path)
        t0 = time.perf_counter()
        res = train_shear(ds_file, (splits / "train.json", splits / "val.json"), mcfg, tcfg, out,
                          overwrite=out.exists(), test_split=splits / "test.json")
        record_training_cost(out, time.perf_counter() - t0, res)
    return best, teacher_forced_summary(json.loads(final.read_text()))


def teacher_forced_summary(final: dict[str, Any]) -> dict[str, Any]:
    """{split, before, after}: a shear model's teacher-forced |dH| (median, p90 kJ/mol) on the
    test split (else val) before and after training, from its final_metrics.json."""
    after = final.get("teacher_forced_after") or {}
    split = "test" if "test" in after else "val"
    return {"split": split, "before": (final.get("teacher_forced_before") or {}).get(split),
            "after": after.get(split)}


def record_training_cost(out: Path, wall_s: float, summary: dict[str, Any]) -> dict[str, Any]:
    """Add this training session's wall time (s) to ``out/train_cost.json`` (sessions of a
    resumed run add up); returns the record {wall_s, steps, sessions}."""
    path = out / "train_cost.json"
    prev = json.loads(path.read_text()) if path.is_file() else {"wall_s": 0.0, "sessions": 0}
    rec = {"wall_s": float(prev["wall_s"]) + float(wall_s), "steps": summary.get("steps"),
           "sessions": int(prev["sessions"]) + 1}
    atomic_write_json(path, rec)
    return rec


def training_cost(model_dir: Path) -> dict[str, Any] | None:
    """``model_dir/train_cost.json`` (training wall s, steps) or None when it was not recorded."""
    path = model_dir / "train_cost.json"
    return json.loads(path.read_text()) if path.is_file() else None


def training_run(mode: Mode, mol: str, seed: int, out: Path, time_ps: float) -> Path:
    """The training trajectory of ``mol`` (reference step, forces saved; resumable, skipped
    when done) with its cost in ``<out>.cost.json``: wall s of the session(s) that ran it and
    the force calls the run's stats count (production plus setup: QM ``force_calls_total``, the
    engine's counter; MM production + equilibration integrator steps)."""
    cost_path = out.with_suffix(".cost.json")
    ran = not out.is_file()
    t0 = time.perf_counter()
    mode.run_plain(mol, mode.reference(), seed, out, time_ps, training=True)
    if ran or not cost_path.is_file():
        st_path = out.with_suffix(".stats.json")
        st = json.loads(st_path.read_text()) if st_path.is_file() else {}
        calls = st.get("force_calls_total")
        source = "engine_counter" if calls is not None else st.get("force_calls_source")
        if calls is None and st.get("force_calls") is not None:
            calls = int(st["force_calls"]) + int(st.get("force_calls_equilibration", 0))
        atomic_write_json(cost_path, {"wall_s": time.perf_counter() - t0 if ran else None, "force_calls": calls,
                                      "force_calls_source": source, "simulated_ps": time_ps, "seed": seed,
                                      "dt_fs": mode.reference().dt_fs})
    return out


def data_cost(train_runs: list[Path]) -> dict[str, Any]:
    """Force calls and wall s of the training trajectories (their ``.cost.json``); a wall
    time that was not recorded (a run made before costs were kept) makes the total None."""
    calls, wall = 0, 0.0
    for run in train_runs:
        path = run.with_suffix(".cost.json")
        c = json.loads(path.read_text()) if path.is_file() else {}
        calls = None if calls is None or c.get("force_calls") is None else calls + int(c["force_calls"])
        wall = None if wall is None or c.get("wall_s") is None else wall + float(c["wall_s"])
    return {"force_calls": calls, "wall_s": wall}


def one_jump_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Test-split bond/angle RMSE of the model beside the no-move predictor."""
    t = metrics.get("test") or metrics.get("val") or {}
    if "model" not in t:
        return {}
    return {"bond_rmse_A": t["model"]["bond_rmse_A"], "angle_rmse_deg": t["model"]["angle_rmse_deg"],
            "no_move_bond_rmse_A": t["no_move"]["bond_rmse_A"], "no_move_angle_rmse_deg": t["no_move"]["angle_rmse_deg"]}
