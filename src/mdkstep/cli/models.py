"""`make models`: generate the training data and train the models shipped under models/.

From configs/models.yaml (every key documented there and in src/mdkstep/shipped.py; unknown
keys are errors): MM (OpenMM + OpenFF, 2 fs, HBonds) models at k = 4, 8, 12, 16 and QM
(GFN2-xTB, 0.25 fs) models at k = 8, 16, 32, trained with the benchmark's own machinery
(mdkstep.bench: training runs and ensure_model). Per model: models/<mode>_k<K>.pt (weights,
configs, k, dt, engine, atom types; no optimizer state) and a model card (.json, .md) with the
data, training steps, wall time, force calls spent on the data and the one-jump test metrics
beside "no move" and "ballistic".

Cached and resumable under work_dir (outputs/models): rerun the same command after an
interruption and it continues (trajectories from their last chunk, training from last.pt).

Default configs are found in the repository's configs/, from any working directory.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mdkstep.cli.common import add_log_level, make_parser, repo_path
from mdkstep.config import load_config, run_cli
from mdkstep.shipped import ModelsConfig, make_models
from mdkstep.utils import setup_logging

EXAMPLE = """Examples (MM models: 2 fs steps, k = 4..16, i.e. 8-32 fs per jump; QM: 0.25 fs steps, k = 8..32):
  python scripts/make_models.py                                # the default (~2 h on 2 CPU cores)
  mdkstep-models --config configs/models_gpu.yaml              # longer training, for a GPU machine
  python scripts/make_models.py --smoke --out-dir /tmp/m       # tiny end-to-end check (minutes)
  mdkstep-models --only mm_k8 qm_k16 --set mm_train_ps=50      # just these models, 50 ps of MM data per molecule
Units: times in ps, steps in fs (see configs/models.yaml).
"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--config", type=Path, default=None,
                   help="models YAML (default: the repository's configs/models.yaml; configs/models_smoke.yaml "
                        "with --smoke)")
    p.add_argument("--smoke", action="store_true", help="the tiny setting (configs/models_smoke.yaml), for tests")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out-dir", type=Path, default=None, help="where the shipped models go (overrides out_dir)")
    p.add_argument("--work-dir", type=Path, default=None, help="cache of data and training runs (overrides work_dir)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="only these models, e.g. mm_k8 qm_k16")
    add_log_level(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    config = args.config or repo_path("configs/models_smoke.yaml" if args.smoke else "configs/models.yaml")
    over = {"out_dir": str(args.out_dir) if args.out_dir else None,
            "work_dir": str(args.work_dir) if args.work_dir else None}
    cfg = load_config(ModelsConfig, config, over, args.set)
    paths = make_models(cfg, args.only)
    for p in paths:
        print(f"{p}  (card: {p.with_suffix('.md')})")
    print(f"{len(paths)} model(s) in {cfg.out_dir}")
    return 0


def run() -> None:
    """Console script ``mdkstep-models``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.models
    run()
