"""Molecular graphs for the k-step models: bond-hop distances and batched full graphs.

Units: positions nm, velocities nm/ps, forces kJ/(mol nm), masses amu.

Edge convention (as in PyG): ``edge_index[0]`` is the sending atom j, ``edge_index[1]`` the
receiving atom i; messages j -> i are summed at i, and the relative vector is
``r_ij = x_i - x_j``. Every molecule contributes all its ordered pairs i != j (the full
graph); a model applies its own distance cutoff.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path

ArrayLike = np.ndarray | torch.Tensor


def graph_hops(n_atoms: int, bonds: np.ndarray, max_hops: int) -> np.ndarray:
    """Shortest bond-path distance between all atom pairs, (n_atoms, n_atoms) int64.

    ``bonds`` is (n_bonds, 2) of atom indices. Distances are clipped to ``max_hops``;
    atoms in disconnected fragments get ``max_hops``. The diagonal is 0.
    """
    if max_hops < 1:
        raise ValueError(f"max_hops must be >= 1, got {max_hops}")
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if bonds.size and (bonds.min() < 0 or bonds.max() >= n_atoms):
        raise ValueError(f"bond index out of range for {n_atoms} atoms")
    ones = np.ones(len(bonds), dtype=np.float64)
    adj = coo_matrix((ones, (bonds[:, 0], bonds[:, 1])), shape=(n_atoms, n_atoms)).tocsr()
    dist = shortest_path(adj, method="D", directed=False, unweighted=True)
    dist[~np.isfinite(dist)] = max_hops
    return np.minimum(dist, max_hops).astype(np.int64)


@dataclass
class GraphBatch:
    """A batch of molecules as one disconnected graph (torch tensors).

    z (N,) atomic numbers; masses (N,) amu; pos (N,3) nm; vel (N,3) nm/ps;
    forces (N,3) kJ/(mol nm) or None; batch (N,) molecule id in [0, n_graphs);
    edge_index (2,E) all ordered intra-molecular pairs (row 0 = sender j, row 1 = receiver i);
    edge_hops (E,) bond-graph distance of each pair, clipped to max_hops;
    bond_index (2,B) bonded pairs (global atom indices, each bond once).
    """

    z: torch.Tensor
    masses: torch.Tensor
    pos: torch.Tensor
    vel: torch.Tensor
    forces: torch.Tensor | None
    batch: torch.Tensor
    n_graphs: int
    edge_index: torch.Tensor
    edge_hops: torch.Tensor
    bond_index: torch.Tensor

    @property
    def n_atoms(self) -> int:
        """Total number of atoms in the batch."""
        return int(self.z.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "GraphBatch":
        """New batch on ``device``; floating tensors cast to ``dtype`` (integers kept)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                if v.is_floating_point():
                    v = v.to(device=device, dtype=dtype)
                elif device is not None:
                    v = v.to(device=device)
            out[f.name] = v
        return replace(self, **out)


# ---------------------------------------------------------------- topology cache
_TOPO_CACHE: "OrderedDict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]]" = OrderedDict()
_TOPO_CACHE_MAX = 4096


