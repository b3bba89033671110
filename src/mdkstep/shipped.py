"""The models shipped with the project (`make models`, scripts/make_models.py, configs/models.yaml).

One way to make training data and train, the benchmark's own (:mod:`mdkstep.bench`): the
training trajectories are ``MMMode`` / ``QMMode`` ``run_plain(..., training=True)`` runs (via
:func:`mdkstep.bench.core.training_run`) and every model is :func:`mdkstep.bench.core.ensure_model`
on all molecules' runs (time split). Everything is cached under ``work_dir`` (trajectories
resume, training resumes from last.pt); ``out_dir`` (``models/``) gets per model

    <mode>_k<K>.pt    weights + model/train configs + k + dt_fs + engine + atom types (no optimizer state)
    <mode>_k<K>.json  the model card (data, training, cost, one-jump test metrics)
    <mode>_k<K>.md    the same card for people

Units: nm, ps, kJ/mol, amu, K; dt in fs; wall times in s.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdkstep.analysis.refcheck import kinetic_check, trajectory_dof
from mdkstep.config import from_dict
from mdkstep.exact.onpolicy import OnPolicyStage, fine_tune, on_policy_force_calls
from mdkstep.model.checkpoint import model_from_checkpoint, read_card, read_checkpoint, save_checkpoint
from mdkstep.molecule.prep import canonical_smiles, read_smi_strict
from mdkstep.pipeline.config import BenchConfig
from mdkstep.pipeline.machine import machine_info, set_threads
from mdkstep.pipeline.mm import MMMode
from mdkstep.pipeline.models import (
    data_cost,
    ensure_exact_model,
    ensure_model,
    teacher_forced_summary,
    training_cost,
    training_run,
)
from mdkstep.pipeline.qm import QMMode
from mdkstep.trajectory import load_trajectory
from mdkstep.utils import LOG, MdkstepError, atomic_write_json, atomic_write_text, file_sha256

#: checkpoint keys a shipped model keeps (training state is stripped)
SHIPPED_KEYS = ("model_state", "model_config", "train_config", "k", "dt_fs", "engine", "atom_types")
MODES = ("mm", "qm")


@dataclass
class ModelsConfig:
    """What `make models` generates and trains (configs/models.yaml; unknown keys are errors)."""

    out_dir: str = "models"  #: shipped checkpoints and cards
    work_dir: str = "outputs/models"  #: cache: molecules, training trajectories, datasets, training runs
    threads: int = 2  #: torch / OpenMP / OpenMM threads
    seed: int = 1000  #: training-run seed = seed + 100 (the bench's rule), independent of the bench's seed 0
    modes: list[str] = field(default_factory=lambda: ["mm", "qm"])  #: which model families to make
    # ---------------------------------------------------------------- MM (OpenMM + OpenFF)
    mm_molecules: list[str] = field(default_factory=lambda: ["data/bench_mm.smi"])  #: ".smi" or ".smi:name,name" entries
    mm_prep_config: str = "configs/prep.yaml"
    mm_temperature_K: float = 300.0
    mm_friction_per_ps: float = 1.0  #: Langevin friction of the training runs
    mm_dt_fs: float = 2.0  #: integrator step of the data (HBonds); the models jump k of these
    mm_equil_ps: float = 10.0  #: equilibration before each training run (not saved; its steps count as cost)
    mm_train_ps: float = 100.0  #: training trajectory per molecule (every step saved, with forces)
    mm_ks: list[int] = field(default_factory=lambda: [4, 8, 12, 16])
    mm_model_config: str = "configs/model.yaml"
    mm_model_overrides: dict[str, Any] = field(default_factory=dict)
    mm_model_overrides_by_k: dict[str, Any] = field(default_factory=dict)  #: k -> extra model overrides
    mm_train_config: str = "configs/train.yaml"
    mm_train_overrides: dict[str, Any] = field(default_factory=dict)
    #: k -> train overrides of a second stage warm-started from the first's best.pt (a warm restart
    #: of the schedule, e.g. {9: {max_steps: 12000, lr: 3.0e-4}}); the model shipped is the second's.
    #: With from_k: K it starts from model K's first stage instead and has no first stage of its own
    #: (e.g. {10: {from_k: 9, max_steps: 8000, lr: 5.0e-4}}: a k = 10 model grown from k = 9's)
    mm_finetune_by_k: dict[str, Any] = field(default_factory=dict)
    # ---------------------------------------------------------------- QM (GFN2-xTB via tblite)
    qm_molecules: list[str] = field(default_factory=lambda: ["data/bench_qm.smi"])
    qm_config: str = "configs/qm.yaml"  #: engine, thermostat, equilibration of the training runs
    qm_overrides: dict[str, Any] = field(default_factory=dict)
    qm_dt_fs: float = 0.25
    qm_train_ps: float = 20.0
    qm_ks: list[int] = field(default_factory=lambda: [8, 16, 32])
    qm_model_config: str = "configs/model_qm.yaml"
    qm_model_overrides: dict[str, Any] = field(default_factory=dict)
    qm_model_overrides_by_k: dict[str, Any] = field(default_factory=dict)
    qm_train_config: str = "configs/train_qm.yaml"
    qm_train_overrides: dict[str, Any] = field(default_factory=dict)
    qm_finetune_by_k: dict[str, Any] = field(default_factory=dict)  #: as mm_finetune_by_k
    #: start every model of the mode from this checkpoint (fine-tuning a foundation model, mdkstep-adapt);
    #: same k and dt keep its normalization, so step 0 is the pretrained model
    mm_pretrained: str | None = None
    qm_pretrained: str | None = None
    # exact mode (issue 12): shear models <mode>_exact_k<K>.pt on the same training runs (MM: RATTLE-projected)
    mm_exact_ks: list[int] = field(default_factory=list)  #: strides (in mm_dt_fs steps) of the MM exact-mode models
    mm_exact_model_config: str = "configs/model_shear.yaml"
    mm_exact_train_config: str = "configs/train_exact.yaml"
    mm_exact_train_overrides: dict[str, Any] = field(default_factory=dict)
    qm_exact_ks: list[int] = field(default_factory=list)  #: strides (in qm_dt_fs steps) of the exact-mode models
    qm_exact_model_config: str = "configs/model_shear.yaml"
    qm_exact_train_config: str = "configs/train_exact.yaml"
    qm_exact_train_overrides: dict[str, Any] = field(default_factory=dict)
    #: on-policy stages after the QM exact model's first stage (mdkstep.exact.onpolicy.OnPolicyStage keys, chained,
    #: each with GFN2-xTB at the model's proposals); the model shipped is the last stage's
    qm_exact_on_policy: list[dict[str, Any]] = field(default_factory=list)

    def validate(self) -> None:
        if self.threads < 1:
            raise ValueError("key 'threads' must be >= 1")
        bad = sorted(set(self.modes) - set(MODES))
        if bad or not self.modes:
            raise ValueError(f"key 'modes': {bad or 'empty'}; allowed {list(MODES)}")
        for p in ("mm", "qm"):
            for key in ("train_ps", "dt_fs"):
                if not getattr(self, f"{p}_{key}") > 0:
                    raise ValueError(f"key '{p}_{key}' must be > 0")
            ks = getattr(self, f"{p}_ks")
            if not ks or min(ks) < 1:
                raise ValueError(f"key '{p}_ks' must list jump lengths >= 1")
            if min(getattr(self, f"{p}_exact_ks"), default=1) < 1:
                raise ValueError(f"key '{p}_exact_ks' must list jump lengths >= 1")
            pre = getattr(self, f"{p}_pretrained")
            if p in self.modes and pre and not Path(pre).is_file():
                raise ValueError(f"key '{p}_pretrained': {pre} not found")
            if p in self.modes and not getattr(self, f"{p}_molecules"):
                raise ValueError(f"key '{p}_molecules' must list at least one .smi entry")
            for i, st in enumerate(self.qm_exact_on_policy if p == "qm" else []):
                on_policy_stage(st, f"qm_exact_on_policy[{i}]")
            for key in (f"{p}_model_overrides_by_k", f"{p}_finetune_by_k"):
                for k, v in getattr(self, key).items():
                    if not str(k).isdigit() or not isinstance(v, dict):
                        raise ValueError(f"key '{key}': {k!r} must map a jump length to overrides")


def model_name(mode: str, k: int) -> str:
    """File stem of a shipped model: ``mm_k8``, ``qm_k16``; exact mode's ``qm_exact_k16``,
    ``mm_exact_k4`` (``mode`` = "qm_exact", "mm_exact")."""
    return f"{mode}_k{int(k)}"


def model_names(cfg: ModelsConfig) -> list[str]:
    """Every model a config makes, direct-jump and exact mode."""
    names = [model_name(p, k) for p in cfg.modes for k in getattr(cfg, f"{p}_ks")]
    return names + [model_name(f"{p}_exact", k) for p in cfg.modes for k in getattr(cfg, f"{p}_exact_ks")]


def shipped_path(models_dir: str | Path, mode: str, k: int) -> Path:
    """``<models_dir>/<mode>_k<K>.pt`` (may not exist)."""
    return Path(models_dir) / f"{model_name(mode, k)}.pt"


# ------------------------------------------------------------------------------ molecules

def parse_entry(entry: str) -> tuple[Path, list[str] | None]:
    """``data/x.smi`` -> (path, None = every molecule); ``data/x.smi:a,b`` -> (path, [a, b])."""
    path, _, names = entry.partition(":")
    chosen = [n.strip() for n in names.split(",") if n.strip()] if names else None
    if not Path(path).is_file():
        raise MdkstepError(f"molecule entry {entry!r}: {path} not found")
    return Path(path), chosen


def combined_smi(entries: list[str], out: Path) -> Path:
    """One ``SMILES name`` file of every chosen molecule of ``entries`` (names unique, first
    occurrence wins); an unknown name is an error naming its file."""

    lines, seen = [], set()
    for entry in entries:
        path, chosen = parse_entry(entry)
        found = {e.name: e for e in read_smi_strict(path)}
        missing = [n for n in (chosen or []) if n not in found]
        if missing:
            raise MdkstepError(f"molecule entry {entry!r}: {', '.join(missing)} not in {path}")
        for name in chosen or list(found):
            if name not in seen:
                seen.add(name)
                lines.append(f"{found[name].smiles} {name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "# generated by make models from " + ", ".join(entries) + "\n" + "\n".join(lines) + "\n")
    return out


# ------------------------------------------------------------------------------ the pipeline

def bench_config(cfg: ModelsConfig, mode: str):
    """The BenchConfig whose MMMode / QMMode make this config's training runs (only the keys
    the training runs read are set; ``out_dir`` = ``work_dir``)."""

    work = Path(cfg.work_dir)
    smi = {p: (str(combined_smi(getattr(cfg, f"{p}_molecules"), work / f"{p}_molecules.smi")) if p == mode else None)
           for p in MODES}
    return BenchConfig(out_dir=str(work), threads=cfg.threads, seed=cfg.seed, mm_smiles=smi["mm"],
                       mm_prep_config=cfg.mm_prep_config, mm_temperature_K=cfg.mm_temperature_K,
                       mm_friction_per_ps=cfg.mm_friction_per_ps, mm_ref_dt_fs=cfg.mm_dt_fs,
                       mm_equil_ps=cfg.mm_equil_ps, mm_train_ps=cfg.mm_train_ps, qm_smiles=smi["qm"],
                       qm_config=cfg.qm_config, qm_overrides=cfg.qm_overrides, qm_ref_dt_fs=cfg.qm_dt_fs,
                       qm_train_ps=cfg.qm_train_ps)


def make_mode(cfg: ModelsConfig, mode: str):
    """The bench's MMMode or QMMode over this config's molecules, rooted at ``work_dir``."""

    bcfg = bench_config(cfg, mode)
    return (MMMode if mode == "mm" else QMMode)(bcfg, Path(cfg.work_dir))


def training_data(m, cfg: ModelsConfig) -> tuple[list[str], dict[str, Path]]:
    """Every molecule's training trajectory (made now unless cached): names and paths."""

    p = m.name
    mols = m.molecules()
    runs = {}
    for mol in mols:
        LOG.info("%s %s: training run (%g ps at %g fs)", p, mol, getattr(cfg, f"{p}_train_ps"), m.reference().dt_fs)
        runs[mol] = training_run(m, mol, cfg.seed + 100, m.root / "runs" / mol / "train.npz",
                                 getattr(cfg, f"{p}_train_ps"))
    return mols, runs


