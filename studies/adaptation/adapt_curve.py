"""Adaptation curve (issue 24, Build 4): fidelity of a foundation model fine-tuned on X ps of a
held-out molecule's own MD (``mdkstep-adapt``), against the cached references of the
generalization bench (configs/bench_generalization.yaml), and what the adaptation costs.

For each X: ``mdkstep.adapt.adapt`` (data X ps + ``--steps`` of training, wall s measured),
then the bench on that one molecule with the adapted checkpoint, in ``<out>/<mol>_<X>ps/``
whose references and plain runs are links to the generalization bench's (so every X is judged
against the same floor, and plain MD's wall s/ps comes from the same run). X = 0 is the zero-shot
row itself. Break-even = (data + training wall s) / (wall s saved per simulated ps against the
best faithful plain method of that run).

    .venv/bin/python studies/adaptation/adapt_curve.py --mode qm --molecule aminothiazole \\
        --data-ps 0.5 2 --steps 1000 --gen-dir outputs/bench_generalization_qm --out outputs/adapt_curve

Writes ``<out>/<mol>.json`` and a markdown table on stdout. Units: ps, s.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mdkstep.adapt import AdaptSpec, adapt
from mdkstep.cli.bench import main as bench_main
from mdkstep.molecule.prep import read_smi_strict
from mdkstep.utils import setup_logging

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "bench_generalization.yaml"


def link_runs(src: Path, dst: Path) -> None:
    """Link every plain run (references, plain steps, the molecule's own run) of ``src`` into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name.startswith(("hybrid", "exact", "mvv", "heldout")) or f.is_dir():
            continue
        target = dst / f.name
        if not target.exists():
            os.symlink(f.resolve(), target)


def bench_row(bench_dir: Path, mol: str, k: int) -> dict:
    """The hybrid row of k for ``mol`` and the best faithful plain row of that bench run."""
    recs = [r for r in json.loads((bench_dir / "bench.json").read_text())["records"] if r["molecule"] == mol]
    hyb = next(r for r in recs if r["method"] == f"hybrid_k{k}")
    plain = [r for r in recs if r["kind"] == "plain" and r["faithful"]]
    best = min(plain, key=lambda r: (r["force_calls_per_ps"], r["wall_s_per_ps"])) if plain else None
    return {"hybrid": hyb, "best_plain": best}


def summary(row: dict, cost_s: float | None) -> dict:
    h, b = row["hybrid"], row["best_plain"]
    saved = (b["wall_s_per_ps"] - h["wall_s_per_ps"]) if b else None
    return {"faithful": h["faithful"], "max_structure_ratio": h["max_structure_ratio"],
            "element_T_max_dev": h["element_T_max_dev"], "retries": h["retries"], "fallbacks": h["fallbacks"],
            "jumps_attempted": h["jumps_attempted"], "out_of_domain": h.get("out_of_domain"),
            "force_calls_per_ps": h["force_calls_per_ps"], "wall_s_per_ps": h["wall_s_per_ps"],
            "best_plain": b["method"] if b else None, "best_plain_wall_s_per_ps": b["wall_s_per_ps"] if b else None,
            "adapt_wall_s": cost_s, "break_even_ps": cost_s / saved if cost_s is not None and saved and saved > 0 else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("mm", "qm"), required=True)
    p.add_argument("--molecule", required=True, help="a name in the held-out list of the mode")
    p.add_argument("--data-ps", type=float, nargs="+", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--gen-dir", type=Path, required=True, help="the generalization bench's out_dir (its runs are reused)")
    p.add_argument("--out", type=Path, default=Path("outputs/adapt_curve"))
    args = p.parse_args(argv)
    setup_logging("INFO")
    smi = ROOT / "data" / f"heldout_{args.mode}.smi"
    entry = {e.name: e for e in read_smi_strict(smi)}[args.molecule]
    gen = json.loads((args.gen_dir / "bench.json").read_text())
    k = 8 if args.mode == "mm" else 16  # the generalization bench's fixed-stride row
    foundation = ROOT / gen["meta"]["modes"][args.mode]["models"][f"k{k}"]["checkpoint"]
    rows = {"0": summary(bench_row(args.gen_dir, args.molecule, k), 0.0)}
    for x in args.data_ps:
        ck, info = adapt(AdaptSpec(foundation, entry.smiles, args.molecule, data_ps=x, steps=args.steps,
                                   work_dir=args.out / "adapt", config_dir=ROOT / "configs"))
        card = json.loads(ck.with_suffix(".json").read_text())
        cost = card["cost"]["total_wall_s"]
        bdir = args.out / f"{args.molecule}_{x:g}ps_{args.steps}steps"
        link_runs(args.gen_dir / args.mode / "runs" / args.molecule, bdir / args.mode / "runs" / args.molecule)
        one = bdir / "molecule.smi"
        one.write_text(f"{entry.smiles} {args.molecule}\n")
        other = "qm" if args.mode == "mm" else "mm"
        bench_main(["--config", str(CONFIG), "--out-dir", str(bdir), "--set", f"{other}_smiles=null",
                    "--set", f"{args.mode}_smiles={one}", "--set", f"{args.mode}_checkpoints={{{k}: {ck}}}",
                    "--set", f"{args.mode}_ks=[{k}]", "--set", f"{args.mode}_fixed_k_rows=true",
                    "--set", f"{args.mode}_schedules=[]",
                    "--log-level", "WARNING"])
        rows[f"{x:g}"] = {**summary(bench_row(bdir, args.molecule, k), cost), "checkpoint": str(ck),
                          "train_wall_s": card["cost"]["train_wall_s"], "data_wall_s": card["cost"]["data_wall_s"]}
    out = args.out / f"{args.molecule}.json"
    out.write_text(json.dumps({"molecule": args.molecule, "mode": args.mode, "k": k, "steps": args.steps,
                               "foundation": str(foundation), "rows": rows}, indent=1))
    print(f"| {args.molecule} data ps | faithful | max ratio | element T dev | retries | fallbacks | wall s/ps "
          f"(best plain) | adapt wall s | break-even ps |\n|---|---|---|---|---|---|---|---|---|")
    for x, r in rows.items():
        print(f"| {x} | {r['faithful']} | {r['max_structure_ratio']:.2f} | {r['element_T_max_dev']:.3f} | "
              f"{r['retries']} | {r['fallbacks']} | {r['wall_s_per_ps']:.3g} ({r['best_plain_wall_s_per_ps']}) | "
              f"{r['adapt_wall_s']} | {r['break_even_ps']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
