"""The `make models` configs name exactly the models shipped under models/ (configs/models_bench.yaml
built them; configs/models.yaml and models_gpu.yaml rebuild the same set)."""
from __future__ import annotations

from pathlib import Path

import pytest

from mdkstep.config import load_config
from mdkstep.shipped import ModelsConfig, model_names

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "models").glob("*.pt"))


def test_shipped_set_is_known():
    assert SHIPPED == sorted(["mm_k4", "mm_k8", "mm_k9", "mm_k10", "mm_k12", "mm_k16", "qm_k8", "qm_k16", "qm_k32",
                              "mm_exact_k4", "qm_exact_k16"])


@pytest.mark.parametrize("name", ["models.yaml", "models_gpu.yaml", "models_bench.yaml"])
def test_models_config_names_the_shipped_models(name):
    cfg = load_config(ModelsConfig, ROOT / "configs" / name)
    assert sorted(model_names(cfg)) == SHIPPED


def test_foundation_config_names_its_models():
    """configs/models_foundation.yaml (issue 24) validates, ships into models/foundation/, and
    every model there is one of its models."""
    cfg = load_config(ModelsConfig, ROOT / "configs" / "models_foundation.yaml")
    cfg.validate()
    assert Path(cfg.out_dir) == Path("models/foundation")
    shipped = sorted(p.stem for p in (ROOT / "models" / "foundation").glob("*.pt"))
    assert set(shipped) <= set(model_names(cfg))
    assert "data/mm_train.smi" in cfg.mm_molecules and "data/qm_druglike.smi" in cfg.qm_molecules