def train_one(m, cfg: ModelsConfig, k: int, runs: dict[str, Path]) -> tuple[Path, dict[str, Any]]:
    """The bench's ensure_model for jump length k on every training run, then the optional
    warm-started second stage (``<mode>_finetune_by_k``); (best.pt, final metrics)."""

    p = m.name
    by_k = getattr(cfg, f"{p}_model_overrides_by_k")
    over = {**getattr(cfg, f"{p}_model_overrides"), **(by_k.get(str(k)) or by_k.get(k) or {})}
    train_over = getattr(cfg, f"{p}_train_overrides")
    args = (getattr(cfg, f"{p}_model_config"), over, getattr(cfg, f"{p}_train_config"))
    ft_by_k = getattr(cfg, f"{p}_finetune_by_k")
    ft = dict(ft_by_k.get(str(k)) or ft_by_k.get(k) or {})
    from_k = int(ft.pop("from_k", k))
    pretrained = getattr(cfg, f"{p}_pretrained")
    first = m.root / "models" / f"k{from_k}"
    if pretrained:
        first.mkdir(parents=True, exist_ok=True)
        atomic_write_json(first / "pretrained.json", {"checkpoint": str(pretrained), "sha256": file_sha256(pretrained)})
    best, final = ensure_model(p, from_k, list(runs.values()), first, *args, train_over, None,
                               pretrained=Path(pretrained) if pretrained else None)
    if from_k == k and not ft:
        return best, final
    out = m.root / "models" / f"k{k}_ft"
    out.mkdir(parents=True, exist_ok=True)
    stage1 = training_cost(best.parent) or {}
    atomic_write_json(out / "warm_start.json", {"checkpoint": str(best), "sha256": file_sha256(best), "k": from_k,
                                                "steps": stage1.get("steps"), "wall_s": stage1.get("wall_s")})
    return ensure_model(p, k, list(runs.values()), out, *args, {**train_over, **ft}, None, pretrained=best,
                        allow_k_change=from_k != k)


