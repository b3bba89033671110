"""`make quickstart` (mdkstep.cli.quickstart): the shipped defaults load, and the product run
ends in one summary table, here on the benchmark's tiny setting."""
from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT
from helpers import tiny_bench_config

from mdkstep.cli.quickstart import PARTS, build_parser, part_command
from mdkstep.config import load_config
from mdkstep.pipeline.config import BenchConfig


def test_shipped_quickstart_config_uses_the_shipped_models():
    cfg = load_config(BenchConfig, ROOT / "configs/quickstart.yaml")
    cfg.validate()
    assert cfg.use_shipped_models and not cfg.mm_fixed_k_rows
    for mode, ks in (("mm", cfg.mm_ks), ("qm", cfg.qm_ks)):
        for k in ks:
            assert (ROOT / cfg.models_dir / f"{mode}_k{k}.pt").is_file(), f"{mode}_k{k}: no shipped model"


def test_each_part_switches_the_other_mode_off(tmp_path):
    args = build_parser().parse_args(["--set", "mm_time_ps=5"])
    cmds = {m: part_command(m, off, args, tmp_path) for m, off in PARTS}
    assert "qm_smiles=null" in cmds["mm"] and "mm_smiles=null" in cmds["qm"]
    assert all("mm_time_ps=5" in c and str(tmp_path / m) in c for m, c in cmds.items())


@pytest.mark.slow
def test_quickstart_end_to_end_on_the_tiny_bench(tmp_path, capsys):
    from mdkstep.cli.quickstart import main

    cfg = tmp_path / "quick.yaml"
    cfg.write_text(yaml.safe_dump(tiny_bench_config(tmp_path)))
    assert main(["--config", str(cfg), "--out-dir", str(tmp_path / "qs"), "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    table = [ln for ln in out.splitlines() if ln.startswith("| MM") or ln.startswith("| QM")]
    recs = sum(len(json.loads((tmp_path / "qs" / m / "bench.json").read_text())["records"]) for m, _ in PARTS)
    assert len(table) == recs and (tmp_path / "qs" / "summary.md").is_file()
    assert "faithful" in out and "Where to look" in out
