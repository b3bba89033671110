"""`make quickstart`: the product working, in a few CPU minutes, with the shipped models.

Plain MD and the hybrid (learned k-step jumps + one real force call per jump) side by side on
real engines, all measured in this run, each part on one core:
  MM  aspirin, OpenMM + OpenFF: plain MD at 2 fs (the reference), 4 fs with hydrogen mass
      repartitioning and the largest stable step, against the hybrid that draws one order of
      the shipped k = 4, 8, 9, 10, 12 models every cycle (models/mm_k*.pt);
  QM  ethanol, GFN2-xTB: plain MD at 0.25 fs (the reference), 0.5 and 1 fs, against the hybrid
      at k = 16 and 32 (4 and 8 fs per jump; models/qm_k16.pt, qm_k32.pt).
"Faithful" is judged against the noise between 4 independent reference replicas (every
structure distance within 1.5x their spread, every element's temperature within 10 %). It is
`make bench` on one molecule per mode (configs/quickstart.yaml); its full tables and plots
are written beside the summary. The stage-by-stage pipeline (a tiny model trained here, not
meant to be faithful) is `make demo`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mdkstep.analysis.evaluation import fmt
from mdkstep.bench.report import machine_line
from mdkstep.cli.common import add_log_level, make_parser, repo_path
from mdkstep.config import load_config, run_cli
from mdkstep.pipeline.config import BenchConfig
from mdkstep.utils import LOG, MdkstepError, atomic_write_text, setup_logging

EXAMPLE = """Examples:
  make quickstart                                   # ~2 min on 2 CPU cores (MM and QM side by side)
  mdkstep-quickstart --serial                       # one part after the other (one core)
  mdkstep-quickstart --set mm_time_ps=20            # shorter MM runs (ps of simulated time per method)
"""

#: the two parts: the mode and the key that switches the other mode off
PARTS = (("mm", "qm_smiles=null"), ("qm", "mm_smiles=null"))


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, EXAMPLE)
    p.add_argument("--config", type=Path, default=repo_path("configs/quickstart.yaml"),
                   help="benchmark YAML of the quickstart (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set qm_time_ps=2")
    p.add_argument("--out-dir", type=Path, default=None, help="output folder (default: the config's out_dir)")
    p.add_argument("--serial", action="store_true", help="run the MM and QM parts one after the other")
    add_log_level(p)
    return p


def part_command(mode: str, off: str, args, out: Path) -> list[str]:
    """The `mdkstep.cli.bench` command of one part (the other mode switched off)."""
    cmd = [sys.executable, "-m", "mdkstep.cli.bench", "--config", str(args.config), "--out-dir", str(out / mode),
           "--set", off, "--log-level", args.log_level]
    for item in args.set:
        cmd += ["--set", item]
    return cmd


def run_parts(args, out: Path) -> None:
    """Both parts as subprocesses (one thread each), their last log line every 20 s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    t0 = time.perf_counter()

    def start(mode: str, off: str) -> None:
        log = out / f"{mode}.log"
        fh = open(log, "w")
        procs[mode] = (subprocess.Popen(part_command(mode, off, args, out), stdout=fh, stderr=subprocess.STDOUT,
                                        env=env), log)
        LOG.info("quickstart: %s part started (log: %s)", mode.upper(), log)

    def wait(modes: list[str]) -> None:
        last = time.perf_counter()
        while any(procs[m][0].poll() is None for m in modes):
            time.sleep(1.0)
            if time.perf_counter() - last >= 20.0:
                last = time.perf_counter()
                for m in modes:
                    if procs[m][0].poll() is None:
                        LOG.info("quickstart %s (%.0f s): %s", m.upper(), time.perf_counter() - t0, last_line(procs[m][1]))
        for m in modes:
            if procs[m][0].returncode != 0 or not (out / m / "bench.json").is_file():
                raise MdkstepError(f"quickstart: the {m.upper()} part failed (exit {procs[m][0].returncode}); "
                                   f"its log: {procs[m][1]} ({last_line(procs[m][1])})")

    for mode, off in PARTS:
        start(mode, off)
        if args.serial:
            wait([mode])
    wait([m for m, _ in PARTS])


def last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip() and "Warning" not in ln]
    return lines[-1].strip()[:160] if lines else "starting"


def what(r: dict[str, Any]) -> str:
    """A method's name in words."""
    if r["kind"] == "plain":
        return (f"plain MD, {fmt(r['dt_fs'], 3)} fs steps" + (" + heavy H (HMR)" if r.get("hmr") else "")
                + (" (reference)" if r.get("reference") else ""))
    if "allperms" in r["method"]:
        return "hybrid, strides k = " + r["method"].split("_k", 1)[1].split(",")[0].replace("+", ", ") + " drawn"
    return f"hybrid, k = {r['k']} ({fmt(r['k'] * r['dt_fs'], 3)} fs per jump)"


def summary(results: dict[str, dict[str, Any]], out: Path, wall_s: float) -> str:
    """One table a newcomer reads: faithful or not, force calls and wall seconds per ps, and the
    gain against the best faithful plain MD, all measured in this run."""
    meta = next(iter(results.values()))["meta"]
    head = ("| mode | molecule | method | faithful (worst distance ÷ floor) | force calls/ps | wall s/ps "
            "| fewer calls than best plain | wall speed-up vs best plain |")
    lines = [f"# md-kstep quickstart: {machine_line(meta)}; {wall_s / 60:.1f} min in all", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for mode, res in results.items():
        for r in res["records"]:
            ok = "yes" if r["faithful"] else "no"
            lines.append(f"| {mode.upper()} | {r['molecule']} | {what(r)} | {ok} ({fmt(r['max_structure_ratio'], 3)}) "
                         f"| {fmt(r['force_calls_per_ps'], 4)} | {fmt(r['wall_s_per_ps'], 3)} "
                         f"| {fmt(r['force_call_reduction_vs_best_plain'], 3)}x "
                         f"| {fmt(r['wall_speedup_vs_best_plain'], 3)}x |")
    lines += ["",
              "Faithful: every structure distance (bonds, angles, dihedrals, pair distances) within 1.5x the "
              "largest distance between 4 independent reference replicas (the floor), and every element's mean "
              "temperature within 10 %. Best plain: the faithful plain MD with the fewest force calls per ps.",
              "", "Where to look: " + ", ".join(f"{out / m / 'bench.md'} (tables), {out / m / 'pareto.png'} (fidelity "
                                                 f"vs force calls)" for m in results)
              + "; trajectories: " + ", ".join(f"{out / m / m / 'runs'}/<molecule>/*.npz" for m in results)
              + " (docs/data-contract.md)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_config(BenchConfig, args.config, set_items=args.set)  # a bad key fails here, not in a part
    out = Path(args.out_dir or cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run_parts(args, out)
    results = {m: json.loads((out / m / "bench.json").read_text()) for m, _ in PARTS}
    text = summary(results, out, time.perf_counter() - t0)
    atomic_write_text(out / "summary.md", text + "\n")
    print(text)
    return 0


def run() -> None:
    run_cli(main)


if __name__ == "__main__":
    run()