def data_summary(m, cfg: ModelsConfig, runs: dict[str, Path]) -> dict[str, Any]:
    """The card's data section: per molecule its SMILES, ps, seed, force calls and wall s."""

    p = m.name
    temperature, friction = m.thermostat()
    mols = []
    for mol, run in runs.items():
        cost_path = run.with_suffix(".cost.json")
        cost = json.loads(cost_path.read_text()) if cost_path.is_file() else {}
        smiles = m.topology(mol).get("smiles")
        mols.append({"name": mol, "smiles": smiles, "canonical_smiles": canonical_smiles(smiles), "ps": cost.get("simulated_ps"),
                     "seed": cost.get("seed"), "force_calls": cost.get("force_calls"),
                     "force_calls_source": cost.get("force_calls_source"), "wall_s": cost.get("wall_s"),
                     **run_temperature_check(run, temperature)})
    total = data_cost(list(runs.values()))
    engine = "openmm" if p == "mm" else m.qcfg.engine
    return {"engine": engine, "method": None if p == "mm" else m.qcfg.method, "dt_fs": m.reference().dt_fs,
            "temperature_K": temperature, "friction_per_ps": friction, "ps_per_molecule": getattr(cfg, f"{p}_train_ps"),
            "constraints": "hbonds" if p == "mm" else "none", "split": "time", "molecules": mols,
            "force_calls": total["force_calls"], "wall_s": total["wall_s"]}


