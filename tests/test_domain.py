"""The out-of-domain warning (issue 24, Build 5): analytic statistics in, one line out; and the
adaptation path it names (mdkstep-adapt) on a real engine, small."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT
from mdkstep.adapt import AdaptSpec, adapt, adapt_config
from mdkstep.hybrid.domain import ELEMENT_T_WARN, FALLBACK_WARN, RETRY_WARN, domain_signs, domain_warning
from mdkstep.model.checkpoint import read_checkpoint
from mdkstep.utils import MdkstepError

CLEAN = {"jumps_attempted": 1000, "retries": 10, "fallbacks": 0, "simulated_ps_total": 10.0,
         "temperature_per_element_K": {"C": 305.0, "H": 298.0, "O": 310.0}, "reject_reasons": {"max_force": 10}}


def test_in_distribution_statistics_do_not_warn():
    assert domain_signs(CLEAN, 300.0) == []
    assert domain_warning(CLEAN, 300.0, "models/qm_k16.pt", "CCO") is None


@pytest.mark.parametrize("change, phrase", [
    ({"retries": int(1000 * RETRY_WARN) + 20}, "retries on"),
    ({"fallbacks": int(1000 * FALLBACK_WARN) + 5}, "fallbacks on"),
    ({"temperature_per_element_K": {"C": 300.0, "O": 300.0 * (1 + ELEMENT_T_WARN) + 10}}, "O atoms at"),
])
def test_each_sign_warns_once_with_the_adapt_command(change, phrase):
    w = domain_warning({**CLEAN, **change}, 300.0, "models/mm_k8.pt", "CC(=O)Nc1ccc(O)cc1")
    assert w.startswith("WARNING: the model is outside its training domain") and phrase in w
    assert "mdkstep-adapt --checkpoint models/mm_k8.pt --smiles 'CC(=O)Nc1ccc(O)cc1'" in w
    assert "\n" not in w


def test_element_temperature_needs_a_long_enough_run():
    hot = {**CLEAN, "temperature_per_element_K": {"O": 400.0}, "simulated_ps_total": 0.5}
    assert domain_signs(hot, 300.0) == []


def test_hybridmd_stats_rates_are_read():
    # HybridMD.stats() gives rates (not counts) and simulated_ps
    s = {"retry_rate": 0.2, "fallback_rate": 0.0, "simulated_ps": 1.0, "jumps_accepted": 50}
    assert domain_signs(s, 300.0) == ["retries on 20% of jumps (> 5%)"]


def test_adapt_config_follows_the_checkpoint(tmp_path):
    ck = read_checkpoint(ROOT / "models" / "qm_k16.pt")
    cfg = adapt_config(AdaptSpec(ROOT / "models" / "qm_k16.pt", "CCOC", "methoxyethane", work_dir=tmp_path,
                                 config_dir=ROOT / "configs"), ck)
    cfg.validate()
    assert cfg.modes == ["qm"] and cfg.qm_ks == [16] and cfg.qm_dt_fs == 0.25 and cfg.qm_train_ps == 2.0
    assert cfg.qm_model_overrides["hidden"] == ck["model_config"]["hidden"]
    assert cfg.qm_pretrained.endswith("qm_k16.pt") and cfg.qm_train_overrides["max_steps"] == 1000


def test_adapt_bad_smiles_is_one_line(tmp_path):
    with pytest.raises(MdkstepError, match="SMILES"):
        adapt(AdaptSpec(ROOT / "models" / "qm_k16.pt", "C1CC(", "broken", work_dir=tmp_path,
                        config_dir=ROOT / "configs"))


@pytest.mark.slow
def test_adapt_end_to_end_keeps_step0_and_writes_a_card(tmp_path):
    """0.1 ps of GFN2-xTB data and 2 steps: the card says where it started and what it cost."""
    dst, summary = adapt(AdaptSpec(ROOT / "models" / "qm_k16.pt", "CCOC", "methoxyethane", data_ps=0.1, steps=2,
                                   work_dir=tmp_path, config_dir=ROOT / "configs"))
    card = json.loads(dst.with_suffix(".json").read_text())
    assert card["training"]["pretrained"]["checkpoint"].endswith("qm_k16.pt")
    assert card["data"]["molecules"][0]["smiles"] == "CCOC" and card["cost"]["total_wall_s"] > 0
    assert summary["data_wall_s"] > 0
    base, new = read_checkpoint(ROOT / "models" / "qm_k16.pt"), read_checkpoint(dst)
    for key in ("v_scale", "f_scale", "dx_scale", "dv_scale"):  # fine-tuning the same jump keeps the scales
        assert float(new["model_state"][key]) == float(base["model_state"][key])


@pytest.mark.slow
@pytest.mark.parametrize("smiles, name, warns", [("Cn1cnc2c1c(=O)n(C)c(=O)n2C", "caffeine", True),
                                                 ("CC(=O)Oc1ccccc1C(=O)O", "aspirin", False)])
def test_stage06_warns_only_outside_the_training_domain(tmp_path, smiles, name, warns):
    """The two-molecule models/mm_k8.pt (aspirin + paracetamol): 10 ps of 06 on caffeine (never
    seen; measured 29 % retries, 4 % fallbacks, N 46 % hot) must warn, on aspirin must not."""
    from mdkstep.cli.hybrid import main as hybrid_main
    from mdkstep.cli.prep import main as prep_main

    (tmp_path / "m.smi").write_text(f"{smiles} {name}\n")
    assert prep_main(["--smiles", str(tmp_path / "m.smi"), "--out-dir", str(tmp_path / "raw")]) == 0
    out = tmp_path / "h.npz"
    assert hybrid_main(["--checkpoint", str(ROOT / "models" / "mm_k8.pt"), "--molecule", str(tmp_path / "raw" / name),
                        "--out", str(out), "--time-ps", "10", "--equil-ps", "2", "--no-progress"]) == 0
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert bool(stats["warnings"]) == warns
    if warns:
        assert "outside its training domain" in stats["warnings"][0] and "mdkstep-adapt" in stats["warnings"][0]


def test_missing_pretrained_checkpoint_is_one_line(tmp_path):
    from mdkstep.shipped import ModelsConfig

    cfg = ModelsConfig(modes=["qm"], qm_molecules=["data/bench_qm.smi"], qm_pretrained=str(tmp_path / "none.pt"))
    with pytest.raises(ValueError, match="qm_pretrained"):
        cfg.validate()
