"""E(3)-equivariant k-step jump models (pure PyTorch). Units: nm, ps, kJ/mol, amu."""
from __future__ import annotations

from .common import KStepModel, freeze_first_layers
from .config import ModelConfig
from .egnn import EGNN
from .graph import GraphBatch, graph_hops, make_graph_batch
from .jumper import ModelJumper
from .transformer_egnn import TransformerEGNN

__all__ = [
    "ModelConfig", "GraphBatch", "build_model", "make_graph_batch", "graph_hops",
    "KStepModel", "EGNN", "TransformerEGNN", "freeze_first_layers", "ModelJumper",
]


def build_model(cfg: ModelConfig) -> KStepModel:
    """Instantiate the architecture named by ``cfg.arch`` ("egnn" | "transformer_egnn");
    ``cfg.kind == "shear"``: exact mode's :class:`~mdkstep.model.shear.ShearKicks` of them."""
    cfg.validate()
    if cfg.kind == "shear":
        from .shear import ShearKicks

        return ShearKicks(cfg, n_inner=cfg.n_inner, members=cfg.members)
    if cfg.arch == "egnn":
        return EGNN(cfg)
    return TransformerEGNN(cfg)
