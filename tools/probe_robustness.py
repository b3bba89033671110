#!/usr/bin/env python
"""Robustness probe of the whole pipeline (issue 13's "Done when"), as a demanding new user.

Builds a tiny pipeline in --work (00 on ethanol + water, 01, 01b with GFN2-xTB, 02, 04, 06,
06b, 05, 05b; cached: a second run reuses it), then, for every stage:

- bad inputs: unknown config key, bad values (negative, NaN, wrong type), missing and
  truncated / corrupt input files (.smi, system.xml, NPZ, checkpoint, JSON split), an
  unwritable output (a path below a regular file), a duplicate YAML key, a top-level YAML
  list, ``--set`` garbage. Clean = non-zero exit, no traceback, exactly one ``error:`` line,
  and that line names the file, line or key (the case's "needle").
- interrupt and resume: SIGKILL after half the chunks are committed, between a chunk and its
  commit, during the final assembly, right after the output is published, and from outside
  (wall clock) once the first chunk exists; the rerun must be bitwise identical to an
  uninterrupted run of the same settings (QM 01b: same frame count, positions within 1e-6 nm;
  the SCF guess is not checkpointed) and leave no leftovers. A rerun with changed settings
  (seed, temperature, checkpoint) must be refused with a line that names what changed, and
  must not damage the partial run (the original command then finishes exactly).
- two writers on one output at the same time: one may be refused ("being written"), the
  published file must equal the uninterrupted run.
- published files: every trajectory NPZ under --work is checked against its metadata (frame
  count vs. times, dt x save interval, seed and temperature the probe asked for).

The kills are injected in-process (a wrapper patches the run loop to SIGKILL itself at an
exact point) so every trial is deterministic; one trial per stage kills from outside.

    .venv/bin/python tools/probe_robustness.py --quick      # ~3 min on 2 busy cores
    .venv/bin/python tools/probe_robustness.py              # everything (~10 min)
    .venv/bin/python tools/probe_robustness.py --stages 01 06 --verbose

Prints one line per trial and the counts per stage and in total; exit status 1 when any
trial failed. It is a tool, not a test (the suite has the regression tests).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT / "src"), "PYTHONWARNINGS": "ignore"}
SCRIPT = {"00": "00_prep_mols", "01": "01_run_md_baselines", "01b": "01b_run_qm_baselines", "02": "02_make_dataset",
          "04": "04_train", "05": "05_eval_drift_rdfs", "05b": "05b_eval_qm", "06": "06_hybrid_integrate",
          "06b": "06b_hybrid_integrate_qm"}
STAGES = list(SCRIPT)

# In-process fault injection: PROBE_KILL=<mode>:<n> makes the stage SIGKILL itself
#   commit:n     right after the n-th resume-state commit (chunk n is safe on disk)
#   precommit:n  after chunk n is flushed, before its commit
#   assemble:n   while the final file is being assembled (at its n-th array)
#   publish:n    right after the n-th output is renamed into place (before cleanup)
#   ckpt:n       (04) right after the n-th last.pt is written
INJECT = r'''
import os, runpy, signal, sys, zipfile
mode, n = os.environ["PROBE_KILL"].split(":"); n = int(n)
def die():
    sys.stdout.flush(); sys.stderr.flush(); os.kill(os.getpid(), signal.SIGKILL)
count = [0]
if mode in ("commit", "precommit"):
    import mdkstep.runner as R
    orig = R.write_state
    def write_state(*a, **k):
        count[0] += 1
        if mode == "precommit" and count[0] == n: die()
        orig(*a, **k)
        if mode == "commit" and count[0] == n: die()
    R.write_state = write_state
elif mode == "assemble":
    orig = zipfile.ZipFile.write
    def write(self, filename, *a, **k):
        if "assemble" in str(filename):
            count[0] += 1
            if count[0] == n: die()
        return orig(self, filename, *a, **k)
    zipfile.ZipFile.write = write
elif mode == "publish":
    orig = os.replace
    def replace(src, dst, *a, **k):
        r = orig(src, dst, *a, **k)
        if "assemble" in str(src):
            count[0] += 1
            if count[0] == n: die()
        return r
    os.replace = replace
elif mode == "ckpt":
    import mdkstep.training.trainer as T
    orig = T.save_checkpoint
    def save_checkpoint(path, payload):
        r = orig(path, payload)
        if str(path).endswith("last.pt"):
            count[0] += 1
            if count[0] == n: die()
        return r
    T.save_checkpoint = save_checkpoint
script = sys.argv[1]; sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
'''


# ----------------------------------------------------------------------------- bookkeeping

@dataclass
class Tally:
    bad: int = 0
    bad_clean: int = 0
    resumes: int = 0
    exact: int = 0
    refused: int = 0
    writers: int = 0
    writers_ok: int = 0
    published: int = 0
    published_ok: int = 0
    failures: list[str] = field(default_factory=list)


TALLY: dict[str, Tally] = {s: Tally() for s in STAGES}
LOCK = threading.Lock()
VERBOSE = False


def say(line: str) -> None:
    with LOCK:
        print(line, flush=True)


def run(stage: str, argv: list[str], kill: str | None = None, timeout: float = 600,
        popen: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    script = str(ROOT / "src" / f"{SCRIPT[stage]}.py")
    env = dict(ENV)
    if kill:
        env["PROBE_KILL"] = kill
        cmd = [PY, "-c", INJECT, script, *argv]
    else:
        cmd = [PY, script, *argv]
    if VERBOSE:
        say(f"    $ {' '.join(cmd[-len(argv) - 1:])}" + (f"   [PROBE_KILL={kill}]" if kill else ""))
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def last_line(r) -> str:
    lines = [l for l in (r.stderr or "").splitlines() if l.strip()]
    return lines[-1] if lines else "<no stderr>"


def error_lines(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.startswith("error:")]


# -------------------------------------------------------------------------------- build

class Work:
    """Paths of the tiny pipeline under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.smi = root / "mols.smi"
        self.raw = root / "raw"
        self.mol = self.raw / "water"
        self.md = root / "md"
        self.qmd = root / "qmd"
        self.ds = root / "ds"
        self.splits = root / "splits"
        self.qds = root / "qds"
        self.qsplits = root / "qsplits"
        self.train = root / "train"
        self.qtrain = root / "qtrain"
        self.hyb = root / "hyb"
        self.qhyb = root / "qhyb"
        self.bad = root / "bad"  # corrupt inputs
        self.o = root / "o"  # trial outputs
        self.afile = root / "afile"
        self.blocked = self.afile / "sub"  # never writable: below a regular file

    @property
    def ck(self) -> Path:
        return self.train / "best.pt"

    @property
    def qck(self) -> Path:
        return self.qtrain / "best.pt"

    def fresh(self, name: str) -> Path:
        d = self.o / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d


