"""Stage 02: k-step supervision windows from baseline trajectories.

For each k in ks, indexes every window (x_t, v_t[, F_t]) -> (x_{t+k}, v_{t+k}[, F_{t+k}])
of the trajectories under --md-root into <out-root>/dataset_k<K>.npz. The file stores only
(trajectory, start frame) pairs plus metadata (dt, k, save interval, source files,
temperature, topologies); the arrays are memory-mapped from the trajectory NPZs when
training, so memory does not grow with the number of windows. Windows never cross two
trajectories or a time discontinuity. Samples are COM-centred when read.

Splits: 'molecule' (default; whole molecules held out: generalization to unseen molecules)
or 'time' (the last part of every trajectory is held out: same molecules). The rules are
written to <splits-dir>/train.json, val.json, test.json. Each source trajectory is
fingerprinted (size, frame count, dt, SHA-256) and checked whenever the dataset is read: a
dataset never trains silently on trajectories that were rerun or changed after it was built.

Settings (pattern, ks, stride, split, fractions, seed) come from --config (configs/dataset.yaml
lists them with their defaults), then the flags, then --set KEY=VALUE.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

from mdkstep.cli.common import add_log_level, make_parser
from mdkstep.config import load_config, run_cli
from mdkstep.data.windows import build_dataset, write_split_files
from mdkstep.utils import MdkstepError, check_writable, setup_logging

EXAMPLE = """Example (windows of k = 8 integrator steps, i.e. 16 fs at the 2 fs baselines; time split):
  mdkstep-dataset --md-root outputs/md --out-root outputs/datasets --splits-dir outputs/splits --ks 8 --split time
  python src/02_make_dataset.py --md-root data/md --out-root data/datasets --splits-dir data/splits \\
      --config configs/dataset.yaml --set stride=2
Units: k and stride in saved frames of the trajectories (integrator steps when save_interval = 1).
"""


@dataclass
class DatasetConfig:
    """Settings of stage 02 (configs/dataset.yaml); the defaults are the old flags' defaults."""

    pattern: str = "*/replica_*.npz"  #: glob below --md-root selecting trajectories
    ks: list[int] = field(default_factory=lambda: [4, 8, 12])  #: jump lengths, integrator steps
    stride: int = 1  #: frames between consecutive window starts
    split: str = "molecule"  #: molecule | time
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  #: train, val, test
    seed: int = 0  #: seed of the molecule shuffle

    def validate(self) -> None:
        if self.split not in ("molecule", "time"):
            raise ValueError(f"key 'split': {self.split!r} is not one of ['molecule', 'time']")
        if len(self.fractions) != 3 or abs(sum(self.fractions) - 1.0) > 1e-6 or min(self.fractions) < 0:
            raise ValueError(f"key 'fractions' {self.fractions}: three numbers >= 0 that sum to 1")
        if not self.ks or self.stride < 1 or min(self.ks) < 1:
            raise ValueError("keys 'stride' and 'ks' must be >= 1 (ks: at least one)")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--md-root", type=Path, required=True, help="folder of <molecule>/<trajectory>.npz (stage 01/01b/01c output)")
    p.add_argument("--out-root", type=Path, required=True, help="where dataset_k<K>.npz files go")
    p.add_argument("--splits-dir", type=Path, required=True, help="where train.json / val.json / test.json go")
    p.add_argument("--config", type=Path, default=None,
                   help="dataset YAML (default: the built-in values, as in configs/dataset.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--pattern", default=None, help="glob below --md-root selecting trajectories (default: */replica_*.npz)")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="jump lengths in integrator steps (default: 4 8 12)")
    p.add_argument("--stride", type=int, default=None, help="frames between consecutive window starts (default: 1)")
    p.add_argument("--split", choices=["molecule", "time"], default=None, help="how to hold out data (default: molecule)")
    p.add_argument("--fractions", type=float, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions of molecules or of time (default: 0.8 0.1 0.1)")
    p.add_argument("--seed", type=int, default=None, help="seed of the molecule shuffle (default: 0)")
    p.add_argument("--raw-root", type=Path, default=None, help="stage-00 folder for topology.json when not beside the trajectories")
    add_log_level(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.fractions is not None and (not all(math.isfinite(f) for f in args.fractions)
                                       or abs(sum(args.fractions) - 1.0) > 1e-6 or min(args.fractions) < 0):
        raise MdkstepError(f"--fractions {args.fractions}: must be >= 0 and sum to 1")
    if (args.stride is not None and args.stride < 1) or (args.ks is not None and min(args.ks) < 1):
        raise MdkstepError("--stride and --ks must be >= 1")
    cfg = load_config(DatasetConfig, args.config, {
        "pattern": args.pattern, "ks": args.ks, "stride": args.stride, "split": args.split,
        "fractions": args.fractions, "seed": args.seed}, args.set)
    if not args.md_root.is_dir():
        raise MdkstepError(f"{args.md_root}: folder not found")
    paths = sorted(args.md_root.glob(cfg.pattern))
    if not paths:
        raise MdkstepError(f"{args.md_root}: no trajectories match {cfg.pattern!r}")
    check_writable(args.out_root, "--out-root")
    check_writable(args.splits_dir, "--splits-dir")
    files = []
    last = None
    for k in cfg.ks:
        out = args.out_root / f"dataset_k{k}.npz"
        last = build_dataset(paths, k, out, cfg.stride, cfg.split, tuple(cfg.fractions), cfg.seed, args.raw_root)
        files.append(str(out))
        c = last["counts"]
        print(f"k={k}: {last['n_windows']} windows (train {c['train']}, val {c['val']}, test {c['test']}) -> {out}")
    write_split_files(args.splits_dir, last, files)
    print(f"{len(paths)} trajectories; split '{cfg.split}' rules in {args.splits_dir}/{{train,val,test}}.json")
    return 0


def run() -> None:
    """Console script ``mdkstep-dataset``: :func:`main` with one-line errors (exit 2)."""
    run_cli(main)


if __name__ == "__main__":  # python -m mdkstep.cli.dataset
    run()
