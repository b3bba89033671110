"""Model hyper-parameters (one flat dataclass, loaded from YAML by mdkstep.config)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

ARCHS = ("egnn", "transformer_egnn")
#: "jump": a direct (dx, dv) k-step model; "shear": exact mode's reversible, volume-preserving
#: learned kicks (mdkstep.model.shear.ShearKicks: ``n_inner`` inner kicks of ``arch`` networks)
KINDS = ("jump", "shear")


@dataclass
class ModelConfig:
    """Architecture of a k-step jump model. Units: nm, ps, kJ/mol."""

    arch: str = "egnn"  #: "egnn" | "transformer_egnn"
    hidden: int = 64  #: width of invariant features
    n_layers: int = 4  #: message-passing / attention layers
    cutoff_nm: float | None = 0.7  #: pair distance cutoff (nm); None = full intra-molecular graph
    max_disp_nm: float = 0.25  #: hard bound on |dx_i| (nm), reached smoothly (tanh)
    max_dvel_nm_per_ps: float = 10.0  #: hard bound on |dv_i| (nm/ps), reached smoothly
    use_forces: bool = False  #: feed the current forces (kJ/mol/nm) as input
    force_head: bool = False  #: also predict forces at the jumped positions (kJ/mol/nm)
    n_heads: int = 4  #: attention heads (transformer_egnn)
    max_hops: int = 8  #: bond-graph distances are clipped to this
    conserve_angular_momentum: bool = False  #: project dv so sum_i m_i x_i x dv_i = 0
    n_rbf: int = 16  #: Gaussian radial basis functions of pair distance
    max_z: int = 100  #: largest atomic number the embedding accepts
    rbf_max_nm: float | None = None  #: last RBF centre (nm); None = cutoff_nm, or 1.0 nm without cutoff
    #: layers see the pair geometry of the running jumped positions (EGNN coordinate updates);
    #: False = input geometry only (~20% faster forward)
    update_geometry: bool = True
    kind: str = "jump"  #: "jump" (direct dx, dv) | "shear" (exact mode: ShearKicks)
    n_inner: int = 1  #: shear only: distinct inner kick functions L (L = 1: a b a)
    #: shear only: each kick is the sum of this many networks (more capacity at one forward more per
    #: kick and member)
    members: int = 1

    #: removed keys -> their old default (mdkstep.config.drop_removed): ``velocity_output: direct``
    #: (predict v(t+k) instead of dv) measured as no help; the velocity channel predicts dv
    REMOVED: ClassVar[dict[str, Any]] = {"velocity_output": "delta"}

    def validate(self) -> None:
        """Raise ValueError on an inconsistent configuration."""
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.n_inner < 1 or self.members < 1:
            raise ValueError(f"n_inner and members must be >= 1, got {self.n_inner}, {self.members}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {list(ARCHS)}, got {self.arch!r}")
        for name in ("hidden", "n_layers", "n_heads", "max_hops", "max_z"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_rbf < 2:
            raise ValueError(f"n_rbf must be >= 2, got {self.n_rbf}")
        if self.arch == "transformer_egnn" and self.hidden % self.n_heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})")
        for name in ("cutoff_nm", "rbf_max_nm"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0 or null, got {v}")
        if not self.max_disp_nm > 0:
            raise ValueError(f"max_disp_nm must be > 0, got {self.max_disp_nm}")
        if not self.max_dvel_nm_per_ps > 0:
            raise ValueError(f"max_dvel_nm_per_ps must be > 0, got {self.max_dvel_nm_per_ps}")

    @property
    def rbf_range_nm(self) -> float:
        """Distance (nm) covered by the radial basis."""
        if self.rbf_max_nm is not None:
            return self.rbf_max_nm
        return self.cutoff_nm if self.cutoff_nm is not None else 1.0
