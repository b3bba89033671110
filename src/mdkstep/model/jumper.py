"""A trained k-step model as the hybrid integrator's jumper (the only torch code the hybrid
integrator meets). Units: nm, nm/ps, kJ/(mol nm)."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from mdkstep.model.fast import FastEGNN, supports
from mdkstep.model.graph import make_graph_batch


class ModelJumper:
    """A trained k-step model as a :class:`Jumper`: one forward for all R replicas.

    Inputs are prepared as in training: COM-centred positions, COM-free velocities, the exact
    forces (only when the model uses them). The batch topology is built once per R and reused.
    ``ms`` holds the wall milliseconds of every call (input conversion + forward + output).

    ``fast`` (default): models and molecules that :func:`mdkstep.model.fast.supports` run
    through :class:`~mdkstep.model.fast.FastEGNN` (one per R, built on first use), the same
    outputs to float32 rounding at about half the cost; the others, and ``fast=False``, through
    the model's own forward. The fast path reads the weights when it is built: make a new
    jumper after changing the model.
    """

    def __init__(self, model, z: np.ndarray, masses: np.ndarray, bonds: np.ndarray, device: str = "cpu",
                 fast: bool = True):
        import torch

        self.model = model.eval()
        self.device = torch.device(device)
        self.model.to(self.device)
        self.dtype = next(model.parameters()).dtype
        self.z = np.asarray(z, dtype=np.int64)
        self.masses = np.asarray(masses, dtype=float)
        self.bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        self.use_forces = bool(model.config.use_forces)
        self._templates: dict[int, Any] = {}
        self.fast = bool(fast) and supports(self.model, len(self.z))
        self._fast: dict[int, FastEGNN] = {}
        self.ms: list[float] = []
        self.setup_ms: list[float] = []  # building a fast path (once per R), not in ``ms``

    @property
    def ms_per_jump(self) -> float:
        return float(np.mean(self.ms)) if self.ms else float("nan")

    def _template(self, n_rep: int):
        if n_rep not in self._templates:

            n = len(self.z)
            zeros = np.zeros((n, 3))
            self._templates[n_rep] = make_graph_batch(
                [self.z] * n_rep, [self.masses] * n_rep, [zeros] * n_rep, [zeros] * n_rep,
                [zeros] * n_rep if self.use_forces else None, [self.bonds] * n_rep,
                max_hops=self.model.config.max_hops, dtype=self.dtype, device=self.device)
        return self._templates[n_rep]

    def __call__(self, x: np.ndarray, v: np.ndarray, f: np.ndarray) -> tuple:
        import torch

        t0 = time.perf_counter()
        n_rep, n = x.shape[:2]
        if self.fast:
            fwd = self._fast.get(n_rep)
            if fwd is None:
                fwd = self._fast[n_rep] = FastEGNN(self.model, self.z, self.masses, self.bonds, n_rep)
                t1 = time.perf_counter()  # building (and tracing) it is set-up, not a jump: setup_ms
                self.setup_ms.append(1000.0 * (t1 - t0))
                t0 = t1
            dx, dv, fp = fwd(x, v, f)
            self.ms.append(1000.0 * (time.perf_counter() - t0))
            return dx, dv, fp
        m = self.masses
        xc = x - (np.einsum("rij,i->rj", x, m) / m.sum())[:, None]
        vc = v - (np.einsum("rij,i->rj", v, m) / m.sum())[:, None]

        def tens(a: np.ndarray):
            return torch.as_tensor(np.ascontiguousarray(a.reshape(-1, 3)), device=self.device).to(self.dtype)

        batch = replace(self._template(n_rep), pos=tens(xc), vel=tens(vc),
                        forces=tens(f) if self.use_forces else None)
        with torch.inference_mode():
            out = self.model(batch)
        dx = out["dx"].to("cpu", torch.float64).numpy().reshape(n_rep, n, 3)
        dv = out["dv"].to("cpu", torch.float64).numpy().reshape(n_rep, n, 3)
        fp = out.get("forces")
        fp = fp.to("cpu", torch.float64).numpy().reshape(n_rep, n, 3) if fp is not None else None
        self.ms.append(1000.0 * (time.perf_counter() - t0))
        return dx, dv, fp
