"""Peptide backbones from the bond graph: phi/psi, Ramachandran basins, basin transitions.

The backbone is found from the topology itself (atomic numbers + bond list of
``topology.json``), not from PDB residue names: a molecule prepared from SMILES is one ``UNK``
residue, so mdtraj's name-based ``compute_phi`` finds nothing there. Bond orders are not in
the topology, so the pattern is matched on elements and heavy-atom connectivity, with every
hydrogen an explicit atom (degree ``D`` counts all neighbours):

    C(=O)-N-CA-C(=O)-N    SMARTS  [#6D3](~[#8D1])~[#7D3]~[#6D4]~[#6D3](~[#8D1])~[#7D3]

one match per residue that has both phi (C'(i-1)-N-CA-C) and psi (N-CA-C-N(i+1)); a free
N-terminal NH3+ or C-terminal COO- residue has only one of them and is not counted.

Basin regions (degrees, phi and psi in [-180, 180)) are defined once, in ``BASINS_DEG``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from .utils import LOG

#: C(=O)-N-CA-C(=O)-N on the explicit-hydrogen bond graph (no bond orders needed).
BACKBONE_SMARTS = "[#6D3](~[#8D1])~[#7D3]~[#6D4]~[#6D3](~[#8D1])~[#7D3]"

#: Ramachandran basins of the alanine dipeptide, rectangles in degrees: name -> ((phi_lo, phi_hi),
#: (psi_lo, psi_hi)), half-open [lo, hi); lo > hi means the range wraps through +-180.
#: Centred on the usual vacuum / implicit-solvent minima: C7eq (-77.5, 89.9), C5 (-134.8, 145.9)
#: and C7ax (60.6, -72.4) of Tobias & Brooks, J. Phys. Chem. 96, 3864 (1992); alphaR near
#: (-65, -40) (Apostolakis, Ferrara & Caflisch, J. Chem. Phys. 110, 2099 (1999)). The
#: rectangles leave gaps between basins; frames in no basin are "other". The fractions and
#: the transition count are sensitive to these edges only through frames near the borders.
BASINS_DEG: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "C7eq": ((-120.0, -40.0), (20.0, 120.0)),
    "C5": ((-180.0, -120.0), (120.0, -150.0)),  # psi wraps: [120, 180) U [-180, -150)
    "alphaR": ((-120.0, -30.0), (-90.0, 0.0)),
    "C7ax": ((30.0, 120.0), (-120.0, 0.0)),
}
BASIN_NAMES: tuple[str, ...] = tuple(BASINS_DEG) + ("other",)


@dataclass
class Backbone:
    """Backbone dihedral quadruplets, one row per residue in N -> C order (0-based atom indices)."""

    phi: np.ndarray  #: (R, 4) C'(i-1), N, CA, C
    psi: np.ndarray  #: (R, 4) N, CA, C, N(i+1)

    @property
    def n_residues(self) -> int:
        return len(self.phi)

    def as_dict(self) -> dict[str, Any]:
        return {"phi_atoms": self.phi.tolist(), "psi_atoms": self.psi.tolist(), "n_residues": self.n_residues}


def _graph_mol(atomic_numbers, bonds):
    """An RDKit molecule of the bond graph: explicit atoms, single bonds, no implicit H, unsanitized."""
    from rdkit import Chem

    rw = Chem.RWMol()
    for z in atomic_numbers:
        a = Chem.Atom(int(z))
        a.SetNoImplicit(True)
        rw.AddAtom(a)
    for i, j in np.asarray(bonds, dtype=int).reshape(-1, 2):
        rw.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    mol = rw.GetMol()
    mol.UpdatePropertyCache(strict=False)
    Chem.FastFindRings(mol)
    return mol


def _chain_order(rows: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Residue matches (C', O, N, CA, C, O, N') sorted N -> C: follow N' of one residue to N of the next."""
    by_n = {r[2]: r for r in rows}
    nexts = {r[6] for r in rows}
    out: list[tuple[int, ...]] = []
    for start in sorted((r for r in rows if r[2] not in nexts), key=lambda r: r[3]):
        r = start
        while r is not None and r not in out:
            out.append(r)
            r = by_n.get(r[6])
    out += sorted((r for r in rows if r not in out), key=lambda r: r[3])  # cyclic peptides
    return out