def _molecule_topology(z: np.ndarray, bonds: np.ndarray, max_hops: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edge_index (2,E), hops (E,), bonds (2,B)) of one molecule, local indices; cached
    by (atomic numbers, bond list, max_hops)."""
    key = (z.tobytes(), bonds.tobytes(), max_hops)
    hit = _TOPO_CACHE.get(key)
    if hit is not None:
        _TOPO_CACHE.move_to_end(key)
        return hit
    n = len(z)
    hops = graph_hops(n, bonds, max_hops)
    i, j = np.nonzero(~np.eye(n, dtype=bool))  # ordered pairs i != j
    edge_index = np.stack([j, i]).astype(np.int64)  # sender j, receiver i
    topo = (edge_index, hops[i, j].astype(np.int64), np.ascontiguousarray(bonds.T))
    _TOPO_CACHE[key] = topo
    if len(_TOPO_CACHE) > _TOPO_CACHE_MAX:
        _TOPO_CACHE.popitem(last=False)
    return topo


def _np(x: ArrayLike, dtype: type | None = None) -> np.ndarray:
    """NumPy view of an array or (CPU-copied) tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _cat_float(xs: Sequence[ArrayLike], dtype: torch.dtype, width: int | None) -> torch.Tensor:
    """Concatenate per-molecule arrays (n_i[, width]) into one tensor of ``dtype``."""
    if all(isinstance(x, np.ndarray) for x in xs):
        arr = np.concatenate([x.reshape(-1, width) if width else x.reshape(-1) for x in xs])
        return torch.from_numpy(arr).to(dtype)
    ts = [torch.as_tensor(x) for x in xs]
    return torch.cat([t.reshape(-1, width) if width else t.reshape(-1) for t in ts]).to(dtype)


def make_graph_batch(
    z_list: Sequence[ArrayLike],
    masses_list: Sequence[ArrayLike],
    pos_list: Sequence[ArrayLike],
    vel_list: Sequence[ArrayLike],
    forces_list: Sequence[ArrayLike] | None,
    bonds_list: Sequence[ArrayLike],
    max_hops: int = 8,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> GraphBatch:
    """Batch molecules of any sizes into one :class:`GraphBatch`.

    Per molecule: z (n,) atomic numbers, masses (n,) amu, pos (n,3) nm, vel (n,3) nm/ps,
    forces (n,3) kJ/(mol nm) (``forces_list`` None for none), bonds (n_bonds,2) atom indices.
    Inputs may be NumPy arrays or torch tensors. Floating tensors get ``dtype``
    (default: torch's default dtype). Molecule topologies are cached, so repeated molecules
    cost only array concatenation.
    """
    n_mol = len(z_list)
    lists = [masses_list, pos_list, vel_list, bonds_list] + ([forces_list] if forces_list is not None else [])
    if n_mol == 0 or any(len(x) != n_mol for x in lists):
        raise ValueError("make_graph_batch: need the same non-zero number of entries in every list")
    dtype = dtype or torch.get_default_dtype()
    zs = [_np(z, np.int64).reshape(-1) for z in z_list]
    counts = np.array([len(z) for z in zs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    eis, hops, bis = [], [], []
    for z, b, off in zip(zs, bonds_list, offsets):
        b = _np(b, np.int64).reshape(-1, 2)
        ei, hp, bi = _molecule_topology(z, b, max_hops)
        eis.append(ei + off)
        hops.append(hp)
        bis.append(bi + off)
    n_total = int(counts.sum())
    pos = _cat_float(pos_list, dtype, 3)
    vel = _cat_float(vel_list, dtype, 3)
    if pos.shape[0] != n_total or vel.shape[0] != n_total:
        raise ValueError("make_graph_batch: positions/velocities do not match the atomic numbers")
    forces = _cat_float(forces_list, dtype, 3) if forces_list is not None else None
    if forces is not None and forces.shape[0] != n_total:
        raise ValueError("make_graph_batch: forces do not match the atomic numbers")
    masses = _cat_float(masses_list, dtype, None)
    if masses.shape[0] != n_total:
        raise ValueError("make_graph_batch: masses do not match the atomic numbers")
    gb = GraphBatch(
        z=torch.from_numpy(np.concatenate(zs)),
        masses=masses,
        pos=pos,
        vel=vel,
        forces=forces,
        batch=torch.from_numpy(np.repeat(np.arange(n_mol, dtype=np.int64), counts)),
        n_graphs=n_mol,
        edge_index=torch.from_numpy(np.concatenate(eis, axis=1)),
        edge_hops=torch.from_numpy(np.concatenate(hops)),
        bond_index=torch.from_numpy(np.concatenate(bis, axis=1)),
    )
    return gb.to(device) if device is not None else gb
