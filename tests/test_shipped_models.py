"""The models shipped under models/ (`make models`): every checkpoint loads, its jump is
E(3)-equivariant (rotate + reflect the inputs -> dx, dv, forces rotate), it carries only the
shipped keys, and its config matches its model card. Skips cleanly while models/ is empty;
the same checks run on the `--smoke` pipeline's output so they never go unexercised.
Plus the bench's resolution of shipped models by k."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ROOT
from helpers import random_orthogonal

SHIPPED = sorted((ROOT / "models").glob("*.pt")) + sorted((ROOT / "models" / "foundation").glob("*.pt"))
F64 = torch.float64


def chain_molecule(atom_types: list[int], n: int, seed: int) -> dict[str, np.ndarray]:
    """A bonded chain of ``n`` atoms drawn from ``atom_types`` (0.12 nm bonds; nm, nm/ps, kJ/mol/nm;
    masses ~2Z amu: any masses test the symmetry)."""
    rng = np.random.default_rng(seed)
    z = rng.choice(np.asarray(atom_types, dtype=int), size=n)
    steps = rng.normal(size=(n, 3))
    steps *= 0.12 / np.linalg.norm(steps, axis=1, keepdims=True)
    return {"z": z, "masses": np.where(z == 1, 1.008, 2.0 * z), "pos": np.cumsum(steps, axis=0),
            "vel": rng.normal(size=(n, 3)) * 0.8, "forces": rng.normal(size=(n, 3)) * 300.0,
            "bonds": np.array([[i, i + 1] for i in range(n - 1)], dtype=np.int64)}


def jump(model, mol: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    from mdkstep.model import make_graph_batch

    gb = make_graph_batch([mol["z"]], [mol["masses"]], [mol["pos"]], [mol["vel"]], [mol["forces"]], [mol["bonds"]],
                          dtype=F64)
    with torch.no_grad():
        return model(gb)


def check_shipped(path) -> None:
    """Equivariance of the jump and checkpoint == card, for one shipped checkpoint (exact
    mode's shear models: :func:`check_shipped_shear`)."""
    from mdkstep.model.checkpoint import model_from_checkpoint
    from mdkstep.shipped import SHIPPED_KEYS
    from mdkstep.utils import file_sha256
    from mdkstep.model.checkpoint import read_card

    model, ck = model_from_checkpoint(path, dtype=F64)
    assert set(ck) == set(SHIPPED_KEYS), f"{path.name}: keys {sorted(ck)} (optimizer state must be stripped)"
    check_stored_configs(path, ck)
    card = read_card(path)
    assert card is not None, f"{path.name}: no model card {path.with_suffix('.json').name}"
    for key in ("model_config", "train_config", "k", "dt_fs", "engine", "atom_types"):
        assert card[key] == ck[key], f"{path.name}: card's {key} differs from the checkpoint's"
    assert card["checkpoint_sha256"] == file_sha256(path), f"{path.name}: the card describes another file"
    assert (path.with_suffix(".md")).is_file()
    if ck["model_config"].get("kind") == "shear":
        return check_shipped_shear(path, model, ck, card)
    assert path.stem == card["name"] == f"{card['mode']}_k{ck['k']}"
    oj = card["one_jump"]
    assert {"model", "no_move", "ballistic"} <= set(oj), f"{path.name}: one-jump metrics lack a predictor"
    assert card["data"]["molecules"] and card["training"]["steps"] >= 1

    mol = chain_molecule(ck["atom_types"], 10, seed=3)
    q = random_orthogonal(7, -1.0)
    shift = np.array([2.0, -1.0, 0.5])
    moved = dict(mol, pos=mol["pos"] @ q.T + shift, vel=mol["vel"] @ q.T, forces=mol["forces"] @ q.T)
    out, out_m = jump(model, mol), jump(model, moved)
    qt = torch.as_tensor(q)
    for key in ("dx", "dv", "forces"):
        if key not in out or out[key] is None:
            continue
        ref = out[key] @ qt.T
        err = float((out_m[key] - ref).abs().max() / ref.abs().max().clamp_min(1e-300))
        assert err < 1e-6, f"{path.name}: {key} is not E(3)-equivariant (relative error {err:.2g})"
    assert float(out["dx"].abs().max()) > 0, f"{path.name}: the jump moves nothing"


def check_stored_configs(path, ck) -> None:
    """The checkpoint's stored model and train configs read with today's config classes: keys of
    removed levers are at their old defaults (mdkstep.config.drop_removed), every other stored
    value is the one the class holds (keys the checkpoint predates take their defaults)."""
    from dataclasses import asdict

    from mdkstep.config import from_dict
    from mdkstep.exact.train import ExactTrainConfig
    from mdkstep.model import ModelConfig
    from mdkstep.training.trainer import TrainConfig

    mcfg = from_dict(ModelConfig, ck["model_config"], f"{path.name}: model_config")
    cls = ExactTrainConfig if mcfg.kind == "shear" else TrainConfig
    tcfg = from_dict(cls, ck["train_config"], f"{path.name}: train_config")
    for cfg, stored in ((mcfg, ck["model_config"]), (tcfg, ck["train_config"])):
        now = asdict(cfg)
        assert {k: v for k, v in stored.items() if k not in type(cfg).REMOVED} == {k: now[k] for k in stored
                                                                                  if k in now}, path.name


def check_shipped_shear(path, kicks, ck, card) -> None:
    """An exact-mode shear model: its card says it lowered the teacher-forced |dH| (when trained
    >= 500 steps), and on a
    chain of its elements with harmonic bonds its stride is reversible (Phi R Phi = R to 1e-10)
    and its first-kick correction is E(3)-equivariant."""
    from mdkstep.model.shear import graph_template, outer_kick, shear_map

    assert path.stem == card["name"] == f"{card['mode']}_exact_k{ck['k']}" and card["kind"] == "shear"
    tf = card["teacher_forced"]
    if card["training"]["steps"] >= 500:  # a real training (the smoke's 40 steps may not help yet)
        assert tf["after"]["median_abs_dH_kJ_mol"] < tf["before"]["median_abs_dH_kJ_mol"], f"{path.name}: no gain"
    assert np.isfinite(tf["after"]["median_abs_dH_kJ_mol"])
    assert card["data"]["molecules"] and card["training"]["steps"] >= 1
    mol = chain_molecule(ck["atom_types"], 8, seed=5)
    bonds = torch.as_tensor(mol["bonds"])

    def force_fn(x: torch.Tensor):  # harmonic bonds, 2e5 kJ/mol/nm^2 about 0.12 nm (torch: differentiable)
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            r = torch.linalg.vector_norm(xg[bonds[:, 0]] - xg[bonds[:, 1]], dim=-1)
            u = (1e5 * (r - 0.12) ** 2).sum()
            (g,) = torch.autograd.grad(u, xg)
        return u.reshape(1), -g

    tmpl = graph_template(mol["z"], mol["masses"], mol["bonds"], dtype=F64)
    tau = int(ck["k"]) * float(ck["dt_fs"]) / 1000.0
    x0, v0 = torch.as_tensor(mol["pos"]), torch.as_tensor(mol["vel"])
    with torch.no_grad():
        x1, v1 = shear_map(kicks, tmpl, x0, v0, tau, force_fn)
        x2, v2 = shear_map(kicks, tmpl, x1, -v1, tau, force_fn)
    assert float((x2 - x0).abs().max()) < 1e-10 and float((v2 + v0).abs().max()) < 1e-10, f"{path.name}: not reversible"
    q = torch.as_tensor(random_orthogonal(7, -1.0))
    f = torch.as_tensor(mol["forces"])
    with torch.no_grad():
        a, a_rot = outer_kick(kicks, tmpl, x0, f, tau), outer_kick(kicks, tmpl, x0 @ q.T + 0.3, f @ q.T, tau)
    assert float((a_rot - a @ q.T).abs().max() / a.abs().max()) < 1e-6, f"{path.name}: kick not E(3)-equivariant"


@pytest.mark.skipif(not SHIPPED, reason="no models/*.pt yet (run `make models`)")
@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT / "models")) for p in SHIPPED])
def test_shipped_checkpoint(path):
    check_shipped(path)


