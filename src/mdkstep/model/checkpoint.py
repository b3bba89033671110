"""Model checkpoints: plain tensors + config dicts, saved atomically, loaded with weights_only=True.

Layout of a checkpoint dict:
    model_state     state_dict (tensors; includes the normalization buffers)
    model_config    ModelConfig as a dict; its ``kind`` ("jump" | "shear") says which class
                    (absent in checkpoints written before exact mode: "jump")
    train_config    TrainConfig as a dict (may be empty)
    k               jump length in integrator steps
    dt_fs           integrator step of the training data (fs)
    engine          engine of the training data ("openmm", "xtb", ...)
    atom_types      sorted atomic numbers seen in training
    step, epoch, best_val, optimizer, scheduler, batch_in_epoch (training state; optional)
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mdkstep.config import drop_removed, from_dict
from mdkstep.model import ModelConfig, build_model
from mdkstep.utils import MdkstepError, atomic_path


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with torch.save to a temporary file, then rename (atomic)."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (weights_only=True); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise MdkstepError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/unsafe files
        raise MdkstepError(f"{path}: not a readable md-kstep checkpoint ({load_failure(e)})") from None
    for key in ("model_state", "model_config", "k"):
        if key not in ck:
            raise MdkstepError(f"{path}: checkpoint lacks key '{key}'")
    return ck


#: phrases of torch.load errors that say what was refused or what is broken, most specific first
_REFUSAL_PATTERNS = (
    r"(unsupported GLOBAL [\w.]+)", r"Unsupported global: (GLOBAL [\w.]+)", r"(unsupported operand [^\s.]+)",
    r"(Unsupported operand \d+)", r"(failed finding central directory)",
)


def load_failure(e: BaseException) -> str:
    """What a failed ``torch.load(weights_only=True)`` refused or found broken, in one line:
    for an unsafe pickle the blocked global (e.g. 'refused unsupported GLOBAL posix.system:
    weights_only loading runs no code'), else the error's first informative sentence."""
    import re

    text = " ".join(str(e).split())
    for pat in _REFUSAL_PATTERNS:
        m = re.search(pat, text, flags=re.IGNORECASE)
        if m:
            what = m.group(1)
            if "global" in what.lower() or "operand" in what.lower():
                return f"refused {what}: weights_only loading runs no code from a checkpoint"
            return f"{type(e).__name__}: {what}; the file is truncated or not a torch checkpoint"
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (eval mode) and return it with the checkpoint dict."""
    ck = read_checkpoint(path)
    cfg = from_dict(ModelConfig, ck["model_config"], f"{path}: model_config")
    model = build_model(cfg)  # kind "shear": a ShearKicks (n_inner from the config)
    model.to(device=device, dtype=dtype)  # before loading: float64 weights stay exact in a float64 model
    try:
        model.load_state_dict(ck["model_state"])
    except RuntimeError as e:
        raise MdkstepError(f"{path}: weights do not fit a {checkpoint_kind(ck)} model of its config "
                           f"({str(e).splitlines()[0][:200]})") from None
    model.to(device=device, dtype=dtype).eval()
    return model, ck


def checkpoint_kind(ck: dict[str, Any]) -> str:
    """"jump" | "shear" of a checkpoint dict (checkpoints without the key are "jump")."""
    return str(ck.get("model_config", {}).get("kind", "jump"))


def shear_payload(kicks: torch.nn.Module, k: int, dt_fs: float, engine: str | None, atom_types: list[int],
                  **extra: Any) -> dict[str, Any]:
    """Checkpoint dict of exact mode's ShearKicks (kind "shear"): weights (the scale buffers
    included), its ModelConfig, k and dt_fs of the stride tau = k dt_fs, engine, elements, and
    ``extra`` (e.g. train_config, step, scales)."""
    return {"model_state": {key: v.detach().cpu() for key, v in kicks.state_dict().items()},
            "model_config": asdict(kicks.model_config), "k": int(k), "dt_fs": float(dt_fs), "engine": engine,
            "atom_types": sorted(int(z) for z in atom_types), **extra}


def check_compatible(ck: dict[str, Any], source: str, k: int | None = None,
                     model_config: ModelConfig | None = None, atom_types: set[int] | None = None) -> None:
    """One-line errors when k, the architecture or the elements do not match a checkpoint (or its
    stored model config sets a removed key to other than its old default)."""
    if k is not None and int(ck["k"]) != int(k):
        raise MdkstepError(f"{source}: checkpoint was trained for k={ck['k']}, but k={k} was requested"
                           + shipped_hint(ck.get("engine"), int(k)))
    if model_config is not None:
        mine = asdict(model_config)
        theirs = drop_removed(ModelConfig, ck["model_config"], f"{source}: model_config")
        if checkpoint_kind(ck) != mine.get("kind", "jump"):
            raise MdkstepError(f"{source}: model kind mismatch (checkpoint {checkpoint_kind(ck)!r}, "
                               f"config {mine.get('kind', 'jump')!r})")
        for key in ("arch", "hidden", "n_layers", "use_forces", "force_head", "n_heads", "n_rbf", "max_hops", "max_z",
                    "n_inner", "members"):
            if key in theirs and theirs[key] != mine.get(key):
                raise MdkstepError(f"{source}: architecture mismatch on '{key}' (checkpoint {theirs[key]!r}, "
                                   f"config {mine.get(key)!r}); use a model config with {key}: {theirs[key]!r}, e.g. "
                                   f"the checkpoint's own (train_qm.sh takes it when MODEL_CONFIG is unset)")
    if atom_types is not None and ck.get("atom_types"):
        unseen = sorted(set(atom_types) - set(int(z) for z in ck["atom_types"]))
        if unseen:
            raise MdkstepError(f"{source}: molecule has elements {unseen} the model never saw in training "
                               f"(trained on {sorted(ck['atom_types'])}); use a foundation model "
                               f"(models/foundation/, elements H C N O F S Cl) or fine-tune one on this molecule "
                               f"(mdkstep-adapt)")


#: the shipped models (models/<mode>_k<K>.pt of this repository)
SHIPPED_DIR = Path(__file__).resolve().parents[3] / "models"


def shipped_hint(engine: str | None, k: int) -> str:
    """'; the shipped model for k = 16 is models/qm_k16.pt' (or the shipped k's of that mode)."""
    mode = "mm" if engine == "openmm" else "qm"
    path = SHIPPED_DIR / f"{mode}_k{k}.pt"
    if path.is_file():
        return f"; the shipped model for k={k} is models/{path.name}"
    have = sorted(int(p.stem.split("_k")[1]) for p in SHIPPED_DIR.glob(f"{mode}_k*.pt"))
    return f"; shipped {mode.upper()} models exist for k = {have} (models/{mode}_k<K>.pt)" if have else ""


def read_card(checkpoint: str | Path) -> dict[str, Any] | None:
    """The JSON model card beside a shipped checkpoint, or None when there is none."""
    path = Path(checkpoint).with_suffix(".json")
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MdkstepError(f"{path}: unreadable model card ({e})") from None
