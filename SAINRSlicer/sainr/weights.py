"""Checkpoints: save and load SA-INR weights with their config, strictly and checksummed.

A checkpoint is a ``torch.save`` dict {"format", "config", "state_dict", "meta"} loaded with
``weights_only=True`` (no code execution). Shipped models are listed in
``Resources/Models/models.json`` with their SHA-256; loading one verifies the file first.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsError
from .model import SAINR, ModelConfig

FORMAT = "sainr-checkpoint-v1"
DEFAULT_MODEL = "default"
CATALOG = "models.json"


def models_dir() -> Path:
    """Folder with the shipped weights: repo layout, then the Slicer install layout."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "Resources" / "Models", here.parent / "Resources" / "Models"):
        if (candidate / CATALOG).is_file():
            return candidate
    env = os.environ.get("SAINR_MODELS_DIR")
    if env and (Path(env) / CATALOG).is_file():
        return Path(env)
    raise WeightsError(
        "the bundled model catalog (Resources/Models/models.json) was not found; "
        "reinstall SAINRSlicer or pass a weights file"
    )


def catalog() -> dict[str, dict[str, Any]]:
    """Name -> entry ({"file", "sha256", "description", ...}) of the shipped models."""
    return json.loads((models_dir() / CATALOG).read_text())["models"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(weights: str | os.PathLike | None) -> tuple[Path, str | None]:
    """(file, expected sha256 or None) for a shipped model name or a weights file path."""
    name = DEFAULT_MODEL if weights is None else str(weights)
    models = catalog() if weights is None or not Path(name).suffix else {}
    if name in models:
        entry = models[name]
        return models_dir() / entry["file"], entry["sha256"]
    path = Path(name)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; give a .pt file or a model name")
    return path, None


def load_model(weights: str | os.PathLike | None = None) -> SAINR:
    """Build the model from a checkpoint; strict keys, checksum for shipped models."""
    path, expected = resolve(weights)
    if not path.is_file():
        raise WeightsError(f"the weights file {path} is missing; reinstall SAINRSlicer")
    if expected is not None and sha256(path) != expected:
        raise WeightsError(f"{path.name} fails its SHA-256 check (corrupt or replaced); reinstall")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbage files
        raise WeightsError(f"cannot read weights {path.name}: not a valid checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(f"{path.name} is not a SAINRSlicer checkpoint ({FORMAT})")
    try:
        model = SAINR(ModelConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise WeightsError(
            f"{path.name} does not match the SA-INR architecture it declares: {exc}"
        ) from exc
    return model.eval()


def save_checkpoint(
    model: SAINR, path: str | os.PathLike, meta: dict[str, Any] | None = None, **extra: Any
) -> None:
    """Write a checkpoint atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
        **extra,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_model(
    checkpoint: str | os.PathLike, name: str, description: str, models: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Ship a training checkpoint: weights + config + provenance only (no optimizer state),
    written to ``<models>/sainr_<name>.pt`` and registered with its SHA-256 in the catalog."""
    folder = Path(models) if models is not None else models_dir()
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = SAINR(ModelConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    meta = {**ckpt.get("meta", {}), "step": ckpt.get("step"), "minutes": ckpt.get("elapsed", 0) / 60}
    target = folder / f"sainr_{name}.pt"
    save_checkpoint(model, target, meta=meta)
    index = folder / CATALOG
    data = json.loads(index.read_text()) if index.is_file() else {"models": {}}
    entry = {
        "file": target.name,
        "sha256": sha256(target),
        "bytes": target.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "description": description,
    }
    data["models"][name] = entry
    index.write_text(json.dumps(data, indent=2) + "\n")
    return entry
