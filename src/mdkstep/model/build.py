"""A model from its config: a plain k-step network, or exact mode's shear kicks of them."""
from __future__ import annotations

from mdkstep.model.common import KStepModel
from mdkstep.model.config import ModelConfig
from mdkstep.model.networks import build_network
from mdkstep.model.shear import ShearKicks


def build_model(cfg: ModelConfig) -> KStepModel:
    """Instantiate ``cfg``: ``kind == "shear"`` gives exact mode's :class:`ShearKicks`,
    else the network of ``cfg.arch`` ("egnn" | "transformer_egnn")."""
    cfg.validate()
    if cfg.kind == "shear":
        return ShearKicks(cfg, n_inner=cfg.n_inner, members=cfg.members)
    return build_network(cfg)