MD_ARGS = ["--config", "configs/md_quick.yaml", "--equil-ps", "0.02", "--set", "nve_window_ps=0.1"]
QM_ARGS = ["--config", "configs/qm_quick.yaml", "--equil-ps", "0.0025", "--set", "minimize_steps=20", "--no-progress"]
TRAIN_ARGS = ["--model-config", "configs/model_quick.yaml", "--train-config", "configs/train_quick.yaml", "--device", "cpu",
              "--threads", "1", "--set", "k=4", "--set", "batch_size=8", "--set", "val_max_windows=64",
              "--set", "metrics_max_windows=64", "--set", "norm_max_windows=256", "--model-set", "hidden=16",
              "--model-set", "n_layers=2"]


def hyb_args(w: Work, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(w.ck), "--molecule", str(w.mol), "--md-config", "configs/md_quick.yaml",
            "--start-from", str(w.md / "water" / "replica_0.npz"), "--out", str(out), "--time-ps", "0.2",
            "--set", "chunk_frames=5", "--threads", "1", "--no-progress", *extra]


def qhyb_args(w: Work, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(w.qck), "--start-from", str(w.qmd / "water" / "replica_0.npz"),
            "--qm-config", "configs/qm_quick.yaml", "--out", str(out), "--time-ps", "0.008",
            "--set", "chunk_frames=2", "--threads", "1", "--no-progress", *extra]


