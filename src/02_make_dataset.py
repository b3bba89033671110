#!/usr/bin/env python
"""Stage 02: k-step supervision windows from baseline trajectories.

For each k in --ks, indexes every window (x_t, v_t[, F_t]) -> (x_{t+k}, v_{t+k}[, F_{t+k}])
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
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from mdkstep.config import run_cli
from mdkstep.data.windows import build_dataset, write_split_files
from mdkstep.utils import MdkstepError, check_writable, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--md-root", type=Path, required=True, help="folder of <molecule>/<trajectory>.npz (stage 01/01b/01c output)")
    p.add_argument("--pattern", default="*/replica_*.npz", help="glob below --md-root selecting trajectories (default: %(default)s)")
    p.add_argument("--out-root", type=Path, required=True, help="where dataset_k<K>.npz files go")
    p.add_argument("--splits-dir", type=Path, required=True, help="where train.json / val.json / test.json go")
    p.add_argument("--ks", type=int, nargs="+", default=[4, 8, 12], help="jump lengths in integrator steps (default: 4 8 12)")
    p.add_argument("--stride", type=int, default=1, help="frames between consecutive window starts (default: 1)")
    p.add_argument("--split", choices=["molecule", "time"], default="molecule", help="how to hold out data (default: molecule)")
    p.add_argument("--fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions of molecules or of time (default: 0.8 0.1 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the molecule shuffle")
    p.add_argument("--raw-root", type=Path, default=None, help="stage-00 folder for topology.json when not beside the trajectories")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if not all(math.isfinite(f) for f in args.fractions) or abs(sum(args.fractions) - 1.0) > 1e-6 \
            or min(args.fractions) < 0:
        raise MdkstepError(f"--fractions {args.fractions}: must be >= 0 and sum to 1")
    if args.stride < 1 or min(args.ks) < 1:
        raise MdkstepError("--stride and --ks must be >= 1")
    if not args.md_root.is_dir():
        raise MdkstepError(f"{args.md_root}: folder not found")
    paths = sorted(args.md_root.glob(args.pattern))
    if not paths:
        raise MdkstepError(f"{args.md_root}: no trajectories match {args.pattern!r}")
    check_writable(args.out_root, "--out-root")
    check_writable(args.splits_dir, "--splits-dir")
    files = []
    last = None
    for k in args.ks:
        out = args.out_root / f"dataset_k{k}.npz"
        last = build_dataset(paths, k, out, args.stride, args.split, tuple(args.fractions), args.seed, args.raw_root)
        files.append(str(out))
        c = last["counts"]
        print(f"k={k}: {last['n_windows']} windows (train {c['train']}, val {c['val']}, test {c['test']}) -> {out}")
    write_split_files(args.splits_dir, last, files)
    print(f"{len(paths)} trajectories; split '{args.split}' rules in {args.splits_dir}/{{train,val,test}}.json")
    return 0


if __name__ == "__main__":
    run_cli(main)
