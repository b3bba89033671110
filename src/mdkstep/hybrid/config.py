"""Settings of the hybrid integrator (configs/hybrid.yaml). Units: fs, ps, K, 1/ps, kJ/mol,
kJ/(mol nm)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from mdkstep.utils import MdkstepError

ENSEMBLES = ("nve", "nvt")
THERMOSTATS = ("langevin", "csvr", "none")
CORRECTORS = ("kick", "verlet")
REJECT_REASONS = ("nonfinite", "engine_error", "max_force", "energy_jump", "total_energy_jump", "energy_filter",
                  "frozen")


# ----------------------------------------------------------------------------- config

@dataclass
class HybridConfig:
    """Settings of the hybrid integrator (configs/hybrid.yaml)."""

    k: int | None = None  #: integrator steps per jump; None = the checkpoint's k
    dt_fs: float | None = None  #: integrator step of the training data, fs; None = the checkpoint's
    corrector: str = "kick"  #: kick (1 call per k*dt) | verlet (2 calls per (k+1)*dt)
    ensemble: str = "nvt"  #: nve | nvt
    temperature_K: float | None = None  #: NVT target, K; None = the MD config's
    thermostat: str = "langevin"  #: NVT only: langevin | csvr | none (none is an error in NVT)
    friction_per_ps: float = 20.0  #: Langevin friction of the bath halves, 1/ps (best measured for MM k = 8; README)
    tau_ps: float = 0.1  #: CSVR time constant, ps
    delta_scale: float = 1.0  #: multiplies the predicted (dx, dv)
    max_attempts: int = 3  #: jump attempts per cycle before the physics fallback
    retry_shrink: float = 0.5  #: delta scale factor per retry
    max_force_kj_mol_nm: float | None = 25000.0  #: guard on max_i |F_i|; None = off
    max_energy_jump_kj_mol: float | None = 100.0  #: guard on U(new) - U(before); None = off
    max_total_energy_jump_kj_mol: float | None = None  #: guard on (U+K)(new) - (U+K)(before); None = off
    energy_filter: bool = True  #: rescale velocities so U + K after a jump equals U + K before it (NVT: before the thermostat)
    remove_com: bool = True  #: remove the centre-of-mass velocity every cycle
    fix_angular_momentum: bool = False  #: restore the pre-jump angular momentum after each jump
    save_interval_cycles: int = 1  #: save a frame every N cycles
    chunk_frames: int = 1000  #: frames per on-disk chunk (= checkpoint interval)
    save_forces: bool = True  #: store the (exact) forces of every saved frame
    use_predicted_forces: bool = True  #: kick: swap the jumper's predicted F(x') in the last half-kick for the real one
    #: exact mode (a ``kind: shear`` checkpoint): Metropolis test on every stride (generalized HMC,
    #: exact Boltzmann sampling); False accepts every proposal (not exact). Ignored by jump models.
    metropolis: bool = True

    def validate(self) -> None:
        """Raise ValueError on an inconsistent configuration."""
        if self.k is not None and self.k < 1:
            raise ValueError(f"key 'k' must be >= 1, got {self.k}")
        if self.dt_fs is not None and not self.dt_fs > 0:
            raise ValueError(f"key 'dt_fs' must be > 0, got {self.dt_fs}")
        for key, allowed in (("corrector", CORRECTORS), ("ensemble", ENSEMBLES), ("thermostat", THERMOSTATS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"key '{key}': {getattr(self, key)!r} is not one of {list(allowed)}")
        if self.ensemble == "nvt" and self.thermostat == "none":
            raise ValueError("ensemble 'nvt' needs thermostat 'langevin' or 'csvr'")
        if self.temperature_K is not None and not self.temperature_K > 0:
            raise ValueError(f"key 'temperature_K' must be > 0, got {self.temperature_K}")
        if self.friction_per_ps < 0 or not self.tau_ps > 0:
            raise ValueError("keys 'friction_per_ps' must be >= 0 and 'tau_ps' > 0")
        if not self.delta_scale > 0:
            raise ValueError(f"key 'delta_scale' must be > 0, got {self.delta_scale}")
        if self.max_attempts < 1:
            raise ValueError(f"key 'max_attempts' must be >= 1, got {self.max_attempts}")
        if not 0 < self.retry_shrink <= 1:
            raise ValueError(f"key 'retry_shrink' must be in (0, 1], got {self.retry_shrink}")
        for key in ("max_force_kj_mol_nm", "max_energy_jump_kj_mol", "max_total_energy_jump_kj_mol"):
            v = getattr(self, key)
            if v is not None and not v > 0:
                raise ValueError(f"key '{key}' must be > 0 or null, got {v}")
        if self.save_interval_cycles < 1 or self.chunk_frames < 1:
            raise ValueError("keys 'save_interval_cycles' and 'chunk_frames' must be >= 1")

    def resolved(self, k: int | None = None, dt_fs: float | None = None,
                 temperature_K: float | None = None) -> "HybridConfig":
        """A copy with unset k / dt_fs / temperature_K filled from the arguments."""
        out = replace(self, k=self.k if self.k is not None else k,
                      dt_fs=self.dt_fs if self.dt_fs is not None else dt_fs,
                      temperature_K=self.temperature_K if self.temperature_K is not None else temperature_K)
        out.validate()
        return out

    @property
    def steps_per_cycle(self) -> int:
        """Integrator steps one cycle advances: k ("kick") or k + 1 ("verlet")."""
        return int(self._need("k")) + (1 if self.corrector == "verlet" else 0)

    @property
    def calls_per_cycle(self) -> int:
        """Force calls of one accepted cycle per replica (no retry): 1 ("kick") or 2 ("verlet")."""
        return 2 if self.corrector == "verlet" else 1

    @property
    def dt_ps(self) -> float:
        return float(self._need("dt_fs")) / 1000.0

    @property
    def cycle_ps(self) -> float:
        """Simulated time of one cycle, ps."""
        return self.steps_per_cycle * self.dt_ps

    @property
    def thermostat_active(self) -> str:
        """The thermostat actually applied: 'none' in NVE."""
        return self.thermostat if self.ensemble == "nvt" else "none"

    def _need(self, key: str) -> Any:
        v = getattr(self, key)
        if v is None:
            raise MdkstepError(f"hybrid config: '{key}' is not set (give it or take it from the checkpoint)")
        return v
