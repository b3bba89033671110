"""The hybrid integrator, one engine-agnostic implementation used by stages 06 and 06b and the
benchmark. Its rooms: ``config`` (the settings), ``integrator`` (the cycle, guard, counters),
``run`` (files, resume, statistics), ``cli`` (what the two scripts share). The trained model's
jumper lives in :mod:`mdkstep.model.jumper`; the physics step in :mod:`mdkstep.dynamics`."""
from __future__ import annotations

from mdkstep.hybrid.config import CORRECTORS, ENSEMBLES, REJECT_REASONS, THERMOSTATS, HybridConfig
from mdkstep.hybrid.integrator import (
                         HybridCounters,
                         HybridIntegrator,
                         Jumper,
                         StrideSchedule,
                         angular_momentum,
                         permutation_orders,
                         set_angular_momentum,
)
from mdkstep.hybrid.run import checkpoint_path, replica_paths, run_hybrid

__all__ = [
    "HybridConfig", "HybridCounters", "HybridIntegrator", "Jumper", "StrideSchedule", "angular_momentum", "permutation_orders",
    "set_angular_momentum",
    "checkpoint_path", "replica_paths", "run_hybrid", "CORRECTORS", "ENSEMBLES", "REJECT_REASONS", "THERMOSTATS",
]