def run_temperature_check(run: Path, target_K: float) -> dict[str, Any]:
    """Mean temperature (K), its deviation from ``target_K`` and the KS p-value of the kinetic
    energies against Gamma(n_dof/2, kT) of one training trajectory (bench/refcheck.py)."""

    traj = load_trajectory(run)
    r = kinetic_check(traj.velocities, traj.masses, target_K, trajectory_dof(traj))
    return {"mean_temperature_K": r["mean_temperature_K"], "temperature_dev": r["temperature_dev"],
            "ks_p_gamma": r["ks_p"], "n_dof": r["n_dof"]}


def strip_checkpoint(src: Path, dst: Path) -> dict[str, Any]:
    """Write the weights, configs, k, dt, engine and atom types of ``src`` to ``dst``; returns them."""

    ck = read_checkpoint(src)
    small = {key: ck.get(key) for key in SHIPPED_KEYS}
    save_checkpoint(dst, small)
    return small


def one_jump_table(final: dict[str, Any]) -> dict[str, Any]:
    """Test (else val) one-jump metrics of the model, "no move" and "ballistic"."""
    split = "test" if final.get("test") else "val"
    t = final.get(split) or {}
    return {"split": split, **{p: t[p] for p in ("model", "no_move", "ballistic") if p in t}}