def find_backbone(atomic_numbers, bonds) -> Backbone | None:
    """phi/psi quadruplets of every residue found in the bond graph, or None when there is none."""
    from rdkit import Chem

    mol = _graph_mol(atomic_numbers, bonds)
    matches = mol.GetSubstructMatches(Chem.MolFromSmarts(BACKBONE_SMARTS), uniquify=False)
    by_ca: dict[int, tuple[int, ...]] = {}
    for m in matches:  # the two O's are interchangeable only in atom order; one row per CA
        by_ca.setdefault(m[3], m)
    if not by_ca:
        return None
    rows = _chain_order(list(by_ca.values()))
    phi = np.array([[r[0], r[2], r[3], r[4]] for r in rows], dtype=np.int64)
    psi = np.array([[r[2], r[3], r[4], r[6]] for r in rows], dtype=np.int64)
    return Backbone(phi, psi)


def backbone_from_topology(topo: dict[str, Any], name: str = "molecule") -> Backbone | None:
    """``find_backbone`` on a ``topology.json`` dict; logs one line when there is no backbone."""
    bb = find_backbone(topo["atomic_numbers"], topo["bonds"])
    if bb is None:
        LOG.info("%s: no peptide backbone C(=O)-N-CA-C(=O)-N in the bond graph: no Ramachandran analysis", name)
    else:
        LOG.info("%s: peptide backbone with %d residue(s) having phi and psi", name, bb.n_residues)
    return bb


def phi_psi(positions_nm: np.ndarray, bb: Backbone) -> tuple[np.ndarray, np.ndarray]:
    """phi, psi (F, R) in radians, (-pi, pi], of positions (F, N, 3) nm — via structure.dihedral_angles."""
    import torch

    from .structure import dihedral_angles

    x = torch.as_tensor(np.asarray(positions_nm), dtype=torch.float64)
    phi = dihedral_angles(x, torch.as_tensor(bb.phi)).numpy()
    psi = dihedral_angles(x, torch.as_tensor(bb.psi)).numpy()
    return phi, psi


def _in_range(x_deg: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (x_deg >= lo) & (x_deg < hi) if lo < hi else (x_deg >= lo) | (x_deg < hi)


def _to_deg(a_rad: np.ndarray) -> np.ndarray:
    """Radians -> degrees in [-180, 180)."""
    return np.mod(np.degrees(np.asarray(a_rad, dtype=float)) + 180.0, 360.0) - 180.0


def assign_basins(phi_rad: np.ndarray, psi_rad: np.ndarray) -> np.ndarray:
    """Basin index into ``BASIN_NAMES`` for each (phi, psi) in radians; len(BASINS_DEG) = "other"."""
    phi, psi = _to_deg(phi_rad), _to_deg(psi_rad)
    out = np.full(phi.shape, len(BASINS_DEG), dtype=np.int64)
    for b, ((p0, p1), (s0, s1)) in enumerate(BASINS_DEG.values()):
        out[(out == len(BASINS_DEG)) & _in_range(phi, p0, p1) & _in_range(psi, s0, s1)] = b
    return out


def basin_populations(labels: np.ndarray) -> dict[str, float]:
    """Fraction of frames in each basin of ``BASIN_NAMES`` (sums to 1)."""
    labels = np.asarray(labels).ravel()
    n = max(1, labels.size)
    return {name: float(np.sum(labels == b)) / n for b, name in enumerate(BASIN_NAMES)}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """Total-variation distance 0.5 * sum |p - q| of two population dicts (0 = equal, 1 = disjoint)."""
    return 0.5 * float(sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q)))


def count_transitions(labels: np.ndarray) -> int:
    """Core-to-core transitions of one residue's basin series (F,): a transition is counted when
    the series enters a basin other than the last basin it visited. Frames in "other" (the gaps
    between basins) keep the last basin, so a flicker across a border is not counted."""
    other = len(BASINS_DEG)
    last, n = None, 0
    for b in np.asarray(labels).ravel():
        if b == other:
            continue
        if last is not None and b != last:
            n += 1
        last = int(b)
    return n


def series_summary(phi: np.ndarray, psi: np.ndarray, duration_ps: float) -> dict[str, Any]:
    """Per residue: basin populations and core-to-core transitions (also per ns) of phi/psi (F, R)
    radians sampled over ``duration_ps``."""
    labels = assign_basins(phi, psi)
    res = []
    for r in range(labels.shape[1]):
        n = count_transitions(labels[:, r])
        res.append({"populations": basin_populations(labels[:, r]), "transitions": n,
                    "transitions_per_ns": n / (duration_ps / 1000.0) if duration_ps > 0 else float("nan")})
    return {"residues": res, "n_frames": int(labels.shape[0]), "duration_ps": float(duration_ps)}