@pytest.fixture(scope="module")
def smoke_models(tmp_path_factory):
    """The `make models --smoke` pipeline into a temporary folder (tiny data and training)."""
    import importlib.util

    tmp = tmp_path_factory.mktemp("models")
    spec = importlib.util.spec_from_file_location("make_models", ROOT / "scripts" / "make_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["--config", str(ROOT / "configs" / "models_smoke.yaml"), "--out-dir", str(tmp / "models"),
            "--work-dir", str(tmp / "work"), "--log-level", "WARNING"]
    assert mod.main(argv) == 0
    return tmp, mod, argv


@pytest.mark.slow
def test_smoke_models_pass_the_shipped_checks(smoke_models):
    tmp, _, _ = smoke_models
    paths = sorted((tmp / "models").glob("*.pt"))
    assert [p.name for p in paths] == ["mm_k4.pt", "mm_k8.pt", "qm_exact_k8.pt", "qm_k8.pt"]
    for p in paths:
        check_shipped(p)
    card = json.loads((tmp / "models" / "qm_k8.json").read_text())
    assert card["data"]["engine"] == "xtb" and card["data"]["force_calls"] > 0 and card["cost"]["total_wall_s"] > 0
    assert card["data"]["molecules"][0]["name"] == "water" and card["data"]["molecules"][0]["seed"] == 1100
    k8 = json.loads((tmp / "models" / "mm_k8.json").read_text())  # mm_finetune_by_k: k8 grown from k4's best
    assert k8["training"]["steps"] == 2 and k8["training"]["warm_start"]["steps"] == 3 and k8["training"]["warm_start"]["k"] == 4
    assert k8["train_config"]["lr"] == pytest.approx(3.0e-4) and "warm-started" in (tmp / "models" / "mm_k8.md").read_text()
    ex = json.loads((tmp / "models" / "qm_exact_k8.json").read_text())  # qm_exact_on_policy: one 2-step stage
    assert ex["train_config"]["lambda_on_policy"] == 1.0 and ex["training"]["steps"] == 2
    assert ex["training"]["warm_start"]["steps"] == 40 and ex["training"]["warm_start"]["on_policy_steps"] == 0
    assert ex["data"]["on_policy_force_calls"] == 2 * 4  # one xTB call per window and step
    assert ex["teacher_forced"]["before"]["median_abs_dH_kJ_mol"] > 0 and ex["teacher_forced"]["after"]


