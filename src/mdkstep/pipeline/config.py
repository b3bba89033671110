"""Benchmark settings (configs/bench.yaml, configs/bench_full.yaml). Flat keys, ``mm_`` and
``qm_`` prefixes per mode. Units: fs, ps, K, 1/ps, amu, kJ/mol."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BenchConfig:
    """What `make bench` runs; every time is simulated time per method (and per replica)."""

    out_dir: str = "outputs/bench"  #: everything goes here (bench.json, bench.md, pareto.png, runs)
    threads: int = 1  #: torch and OpenMP threads for every method (the same for all)
    seed: int = 0
    #: generalization (issue 24): one-jump metrics of every model on each molecule's own run (the
    #: "training run", never trained on when the checkpoints are given) beside "no move" and "ballistic"
    heldout_one_jump: bool = False
    #: added to every learned row's seed (hybrid / exact / mvv): replicate those rows against the same cached
    #: references and plain runs (scripts/bench_rows.sh ... --set learned_seed_offset=1)
    learned_seed_offset: int = 0
    timing_repeats: int = 3  #: interleaved timed repeats per method (min and median reported)
    fidelity_ratio_ok: float = 1.5  #: "faithful" = every structure distance within this many x the replica floor
    ref_replicas: int = 2  #: independent reference replicas per molecule; the floor is the largest distance over their pairs
    use_shipped_models: bool = True  #: use models/<mode>_k<K>.pt (`make models`) where one exists for a k; false (--retrain) trains every k here
    models_dir: str = "models"  #: where the shipped models and their cards are
    # ---------------------------------------------------------------- MM (OpenMM)
    mm_smiles: str | None = "data/bench_mm.smi"  #: "SMILES name" lines; null = no MM part
    mm_prep_config: str = "configs/prep.yaml"
    mm_temperature_K: float = 300.0
    mm_friction_per_ps: float = 1.0  #: Langevin friction of every plain NVT method (the hybrid's bath is configs/hybrid.yaml's)
    mm_ref_dt_fs: float = 2.0  #: reference step (HBonds); its replicas give the noise floor
    mm_hmr_dt_fs: float = 4.0  #: plain step with hydrogen mass repartitioning
    mm_hmr_mass_amu: float = 3.0
    mm_scan_dts_fs: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    mm_scan_ps: float = 5.0  #: NVE velocity-Verlet scan length per step size
    mm_scan_max_drift_per_atom: float = 0.01  #: kJ/mol/ps per atom: larger |drift| (or a blow-up) = unstable
    mm_equil_ps: float = 10.0  #: equilibration of every plain run (not counted)
    mm_time_ps: float = 50.0  #: NVT production per method
    mm_time_ps_by_mol: dict[str, float] = field(default_factory=dict)  #: molecule -> its own production length, ps
    mm_nve_ps: float = 5.0  #: NVE segment per method (drift)
    mm_timing_ps: float = 2.0  #: simulated time per timed segment
    mm_ks: list[int] = field(default_factory=lambda: [4, 8, 12])
    mm_train_ps: float = 100.0  #: training trajectory per molecule (separate seed; 2 fs, every step, forces)
    mm_checkpoints: dict[str, str] = field(default_factory=dict)  #: k -> trained checkpoint to use instead of training
    mm_model_config: str = "configs/model.yaml"
    mm_model_overrides: dict[str, Any] = field(default_factory=dict)
    mm_train_config: str = "configs/train.yaml"
    mm_train_overrides: dict[str, Any] = field(default_factory=dict)
    mm_hybrid_config: str = "configs/hybrid.yaml"
    mm_hybrid_overrides: dict[str, Any] = field(default_factory=dict)
    mm_hybrid_overrides_by_k: dict[str, Any] = field(default_factory=dict)  #: k -> extra hybrid overrides, e.g. {4: {friction_per_ps: 50}}
    #: stride schedules, e.g. [[4, 12]]: rows hybrid_k4+12 that use the mm_ks models in turn
    #: (one force call per sub-stride; mdkstep.hybrid.StrideSchedule); a schedule of orders, e.g.
    #: [[[8, 10], [9, 9], [10, 8]]]: row hybrid_k8+10,9+9,10+8, one order (equal sums) drawn per cycle;
    #: {permutations: [4, 8, 10, 12]}: every order of those drawn per cycle (row hybrid_k4+8+10+12,allperms)
    mm_schedules: list[Any] = field(default_factory=list)
    mm_schedule_hybrid_overrides: dict[str, Any] = field(default_factory=dict)  #: extra hybrid overrides of every schedule row, e.g. {friction_per_ps: 40}
    mm_fixed_k_rows: bool | list[int] = True  #: a row hybrid_k<K> per model; false: none (only schedule rows); [8]: those k
    # exact mode on the HBonds system: the RATTLE-projected shear map (mdkstep.constraints)
    mm_exact_ks: list[int] = field(default_factory=list)  #: exact-mode rows exact_k<K> (models/mm_exact_k<K>.pt, else trained here)
    mm_mvv_dts_fs: list[float] = field(default_factory=list)  #: Metropolized RATTLE velocity Verlet rows mvv_<dt>fs (untrained)
    mm_exact_checkpoints: dict[str, str] = field(default_factory=dict)  #: k -> shear checkpoint (before any shipped model)
    mm_exact_model_config: str = "configs/model_shear.yaml"
    mm_exact_train_config: str = "configs/train_exact.yaml"
    mm_exact_train_overrides: dict[str, Any] = field(default_factory=dict)
    # ---------------------------------------------------------------- QM (GFN2-xTB via tblite)
    qm_smiles: str | None = "data/bench_qm.smi"  #: null = no QM part
    qm_config: str = "configs/qm.yaml"  #: engine, thermostat and equilibration settings
    qm_overrides: dict[str, Any] = field(default_factory=dict)
    qm_ref_dt_fs: float = 0.25  #: reference step; its replicas give the noise floor
    qm_plain_dts_fs: list[float] = field(default_factory=lambda: [0.5, 1.0])
    qm_time_ps: float = 2.0
    qm_time_ps_by_mol: dict[str, float] = field(default_factory=dict)  #: molecule -> its own length (long references)
    qm_nve_ps: float = 0.1
    qm_timing_ps: float = 0.05
    qm_ks: list[int] = field(default_factory=lambda: [8, 16, 32])  #: k = 4 (1 fs) costs the calls of plain 1 fs MD: dropped
    qm_train_ps: float = 2.0
    qm_checkpoints: dict[str, str] = field(default_factory=dict)
    qm_model_config: str = "configs/model_qm.yaml"
    qm_model_overrides: dict[str, Any] = field(default_factory=dict)
    qm_train_config: str = "configs/train_qm.yaml"
    qm_train_overrides: dict[str, Any] = field(default_factory=dict)
    qm_hybrid_config: str = "configs/hybrid_qm.yaml"
    qm_hybrid_overrides: dict[str, Any] = field(default_factory=dict)
    qm_hybrid_overrides_by_k: dict[str, Any] = field(default_factory=dict)  #: k -> extra hybrid overrides
    qm_schedules: list[Any] = field(default_factory=list)  #: stride schedules over the qm_ks models
    qm_fixed_k_rows: bool | list[int] = True  #: as mm_fixed_k_rows
    qm_schedule_hybrid_overrides: dict[str, Any] = field(default_factory=dict)  #: as mm_schedule_hybrid_overrides
    # exact mode (issue 12): generalized HMC with a learned shear stride, Langevin at the plain friction
    qm_exact_ks: list[int] = field(default_factory=list)  #: exact-mode rows exact_k<K> (models/qm_exact_k<K>.pt, else trained here)
    qm_mvv_dts_fs: list[float] = field(default_factory=list)  #: Metropolized velocity Verlet rows mvv_<dt>fs (the untrained shear map)
    qm_exact_checkpoints: dict[str, str] = field(default_factory=dict)  #: k -> shear checkpoint (before any shipped model)
    qm_exact_model_config: str = "configs/model_shear.yaml"
    qm_exact_train_config: str = "configs/train_exact.yaml"
    qm_exact_train_overrides: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.threads < 1 or self.timing_repeats < 1:
            raise ValueError("keys 'threads' and 'timing_repeats' must be >= 1")
        if self.ref_replicas < 2:
            raise ValueError("key 'ref_replicas' must be >= 2 (the noise floor is a distance between replicas)")
        for p in ("mm", "qm"):
            for mol, t in getattr(self, f"{p}_time_ps_by_mol").items():
                if not (isinstance(t, (int, float)) and t > 0):
                    raise ValueError(f"key '{p}_time_ps_by_mol': {mol}: {t!r} must be a length in ps > 0")
        for key in ("mm_time_ps", "mm_nve_ps", "mm_timing_ps", "mm_train_ps", "mm_scan_ps",
                    "qm_time_ps", "qm_nve_ps", "qm_timing_ps", "qm_train_ps"):
            if not getattr(self, key) > 0:
                raise ValueError(f"key '{key}' must be > 0")
        for key in ("mm_ks", "qm_ks"):
            if not getattr(self, key) or min(getattr(self, key)) < 1:
                raise ValueError(f"key '{key}' must list jump lengths >= 1")
        for p in ("mm", "qm"):
            if any(k < 1 for k in getattr(self, f"{p}_exact_ks")) or any(not dt > 0 for dt in getattr(self, f"{p}_mvv_dts_fs")):
                raise ValueError(f"keys '{p}_exact_ks' / '{p}_mvv_dts_fs' must list jump lengths >= 1 / strides > 0 fs")
        for p in ("mm", "qm"):
            for sched in getattr(self, f"{p}_schedules"):
                check_schedule(f"{p}_schedules", sched, getattr(self, f"{p}_ks"))
        for key in ("mm_hybrid_overrides_by_k", "qm_hybrid_overrides_by_k"):
            for k, v in getattr(self, key).items():
                if not str(k).isdigit() or not isinstance(v, dict):
                    raise ValueError(f"key '{key}': {k!r} must map a jump length to hybrid overrides")
        for key in ("mm_checkpoints", "qm_checkpoints", "mm_exact_checkpoints", "qm_exact_checkpoints"):
            for k in getattr(self, key):
                if not str(k).isdigit():
                    raise ValueError(f"key '{key}': {k!r} is not a jump length (write e.g. 8: path/best.pt)")
        if not self.mm_scan_dts_fs:
            raise ValueError("key 'mm_scan_dts_fs' must list at least one step")


def check_schedule(key: str, sched: Any, ks: list[int]) -> None:
    """A stride schedule is two or more jump lengths of ``ks`` ([4, 12]), two or more orders of them with
    equal sums ([[8, 10], [9, 9]]) or {permutations: [...]} of them; anything else is a ValueError naming the key."""
    def ok_order(o: Any, min_len: int) -> bool:
        return isinstance(o, list) and len(o) >= min_len and all(isinstance(k, int) and k in ks for k in o)
    if isinstance(sched, dict):
        if list(sched) == ["permutations"] and ok_order(sched["permutations"], 2):
            return
    elif isinstance(sched, list) and sched and all(isinstance(o, list) for o in sched):
        if len(sched) >= 2 and all(ok_order(o, 1) for o in sched) and len({sum(o) for o in sched}) == 1:
            return
    elif ok_order(sched, 2):
        return
    raise ValueError(f"key '{key}': {sched!r} must list two or more jump lengths of {ks} (e.g. [4, 12]), two or "
                     f"more orders of them with equal sums (e.g. [[8, 10], [9, 9]]), or {{permutations: [4, 10, 12]}} "
                     f"(every order of those)")
