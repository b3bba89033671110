"""Issue #26 item 2: per-call cost of GFN2-xTB restarts on aspirin: positions 1 fs apart (plain 1 fs MD) vs 4 fs apart (the
hybrid's k = 16 calls), interleaved, each sequence restarting from its own previous result.

Run: PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python studies/xtb_restart/xtb_restart_cost.py (~1-2 min).
Results: docs/results/xtb-restart-cost.md.
"""
import time

import numpy as np

from mdkstep.engines.xtb_engine import XTBEngine
from mdkstep.molecule.system import from_smiles
from mdkstep.dynamics import velocity_verlet_step
s = from_smiles("CC(=O)Oc1ccccc1C(=O)O", "aspirin")
eng = XTBEngine(s.atomic_numbers, s.masses)
rng = np.random.default_rng(0)
x = s.positions_nm.copy(); m = s.masses
v = rng.normal(size=x.shape) * np.sqrt(2.494 / m)[:, None] / 1.0  # ~300 K in nm/ps (kT/m)
v -= (m[:, None] * v).sum(0) / m.sum()
f = eng._compute(x)[1]
traj = [x.copy()]
dt = 0.00025
for i in range(16 * 160):  # 0.64 ps at 0.25 fs
    x, v, f, u = velocity_verlet_step(eng, x, v, f, dt, m)
    traj.append(x.copy())
traj = np.array(traj)
seqs = {"1fs": traj[::4], "4fs": traj[::16]}
engs = {k: XTBEngine(s.atomic_numbers, s.masses) for k in seqs}
times = {k: [] for k in seqs}
n = len(seqs["4fs"])
for i in range(n):
    for k in ("1fs", "4fs"):
        t0 = time.perf_counter(); engs[k]._compute(seqs[k][i]); times[k].append(time.perf_counter() - t0)
for k in times:
    t = np.array(times[k][5:]) * 1000
    print(k, "ms/call median %.2f mean %.2f min %.2f" % (np.median(t), t.mean(), t.min()))
