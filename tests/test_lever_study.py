"""studies/levers/lever_study.py --smoke: a tiny ethanol study (prep, two short references, dataset,
one model per lever + a forced combination, short hybrid rollouts) writes its JSON and table."""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import ROOT


def _script():
    spec = importlib.util.spec_from_file_location("lever_study", ROOT / "studies" / "levers" / "lever_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_lever_study_smoke(tmp_path, capsys):
    mod = _script()
    assert mod.main(["--smoke", "--out", str(tmp_path), "--combo", "massdv", "internal"]) == 0
    study = json.loads((tmp_path / "lever_study.json").read_text())
    assert list(study["models"]) == ["baseline", "massdv", "internal", "combo"]
    assert study["combo"] == ["massdv", "internal"]
    combo = study["models"]["combo"]["settings"]
    assert combo["train_overrides"] == {"dv_weight": "mass", "lambda_bond": 1.0, "lambda_angle": 0.5}
    seeds = {r["settings"]["train_config"]["seed"] for r in study["models"].values()}
    steps = {r["steps"] for r in study["models"].values()}
    assert seeds == {0} and steps == {15}
    for rec in study["models"].values():
        assert {"model", "no_move", "ballistic"} <= set(rec["one_jump"])
        ro = rec["rollout"]["ethanol"]
        assert ro["force_calls_per_ps"] > 0 and ro["nan_frames"] == 0 and set(ro["T_element_K"]) == {"C", "H", "O"}
        assert ro["ratio_to_floor"]["bond_w1_A"] > 0
    md = (tmp_path / "lever_study.md").read_text()
    assert "| no move |" in md and "| +f mass-weighted dv |" in md and "| ethanol |" in md
    # a rerun reuses every trained model and rollout
    assert mod.main(["--smoke", "--out", str(tmp_path), "--combo", "massdv", "internal", "--levers", "baseline",
                     "massdv"]) == 0
    again = json.loads((tmp_path / "lever_study.json").read_text())
    assert list(again["models"]) == ["baseline", "massdv"]
    assert again["models"]["massdv"]["train_wall_s"] == study["models"]["massdv"]["train_wall_s"]


def test_lever_study_help_and_bad_lever_set(capsys):
    import pytest

    from mdkstep.utils import MdkstepError

    mod = _script()
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0 and "--max-steps" in capsys.readouterr().out
    with pytest.raises(MdkstepError, match="LEVER.KEY=VALUE"):
        mod.lever_table(["bogus.x=1"])
    assert mod.lever_table(["internal.lambda_bond=0.5", "massdv.update_geometry=false"])["internal"][1]["lambda_bond"] == 0.5
    assert mod.lever_table(["massdv.update_geometry=false"])["massdv"][2]["update_geometry"] is False
