"""Internal coordinates in torch (used by losses and metrics alike). Positions in nm.

All functions take positions (..., N, 3) and an index tensor (M, 2|3|4) and return (..., M).
"""
from __future__ import annotations

import torch


def bond_lengths(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """|x_j - x_i| for index pairs (M, 2); nm."""
    return torch.linalg.vector_norm(x[..., idx[:, 1], :] - x[..., idx[:, 0], :], dim=-1)


def bond_angles(x: torch.Tensor, idx: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Angle i-j-k at j for (M, 3) indices; radians."""
    a = x[..., idx[:, 0], :] - x[..., idx[:, 1], :]
    b = x[..., idx[:, 2], :] - x[..., idx[:, 1], :]
    cos = (a * b).sum(-1) / (torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1) + eps)
    return torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))


def dihedral_angles(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Proper dihedral i-j-k-l for (M, 4) indices; radians in (-pi, pi] (IUPAC sign)."""
    p0, p1, p2, p3 = (x[..., idx[:, c], :] for c in range(4))
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1n = b1 / (torch.linalg.vector_norm(b1, dim=-1, keepdim=True) + 1e-12)
    v = b0 - (b0 * b1n).sum(-1, keepdim=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdim=True) * b1n
    xx = (v * w).sum(-1)
    yy = (torch.cross(b1n, v, dim=-1) * w).sum(-1)
    return torch.atan2(yy, xx)


def wrap_angle(d: torch.Tensor) -> torch.Tensor:
    """Map an angle difference to (-pi, pi]."""
    return torch.atan2(torch.sin(d), torch.cos(d))
