"""The ASE face of the hybrid integrator: ``HybridMD`` runs learned k-step jumps on any ASE
``Atoms`` with any ASE calculator, the way ASE users run ``VelocityVerlet`` or ``Langevin``.

    from mdkstep.ase import HybridMD
    atoms.calc = TBLite(method="GFN2-xTB")
    dyn = HybridMD.from_checkpoint(atoms, "models/qm_k16.pt", temperature_K=300, friction=0.05 / units.fs,
                                   trajectory="md.traj", logfile="-")
    dyn.equilibrate(50)  # 50 cycles whose statistics are discarded
    dyn.run(1000)  # 1000 cycles of k base steps each; ASE observers (attach) see every cycle
    print(dyn.stats())

The bath is set as for ASE's own ``Langevin``: ``temperature_K``, ``friction`` (inverse ASE
time: ``2 / (1000 * units.fs)`` is 2 /ps) and ``thermostat`` ('langevin' | 'csvr' | 'none' = NVE).
Everything else comes from ``config`` (a :class:`HybridConfig` or a YAML path); by default the
same file as stages 06/06b: configs/hybrid.yaml for an MM (OpenMM) checkpoint,
configs/hybrid_qm.yaml for a QM one (friction 50 /ps) — so the ASE face and 06b agree.
Atoms without velocities get Maxwell-Boltzmann ones at ``temperature_K`` (seeded, no net
momentum). A calculator at another level of theory than the model's card (e.g. PySCF under a
GFN2-xTB model) runs, with a one-line warning: the jumps were learned on other forces.

One ``step()`` is one hybrid cycle (:class:`mdkstep.hybrid.HybridIntegrator`): it advances
k x dt (``corrector: verlet``: (k+1) x dt) and costs one force call ("kick") of the user's
calculator. ``dyn.dt`` is therefore the cycle length, so ``get_time()`` and ASE's MDLogger
report simulated time correctly. The calculator is wrapped in an engine that counts every
call (``dyn.engine.counters``); after each cycle the exact energy and forces at the new
positions are handed to ``atoms`` so observers that read them cost no extra call.
Units at this face are ASE's (Å, eV, ASE time); inside, the project's (nm, ps, kJ/mol).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from ase import units
from ase.md.md import MolecularDynamics
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from mdkstep.config import load_config
from mdkstep.engines.ase_engine import ASEEngine, EngineCalculator
from mdkstep.engines.units import ANGSTROM_TO_NM, ASE_VELOCITY_TO_NM_PS, EV_PER_ANGSTROM_TO_KJ_MOL_NM, EV_TO_KJ_MOL
from mdkstep.hybrid import HybridConfig, HybridIntegrator, Jumper
from mdkstep.hybrid.domain import domain_warning
from mdkstep.hybrid.integrator import HybridCounters
from mdkstep.model.checkpoint import check_compatible, model_from_checkpoint, read_card
from mdkstep.model.jumper import ModelJumper
from mdkstep.molecule.topology import infer_bonds
from mdkstep.utils import LOG, MdkstepError

#: the configs/ folder of this repository (the 06/06b defaults)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: default hybrid settings by the checkpoint's engine, as 06 (MM) and 06b (QM) use them
DEFAULT_CONFIG = {"openmm": CONFIGS / "hybrid.yaml", "qm": CONFIGS / "hybrid_qm.yaml"}
THERMOSTATS = ("langevin", "csvr", "none")



class HybridMD(MolecularDynamics):
    """Hybrid MD (learned jump + one real force call per cycle) as an ASE dynamics object.

    Args:
        atoms: the system; its calculator gives the real forces.
        jumper: a :class:`mdkstep.hybrid.Jumper` (e.g. :class:`mdkstep.model.ModelJumper`).
        timestep: the base integrator step dt in ASE time units (``0.25 * units.fs``), the
            step the model was trained on.
        config: a :class:`HybridConfig` (k must be set); ``temperature_K`` / ``seed``
            override it. Default: configs/hybrid.yaml's defaults (NVT, local Langevin).
        trajectory, logfile, loginterval: as for every ASE ``MolecularDynamics``.
    """

    def __init__(self, atoms, jumper: Jumper, timestep: float, config: HybridConfig,
                 temperature_K: float | None = None, seed: int = 0, trajectory=None, logfile=None,
                 loginterval: int = 1, **kwargs):
        if atoms.calc is None:
            raise MdkstepError("HybridMD: atoms has no calculator (set atoms.calc first)")
        cfg = replace(config, dt_fs=float(timestep / units.fs),
                      temperature_K=temperature_K if temperature_K is not None else config.temperature_K)
        if cfg.ensemble == "nvt" and cfg.temperature_K is None:
            raise MdkstepError("HybridMD: NVT needs temperature_K (argument or config)")
        cfg.validate()
        self.engine = ASEEngine(atoms.calc, atoms.numbers, atoms.get_masses(), charge=int(atoms.info.get("charge", 0)))
        self.hybrid = HybridIntegrator(self.engine, jumper, cfg, np.random.default_rng(seed))
        self.hybrid_config = cfg
        atoms.calc = EngineCalculator(self.engine)  # observers' energy/force reads are counted too
        super().__init__(atoms, cfg.cycle_ps * 1000.0 * units.fs, trajectory=trajectory, logfile=logfile,
                         loginterval=loginterval, **kwargs)
        if not np.any(atoms.get_velocities()):
            self._draw_velocities(atoms, cfg.temperature_K, seed)
        x0 = atoms.get_positions() * ANGSTROM_TO_NM
        v0 = atoms.get_velocities() * ASE_VELOCITY_TO_NM_PS
        self.hybrid.initialize(x0[None], v0[None])
        self._calls_at_reset = self.engine.counters.calls
        self.checkpoint: str = "<checkpoint>"  #: the model's file, named in the out-of-domain warning
        self.smiles: str | None = atoms.info.get("smiles")  #: the molecule, named in that warning when known
        self._warned_domain = False
        self._publish()

    @staticmethod
    def _draw_velocities(atoms, temperature_K: float | None, seed: int) -> None:
        """Maxwell-Boltzmann velocities at ``temperature_K`` (no net momentum) for atoms that
        have none: starting at 0 K would put a warm-up into every statistic."""
        if not temperature_K:
            raise MdkstepError("HybridMD: atoms have no velocities and no temperature_K is set to draw them from")
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
        Stationary(atoms)
        LOG.info("HybridMD: velocities drawn from Maxwell-Boltzmann at %.1f K (seed %d)", temperature_K, seed)

    @classmethod
    def from_checkpoint(cls, atoms, checkpoint: str | Path, *, timestep: float | None = None,
                        temperature_K: float | None = None, friction: float | None = None,
                        thermostat: str | None = None, config: HybridConfig | str | Path | None = None,
                        seed: int = 0, device: str = "cpu", **kwargs) -> "HybridMD":
        """A ``HybridMD`` driven by a trained model. k and dt come from the checkpoint (a
        ``timestep`` that differs from its dt is an error); bonds for the model's graph are
        perceived from the current geometry.

        Args:
            timestep: optional, ASE time; must equal the checkpoint's dt.
            temperature_K: bath target, K (default: the config's, else the card's training
                temperature, else 300 K).
            friction: Langevin friction of the bath halves in inverse ASE time, as in
                ``ase.md.Langevin`` (default: the config's; 06b's 50 /ps for QM checkpoints).
            thermostat: 'langevin' (local) | 'csvr' (global) | 'none' (NVE with the energy filter).
            config: a :class:`HybridConfig` or a hybrid YAML; default configs/hybrid_qm.yaml for
                QM checkpoints and configs/hybrid.yaml for MM ones (the 06/06b defaults).
            seed: RNG seed of the bath and of drawn velocities.
            kwargs: trajectory, logfile, loginterval, ... as for every ASE ``MolecularDynamics``.
        """
        model, ck = model_from_checkpoint(checkpoint, device=device)
        check_compatible(ck, str(checkpoint), atom_types=set(int(z) for z in atoms.numbers))
        dt_fs = float(ck["dt_fs"])
        if timestep is not None and abs(timestep / units.fs - dt_fs) > 1e-6 * dt_fs:
            raise MdkstepError(f"HybridMD: timestep {timestep / units.fs:g} fs differs from the dt of {checkpoint} "
                               f"({dt_fs:g} fs): its model jumps k = {ck['k']} steps of {dt_fs:g} fs")
        card = read_card(checkpoint) or {}
        cfg = cls.resolve_config(ck, card, config, temperature_K, friction, thermostat)
        warn_level_of_theory(atoms.calc, ck, card, str(checkpoint))
        bonds = infer_bonds(atoms.numbers, atoms.get_positions() * ANGSTROM_TO_NM)
        jumper = ModelJumper(model, atoms.numbers, atoms.get_masses(), bonds, device=device)
        md = cls(atoms, jumper, dt_fs * units.fs, cfg, seed=seed, **kwargs)
        md.checkpoint = str(checkpoint)
        return md

    @staticmethod
    def resolve_config(ck: dict[str, Any], card: dict[str, Any], config: HybridConfig | str | Path | None,
                       temperature_K: float | None, friction: float | None, thermostat: str | None) -> HybridConfig:
        """The hybrid settings of :meth:`from_checkpoint`: ``config`` (default: the 06/06b YAML
        for the checkpoint's engine), then the bath keywords on top (friction in inverse ASE time)."""
        if config is None:
            default = DEFAULT_CONFIG["openmm" if ck.get("engine") == "openmm" else "qm"]
            config = default if default.is_file() else HybridConfig()
        base = config if isinstance(config, HybridConfig) else load_config(HybridConfig, config)
        over: dict[str, Any] = {"k": int(ck["k"])}
        if friction is not None:
            over["friction_per_ps"] = float(friction) * 1000.0 * units.fs  # 1/ASE time -> 1/ps
        if thermostat is not None:
            if thermostat not in THERMOSTATS:
                raise MdkstepError(f"HybridMD: thermostat {thermostat!r} is not one of {list(THERMOSTATS)}")
            over.update({"thermostat": thermostat, "ensemble": "nve"} if thermostat == "none"
                        else {"thermostat": thermostat, "ensemble": "nvt"})
        t_card = (card.get("data") or {}).get("temperature_K")
        over["temperature_K"] = temperature_K or base.temperature_K or t_card or 300.0
        cfg = replace(base, **over)
        cfg.validate()
        return cfg

    def _publish(self) -> None:
        """Copy the integrator's state into ``atoms`` and prime its calculator with the exact
        energy and forces at these positions (computed by the cycle: no extra call)."""
        h = self.hybrid
        self.atoms.set_positions(h.x[0] / ANGSTROM_TO_NM, apply_constraint=False)
        self.atoms.set_velocities(h.v[0] / ASE_VELOCITY_TO_NM_PS)
        calc = self.atoms.calc
        calc.atoms = self.atoms.copy()
        e_ev = float(h.u[0]) / EV_TO_KJ_MOL
        calc.results = {"energy": e_ev, "free_energy": e_ev, "forces": h.f[0] / EV_PER_ANGSTROM_TO_KJ_MOL_NM}
        calc.last_energy_kj_mol, calc.last_forces_kj_mol_nm = float(h.u[0]), h.f[0].copy()

    def step(self, forces=None):
        """One hybrid cycle; returns the forces at the new positions (eV/Å)."""
        self.hybrid.cycle()
        self._publish()
        return self.hybrid.f[0] / EV_PER_ANGSTROM_TO_KJ_MOL_NM

    def todict(self):
        d = super().todict()
        d.update({"k": self.hybrid_config.k, "corrector": self.hybrid_config.corrector,
                  "base_timestep_fs": self.hybrid_config.dt_fs})
        return d

    def equilibrate(self, cycles: int) -> None:
        """Run ``cycles`` cycles, then start the statistics afresh (the warm-up is not averaged)."""
        self.run(cycles)
        self.reset_stats()

    def reset_stats(self) -> None:
        """Forget the counters and temperature sums so far; :meth:`stats` covers what follows."""
        self.hybrid.counters = HybridCounters()
        self._calls_at_reset = self.engine.counters.calls

    def stats(self) -> dict:
        """Since the start (or the last :meth:`reset_stats`): cycles, force calls, accepted jumps,
        retry and fallback rates, guard rejects, and temperatures (mean, std, per element, K)."""
        c = self.hybrid.counters
        n = max(c.jumps_attempted, 1)
        return {"cycles": c.cycles, "force_calls": self.engine.counters.calls - self._calls_at_reset,
                "jumps_accepted": c.jumps_accepted, "retry_rate": c.retries / n, "fallback_rate": c.fallbacks / n,
                "fallbacks": c.fallbacks, "rejects": dict(c.rejects),
                "filter_ke_change_mean": c.filter_ke_change_sum / c.filter_count if c.filter_count else None,
                "simulated_ps": c.cycles * self.hybrid_config.cycle_ps, **self.hybrid.temperature_stats()}

    def domain_warning(self) -> str | None:
        """One WARNING line (also logged, once) when :meth:`stats` shows that the model is outside
        its training domain for this molecule (mdkstep.hybrid.domain), with the fine-tuning command."""
        w = domain_warning(self.stats(), self.hybrid_config.temperature_K, self.checkpoint, self.smiles)
        if w and not self._warned_domain:
            LOG.warning("HybridMD: %s", w)
            self._warned_domain = True
        return w


def calculator_level(calc) -> str | None:
    """The level of theory of an ASE calculator as the model cards name it ('GFN2-xTB', ...),
    or its class name when it is not an xTB calculator; None without a calculator."""
    if calc is None:
        return None
    inner = getattr(calc, "engine", None)
    if inner is not None:  # our own EngineCalculator around an engine
        if getattr(inner, "calculator", None) is not None:  # ... around an ASE calculator
            return calculator_level(inner.calculator)
        method = getattr(inner, "method", None) or type(inner).__name__
        return f"PySCF {method}" if getattr(inner, "name", None) == "pyscf" else method
    name = type(calc).__name__
    method = (getattr(calc, "parameters", None) or {}).get("method")
    if method and name.lower() in ("tblite", "xtb"):
        return str(method)
    return name


def warn_level_of_theory(calc, ck: dict[str, Any], card: dict[str, Any], source: str) -> bool:
    """Log one WARNING when the calculator's level of theory differs from the one the model
    was trained on (the card's method, else the checkpoint's engine); True when it warned."""
    trained = (card.get("data") or {}).get("method") or ck.get("engine")
    level = calculator_level(calc)
    if not trained or not level or str(level).lower().replace("-", "") == str(trained).lower().replace("-", ""):
        return False
    LOG.warning("HybridMD: %s was trained on %s forces but the calculator is %s: its jumps may not fit these "
                "forces (watch stats()['retry_rate']; fine-tune on this level of theory)", source, trained, level)
    return True
