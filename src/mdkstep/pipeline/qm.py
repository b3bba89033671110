"""QM part of the benchmark (GFN2-xTB via tblite, or whatever ``qm_config`` names): plain
Langevin MD at the reference step and at larger steps, and the hybrid on the same engine.

Layout under ``<out_dir>/qm``: runs/<mol>/*.npz (+ topology.json from RDKit's bonds),
models/k<K>/. Every atom moves (no constraints), as in the stage-01b baselines.
Units: nm, ps, kJ/mol, amu, K; dt in fs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mdkstep.baselines.ase_md import QMConfig, QMRunSpec, run_qm_trajectory
from mdkstep.baselines.plain import Segment, engine_vv_segment
from mdkstep.baselines.pool import limit_threads
from mdkstep.config import load_config
from mdkstep.engines.factory import make_engine
from mdkstep.molecule.system import from_smi_file
from mdkstep.pipeline.config import BenchConfig
from mdkstep.pipeline.mode import Method, check_cached_run
from mdkstep.utils import LOG, atomic_write_json


class QMMode:
    """QM side of the benchmark (see :class:`mdkstep.bench.core.Mode`)."""

    name = "qm"

    def __init__(self, cfg: BenchConfig, out_dir: Path):

        self.cfg = cfg
        self.root = out_dir / "qm"
        self.qcfg: QMConfig = load_config(QMConfig, cfg.qm_config, cfg.qm_overrides)
        self._systems: dict[str, Any] = {}
        limit_threads(cfg.threads)

    # -- molecules -------------------------------------------------------------------
    def molecules(self) -> list[str]:
        """Every molecule of ``qm_smiles`` (RDKit conformer); writes runs/<mol>/topology.json."""

        systems = from_smi_file(self.cfg.qm_smiles, self.cfg.seed)
        for sysm in systems:
            self._systems[sysm.name] = sysm
            topo_path = self.root / "runs" / sysm.name / "topology.json"
            if not topo_path.is_file():
                atomic_write_json(topo_path, {"name": sysm.name, "smiles": sysm.smiles,
                                              "atomic_numbers": sysm.atomic_numbers.tolist(), **sysm.topology()})
        return [s.name for s in systems]

    def topology(self, mol: str) -> dict[str, Any]:
        return json.loads((self.root / "runs" / mol / "topology.json").read_text())

    def thermostat(self) -> tuple[float, float]:
        return self.qcfg.temperature_K, self.qcfg.friction_per_ps

    # -- methods ---------------------------------------------------------------------
    def reference(self) -> Method:
        dt = self.cfg.qm_ref_dt_fs
        return Method(f"plain_{dt:g}fs", "plain", dt, reference=True,
                      note=f"{self.qcfg.method} Langevin (ASE), reference")

    def plain_methods(self, mol: str, x0: np.ndarray, v0: np.ndarray) -> list[Method]:
        return [self.reference()] + [Method(f"plain_{dt:g}fs", "plain", dt, note=f"{self.qcfg.method} Langevin (ASE)")
                                     for dt in self.cfg.qm_plain_dts_fs]

    def qm_config(self, dt_fs: float, time_ps: float):
        from dataclasses import replace

        q = replace(self.qcfg, dt_fs=dt_fs, production_ps=time_ps, save_interval=1)
        q.validate()
        return q

    # -- runs ------------------------------------------------------------------------
    def run_plain(self, mol: str, method: Method, seed: int, out: Path, time_ps: float, training: bool = False) -> Path:
        """Plain QM trajectory (stage-01b runner: minimise, equilibrate, chunked, resumable)."""

        if out.is_file():
            check_cached_run(out, seed, method.dt_fs, time_ps)
            return out
        res = run_qm_trajectory(self._systems[mol], self.qm_config(method.dt_fs, time_ps),
                                QMRunSpec(out, seed, label=out.stem), progress=True)
        if res.get("temperature_warning"):
            LOG.warning(res["temperature_warning"])
        atomic_write_json(out.with_suffix(".stats.json"), res)
        return out

    def plain_timer(self, mol: str, method: Method, x0: np.ndarray, v0: np.ndarray) -> Callable[[], Segment]:
        """Velocity Verlet through the engine (the force calls are what costs; ASE's Langevin
        adds ~nothing per step), continuing from where the last call stopped."""
        engine = self.engine(mol)
        n = max(1, int(round(self.cfg.qm_timing_ps * 1000.0 / method.dt_fs)))
        state: dict[str, Any] = {"x": np.array(x0), "v": np.array(v0), "f": None}

        def segment() -> Segment:
            seg, state["x"], state["v"], state["f"] = engine_vv_segment(engine, state["x"], state["v"], method.dt_fs,
                                                                        n, f0=state["f"])
            return seg

        return segment

    def plain_nve(self, mol: str, method: Method, x0: np.ndarray, v0: np.ndarray) -> Segment:
        n = max(3, int(round(self.cfg.qm_nve_ps * 1000.0 / method.dt_fs)))
        return engine_vv_segment(self.engine(mol), x0, v0, method.dt_fs, n)[0]

    def engine(self, mol: str):

        return make_engine(self.qcfg.engine, self._systems[mol], self.qcfg)

    def run_meta(self, mol: str) -> dict[str, Any]:
        s = self._systems[mol]
        return {"molecule": mol, "smiles": s.smiles, "engine": self.qcfg.engine, "method": self.qcfg.method,
                "charge": s.charge}