def make_card(mode: str, k: int, ck: dict[str, Any], data: dict[str, Any], final: dict[str, Any],
              train_dir: Path, checkpoint: Path, source: Path, name: str | None = None) -> dict[str, Any]:
    """The JSON model card of one shipped model: a jump model's one-jump metrics beside the
    trivial predictors, or a shear model's (exact mode) teacher-forced |dH| before / after."""

    tc = training_cost(train_dir) or {}
    summ = final.get("train_summary", {})
    warm = json.loads((train_dir / "warm_start.json").read_text()) if (train_dir / "warm_start.json").is_file() else None
    pre = json.loads((train_dir / "pretrained.json").read_text()) if (train_dir / "pretrained.json").is_file() else None
    train_wall = tc.get("wall_s")
    if warm and train_wall is not None:
        train_wall = train_wall + warm["wall_s"] if warm.get("wall_s") is not None else None
    total_wall = train_wall + data["wall_s"] if train_wall is not None and data["wall_s"] is not None else None
    return {
        "name": name or model_name(mode, k), "mode": mode, "kind": (ck["model_config"] or {}).get("kind", "jump"),
        "engine": ck["engine"], "k": int(ck["k"]), "dt_fs": ck["dt_fs"],
        "stride_fs": int(ck["k"]) * float(ck["dt_fs"]), "atom_types": ck["atom_types"],
        "model_config": ck["model_config"], "train_config": ck["train_config"],
        "data": data,
        "training": {"steps": summ.get("steps", tc.get("steps", final.get("steps"))), "epochs": summ.get("epochs"),
                     "best_val_loss": summ.get("best_val"), "n_parameters": summ.get("n_parameters") or count_parameters(checkpoint),
                     "device": summ.get("device"), "wall_s": train_wall, "sessions": tc.get("sessions"),
                     "warm_start": warm, "pretrained": pre},
        "cost": {"force_calls": data["force_calls"], "data_wall_s": data["wall_s"], "train_wall_s": train_wall,
                 "total_wall_s": total_wall},
        "one_jump": None if final.get("kind") == "shear" else one_jump_table(final),
        "teacher_forced": teacher_forced_summary(final) if final.get("kind") == "shear" else None,
        "checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint), "source_sha256": file_sha256(source),
        "created": _dt.date.today().isoformat(), "machine": machine_info(),
    }