def build(w: Work) -> None:
    """The tiny pipeline (each step skipped when its output exists)."""
    w.root.mkdir(parents=True, exist_ok=True)
    w.smi.write_text("CCO ethanol\nO water\n")
    w.afile.write_text("a regular file\n")
    steps = [
        ("00", w.raw / "water" / "topology.json", ["--smiles", str(w.smi), "--out-dir", str(w.raw)]),
        ("01", w.md / "water" / "replica_1.npz", ["--all", str(w.raw), "--out", str(w.md), "--time-ps", "0.4",
                                                   "--replicas", "2", "--set", "chunk_frames=50", *MD_ARGS]),
        ("01b", w.qmd / "water" / "replica_1.npz", ["--molecule", str(w.mol), "--out", str(w.qmd), "--time-ps", "0.025",
                                                     "--replicas", "2", "--set", "chunk_frames=25", *QM_ARGS]),
        ("02", w.ds / "dataset_k4.npz", ["--md-root", str(w.md), "--out-root", str(w.ds), "--splits-dir", str(w.splits),
                                         "--ks", "4", "--split", "time"]),
        ("02", w.qds / "dataset_k4.npz", ["--md-root", str(w.qmd), "--out-root", str(w.qds), "--splits-dir",
                                          str(w.qsplits), "--ks", "4", "--split", "time"]),
        ("04", w.train / "best.pt", ["--dataset", str(w.ds / "dataset_k4.npz"), "--splits", str(w.splits / "train.json"),
                                     str(w.splits / "val.json"), "--out", str(w.train), "--max-steps", "30",
                                     *TRAIN_ARGS]),
        ("04", w.qtrain / "best.pt", ["--dataset", str(w.qds / "dataset_k4.npz"), "--splits",
                                      str(w.qsplits / "train.json"), str(w.qsplits / "val.json"), "--out", str(w.qtrain),
                                      "--max-steps", "20", *TRAIN_ARGS]),
        ("06", w.hyb / "water" / "k4.npz", hyb_args(w, w.hyb / "water" / "k4.npz")),
        ("06b", w.qhyb / "water" / "k4.npz", qhyb_args(w, w.qhyb / "water" / "k4.npz")),
    ]
    for stage, out, argv in steps:
        if out.exists():
            continue
        t0 = time.perf_counter()
        r = run(stage, argv)
        if r.returncode != 0 or not out.exists():
            sys.exit(f"probe: building the pipeline failed at stage {stage}: {last_line(r)}")
        say(f"  built {stage:3s} {out.relative_to(w.root)} ({time.perf_counter() - t0:.1f} s)")
    # corrupt inputs, made once
    b = w.bad
    if not (b / "done").exists():
        shutil.rmtree(b, ignore_errors=True)
        b.mkdir(parents=True)
        (b / "empty.smi").write_text("# nothing here\n\n")
        (b / "garbage.smi").write_bytes(b"\x00\xff\xfe binary \x80\x81\n")
        (b / "badline.smi").write_text("O water\nC1CC(( broken\n")
        (b / "extra.smi").write_text("O water extra tokens\n")
        (b / "dupkey.yaml").write_text("temperature_K: 300\ntemperature_K: 310\n")
        (b / "list.yaml").write_text("- a\n- b\n")
        (b / "badkey.yaml").write_text("bogus_key: 1\n")
        (b / "pytag.yaml").write_text("temperature_K: !!python/object/apply:os.system ['echo pwned']\n")
        (b / "notyaml.yaml").write_text("a: [1, 2\n")
        for name in ("water_xml", "water_topo"):
            shutil.copytree(w.mol, b / name)
        x = (b / "water_xml" / "system.xml").read_text()
        (b / "water_xml" / "system.xml").write_text(x[: len(x) // 2])
        (b / "water_topo" / "topology.json").write_text('{"atomic_numbers": [8, 1')
        for src, dst in ((w.md / "water" / "replica_0.npz", "trunc.npz"), (w.ds / "dataset_k4.npz", "trunc_ds.npz"),
                         (w.ck, "trunc.pt"), (w.qmd / "water" / "replica_0.npz", "qtrunc.npz")):
            data = src.read_bytes()
            (b / dst).write_bytes(data[: len(data) // 2])
        (b / "notnpz.npz").write_text("not a zip\n")
        (b / "trunc.json").write_text((w.splits / "train.json").read_text()[:10])
        (b / "wrong.json").write_text('{"split": "time", "bogus": 1}')
        # a corrupt tree for 02 / 05 / 05b: one truncated trajectory among good ones
        for tree, src in (("md_trunc", w.md), ("qmd_trunc", w.qmd), ("hyb_trunc", w.hyb)):
            shutil.copytree(src, b / tree)
        for tree, name in (("md_trunc", "replica_1.npz"), ("qmd_trunc", "replica_1.npz"), ("hyb_trunc", "k4.npz")):
            p = b / tree / "water" / name
            data = p.read_bytes()
            p.write_bytes(data[: len(data) // 3])
        # a hybrid tree with the leftovers a killed run may leave: readers must ignore them
        shutil.copytree(w.hyb, b / "hyb_leftovers")
        d = b / "hyb_leftovers" / "water"
        (d / ".k4.npz.1234abcd.npz").write_bytes(b"half written")
        (d / "k4x.npz.lock").write_text("999999 nohost\n")
        (d / "k4x.npz.parts").mkdir()
        (d / "k4x.npz.parts" / "chunk_00000.npz").write_bytes(b"partial")
        (d / "k4x.hybrid_ckpt.npz").write_bytes(b"partial")
        (b / "done").write_text("")


def perturbed_checkpoint(w: Work) -> Path:
    """A copy of the MM model with one weight changed (another model of the same shape)."""
    out = w.bad / "other_model.pt"
    if not out.exists():
        code = ("import sys, torch\nfrom mdkstep.model.checkpoint import read_checkpoint, save_checkpoint\n"
                "p = read_checkpoint(sys.argv[1])\nk = next(k for k, v in p['model_state'].items() if v.is_floating_point())\n"
                "p['model_state'][k] = p['model_state'][k] * 1.01\nsave_checkpoint(sys.argv[2], p)\n")
        r = subprocess.run([PY, "-c", code, str(w.ck), str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"probe: could not make a second model: {last_line(r)}")
    return out


# ---------------------------------------------------------------------------- bad inputs

def bad_cases(w: Work, quick: bool) -> list[tuple[str, str, list[str], str]]:
    """(stage, what, argv, needle): the error line must contain the needle (case-insensitive)."""
    b, mol, o = w.bad, str(w.mol), w.o
    ds, ck = str(w.ds / "dataset_k4.npz"), str(w.ck)
    spl = [str(w.splits / "train.json"), str(w.splits / "val.json")]
    blk = str(w.blocked)
    md = lambda *a: ["--molecule", mol, "--out", str(o / "bad01"), "--time-ps", "0.02", *MD_ARGS, *a]
    qm = lambda *a: ["--molecule", mol, "--out", str(o / "bad01b"), "--time-ps", "0.005", *QM_ARGS, *a]
    mk = lambda *a: ["--md-root", str(w.md), "--out-root", str(o / "bad02"), "--splits-dir", str(o / "bad02s"),
                     "--ks", "4", "--split", "time", *a]
    tr = lambda *a, ds=ds, spl=spl: ["--dataset", ds, "--splits", *spl, "--out", str(o / "bad04"), "--overwrite",
                                     "--max-steps", "2", *TRAIN_ARGS, *a]
    hy = lambda *a: hyb_args(w, o / "bad06" / "h.npz", "--overwrite", *a)
    qh = lambda *a: qhyb_args(w, o / "bad06b" / "h.npz", "--overwrite", *a)
    ev = lambda *a: ["--baseline", str(w.md), "--hybrid-runs", str(w.hyb), "--out-dir", str(o / "bad05"), "--no-export", *a]
    qe = lambda *a: ["--baseline", str(w.qmd), "--hybrid-runs", str(w.qhyb), "--out-dir", str(o / "bad05b"),
                     "--no-timing", *a]
    cases = [
        # 00
        ("00", "bad config key", ["--smiles", str(w.smi), "--out-dir", str(o / "bad00"), "--config", str(b / "badkey.yaml")], "bogus_key"),
        ("00", "bad value (choice)", ["--smiles", str(w.smi), "--out-dir", str(o / "bad00"), "--set", "charge_method=magic"], "charge_method"),
        ("00", "bad value (negative)", ["--smiles", str(w.smi), "--out-dir", str(o / "bad00"), "--set", "minimize_max_iterations=-3"], "minimize_max_iterations"),
        ("00", "bad value (type)", ["--smiles", str(w.smi), "--out-dir", str(o / "bad00"), "--set", "seed=abc"], "seed"),
        ("00", "missing .smi", ["--smiles", str(b / "nope.smi"), "--out-dir", str(o / "bad00")], "nope.smi"),
        ("00", "empty .smi", ["--smiles", str(b / "empty.smi"), "--out-dir", str(o / "bad00")], "empty.smi"),
        ("00", "binary .smi", ["--smiles", str(b / "garbage.smi"), "--out-dir", str(o / "bad00")], "garbage.smi"),
        ("00", "bad SMILES line", ["--smiles", str(b / "badline.smi"), "--out-dir", str(o / "bad00b")], "badline.smi:2"),
        ("00", "extra tokens", ["--smiles", str(b / "extra.smi"), "--out-dir", str(o / "bad00")], "extra.smi:1"),
        ("00", "unwritable out", ["--smiles", str(w.smi), "--out-dir", blk], "afile"),
        ("00", "duplicate YAML key", ["--smiles", str(w.smi), "--out-dir", str(o / "bad00"), "--config", str(b / "dupkey.yaml")], "temperature_K"),
        ("00", "--set garbage", ["--smiles", str(w.smi), "--out-dir", str(o / "bad00"), "--set", "seed"], "seed"),
        # 01
        ("01", "bad config key", md("--set", "bogus_key=1"), "bogus_key"),
        ("01", "bad value (negative)", md("--set", "temperature_K=-5"), "temperature_K"),
        ("01", "bad value (NaN)", md("--set", "temperature_K=.nan"), "temperature_K"),
        ("01", "bad value (type)", md("--set", "chunk_frames=abc"), "chunk_frames"),
        ("01", "bad value (inf)", md("--set", "dt_fs=.inf"), "dt_fs"),
        ("01", "bad --time-ps", md("--time-ps", "-1"), "time"),
        ("01", "missing molecule", ["--molecule", str(b / "nope"), "--out", str(o / "bad01"), *MD_ARGS], "nope"),
        ("01", "truncated system.xml", ["--molecule", str(b / "water_xml"), "--out", str(o / "bad01"), *MD_ARGS], "system.xml"),
        ("01", "corrupt topology.json", ["--molecule", str(b / "water_topo"), "--out", str(o / "bad01"), *MD_ARGS], "topology.json"),
        ("01", "unwritable out", ["--molecule", mol, "--out", blk, *MD_ARGS], "afile"),
        ("01", "duplicate YAML key", ["--molecule", mol, "--out", str(o / "bad01"), "--config", str(b / "dupkey.yaml")], "temperature_K"),
        ("01", "top-level YAML list", ["--molecule", mol, "--out", str(o / "bad01"), "--config", str(b / "list.yaml")], "list.yaml"),
        ("01", "python tag YAML", ["--molecule", mol, "--out", str(o / "bad01"), "--config", str(b / "pytag.yaml")], "pytag.yaml"),
        ("01", "malformed YAML", ["--molecule", mol, "--out", str(o / "bad01"), "--config", str(b / "notyaml.yaml")], "notyaml.yaml"),
        ("01", "--set garbage", md("--set", "=3"), "--set"),
        ("01", "--set python tag", md("--set", "temperature_K=!!python/object/apply:os.getcwd []"), "temperature_K"),
        # 01b
        ("01b", "bad config key", qm("--set", "bogus_key=1"), "bogus_key"),
        ("01b", "bad value (negative)", qm("--set", "friction_per_ps=-2"), "friction_per_ps"),
        ("01b", "bad value (NaN)", qm("--set", "temperature_K=.nan"), "temperature_K"),
        ("01b", "bad value (inf)", qm("--set", "dt_fs=.inf"), "dt_fs"),
        ("01b", "bad value (type)", qm("--set", "chunk_frames=1.5"), "chunk_frames"),
        ("01b", "bad value (choice)", qm("--set", "method=GFN9-xTB"), "method"),
        ("01b", "missing .smi", ["--smiles-file", str(b / "nope.smi"), "--out", str(o / "bad01b"), *QM_ARGS], "nope.smi"),
        ("01b", "empty .smi", ["--smiles-file", str(b / "empty.smi"), "--out", str(o / "bad01b"), *QM_ARGS], "empty.smi"),
        ("01b", "bad SMILES line", ["--smiles-file", str(b / "badline.smi"), "--out", str(o / "bad01b"), "--time-ps", "0.001", *QM_ARGS], "badline.smi:2"),
        ("01b", "corrupt topology.json", ["--molecule", str(b / "water_topo"), "--out", str(o / "bad01b"), *QM_ARGS], "topology.json"),
        ("01b", "unwritable out", ["--molecule", mol, "--out", blk, *QM_ARGS], "afile"),
        ("01b", "duplicate YAML key", ["--molecule", mol, "--out", str(o / "bad01b"), "--config", str(b / "dupkey.yaml")], "temperature_K"),
        ("01b", "--set garbage", qm("--set", "nokey"), "nokey"),
        # 02
        ("02", "bad --ks", mk("--ks", "0"), "ks"),
        ("02", "bad --stride", mk("--stride", "-1"), "stride"),
        ("02", "bad --fractions", mk("--fractions", "0.5", "0.5", "0.5"), "fractions"),
        ("02", "NaN --fractions", mk("--fractions", "nan", "0.5", "0.5"), "fractions"),
        ("02", "missing md-root", ["--md-root", str(b / "nope"), "--out-root", str(o / "bad02"), "--splits-dir", str(o / "bad02s")], "nope"),
        ("02", "truncated trajectory", ["--md-root", str(b / "md_trunc"), "--out-root", str(o / "bad02"), "--splits-dir", str(o / "bad02s"), "--ks", "4", "--split", "time"], "replica_1.npz"),
        ("02", "unwritable out", ["--md-root", str(w.md), "--out-root", blk, "--splits-dir", str(o / "bad02s"), "--ks", "4"], "afile"),
        ("02", "unwritable splits", ["--md-root", str(w.md), "--out-root", str(o / "bad02"), "--splits-dir", blk, "--ks", "4"], "afile"),
        # 04
        ("04", "bad config key", tr("--set", "bogus_key=1"), "bogus_key"),
        ("04", "bad value (negative)", tr("--set", "lr=-1"), "lr"),
        ("04", "bad value (NaN)", tr("--set", "lr=.nan"), "lr"),
        ("04", "bad value (type)", tr("--set", "batch_size=abc"), "batch_size"),
        ("04", "bad model value", tr("--model-set", "hidden=-4"), "hidden"),
        ("04", "bad --max-steps", tr("--max-steps", "-5"), "max"),
        ("04", "missing dataset", tr(ds=str(b / "nope.npz")), "nope.npz"),
        ("04", "truncated dataset", tr(ds=str(b / "trunc_ds.npz")), "trunc_ds.npz"),
        ("04", "not-an-NPZ dataset", tr(ds=str(b / "notnpz.npz")), "notnpz.npz"),
        ("04", "truncated split JSON", tr(spl=[str(b / "trunc.json"), spl[1]]), "trunc.json"),
        ("04", "wrong split JSON", tr(spl=[str(b / "wrong.json"), spl[1]]), "wrong.json"),
        ("04", "train split == val split", tr(spl=[spl[0], spl[0]]), "train.json"),
        ("04", "truncated --pretrained", tr("--pretrained", str(b / "trunc.pt")), "trunc.pt"),
        ("04", "unwritable out", ["--dataset", ds, "--splits", *spl, "--out", blk, "--max-steps", "2", *TRAIN_ARGS], "afile"),
        ("04", "duplicate YAML key", ["--dataset", ds, "--splits", *spl, "--out", str(o / "bad04"), "--overwrite",
                                      "--model-config", "configs/model_quick.yaml", "--train-config", str(b / "dupkey.yaml")], "temperature_K"),
        ("04", "--set garbage", tr("--set", "lr"), "lr"),
        # 06
        ("06", "bad config key", hy("--set", "bogus_key=1"), "bogus_key"),
        ("06", "bad value (inf)", hy("--set", "delta_scale=.inf"), "delta_scale"),
        ("06", "bad value (negative)", hy("--delta-scale", "-1"), "delta"),
        ("06", "bad value (type)", hy("--set", "max_attempts=abc"), "max_attempts"),
        ("06", "bad --time-ps", hy("--time-ps", "-2"), "time"),
        ("06", "wrong --k", hy("--k", "8"), "k"),
        ("06", "missing checkpoint", hyb_args(w, o / "bad06" / "h.npz", "--overwrite", "--checkpoint", str(b / "nope.pt")), "nope.pt"),
        ("06", "truncated checkpoint", hyb_args(w, o / "bad06" / "h.npz", "--overwrite", "--checkpoint", str(b / "trunc.pt")), "trunc.pt"),
        ("06", "truncated --start-from", hy("--start-from", str(b / "trunc.npz")), "trunc.npz"),
        ("06", "not-an-NPZ --start-from", hy("--start-from", str(b / "notnpz.npz")), "notnpz.npz"),
        ("06", "truncated system.xml", hy("--molecule", str(b / "water_xml")), "system.xml"),
        ("06", "unwritable out", hyb_args(w, w.blocked / "h.npz"), "afile"),
        ("06", "duplicate YAML key", hy("--hybrid-config", str(b / "dupkey.yaml")), "temperature_K"),
        ("06", "--set garbage", hy("--set", "delta_scale"), "delta_scale"),
        # 06b
        ("06b", "bad config key", qh("--set", "bogus_key=1"), "bogus_key"),
        ("06b", "bad QM value (NaN)", qh("--qm-set", "temperature_K=.nan"), "temperature_K"),
        ("06b", "bad QM value (negative)", qh("--qm-set", "dt_fs=-0.25"), "dt_fs"),
        ("06b", "bad value (type)", qh("--set", "max_attempts=x"), "max_attempts"),
        ("06b", "MM checkpoint for QM", qhyb_args(w, o / "bad06b" / "h.npz", "--overwrite", "--checkpoint", ck), "best.pt"),
        ("06b", "truncated checkpoint", qhyb_args(w, o / "bad06b" / "h.npz", "--overwrite", "--checkpoint", str(b / "trunc.pt")), "trunc.pt"),
        ("06b", "missing --start-from", qh("--start-from", str(b / "nope.npz")), "nope.npz"),
        ("06b", "truncated --start-from", qh("--start-from", str(b / "qtrunc.npz")), "qtrunc.npz"),
        ("06b", "unwritable out", qhyb_args(w, w.blocked / "h.npz"), "afile"),
        ("06b", "duplicate YAML key", qh("--qm-config", str(b / "dupkey.yaml")), "temperature_K"),
        ("06b", "--qm-set garbage", qh("--qm-set", "temperature_K"), "temperature_K"),
        # 05
        ("05", "missing baseline", ["--baseline", str(b / "nope"), "--hybrid-runs", str(w.hyb), "--out-dir", str(o / "bad05")], "nope"),
        ("05", "truncated hybrid NPZ", ev("--hybrid-runs", str(b / "hyb_trunc")), "k4.npz"),
        ("05", "truncated baseline NPZ", ev("--baseline", str(b / "md_trunc")), "replica_1.npz"),
        ("05", "truncated checkpoint", ev("--checkpoint", str(b / "trunc.pt"), "--dataset", ds), "trunc.pt"),
        ("05", "truncated dataset", ev("--checkpoint", ck, "--dataset", str(b / "trunc_ds.npz")), "trunc_ds.npz"),
        ("05", "truncated test split", ev("--checkpoint", ck, "--dataset", ds, "--test-split", str(b / "trunc.json")), "trunc.json"),
        ("05", "YAML as dataset", ev("--checkpoint", ck, "--dataset", str(b / "badkey.yaml")), "badkey.yaml"),
        ("05", "unwritable out", ["--baseline", str(w.md), "--hybrid-runs", str(w.hyb), "--out-dir", blk, "--no-export"], "afile"),
        # 05b
        ("05b", "bad QM config key", qe("--qm-config", str(b / "badkey.yaml")), "bogus_key"),
        ("05b", "duplicate YAML key", qe("--qm-config", str(b / "dupkey.yaml")), "temperature_K"),
        ("05b", "bad --plain-steps", ["--baseline", str(w.qmd), "--hybrid-runs", str(w.qhyb), "--out-dir", str(o / "bad05b"), "--plain-steps", "-1"], "plain"),
        ("05b", "bad --plain-dts", ["--baseline", str(w.qmd), "--hybrid-runs", str(w.qhyb), "--out-dir", str(o / "bad05b"), "--plain-dts", "nan"], "plain"),
        ("05b", "missing baseline", qe("--baseline", str(b / "nope")), "nope"),
        ("05b", "truncated baseline NPZ", qe("--baseline", str(b / "qmd_trunc")), "replica_1.npz"),
        ("05b", "unwritable out", ["--baseline", str(w.qmd), "--hybrid-runs", str(w.qhyb), "--out-dir", blk, "--no-timing"], "afile"),
    ]
    if quick:  # a representative subset: config key, value, file, output of every stage
        keep = {"bad config key", "bad value (NaN)", "bad value (negative)", "truncated checkpoint", "truncated dataset",
                "truncated trajectory", "truncated split JSON", "unwritable out", "duplicate YAML key", "missing .smi",
                "truncated hybrid NPZ", "truncated baseline NPZ", "--set garbage", "bad QM value (NaN)", "bad --ks",
                "truncated system.xml", "empty .smi", "bad SMILES line"}
        cases = [c for c in cases if c[1] in keep]
    return cases


def try_bad(case) -> None:
    stage, what, argv, needle = case
    r = run(stage, argv, timeout=300)
    errs = error_lines(r.stderr)
    tb = "Traceback" in r.stderr
    named = bool(errs) and needle.lower() in errs[0].lower()
    ok = r.returncode != 0 and not tb and len(errs) == 1 and named
    why = ("" if ok else " <- " + ", ".join(x for x, bad in (("exit 0", r.returncode == 0), ("traceback", tb),
                                                                  (f"{len(errs)} error lines", len(errs) != 1),
                                                                  (f"does not name {needle!r}", errs and not named)) if bad))
    msg = errs[0] if errs else last_line(r)
    t = TALLY[stage]
    with LOCK:
        t.bad += 1
        t.bad_clean += ok
        if not ok:
            t.failures.append(f"bad input {what}: rc={r.returncode} {msg[:200]}{why}")
    say(f"  {'clean' if ok else 'NOT  '} {stage:3s} {what:26s} rc={r.returncode} {msg[:150]}{why}")


# ---------------------------------------------------------------------------- comparisons

def npz_diff(a: Path, b: Path, atol: float = 0.0) -> str | None:
    """None when the two trajectory files hold the same arrays (bitwise, or within ``atol``
    on positions for QM) and the same metadata; else what differs."""
    import numpy as np

    try:
        za, zb = np.load(a), np.load(b)
    except Exception as e:  # noqa: BLE001 - a probe reports, it does not crash
        return f"unreadable: {e}"
    with za, zb:
        if set(za.files) != set(zb.files):
            return f"keys differ: {sorted(set(za.files) ^ set(zb.files))}"
        for k in za.files:
            x, y = za[k], zb[k]
            if k == "metadata":
                ma, mb = json.loads(str(x)), json.loads(str(y))
                if ma != mb:
                    diff = sorted(kk for kk in set(ma) | set(mb) if ma.get(kk) != mb.get(kk))
                    return f"metadata differs: {diff[:5]}"
                continue
            if x.shape != y.shape:
                return f"{k}: shape {x.shape} vs {y.shape}"
            if atol and k == "positions":
                d = float(np.max(np.abs(x - y))) if x.size else 0.0
                if d > atol:
                    return f"positions differ by {d:.2e} nm > {atol:g}"
            elif atol and x.dtype.kind == "f":
                continue  # QM: velocities, energies, forces follow positions within the SCF tolerance
            elif not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                d = float(np.max(np.abs(x.astype(float) - y.astype(float)))) if x.dtype.kind in "fi" else "?"
                return f"{k} differs (max {d})"
    return None


def tree_diff(ref: Path, got: Path, atol: float = 0.0, pattern: str = "*.npz") -> str | None:
    """Compare every published NPZ of two output folders; also report leftovers in ``got``."""
    ra = sorted(p.relative_to(ref) for p in ref.rglob(pattern) if not _leftover(p))
    ga = sorted(p.relative_to(got) for p in got.rglob(pattern) if not _leftover(p))
    if ra != ga:
        return f"files differ: {sorted(set(map(str, ra)) ^ set(map(str, ga)))}"
    for rel in ra:
        d = npz_diff(ref / rel, got / rel, atol)
        if d:
            return f"{rel}: {d}"
    left = leftovers(got)
    if left:
        return f"leftovers: {left[:3]}"
    return None


def _leftover(p: Path) -> bool:
    return (p.name.startswith(".") or p.name.endswith((".lock", ".hybrid_ckpt.npz")) or
            any(part.endswith(".parts") for part in p.parts))


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if _leftover(p) and
                  not any(q.endswith(".parts") for q in p.relative_to(folder).parts[:-1]))


# ----------------------------------------------------------------------------- resumes

def record_resume(stage: str, what: str, ok: bool, refused: bool, detail: str) -> None:
    t = TALLY[stage]
    with LOCK:
        t.resumes += 1
        t.exact += ok and not refused
        t.refused += ok and refused
        if not ok:
            t.failures.append(f"resume {what}: {detail}")
    tag = ("refused" if refused else "exact") if ok else "FAIL"
    say(f"  {tag:7s} {stage:3s} {what:44s} {detail[:160]}")


def expect_refusal(stage: str, what: str, argv: list[str], needle: str) -> bool:
    r = run(stage, argv)
    errs = error_lines(r.stderr)
    ok = r.returncode != 0 and "Traceback" not in r.stderr and len(errs) == 1 and needle.lower() in errs[0].lower()
    record_resume(stage, what, ok, True, (errs[0] if errs else f"rc={r.returncode} {last_line(r)}")
                  + ("" if ok else f" <- expected a one-line refusal naming {needle!r}"))
    return ok


def killed(stage: str, argv: list[str], kill: str) -> str | None:
    r = run(stage, argv, kill=kill)
    if r.returncode != -signal.SIGKILL:
        return f"the injected kill {kill} did not happen (rc={r.returncode}: {last_line(r)[:120]})"
    return None


def finish(stage: str, argv: list[str]) -> str | None:
    r = run(stage, argv)
    if r.returncode != 0:
        return f"the rerun failed: rc={r.returncode} {last_line(r)[:160]}"
    return None


def wall_clock_kill(stage: str, argv: list[str], watch: Path, pattern: str) -> str | None:
    """Start the stage, SIGKILL it from outside once ``watch`` holds a file matching ``pattern``."""
    p = run(stage, argv, popen=True)
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 300:
        if watch.exists() and any(watch.rglob(pattern)):
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    p.wait()
    p.communicate()
    if p.returncode != -signal.SIGKILL:
        return f"finished before the kill (rc={p.returncode}); the run is too short to interrupt"
    return None


def resume_suite(stage: str, w: Work, argv_for, out_of, ref_name: str, modes: list[str], atol: float,
                 changes: list[tuple[str, list[str], str]], wall: tuple[Path, str] | None, writers: int) -> None:
    """The interrupt/resume trials of one chunked stage. ``argv_for(folder)`` builds the command
    line for an output folder, ``out_of(folder)`` the folder to compare."""
    ref = w.fresh(f"{ref_name}_ref")
    err = finish(stage, argv_for(ref))
    if err:
        record_resume(stage, "uninterrupted reference", False, False, err)
        return
    for mode in modes:
        d = w.fresh(f"{ref_name}_{mode.replace(':', '')}")
        err = killed(stage, argv_for(d), mode) or finish(stage, argv_for(d)) or tree_diff(out_of(ref), out_of(d), atol)
        record_resume(stage, f"kill {mode} + rerun", err is None, False, err or ("same frames, positions within "
                      f"{atol:g} nm" if atol else "bitwise identical, no leftovers"))
    if changes:
        d = w.fresh(f"{ref_name}_changed")
        err = killed(stage, argv_for(d), modes[0])
        if err:
            record_resume(stage, "kill before a changed-settings rerun", False, False, err)
        else:
            for what, extra, needle in changes:
                expect_refusal(stage, f"resume with {what}", argv_for(d) + extra, needle)
            err = finish(stage, argv_for(d)) or tree_diff(out_of(ref), out_of(d), atol)
            record_resume(stage, "original settings after the refusals", err is None, False,
                          err or "the partial run survived the refused reruns; result identical")
    if wall:
        d = w.fresh(f"{ref_name}_wall")
        watch, pattern = wall
        err = wall_clock_kill(stage, argv_for(d), d / watch, pattern) or finish(stage, argv_for(d)) or \
            tree_diff(out_of(ref), out_of(d), atol)
        record_resume(stage, "SIGKILL from outside once a chunk exists", err is None, False,
                      err or "identical after the rerun")
    for trial in range(writers):
        d = w.fresh(f"{ref_name}_two{trial}")
        procs = [run(stage, argv_for(d), popen=True) for _ in range(2)]
        outs = [(p.wait(), p.communicate()[1]) for p in procs]
        rcs = [rc for rc, _ in outs]
        refused = [e for rc, e in outs if rc != 0]
        clean_refusal = all("being written" in e and "Traceback" not in e for e in refused)
        err = None
        if 0 not in rcs:
            err = f"neither writer finished: {[last_line(subprocess.CompletedProcess([], rc, '', e)) for rc, e in outs]}"
        elif not clean_refusal:
            err = "a writer failed without a clean 'being written' refusal: " + \
                  last_line(subprocess.CompletedProcess([], 1, "", refused[0]))[:160]
        else:  # the writer that was not refused did the whole run
            err = tree_diff(out_of(ref), out_of(d), atol)
        t = TALLY[stage]
        with LOCK:
            t.writers += 1
            t.writers_ok += err is None
            if err:
                t.failures.append(f"two writers: {err}")
        say(f"  {'ok' if err is None else 'FAIL':7s} {stage:3s} two writers at once (trial {trial + 1})"
            f"{'':15s} rc={rcs} {err or 'published file identical to the uninterrupted run'}")


def resume_01(w: Work, quick: bool) -> None:
    argv = lambda d: ["--molecule", str(w.mol), "--out", str(d), "--time-ps", "0.4", "--replicas", "2",
                      "--set", "chunk_frames=40", "--nve-windows", "1", *MD_ARGS]
    # 200 frames/replica in 5 chunks; the NVE window (50 frames) is 2 more chunks: commits 1..12
    modes = ["commit:3", "assemble:2", "precommit:8"] if quick else \
        ["commit:3", "precommit:3", "assemble:2", "publish:1", "commit:6", "commit:8", "assemble:9", "publish:3"]
    changes = [("another --seed", ["--seed", "5"], "seed"), ("another temperature_K", ["--set", "temperature_K=310"],
               "temperature_K")]
    if not quick:
        changes.append(("another friction", ["--set", "friction_per_ps=2"], "friction_per_ps"))
    resume_suite("01", w, argv, lambda d: d, "r01", modes, 0.0, changes, None, 1 if quick else 3)
    if not quick:  # a longer run, killed from outside
        argvl = lambda d: ["--molecule", str(w.mol), "--out", str(d), "--time-ps", "20", "--replicas", "1",
                           "--set", "chunk_frames=500", "--nve-windows", "0", *MD_ARGS]
        resume_suite("01", w, argvl, lambda d: d, "r01long", [], 0.0, [], (Path("water"), "chunk_*.npz"), 0)


def resume_01b(w: Work, quick: bool) -> None:
    argv = lambda d: ["--molecule", str(w.mol), "--out", str(d), "--time-ps", "0.02", "--replicas", "1",
                      "--set", "chunk_frames=20", *QM_ARGS]  # 80 frames in 4 chunks
    modes = ["commit:2"] if quick else ["commit:2", "precommit:3", "assemble:3", "publish:1"]
    changes = [("another --seed", ["--seed", "5"], "seed")] + \
        ([] if quick else [("another temperature_K", ["--set", "temperature_K=310"], "temperature_K")])
    resume_suite("01b", w, argv, lambda d: d, "r01b", modes, 1e-6, changes,
                 None if quick else (Path("water"), "chunk_*.npz"), 0 if quick else 1)


def resume_06(w: Work, quick: bool) -> None:
    other = perturbed_checkpoint(w)
    argv = lambda d: hyb_args(w, d / "h.npz")  # 25 cycles -> 25 frames in 5 chunks
    modes = ["commit:2", "assemble:2"] if quick else ["commit:2", "commit:4", "precommit:3", "assemble:2", "publish:1"]
    changes = [("another --checkpoint", ["--checkpoint", str(other)], "checkpoint"),
               ("another --seed", ["--seed", "5"], "seed")]
    if not quick:
        changes += [("another --delta-scale", ["--delta-scale", "0.5"], "delta_scale")]
    resume_suite("06", w, argv, lambda d: d, "r06", modes, 0.0, changes, None, 1 if quick else 2)
    if not quick:  # two replicas in one run (two writers per chunk)
        argv2 = lambda d: hyb_args(w, d / "h.npz", "--replicas", "2")
        resume_suite("06", w, argv2, lambda d: d, "r06rep", ["commit:3", "assemble:3"], 0.0, [], None, 0)


def resume_06b(w: Work, quick: bool) -> None:
    argv = lambda d: qhyb_args(w, d / "h.npz")  # 8 cycles in 4 chunks
    modes = ["commit:2"] if quick else ["commit:2", "precommit:2", "assemble:2"]
    changes = [("another --seed", ["--seed", "5"], "seed")] + \
        ([] if quick else [("another temperature_K", ["--qm-set", "temperature_K=310"], "temperature_K")])
    # QM: the engine's SCF guess is not checkpointed, so positions agree to the SCF tolerance
    resume_suite("06b", w, argv, lambda d: d, "r06b", modes, 1e-6, changes, None, 0 if quick else 1)


def resume_04(w: Work, quick: bool) -> None:
    """Training: kill after the 2nd last.pt of 4 and --resume; compare the weights bitwise."""
    argv = lambda d, *a: ["--dataset", str(w.ds / "dataset_k4.npz"), "--splits", str(w.splits / "train.json"),
                          str(w.splits / "val.json"), "--out", str(d), "--max-steps", "16", *TRAIN_ARGS,
                          "--set", "eval_every=4", *a]
    ref, d = w.fresh("r04_ref"), w.fresh("r04_kill")
    err = finish("04", argv(ref)) or killed("04", argv(d), "ckpt:2")
    if err:
        record_resume("04", "kill at ckpt 2 of 4", False, False, err)
        return
    expect_refusal("04", "rerun without --resume or --overwrite", argv(d), "--resume")
    if not quick:
        expect_refusal("04", "--resume with another --seed", argv(d, "--resume", "--seed", "9"), "seed")
        expect_refusal("04", "--resume with another lr", argv(d, "--resume", "--set", "lr=0.01"), "lr")
    err = finish("04", argv(d, "--resume")) or ckpt_diff(ref / "last.pt", d / "last.pt") or \
        ckpt_diff(ref / "best.pt", d / "best.pt") or csv_diff(ref / "metrics.csv", d / "metrics.csv")
    record_resume("04", "kill at ckpt 2 of 4 + --resume", err is None, False,
                  err or "last.pt / best.pt weights and metrics.csv losses bitwise identical")


def ckpt_diff(a: Path, b: Path) -> str | None:
    code = ("import sys, torch\nfrom mdkstep.model.checkpoint import read_checkpoint\n"
            "x, y = read_checkpoint(sys.argv[1]), read_checkpoint(sys.argv[2])\n"
            "bad = [k for k in x['model_state'] if not torch.equal(x['model_state'][k], y['model_state'][k])]\n"
            "bad += [k for k in ('step', 'epoch', 'best_val') if x.get(k) != y.get(k)]\n"
            "print(' '.join(bad))\n")
    r = subprocess.run([PY, "-c", code, str(a), str(b)], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot compare {a.name}: {last_line(r)}"
    return f"{a.name} differs in {r.stdout.split()[:4]}" if r.stdout.strip() else None


def csv_diff(a: Path, b: Path) -> str | None:
    import csv

    def rows(p: Path):
        with open(p) as fh:
            return [{k: v for k, v in r.items() if k not in ("samples_per_s",)} for r in csv.DictReader(fh)]
    ra, rb = rows(a), rows(b)
    if ra != rb:
        return f"metrics.csv differs ({len(ra)} vs {len(rb)} rows)"
    return None


def writers_02(w: Work, quick: bool) -> None:
    """Two 02 processes on one output folder at once: the published dataset must be whole."""
    argv = lambda d: ["--md-root", str(w.md), "--out-root", str(d / "ds"), "--splits-dir", str(d / "splits"),
                      "--ks", "4", "--split", "time"]
    ref = w.fresh("r02_ref")
    if finish("02", argv(ref)):
        return
    for trial in range(1 if quick else 2):
        d = w.fresh(f"r02_two{trial}")
        procs = [run("02", argv(d), popen=True) for _ in range(2)]
        outs = [(p.wait(), p.communicate()[1]) for p in procs]
        err = None
        if 0 not in [rc for rc, _ in outs]:
            err = "neither writer finished"
        elif any(rc != 0 and ("Traceback" in e or not error_lines(e)) for rc, e in outs):
            err = "a writer crashed: " + next(e for rc, e in outs if rc != 0).strip().splitlines()[-1][:150]
        else:
            err = ds_diff(ref / "ds" / "dataset_k4.npz", d / "ds" / "dataset_k4.npz") or \
                (None if leftovers(d) == [] else f"leftovers {leftovers(d)[:3]}")
            for s in ("train", "val", "test"):
                if not err and (ref / "splits" / f"{s}.json").read_text().replace(str(ref), "<out>") != \
                        (d / "splits" / f"{s}.json").read_text().replace(str(d), "<out>"):
                    err = f"{s}.json differs"
        t = TALLY["02"]
        with LOCK:
            t.writers += 1
            t.writers_ok += err is None
            if err:
                t.failures.append(f"two writers: {err}")
        say(f"  {'ok' if err is None else 'FAIL':7s} 02  two writers at once (trial {trial + 1}){'':15s} "
            f"rc={[rc for rc, _ in outs]} {err or 'dataset and splits identical'}")


def ds_diff(a: Path, b: Path) -> str | None:
    import numpy as np

    with np.load(a) as x, np.load(b) as y:
        for k in x.files:
            if k not in y.files:
                return f"{b.name}: no {k}"
            if x[k].dtype.kind in "US" or k == "metadata":
                continue  # holds paths relative to the folder
            if not np.array_equal(x[k], y[k]):
                return f"{b.name}: {k} differs"
    return None


# ------------------------------------------------------------------------ readers and metadata

def readers(w: Work, quick: bool) -> None:
    """05 / 05b run on the real pipeline and on a tree full of leftovers (they must be ignored)."""
    trials = [("05", "05 on the pipeline", ["--baseline", str(w.md), "--hybrid-runs", str(w.hyb), "--out-dir",
                                             str(w.o / "eval"), "--raw-root", str(w.raw), "--checkpoint", str(w.ck),
                                             "--dataset", str(w.ds / "dataset_k4.npz"), "--test-split",
                                             str(w.splits / "test.json"), "--no-export"]),
              ("05", "05 ignores leftovers", ["--baseline", str(w.md), "--hybrid-runs", str(w.bad / "hyb_leftovers"),
                                               "--out-dir", str(w.o / "eval_left"), "--no-export"]),
              ("05b", "05b on the pipeline", ["--baseline", str(w.qmd), "--hybrid-runs", str(w.qhyb), "--out-dir",
                                               str(w.o / "qeval"), "--plain-steps", "20"])]
    for stage, what, argv in trials:
        r = run(stage, argv)
        ok = r.returncode == 0 and "Traceback" not in r.stderr
        out = Path(argv[argv.index("--out-dir") + 1])
        if ok and not (out / "metrics.json").is_file():
            ok = False
        t = TALLY[stage]
        with LOCK:
            t.published += 1
            t.published_ok += ok
            if not ok:
                t.failures.append(f"{what}: rc={r.returncode} {last_line(r)[:160]}")
        say(f"  {'ok' if ok else 'FAIL':7s} {stage:3s} {what:44s} {'metrics.json written' if ok else last_line(r)[:160]}")


def check_published(w: Work) -> None:
    """Every trajectory NPZ under the work folder: is it what its metadata says?"""
    import numpy as np

    stage_of = lambda m: "06b" if m.get("engine") != "openmm" and "hybrid" in json.dumps(m).lower() else \
        ("06" if "hybrid" in json.dumps(m).lower() else ("01" if m.get("engine") == "openmm" else "01b"))
    for p in sorted(w.root.rglob("*.npz")):
        if _leftover(p) or "bad" in p.relative_to(w.root).parts or p.name.startswith(("dataset_", "chunk_")):
            continue
        problems = []
        try:
            with np.load(p) as z:
                if "metadata" not in z.files or "positions" not in z.files:
                    continue
                m = json.loads(str(z["metadata"]))
                n = z["positions"].shape[0]
                t = z["time_ps"] if "time_ps" in z.files else None
                for k in ("positions", "velocities", "energies", "kinetic", "temperature", "time_ps", "forces"):
                    if k in z.files and z[k].shape[0] != n:
                        problems.append(f"{k} has {z[k].shape[0]} frames, positions {n}")
                    if k in z.files and z[k].dtype.kind == "f" and not np.all(np.isfinite(z[k])):
                        problems.append(f"non-finite {k}")
                if t is not None and n > 1:
                    dt = np.diff(t)
                    stride = m.get("dt_fs", 0) * 1e-3 * m.get("save_interval", 1) * (m.get("k") or m.get("hybrid_k") or 1)
                    if not np.allclose(dt, dt[0], rtol=1e-6, atol=1e-9):
                        problems.append("time stamps not evenly spaced")
                    elif stride and not np.isclose(dt[0], stride, rtol=1e-6) and \
                            not np.isclose(dt[0] / (m.get("dt_fs", 1) * 1e-3), round(dt[0] / (m.get("dt_fs", 1) * 1e-3))):
                        problems.append(f"frame spacing {dt[0]} ps is not a multiple of dt {m.get('dt_fs')} fs")
                cfg = m.get("config") or {}
                if cfg and "temperature_K" in cfg and m.get("temperature_K") is not None and \
                        float(cfg["temperature_K"]) != float(m["temperature_K"]):
                    problems.append(f"temperature_K {m['temperature_K']} vs config {cfg['temperature_K']}")
                if "n_frames" in m and m["n_frames"] != n:
                    problems.append(f"metadata n_frames {m['n_frames']} vs {n} frames")
                if cfg.get("production_ps") and m.get("ensemble") != "nve" and m.get("dt_fs"):
                    want = round(cfg["production_ps"] / (m["dt_fs"] * 1e-3) / (cfg.get("save_interval") or 1))
                    if want != n:
                        problems.append(f"{n} frames, production_ps {cfg['production_ps']} says {want}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"unreadable: {e}")
        stage = stage_of(m) if not problems or "m" in dir() else "01"
        tl = TALLY.get(stage, TALLY["01"])
        with LOCK:
            tl.published += 1
            tl.published_ok += not problems
            if problems:
                tl.failures.append(f"published {p.relative_to(w.root)}: {'; '.join(problems)}")
        if problems or VERBOSE:
            say(f"  {'ok' if not problems else 'FAIL':7s} {stage:3s} {str(p.relative_to(w.root)):44s} "
                f"{'; '.join(problems) or 'matches its metadata'}")


# ---------------------------------------------------------------------------------- main

def main() -> int:
    global VERBOSE
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--work", type=Path, default=Path("/tmp/probe13"), help="work folder (default /tmp/probe13)")
    p.add_argument("--quick", action="store_true", help="a representative subset (~3 min on 2 busy cores)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES, help="only these stages")
    p.add_argument("--only", choices=["bad", "resume", "published"], nargs="+",
                   default=["bad", "resume", "published"], help="only these kinds of trial")
    p.add_argument("--jobs", type=int, default=2, help="bad-input trials run in parallel (default 2)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the tiny pipeline from scratch")
    p.add_argument("--verbose", action="store_true", help="print every command")
    args = p.parse_args()
    VERBOSE = args.verbose
    w = Work(args.work.resolve())
    if args.rebuild:
        shutil.rmtree(w.root, ignore_errors=True)
    t0 = time.perf_counter()
    say(f"probe: pipeline in {w.root}")
    build(w)
    w.o.mkdir(exist_ok=True)
    if "bad" in args.only:
        say("bad inputs (clean = non-zero exit, no traceback, one 'error:' line naming the file, line or key):")
        cases = [c for c in bad_cases(w, args.quick) if c[0] in args.stages]
        with ThreadPoolExecutor(max(1, args.jobs)) as ex:
            list(ex.map(try_bad, cases))
    if "resume" in args.only:
        say("interrupt and resume (exact = bitwise equal to an uninterrupted run; refused = one line naming the change):")
        for stage, fn in (("01", resume_01), ("01b", resume_01b), ("04", resume_04), ("06", resume_06),
                          ("06b", resume_06b), ("02", writers_02)):
            if stage in args.stages:
                fn(w, args.quick)
    if "published" in args.only:
        say("published files (readers on real and leftover-strewn trees; every NPZ vs its metadata):")
        if any(s in args.stages for s in ("05", "05b")):
            readers(w, args.quick)
        check_published(w)
    say("")
    say(f"{'stage':6s} {'bad inputs clean':>17s} {'resumes exact+refused':>22s} {'two writers ok':>15s} "
        f"{'published ok':>13s}")
    tot = Tally()
    for s in STAGES:
        t = TALLY[s]
        for f in ("bad", "bad_clean", "resumes", "exact", "refused", "writers", "writers_ok", "published", "published_ok"):
            setattr(tot, f, getattr(tot, f) + getattr(t, f))
        tot.failures += [f"{s}: {x}" for x in t.failures]
        say(f"{s:6s} {t.bad_clean:>8d}/{t.bad:<8d} {t.exact:>6d}+{t.refused:<3d}of {t.resumes:<9d} "
            f"{t.writers_ok:>7d}/{t.writers:<7d} {t.published_ok:>6d}/{t.published:<6d}")
    say(f"{'total':6s} {tot.bad_clean:>8d}/{tot.bad:<8d} {tot.exact:>6d}+{tot.refused:<3d}of {tot.resumes:<9d} "
        f"{tot.writers_ok:>7d}/{tot.writers:<7d} {tot.published_ok:>6d}/{tot.published:<6d}")
    say(f"bad inputs tried {tot.bad}, clean {tot.bad_clean}; resumes tried {tot.resumes}, bitwise exact "
        f"{tot.exact}, refused with a reason {tot.refused}; two-writer trials {tot.writers}, ok {tot.writers_ok}; "
        f"published checks {tot.published}, as their metadata says {tot.published_ok}  "
        f"({time.perf_counter() - t0:.0f} s)")
    if tot.failures:
        say(f"{len(tot.failures)} failure(s):")
        for f in tot.failures:
            say(f"  - {f}")
    return 1 if tot.failures else 0


if __name__ == "__main__":
    sys.exit(main())
