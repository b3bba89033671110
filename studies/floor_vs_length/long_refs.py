"""Long QM reference replicas exactly as the bench makes them (issue 26 item 3).

Same code path as ``make bench``'s ``ref_r<i>``: :class:`mdkstep.pipeline.qm.QMMode` from the
bench config (qm_config + qm_overrides, reference step qm_ref_dt_fs), seed ``cfg.seed + 1 + i``,
written to ``<out>/qm/runs/<mol>/ref_r<i>.npz`` (+ topology.json), only the length differs.
Resumable (chunked; rerun the same command). One process, one thread.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python studies/floor_vs_length/long_refs.py \\
        --out outputs/bench_long --mol ethanol --time-ps 20 --replicas 4

Then the reference check of every replica: ``--check`` (no runs; prints and writes
<out>/qm/refcheck.json).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench.yaml")
    p.add_argument("--out", type=Path, required=True, help="out_dir of the bench layout (NOT the bench's own)")
    p.add_argument("--mol", action="append", default=None, help="molecule name(s) of qm_smiles; default all")
    p.add_argument("--time-ps", type=float, default=None, help="replica length; default the config's qm_time_ps")
    p.add_argument("--replicas", type=int, default=None, help="default the config's ref_replicas")
    p.add_argument("--check", action="store_true", help="only the reference check of what is there")
    p.add_argument("--check-prefixes-ps", type=float, nargs="*", default=[],
                   help="with --check: also check each replica cut to its first L ps (as a shorter run would be)")
    a = p.parse_args(argv)

    from mdkstep.config import load_config
    from mdkstep.pipeline.config import BenchConfig
    from mdkstep.pipeline.qm import QMMode

    cfg = load_config(BenchConfig, a.config, {"out_dir": str(a.out)})
    mode = QMMode(cfg, a.out)
    mols = mode.molecules()
    todo = [m for m in mols if not a.mol or m in a.mol]
    n = a.replicas or cfg.ref_replicas
    if a.check:
        from mdkstep.analysis.refcheck import reference_check
        from mdkstep.trajectory import load_trajectory

        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from floor_vs_length import cut

        res = {}
        for mol in todo:
            paths = sorted((mode.root / "runs" / mol).glob("ref_r*.npz"))
            full = [load_trajectory(q) for q in paths]
            res[mol] = []
            for length in [None, *a.check_prefixes_ps]:
                reps = full if length is None else [cut(t, length) for t in full]
                for q, r, t in zip(paths, reference_check(reps, mode.qcfg.temperature_K), reps):
                    r["path"] = str(q)
                    r["length_ps"] = float(t.time_ps[-1] - t.time_ps[0] + t.time_ps[1] - t.time_ps[0])
                    res[mol].append(r)
                    print(f"{mol} {q.name} {r['length_ps']:.2f} ps: T {r['mean_temperature_K']:.1f} K "
                          f"({100 * r['temperature_dev']:+.1f}%, sigma {r['mean_temperature_sigma_K']:.1f} K), KS p {r['ks_p']:.3g} (n={r['n_samples']}, "
                          f"dof {r['n_dof']}) ok_T={r['temperature_ok']} ok_gamma={r['gamma_ok']}", flush=True)
        (mode.root / "refcheck.json").write_text(json.dumps(res, indent=1, default=str))
        return 0
    time_ps = a.time_ps or cfg.qm_time_ps
    ref = mode.reference()
    for mol in todo:
        for i in range(n):
            out = mode.root / "runs" / mol / f"ref_r{i}.npz"
            mode.run_plain(mol, ref, cfg.seed + 1 + i, out, time_ps)
            print(f"done {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
