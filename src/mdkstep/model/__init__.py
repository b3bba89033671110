"""E(3)-equivariant k-step jump models (pure PyTorch). Units: nm, ps, kJ/mol, amu."""
from __future__ import annotations

from mdkstep.model.build import build_model
from mdkstep.model.common import KStepModel, freeze_first_layers
from mdkstep.model.config import ModelConfig
from mdkstep.model.egnn import EGNN
from mdkstep.model.graph import GraphBatch, graph_hops, make_graph_batch
from mdkstep.model.jumper import ModelJumper
from mdkstep.model.transformer_egnn import TransformerEGNN

__all__ = [
    "ModelConfig", "GraphBatch", "build_model", "make_graph_batch", "graph_hops",
    "KStepModel", "EGNN", "TransformerEGNN", "freeze_first_layers", "ModelJumper",
]