def test_smoke_rerun_is_cached(smoke_models):
    tmp, mod, argv = smoke_models
    before = {p.name: p.stat().st_mtime for p in (tmp / "models").glob("*")}
    assert mod.main(argv) == 0
    assert {p.name: p.stat().st_mtime for p in (tmp / "models").glob("*")} == before


def test_unknown_models_key_and_bad_entry(tmp_path):
    from mdkstep.config import load_config
    from mdkstep.shipped import ModelsConfig, combined_smi
    from mdkstep.utils import MdkstepError

    p = tmp_path / "m.yaml"
    p.write_text("mm_ks: [8]\nmm_kss: [4]\n")
    with pytest.raises(MdkstepError, match="unknown key 'mm_kss'"):
        load_config(ModelsConfig, p)
    p.write_text("qm_exact_on_policy: [{steps: 10, lrr: 1.0e-4}]\n")
    with pytest.raises(MdkstepError, match=r"m.yaml: key .qm_exact_on_policy.0.*unknown key 'lrr'"):
        load_config(ModelsConfig, p)
    p.write_text("qm_exact_on_policy: [{steps: 10}, {teacher_scale: -1.0}]\n")
    with pytest.raises(MdkstepError, match=r"m.yaml: key .qm_exact_on_policy.1.*teacher_scale.*-1"):
        load_config(ModelsConfig, p)
    p.write_text("qm_exact_on_policy: [{steps: 10, on_policy_loss: square}, {on_policy_loss: abs}]\n")
    with pytest.raises(MdkstepError, match=r"m.yaml: key .qm_exact_on_policy.1.*'on_policy_loss' was removed.*abs"):
        load_config(ModelsConfig, p)
    with pytest.raises(MdkstepError, match="ghost not in"):
        combined_smi([f"{ROOT}/data/qm_molecules.smi:water,ghost"], tmp_path / "x.smi")


def test_bench_resolves_shipped_models_by_k(tmp_path):
    from mdkstep.bench.run import resolve_checkpoint

    (tmp_path / "qm_k16.pt").write_bytes(b"x")
    assert resolve_checkpoint("qm", 16, {}, True, str(tmp_path)) == (str(tmp_path / "qm_k16.pt"), "shipped")
    assert resolve_checkpoint("qm", 8, {}, True, str(tmp_path)) == (None, "trained")
    assert resolve_checkpoint("qm", 16, {}, False, str(tmp_path)) == (None, "trained")  # --retrain
    assert resolve_checkpoint("qm", 16, {"16": "my.pt"}, True, str(tmp_path)) == ("my.pt", "given")


@pytest.mark.parametrize("name", ["models.yaml", "models_gpu.yaml", "models_bench.yaml", "models_smoke.yaml"])
def test_models_configs_load_and_name_real_molecules(name, tmp_path):
    """Every shipped models config loads (no unknown key) and its molecule entries resolve."""
    from mdkstep.config import load_config
    from mdkstep.shipped import ModelsConfig, combined_smi

    cfg = load_config(ModelsConfig, ROOT / "configs" / name)
    for mode in cfg.modes:
        entries = [e if e.startswith("/") else str(ROOT / e) for e in getattr(cfg, f"{mode}_molecules")]
        assert combined_smi(entries, tmp_path / f"{mode}.smi").read_text().count("\n") >= 2
    if name == "models.yaml":
        assert cfg.mm_ks == [4, 8, 9, 10, 12, 16] and cfg.qm_ks == [8, 16, 32] and cfg.qm_train_ps >= 20.0


def test_models_bench_config_grows_k10_from_k9():
    """configs/models_bench.yaml (behind the shipped models) lists k = 10 and grows it from k = 9's model, as the
    shipped models/mm_k10 card says."""
    from mdkstep.config import load_config
    from mdkstep.shipped import ModelsConfig

    cfg = load_config(ModelsConfig, ROOT / "configs" / "models_bench.yaml")
    assert 10 in cfg.mm_ks and (cfg.mm_finetune_by_k.get(10) or cfg.mm_finetune_by_k.get("10"))["from_k"] == 9
    card = json.loads((ROOT / "models" / "mm_k10.json").read_text())
    ft = cfg.mm_finetune_by_k.get(10) or cfg.mm_finetune_by_k.get("10")
    assert card["training"]["warm_start"]["k"] == 9
    assert all(card["train_config"][key] == pytest.approx(ft[key]) for key in ("max_steps", "lr", "eval_every"))