def max_residue_tv(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest over residues of the populations' total-variation distance between two summaries."""
    return max(total_variation(ra["populations"], rb["populations"]) for ra, rb in zip(a["residues"], b["residues"]))


def basin_floor(replica_summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The replica floor of ``basin_tv``: max (and [min, max]) over replica pairs of max_residue_tv."""
    vals = [max_residue_tv(a, b) for a, b in itertools.combinations(replica_summaries, 2)]
    if not vals:
        return {}
    return {"basin_tv": float(max(vals)), "basin_tv_replica": [float(min(vals)), float(max(vals))],
            "n_pairs": len(vals)}


def _frame_interval_ps(t) -> float:
    return float(np.median(np.diff(t.time_ps))) if t.n_frames > 1 else 0.0


def _trajectory_summary(t, bb: Backbone, interval_ps: float) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """series_summary of one trajectory at ``interval_ps`` (ps); also its phi, psi (F, R) radians."""
    from .metrics import subsample_to_interval

    idx = subsample_to_interval(t, interval_ps) if interval_ps > 0 else np.arange(t.n_frames)
    phi, psi = phi_psi(t.positions[idx], bb)
    return series_summary(phi, psi, len(idx) * interval_ps), phi, psi


def ramachandran_evaluation(name: str, topo: dict[str, Any], replicas: list, runs: dict[str, Any],
                            plot_path=None) -> dict[str, Any]:
    """Backbone, per-residue basin populations and transitions of every baseline replica and
    hybrid run (all at the coarsest frame interval among them), the replica floor of
    ``basin_tv`` and each run's ``basin_tv`` vs replica 0 with its ratio to the floor.

    ``runs``: label -> Trajectory. Writes the phi/psi plot to ``plot_path`` when given; a failed
    plot is logged and recorded as ``plot_error`` (never skipped silently). Returns
    {"backbone": None} for a molecule without a peptide backbone."""
    bb = backbone_from_topology(topo, name)
    if bb is None:
        return {"backbone": None, "note": "no peptide backbone C(=O)-N-CA-C(=O)-N in the bond graph"}
    interval = max(_frame_interval_ps(t) for t in [*replicas, *runs.values()])
    out: dict[str, Any] = {"backbone": bb.as_dict(), "interval_ps": interval, "basins_deg": BASINS_DEG,
                           "replicas": {}, "runs": {}}
    angles: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rep_summaries = []
    for i, t in enumerate(replicas):
        s, phi, psi = _trajectory_summary(t, bb, interval)
        rep_summaries.append(s)
        out["replicas"][f"baseline r{i}"] = s
        angles[f"baseline r{i}"] = (phi, psi)
    out["floor"] = basin_floor(rep_summaries)
    if len(replicas) < 2:
        LOG.warning("%s: one baseline replica: no replica floor for the basin populations", name)
    for label, t in runs.items():
        s, phi, psi = _trajectory_summary(t, bb, interval)
        s["basin_tv"] = max_residue_tv(s, rep_summaries[0])
        fl = out["floor"].get("basin_tv")
        s["basin_tv_ratio_to_floor"] = s["basin_tv"] / fl if fl else None
        out["runs"][label] = s
        angles[label] = (phi, psi)
    if plot_path is not None:
        out.update(_plot(name, angles, plot_path))
    return out


def _plot(name: str, angles: dict[str, tuple[np.ndarray, np.ndarray]], plot_path) -> dict[str, Any]:
    """The Ramachandran PNG (<= 5000 points per panel), or the reason it could not be drawn."""
    from . import plots

    try:
        thin = {k: (p[:: max(1, len(p) // 5000)], s[:: max(1, len(s) // 5000)]) for k, (p, s) in angles.items()}
        return {"plot": str(plots.ramachandran(thin, plot_path, regions=BASINS_DEG))}
    except Exception as e:  # noqa: BLE001 — a missing plot must say why, not stop the evaluation
        LOG.warning("%s: has a peptide backbone but no Ramachandran plot was drawn: %s: %s", name, type(e).__name__, e)
        return {"plot_error": f"{type(e).__name__}: {e}"}
