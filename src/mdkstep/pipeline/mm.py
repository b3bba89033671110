"""MM part of the benchmark (OpenMM + OpenFF): plain Langevin at the reference step, with
HMR at a larger step, at the largest step a velocity-Verlet scan finds stable, and the hybrid.

Layout under ``<out_dir>/mm``: raw/<mol>/ (stage-00 folders), runs/<mol>/*.npz, models/k<K>/.
Units: nm, ps, kJ/mol, amu, K; dt in fs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mdkstep.baselines.openmm_md import MDConfig, RunSpec, build_system, run_trajectory
from mdkstep.baselines.plain import OpenMMRunner, Segment, stable_by_drift
from mdkstep.config import load_config
from mdkstep.engines.factory import make_engine
from mdkstep.molecule.prep import PrepConfig, prepare_from_smiles, read_smi_strict
from mdkstep.molecule.system import System, from_molecule_dir
from mdkstep.pipeline.config import BenchConfig
from mdkstep.pipeline.mode import Method, check_cached_run
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import LOG, atomic_write_json


class MMMode:
    """OpenMM side of the benchmark (see :class:`mdkstep.bench.core.Mode`)."""

    name = "mm"

    def __init__(self, cfg: BenchConfig, out_dir: Path):
        self.cfg = cfg
        self.root = out_dir / "mm"
        self.raw = self.root / "raw"
        self._mols: dict[str, System] = {}

    # -- molecules -------------------------------------------------------------------
    def molecules(self) -> list[str]:
        """Prepare (stage 00, skipped when present) every molecule of ``mm_smiles``."""

        entries = read_smi_strict(self.cfg.mm_smiles)
        prep = load_config(PrepConfig, self.cfg.mm_prep_config)
        for e in entries:
            folder = self.raw / e.name
            if not (folder / "topology.json").is_file():
                prepare_from_smiles(e, self.raw, prep)
            self._mols[e.name] = from_molecule_dir(folder)
        return [e.name for e in entries]

    def mol(self, name: str) -> System:
        return self._mols[name]

    def topology(self, mol: str) -> dict[str, Any]:
        return json.loads((self.raw / mol / "topology.json").read_text())

    def thermostat(self) -> tuple[float, float]:
        return self.cfg.mm_temperature_K, self.cfg.mm_friction_per_ps

    # -- methods ---------------------------------------------------------------------
    def reference(self) -> Method:
        dt = self.cfg.mm_ref_dt_fs
        return Method(f"plain_{dt:g}fs", "plain", dt, reference=True, note="Langevin BAOAB, HBonds (reference)")

    def plain_methods(self, mol: str, x0: np.ndarray, v0: np.ndarray) -> list[Method]:
        """Reference, HMR at ``mm_hmr_dt_fs``, and plain MD at the largest stable step of a
        velocity-Verlet scan (when larger than the reference step)."""
        c = self.cfg
        out = [self.reference(),
               Method(f"plain_{c.mm_hmr_dt_fs:g}fs_hmr", "plain", c.mm_hmr_dt_fs, hmr=True,
                      note=f"Langevin BAOAB, HBonds, H mass {c.mm_hmr_mass_amu:g} amu")]
        scan = self.verlet_scan(mol, x0, v0)
        dt_max = scan["largest_stable_dt_fs"]
        if dt_max is not None and dt_max > c.mm_ref_dt_fs:
            out.append(Method(f"plain_{dt_max:g}fs_maxstable", "plain", dt_max,
                              note="largest step whose NVE velocity Verlet (HBonds) stayed stable in the scan; "
                                   "run with the reference Langevin thermostat"))
        return out

    def md_config(self, dt_fs: float, hmr: bool, time_ps: float, save_forces: bool = False, friction: float | None = None):

        c = self.cfg
        return MDConfig(temperature_K=c.mm_temperature_K, dt_fs=dt_fs,
                        friction_per_ps=c.mm_friction_per_ps if friction is None else friction,
                        constraints="hbonds", hydrogen_mass_amu=c.mm_hmr_mass_amu if hmr else None,
                        equilibration_ps=c.mm_equil_ps, production_ps=time_ps, save_interval=1, chunk_frames=5000,
                        save_forces=save_forces, platform="auto", nve_windows=0)

    def system(self, mol: str, dt_fs: float, hmr: bool):

        return build_system(self.mol(mol), self.md_config(dt_fs, hmr, 1.0))

    def verlet_scan(self, mol: str, x0: np.ndarray, v0: np.ndarray) -> dict[str, Any]:
        """NVE velocity Verlet (HBonds, no HMR) at each step of ``mm_scan_dts_fs`` from (x0, v0);
        the largest step below the first unstable one (blow-up, or |drift|/atom above
        ``mm_scan_max_drift_per_atom``). Cached in runs/<mol>/verlet_scan.json."""
        path = self.root / "runs" / mol / "verlet_scan.json"
        if path.is_file():
            return json.loads(path.read_text())
        c = self.cfg
        rows, best = [], None
        for dt in sorted(c.mm_scan_dts_fs):
            runner = OpenMMRunner(self.system(mol, dt, False), x0, v0, dt, c.mm_temperature_K, 0.0, seed=c.seed)
            n = int(round(c.mm_scan_ps * 1000.0 / dt))
            seg = runner.run(n, record_every=max(1, int(round(10.0 / dt))))
            ok = stable_by_drift(seg, runner.n_atoms, c.mm_scan_max_drift_per_atom)
            rows.append({"dt_fs": dt, "stable": ok, "completed": seg.stable, **seg.drift(runner.n_atoms)})
            LOG.info("mm %s: Verlet scan %g fs: %s (drift %.3g kJ/mol/ps)", mol, dt, "stable" if ok else "UNSTABLE",
                     rows[-1]["nve_drift_kj_mol_ps"])
            if not ok:
                break
            best = dt
        res = {"largest_stable_dt_fs": best, "scan_ps": c.mm_scan_ps,
               "max_drift_per_atom_kj_mol_ps": c.mm_scan_max_drift_per_atom, "rows": rows}
        atomic_write_json(path, res)
        return res

    # -- runs ------------------------------------------------------------------------
    def run_plain(self, mol: str, method: Method, seed: int, out: Path, time_ps: float, training: bool = False) -> Path:
        """Plain NVT trajectory (stage-01 runner: equilibration, chunked, resumable); skipped when done.
        Writes <out>.stats.json with its force calls: OpenMM's production integrator steps
        (one force evaluation per step; ``force_calls_source: integrator_steps``)."""

        cfg = self.md_config(method.dt_fs, method.hmr, time_ps, save_forces=training)
        if out.is_file():
            check_cached_run(out, seed, method.dt_fs, time_ps)
        else:
            spec = RunSpec(out, seed, cfg.friction_per_ps, time_ps, cfg.equilibration_ps, label=out.stem)
            run_trajectory(self.mol(mol), cfg, spec)
        stats = out.with_suffix(".stats.json")
        if not stats.is_file():
            steps = load_trajectory(out).n_frames * cfg.save_interval  # every production step, over all sessions
            atomic_write_json(stats, {"force_calls": steps, "force_calls_source": "integrator_steps",
                                      "steps_this_session": steps,
                                      "force_calls_equilibration": int(round(cfg.equilibration_ps * 1000.0 / cfg.dt_fs))})
        topo = out.parent / "topology.json"
        if not topo.is_file():
            topo.write_text((self.raw / mol / "topology.json").read_text())
        return out

    def plain_timer(self, mol: str, method: Method, x0: np.ndarray, v0: np.ndarray) -> Callable[[], Segment]:
        c = self.cfg
        runner = OpenMMRunner(self.system(mol, method.dt_fs, method.hmr), x0, v0, method.dt_fs, c.mm_temperature_K,
                              c.mm_friction_per_ps, seed=c.seed)
        n = max(1, int(round(c.mm_timing_ps * 1000.0 / method.dt_fs)))
        return lambda: runner.run(n)

    def plain_nve(self, mol: str, method: Method, x0: np.ndarray, v0: np.ndarray) -> Segment:
        c = self.cfg
        runner = OpenMMRunner(self.system(mol, method.dt_fs, method.hmr), x0, v0, method.dt_fs, c.mm_temperature_K,
                              0.0, seed=c.seed)
        return runner.run(int(round(c.mm_nve_ps * 1000.0 / method.dt_fs)), record_every=max(1, int(round(10.0 / method.dt_fs))))

    def engine(self, mol: str):
        """OpenMM force engine with the reference system (HBonds, no HMR)."""

        return make_engine("openmm", self.mol(mol), self.md_config(self.cfg.mm_ref_dt_fs, False, 1.0))

    def run_meta(self, mol: str) -> dict[str, Any]:
        m = self.mol(mol)
        return {"molecule": mol, "smiles": m.smiles, "constraints": "hbonds", "forcefield": m.forcefield}
