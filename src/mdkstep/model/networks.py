"""The equivariant networks a model is made of, by ``ModelConfig.arch`` (no model kind here,
so that ``shear`` can build its kicks from them without an import cycle)."""
from __future__ import annotations

from mdkstep.model.common import KStepModel
from mdkstep.model.config import ModelConfig
from mdkstep.model.egnn import EGNN
from mdkstep.model.transformer_egnn import TransformerEGNN


def build_network(cfg: ModelConfig) -> KStepModel:
    """Instantiate the architecture named by ``cfg.arch`` ("egnn" | "transformer_egnn")."""
    cfg.validate()
    if cfg.arch == "egnn":
        return EGNN(cfg)
    return TransformerEGNN(cfg)