def count_parameters(checkpoint: Path) -> int:
    """Trainable parameters of a checkpoint's model (for cards whose training summary lacks it)."""

    model, _ = model_from_checkpoint(checkpoint)
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def _num(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def card_markdown(card: dict[str, Any]) -> str:
    """The model card for people (the JSON card in words and one table)."""
    d, t, c, oj = card["data"], card["training"], card["cost"], card.get("one_jump")
    mols = ", ".join(f"{m['name']} `{m.get('smiles')}` ({_num(m['ps'])} ps, seed {m['seed']}, mean T {_num(m.get('mean_temperature_K'))} K, "
                     f"KS p vs Gamma {_num(m.get('ks_p_gamma'), 2)})" for m in d["molecules"])
    lines = [f"# {card['name']}: {card['mode'].upper()} k = {card['k']} ({card['stride_fs']:g} fs per jump)", "",
             f"- engine: {d['engine']}{' ' + d['method'] if d.get('method') else ''}, dt {card['dt_fs']:g} fs, "
             f"{d['temperature_K']:g} K, Langevin {d['friction_per_ps']:g} /ps, constraints {d['constraints']}",
             f"- data: {mols}; {d['split']} split",
             f"- data cost: {_num(d['force_calls'])} force calls, {_num(d['wall_s'])} s wall"
             + (f" (of which {_num(d['on_policy_force_calls'])} are engine calls at the model's proposals during "
                "on-policy training, scripts/exact_onpolicy.py)" if d.get("on_policy_force_calls") else ""),
             f"- training: {_num(t['steps'])} steps, {_num(t['wall_s'])} s wall on {t.get('device') or 'n/a'}, "
             f"{_num(t['n_parameters'])} parameters ({card['model_config'].get('arch')}, hidden "
             f"{card['model_config'].get('hidden')}, {card['model_config'].get('n_layers')} layers)"
             + (f", warm-started from a first stage (k = {t['warm_start'].get('k', card['k'])}) of "
                f"{_num(t['warm_start'].get('steps'))} steps ({_num(t['warm_start'].get('wall_s'))} s; wall above: "
                f"both stages)" if t.get("warm_start") else "")
             + (f", fine-tuned from {t['pretrained']['checkpoint']} (sha256 {t['pretrained']['sha256'][:12]}…)"
                if t.get("pretrained") else ""),
             f"- total wall: {_num(c['total_wall_s'])} s; machine: {card['machine'].get('cpu')} "
             f"({card['machine'].get('cores')} cores, GPU {card['machine'].get('gpu') or 'none'})",
             f"- elements: {card['atom_types']}; checkpoint {card['checkpoint']} (sha256 {card['checkpoint_sha256'][:12]}…)"]
    if oj is None:  # exact mode: what the Metropolis test will see
        tf = card["teacher_forced"]
        lines += ["", f"Exact mode (kind: shear, n_inner {card['model_config'].get('n_inner')}, members "
                  f"{card['model_config'].get('members', 1)}): teacher-forced |dH| "
                  f"on the {tf['split']} windows, kJ/mol (untrained = velocity Verlet at {card['stride_fs']:g} fs):", "",
                  "| model | median | p90 | mean |", "|---|---|---|---|"]
        for label, r in (("untrained (velocity Verlet)", tf.get("before")), ("trained", tf.get("after"))):
            if r:
                lines.append(f"| {label} | {_num(r.get('median_abs_dH_kJ_mol'))} | {_num(r.get('p90_abs_dH_kJ_mol'))} "
                             f"| {_num(r.get('mean_abs_dH_kJ_mol'))} |")
        return "\n".join(lines) + "\n"
    lines += ["", f"One-jump {oj['split']} metrics beside the trivial predictors:", "",
             "| predictor | bond RMSE Å | angle RMSE ° | dihedral RMSE ° | position RMSE Å | velocity RMSE nm/ps |",
             "|---|---|---|---|---|---|"]
    for p in ("model", "no_move", "ballistic"):
        r = oj.get(p)
        if r:
            lines.append(f"| {p} | {_num(r.get('bond_rmse_A'))} | {_num(r.get('angle_rmse_deg'))} "
                         f"| {_num(r.get('dihedral_rmse_deg'))} | {_num(r.get('pos_rmse_A'))} "
                         f"| {_num(r.get('vel_rmse_nm_ps'))} |")
    return "\n".join(lines) + "\n"


def ship(mode: str, k: int, best: Path, final: dict[str, Any], data: dict[str, Any], out_dir: Path,
         name: str | None = None) -> Path:
    """Strip ``best`` into ``out_dir/<name>.pt`` (default ``<mode>_k<K>``) and write its cards;
    skipped when the card already describes this very ``best`` (same sha256)."""
    dst = Path(out_dir) / f"{name or model_name(mode, k)}.pt"
    card = read_card(dst) if dst.is_file() else None
    if card and card.get("source_sha256") == file_sha256(best):
        LOG.info("%s: up to date", dst)
        return dst
    out_dir.mkdir(parents=True, exist_ok=True)
    ck = strip_checkpoint(best, dst)
    card = make_card(mode, k, ck, data, final, best.parent, dst, best, name=name)
    atomic_write_json(dst.with_suffix(".json"), card)
    atomic_write_text(dst.with_suffix(".md"), card_markdown(card))
    LOG.info("%s: shipped (%s)", dst, dst.with_suffix(".md"))
    return dst


def make_models(cfg: ModelsConfig, only: list[str] | None = None) -> list[Path]:
    """Training data, training and shipping of every model of ``cfg`` (``only``: names such as
    ``mm_k8`` to limit it). Returns the shipped checkpoints."""

    cfg.validate()
    known = set(model_names(cfg))
    unknown = sorted(set(only or []) - known)
    if unknown:
        raise MdkstepError(f"--only {unknown[0]}: not a model of this config (known: {', '.join(sorted(known))})")
    set_threads(cfg.threads)
    shipped = []
    for p in cfg.modes:
        ks = [k for k in getattr(cfg, f"{p}_ks") if not only or model_name(p, k) in only]
        exact_ks = [k for k in getattr(cfg, f"{p}_exact_ks") if not only or model_name(f"{p}_exact", k) in only]
        if not ks and not exact_ks:
            continue
        m = make_mode(cfg, p)
        _, runs = training_data(m, cfg)
        data = data_summary(m, cfg, runs)
        for k in ks:
            best, final = train_one(m, cfg, k, runs)
            shipped.append(ship(p, k, best, final, data, Path(cfg.out_dir)))
        for k in exact_ks:
            best, final = train_exact_one(m, cfg, k, runs)
            if p == "qm" and cfg.qm_exact_on_policy:
                best, final, calls = on_policy_stages(m, cfg, k, best, final)
                data = {**data, "force_calls": data["force_calls"] + calls, "on_policy_force_calls": calls}
            shipped.append(ship(p, k, best, final, data, Path(cfg.out_dir), name=model_name(f"{p}_exact", k)))
    return shipped


def on_policy_stage(entry: Any, where: str):
    """An OnPolicyStage from one entry of ``qm_exact_on_policy``; a bad key is a one-line error."""

    if not isinstance(entry, dict):
        raise ValueError(f"key '{where}': {entry!r} must be a mapping of stage settings")
    try:  # a ValueError, so that load_config names the file
        return from_dict(OnPolicyStage, entry, f"key '{where}'")
    except MdkstepError as e:
        raise ValueError(str(e)) from None


def on_policy_stages(m, cfg: ModelsConfig, k: int, best: Path, final: dict[str, Any]
                     ) -> tuple[Path, dict[str, Any], int]:
    """The chained on-policy stages of ``qm_exact_on_policy`` after the exact model ``best``
    (each cached in models/exact_k<K>_onpolicy<i>); (last best.pt, its final metrics with the
    untrained map's teacher-forced |dH| as "before", every on-policy xTB call)."""

    first = m.root / "models" / f"exact_k{k}"
    for i, entry in enumerate(cfg.qm_exact_on_policy, start=1):
        out = m.root / "models" / f"exact_k{k}_onpolicy{i}"
        stage = on_policy_stage(entry, f"qm_exact_on_policy[{i - 1}]")
        if not ((out / "best.pt").is_file() and (out / "final_metrics.json").is_file()):
            LOG.info("qm exact k=%d: on-policy stage %d (%d steps, lr %g) from %s", k, i, stage.steps, stage.lr, best)
            fine_tune(best, first / "dataset.npz", first / "splits" / "train.json", out, stage, m.qcfg,
                      test_split=first / "splits" / "test.json")
        best = out / "best.pt"
    last = json.loads((best.parent / "final_metrics.json").read_text())
    return best, {**last, "teacher_forced_before": final.get("teacher_forced_before")}, on_policy_force_calls(best.parent)


def train_exact_one(m, cfg: ModelsConfig, k: int, runs: dict[str, Path]) -> tuple[Path, dict[str, Any]]:
    """The bench's ensure_exact_model for stride k on every training run of mode ``m``; (best.pt,
    final metrics). MM's HBonds constraints are read off the data (mdkstep.exact.train.rigid_bonds)."""

    out = m.root / "models" / f"exact_k{k}"
    p = m.name
    best, _ = ensure_exact_model(p, k, list(runs.values()), out, getattr(cfg, f"{p}_exact_model_config"),
                                 getattr(cfg, f"{p}_exact_train_config"), getattr(cfg, f"{p}_exact_train_overrides"),
                                 None)
    return best, json.loads((out / "final_metrics.json").read_text())
