"""`make bench`: the hybrid integrator beside every plain-MD alternative, at equal simulated time.

For each default molecule (data/bench_mm.smi, data/bench_qm.smi):
  MM (OpenMM + OpenFF): plain Langevin 2 fs + HBonds (the reference, two replicas for the noise
      floor); 4 fs with hydrogen mass repartitioning; plain MD at the largest step a
      velocity-Verlet NVE scan finds stable; the hybrid at k = 4, 8, 12.
  QM (GFN2-xTB via tblite): plain Langevin 0.25 fs (the reference, two replicas), 0.5 and 1 fs;
      the hybrid at k = 8, 16, 32.
Per method: force calls per simulated ps (counted), wall seconds per ps (median of interleaved
repeats after a warm-up), model ms per jump, the docs/metrics.md distances vs the reference
beside the replica floor, NVE drift, NaN frames and fallbacks.

Models: the shipped ones (models/<mode>_k<K>.pt from `make models`) where one exists for a k,
else trained here first (default configs, short); --retrain trains every k here; set
mm_checkpoints / qm_checkpoints to use your own. Per hybrid model a break-even line: force
calls and wall time of its training data and training (its card, or this run's training),
the saving per simulated ps vs the best faithful plain method, and the simulated time after
which it has paid for itself. QM: every reference replica's mean temperature (within ±5 %)
and kinetic-energy distribution (Gamma law, KS test) are checked. Everything is cached under out_dir: a rerun after an interruption continues
(timing and fidelity are always redone).

Writes <out_dir>/bench.json (one record per molecule x method), bench.md (tables) and
pareto.png (fidelity vs force calls per ps); --update-readme rewrites the README results table.

Default configs are found in the repository's configs/, from any working directory.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mdkstep.bench.report import markdown, update_readme, write_outputs
from mdkstep.bench.run import run_bench
from mdkstep.cli.common import REPO_ROOT, add_log_level, make_parser, repo_path
from mdkstep.config import load_config, run_cli
from mdkstep.pipeline.config import BenchConfig
from mdkstep.utils import LOG, MdkstepError, setup_logging

EXAMPLE = """Examples (equal simulated time per method, e.g. mm_time_ps = 50 ps; steps in fs, force calls per ps):
  python benchmarks/bench.py                      # default, ~20 min on 2 CPU cores
  mdkstep-bench --full                            # long version (configs/bench_full.yaml), for a GPU machine
  mdkstep-bench --set qm_smiles=null              # MM part only
  python benchmarks/bench.py --report-only --update-readme   # redraw the tables from outputs/bench/bench.json
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--config", type=Path, default=None,
                   help="benchmark YAML (default: the repository's configs/bench.yaml; configs/bench_full.yaml "
                        "with --full)")
    p.add_argument("--full", action="store_true", help="the long version (configs/bench_full.yaml), meant for a GPU")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set mm_time_ps=20 (repeatable)")
    p.add_argument("--out-dir", type=Path, default=None, help="output folder (overrides the config's out_dir)")
    p.add_argument("--update-readme", type=Path, nargs="?", const=REPO_ROOT / "README.md", default=None, metavar="README",
                   help="rewrite the results table between the bench markers of README.md (or the file given)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rewrite bench.md, pareto.png (and the README with --update-readme) from the "
                        "existing <out_dir>/bench.json")
    p.add_argument("--retrain", action="store_true",
                   help="train every model here (as before `make models`) instead of using models/<mode>_k<K>.pt "
                        "(same as --set use_shipped_models=false)")
    add_log_level(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    config = args.config or repo_path("configs/bench_full.yaml" if args.full else "configs/bench.yaml")
    over = {"out_dir": str(args.out_dir) if args.out_dir else None, "use_shipped_models": False if args.retrain else None}
    cfg = load_config(BenchConfig, config, over, args.set)
    if args.report_only:
        src = Path(cfg.out_dir) / "bench.json"
        if not src.is_file():
            raise MdkstepError(f"{src}: not found; run the benchmark first (without --report-only)")
        result = json.loads(src.read_text())
    else:
        result = run_bench(cfg)
    paths = write_outputs(result, Path(cfg.out_dir))
    if args.update_readme:
        update_readme(args.update_readme, result)
        LOG.info("README table updated: %s", args.update_readme)
    print(markdown(result))
    print(f"\nwrote {paths['json']}, {paths['md']}, {paths['pareto']}")
    return 0


def run() -> None:
    """Console script ``mdkstep-bench``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.bench
    run()
