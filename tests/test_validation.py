"""Issue 13, defects 6, 9 and 11: a guard that sees a frozen molecule, writability checked before
any work, and config / .smi validation with one-line errors that name the file, line or key."""
from __future__ import annotations

import json
from argparse import Namespace

import numpy as np
import pytest
import torch

from conftest import load_script
from mdkstep.config import load_config
from mdkstep.hybrid import HybridConfig
from mdkstep.baselines.openmm_md import MDConfig
from mdkstep.utils import MdkstepError


def one_line_error(script: str, argv: list[str], capsys) -> str:
    """Run a numbered script as its CLI does; assert exit 2 and exactly one stderr line; return it."""
    from mdkstep.config import run_cli

    with pytest.raises(SystemExit) as exc:
        run_cli(load_script(script).main, argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ------------------------------------------------------------------------------ 6: frozen guard

def test_smooth_clamp_does_not_overflow_to_zero_in_float32():
    from mdkstep.model.common import smooth_clamp

    u = torch.tensor([[3e19, 3e19, 3e19], [-1.5e19, 0.0, 0.0], [0.0, 1e3, 0.0]], dtype=torch.float32)
    out = smooth_clamp(u, torch.zeros(3, dtype=torch.long), 1, 0.25)
    norms = out.norm(dim=-1)
    assert torch.isfinite(out).all()
    assert 0.24 < float(norms[0]) < 0.25 and float(norms[1]) > 0.05  # old code: exactly 0
    assert torch.allclose(out[0] / norms[0], torch.full((3,), 3 ** -0.5))  # direction kept


def test_model_with_weights_times_100_still_moves():
    from helpers import batch_of, random_molecule

    from mdkstep.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="egnn", update_geometry=False))
    model.set_normalization(v_scale=0.7, f_scale=300.0, dx_scale=0.05, dv_scale=1.5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(100.0)
        out = model(batch_of([random_molecule(9, 0)], dtype=torch.float32))
    assert torch.isfinite(out["dx"]).all() and float(out["dx"].abs().max()) > 0.05  # old code: exactly 0
    assert float(out["dv"].abs().max()) > 1.0


class ZeroJumper:
    """A model gone wrong: predicts no motion at all."""

    def __call__(self, x, v, f):
        return np.zeros_like(x), np.zeros_like(v)


def test_zero_jump_is_rejected_as_frozen_without_force_calls(tmp_path):
    from helpers import HarmonicLattice, cfg, run, start

    eng = HarmonicLattice()
    c = cfg(corrector="kick", max_attempts=2)
    x0, v0 = start(1)
    stats = run(tmp_path, eng, ZeroJumper(), c, x0, v0, 6)
    assert stats["jumps_accepted"] == 0 and stats["fallbacks"] == 6
    assert stats["reject_reasons"]["frozen"] == 12
    assert stats["force_calls"] == 1 + 6 * c.k  # the guard spends no force call on a frozen jump


def test_run_summary_warns_loudly_on_fallbacks(tmp_path, capsys):
    from helpers import HarmonicLattice, cfg, start

    from mdkstep.cli.hybrid import run_and_report

    eng = HarmonicLattice()
    c = cfg(corrector="kick", max_attempts=1)
    x0, v0 = start(1)
    model = tmp_path / "zero-model.pt"
    model.write_bytes(b"a model that predicts no motion")
    args = Namespace(out=tmp_path / "h.npz", time_ps=10 * c.cycle_ps, replicas=1, seed=0, overwrite=True,
                     no_progress=True, checkpoint=model)
    stats = run_and_report(args, eng, ZeroJumper(), c, x0, v0, "lattice", {}, {}, "cpu")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "WARNING: the model is outside its training domain" in line and "fallbacks on 100.0% of jumps" in line
    assert f"mdkstep-adapt --checkpoint {model}" in line
    assert "frozen 10" in line
    saved = json.loads((tmp_path / "h.stats.json").read_text())
    assert saved["fallback_fraction"] == 1.0 and saved["warnings"] == stats["warnings"] and stats["warnings"]


# ------------------------------------------------------------------------------ 11: configs

@pytest.mark.parametrize("text, cls, message", [
    ("dt_fs: 2.0\ntemperature_K: 300\ndt_fs: 1.0\n", MDConfig, r"c.yaml: line 3 .*duplicate key 'dt_fs' \(first on line 1\)"),
    ("- dt_fs\n- 2.0\n", MDConfig, r"c.yaml: expected a mapping of keys to values at top level, found a YAML list"),
    ("delta_scale: .inf\n", HybridConfig, r"c.yaml: key 'delta_scale': expected a finite number, got inf"),
    ("temperature_K: .nan\n", MDConfig, r"c.yaml: key 'temperature_K': expected a finite number, got nan"),
    ("temperature_K: -5\n", MDConfig, r"c.yaml: key 'temperature_K': a temperature must be > 0 K, got -5.0"),
    ("temperature_K: 0\n", HybridConfig, r"c.yaml: key 'temperature_K': a temperature must be > 0 K"),
    ("k: !!python/object/apply:os.system ['true']\n", HybridConfig, r"c.yaml: line 1 invalid YAML .*python/object"),
])
def test_bad_config_file_is_one_named_error(tmp_path, text, cls, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(MdkstepError, match=message):
        load_config(cls, p)


@pytest.mark.parametrize("item, message", [
    ("k=!!python/object/apply:os.system ['true']", r"--set \"k=.*\": invalid value \(line 1 could not determine a constructor"),
    ("dt_fs=[1,", r"--set 'dt_fs=\[1,': invalid value"),
    ("delta_scale=1e999", r"key 'delta_scale': expected a finite number, got inf"),
    ("=3", r"--set '=3': empty key"),
])
def test_bad_set_value_is_one_named_error(item, message):
    with pytest.raises(MdkstepError, match=message):
        load_config(HybridConfig, None, set_items=[item])


def test_set_python_tag_via_script_is_one_line(tmp_path, capsys):
    line = one_line_error("00_prep_mols", ["--smiles", str(tmp_path / "x.smi"), "--out-dir", str(tmp_path / "raw"),
                                           "--set", "seed=!!python/object/apply:os.getpid []"], capsys)
    assert "--set 'seed=!!python/object/apply:os.getpid []': invalid value" in line


# ------------------------------------------------------------------------------ 11: .smi input

def test_empty_smi_is_an_error(tmp_path, capsys):
    smi = tmp_path / "empty.smi"
    smi.write_text("# nothing here\n\n")
    line = one_line_error("00_prep_mols", ["--smiles", str(smi), "--out-dir", str(tmp_path / "raw")], capsys)
    assert line == f"error: {smi}: no molecules (expected 'SMILES name' lines)"


def test_extra_tokens_after_the_name_are_an_error(tmp_path):
    from mdkstep.molecule.prep import read_smi

    p = tmp_path / "m.smi"
    p.write_text("CCO ethanol\nCCC propane gas phase\nC methane # a comment\n")
    entries, errors = read_smi(p)
    assert [e.name for e in entries] == ["ethanol", "methane"]
    assert errors == [f"{p}:2: extra text 'gas phase' after the name 'propane' "
                      "(one 'SMILES name' per line; '#' starts a comment)"]


def test_only_with_an_unknown_name_is_an_error(tmp_path, capsys):
    smi = tmp_path / "m.smi"
    smi.write_text("CCO ethanol\n")
    line = one_line_error("00_prep_mols", ["--smiles", str(smi), "--out-dir", str(tmp_path / "raw"),
                                           "--only", "ethanol", "etanol"], capsys)
    assert "--only 'etanol': no molecule of that name in" in line and "(names: ethanol)" in line


@pytest.mark.slow
def test_undefined_stereo_is_warned_and_recorded(tmp_path, caplog):
    from mdkstep.molecule.prep import PrepConfig, SmiEntry, prepare_from_smiles, undefined_stereo
    from mdkstep.utils import LOG

    LOG.propagate = True  # let caplog see the project logger
    try:
        with caplog.at_level("WARNING", logger="mdkstep"):
            out = prepare_from_smiles(SmiEntry(3, "CC(O)CC", "butanol"), tmp_path, PrepConfig(minimize=False))
    finally:
        LOG.propagate = False
    info = json.loads((out / "topology.json").read_text())
    stereo = info["extra"]["stereo"]
    assert stereo["undefined"] == ["atom 1 (C)"] and "@" in stereo["built_stereoisomer"]
    assert any("line 3: butanol: SMILES CC(O)CC leaves stereo undefined (atom 1 (C))" in r.getMessage()
               for r in caplog.records)
    assert undefined_stereo("C[C@H](O)CC", None) is None


# ------------------------------------------------------------------------------ 9: writability first

@pytest.fixture
def blocked(tmp_path):
    """An output path under a regular file: never writable (also as root)."""
    f = tmp_path / "a_file"
    f.write_text("x")
    return f / "sub"


def test_00_checks_out_dir_before_preparing(tmp_path, blocked, capsys):
    smi = tmp_path / "m.smi"
    smi.write_text("CCO ethanol\n")
    line = one_line_error("00_prep_mols", ["--smiles", str(smi), "--out-dir", str(blocked)], capsys)
    assert line.startswith(f"error: {blocked}: --out-dir is not writable")


@pytest.mark.parametrize("script", ["05_eval_drift_rdfs", "05b_eval_qm"])
def test_05_checks_out_dir_before_evaluating(tmp_path, blocked, capsys, script):
    (tmp_path / "runs").mkdir()
    line = one_line_error(script, ["--baseline", str(tmp_path), "--hybrid-runs", str(tmp_path / "runs"),
                                   "--out-dir", str(blocked)], capsys)
    assert line.startswith(f"error: {blocked}: --out-dir is not writable")


@pytest.mark.parametrize("script, extra", [
    ("06_hybrid_integrate", ["--molecule", "no_such_molecule"]),
    ("06b_hybrid_integrate_qm", ["--start-from", "no_such_baseline.npz"]),
])
def test_06_checks_out_before_any_work(tmp_path, blocked, capsys, script, extra):
    line = one_line_error(script, ["--checkpoint", "no_such.pt", "--out", str(blocked / "h.npz"), *extra], capsys)
    assert line.startswith(f"error: {blocked}: folder of the --out is not writable")


def test_05_checks_the_one_jump_inputs_before_evaluating(tmp_path, capsys):
    (tmp_path / "runs" / "water").mkdir(parents=True)
    (tmp_path / "runs" / "water" / "k4.npz").write_bytes(b"not evaluated: the checkpoint is checked first")
    line = one_line_error("05_eval_drift_rdfs", ["--baseline", str(tmp_path / "base"), "--hybrid-runs",
                                                 str(tmp_path / "runs"), "--out-dir", str(tmp_path / "eval"),
                                                 "--checkpoint", str(tmp_path / "none.pt"), "--dataset",
                                                 str(tmp_path / "none.npz")], capsys)
    assert "none.pt" in line and "not found" in line


@pytest.mark.parametrize("script, env, message", [
    ("run_qm_trajectories.sh", {"MOLECULES": "water bogus"}, "error: MOLECULES: 'bogus' is not a molecule name in"),
    ("run_hybrid_qm.sh", {"MOLECULES": "ghost"}, "error: MOLECULES: 'ghost' has no baseline"),
])
def test_shell_scripts_refuse_unknown_molecules(tmp_path, script, env, message):
    import os
    import subprocess

    from conftest import ROOT

    smi = tmp_path / "m.smi"
    smi.write_text("O water\n")
    r = subprocess.run(["bash", str(ROOT / script)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "OUT": str(tmp_path / "out"), "SMI": str(smi), "PY": "false", **env})
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and message in r.stderr


# ------------------------------------------- the robustness probe's findings (tools/probe_robustness.py)

def test_binary_smi_is_one_line_error(tmp_path, capsys):
    smi = tmp_path / "bin.smi"
    smi.write_bytes(b"\x00\xff\xfe binary\n")
    line = one_line_error("00_prep_mols", ["--smiles", str(smi), "--out-dir", str(tmp_path / "raw")], capsys)
    assert line == f"error: {smi}: not a text .smi file (byte 1 is not UTF-8)"


def test_prep_negative_minimize_iterations_is_refused(tmp_path):
    from mdkstep.molecule.prep import PrepConfig

    with pytest.raises(MdkstepError, match=r"key 'minimize_max_iterations': must be >= 0 \(0 = until converged\), got -3"):
        load_config(PrepConfig, None, None, ["minimize_max_iterations=-3"])


def test_truncated_system_xml_is_one_line_error(prepared, tmp_path):
    import shutil

    from mdkstep.molecule.system import from_molecule_dir

    d = tmp_path / "ethanol"
    shutil.copytree(prepared / "ethanol", d)
    x = (d / "system.xml").read_text()
    (d / "system.xml").write_text(x[: len(x) // 2])
    with pytest.raises(MdkstepError, match=r"ethanol/system\.xml: not a readable OpenMM System XML .*re-run "
                                           r"src/00_prep_mols\.py") as e:
        from_molecule_dir(d).openmm_system()
    assert "\n" not in str(e.value)


def test_02_nan_fractions_are_refused(tmp_path, capsys):
    line = one_line_error("02_make_dataset", ["--md-root", str(tmp_path), "--out-root", str(tmp_path / "d"),
                                              "--splits-dir", str(tmp_path / "s"), "--fractions", "nan", "0.5", "0.5"],
                          capsys)
    assert line == "error: --fractions [nan, 0.5, 0.5]: must be >= 0 and sum to 1"


def test_01_negative_time_ps_names_the_flag(prepared, tmp_path, capsys):
    line = one_line_error("01_run_md_baselines", ["--molecule", str(prepared / "ethanol"), "--out", str(tmp_path),
                                                  "--time-ps", "-1"], capsys)
    assert line == "error: --time-ps must be > 0 ps, got -1.0"


def test_05b_checks_qm_config_and_plain_dts_even_without_timing(tmp_path, capsys):
    (tmp_path / "hyb" / "water").mkdir(parents=True)
    (tmp_path / "hyb" / "water" / "k4.npz").write_bytes(b"x")
    dup = tmp_path / "dup.yaml"
    dup.write_text("temperature_K: 300\ntemperature_K: 310\n")
    base = ["--baseline", str(tmp_path / "md"), "--hybrid-runs", str(tmp_path / "hyb"), "--out-dir", str(tmp_path / "e")]
    line = one_line_error("05b_eval_qm", base + ["--no-timing", "--qm-config", str(dup)], capsys)
    assert f"{dup}: line 2 invalid YAML (duplicate key 'temperature_K'" in line
    line = one_line_error("05b_eval_qm", base + ["--plain-dts", "nan"], capsys)
    assert line == "error: --plain-dts [nan]: every step must be a finite number > 0 fs"
