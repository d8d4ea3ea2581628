"""Checkpoints: save and load SA-INR weights with their config, strictly and checksummed.

A checkpoint is a ``torch.save`` dict {"format", "config", "state_dict", "meta"} loaded with
``weights_only=True`` (no code execution). Shipped models are listed in
``Resources/Models/models.json`` with their SHA-256; loading one verifies the file first.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import OutputPathError, SainrError, WeightsError
from ..io.files import check_writable, sha256, write_atomically
from ..io.resources import resource_folders
from ..model import SAINR, ModelConfig
from ..protocol import DEFAULT_MODEL
from ..thickness import FALLBACK_TRAINED_RANGE
from ..train.data import PatchSpec

FORMAT = "sainr-checkpoint-v1"
CATALOG = "models.json"
#: Config fields that set how many modules (so state tensors) the model has: a model with a
#: corrupt count is slow and large to build even on the meta device (one Python module per
#: block), so these counts are checked against the file first. The other fields set tensor
#: sizes, which cost nothing on the meta device.
_COUNT_FIELDS = ("blocks", "decoder_layers")


def models_dir() -> Path:
    """Folder with the shipped weights: ``$SAINR_MODELS_DIR`` when set (it must hold the
    catalog), else ``Resources/Models`` (:mod:`sainr.io.resources`)."""
    env = os.environ.get("SAINR_MODELS_DIR")
    if env:
        if not (Path(env) / CATALOG).is_file():
            raise WeightsError(f"SAINR_MODELS_DIR={env} has no {CATALOG}; fix or unset it")
        return Path(env)
    for candidate in resource_folders("Models"):
        if (candidate / CATALOG).is_file():
            return candidate
    raise WeightsError(
        "the bundled model catalog (Resources/Models/models.json) was not found; "
        "reinstall SAINRSlicer or pass a weights file"
    )


def catalog() -> dict[str, dict[str, Any]]:
    """Name -> entry ({"file", "sha256", "description", ...}) of the shipped models."""
    path = models_dir() / CATALOG
    try:
        return json.loads(path.read_text(encoding="utf-8"))["models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"the model catalog {path} is unreadable ({exc}); reinstall") from exc


def resolve(weights: str | os.PathLike | None) -> tuple[Path, str | None]:
    """(file, expected sha256 or None) for a shipped model name or a weights file path."""
    name = DEFAULT_MODEL if weights is None else str(weights)
    models = catalog() if weights is None or not Path(name).suffix else {}
    if name in models:
        entry = models[name]
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("file"), str)
            and isinstance(entry.get("sha256"), str)
        ):
            raise WeightsError(
                f"the model catalog {models_dir() / CATALOG} lists {name!r} without its file "
                "and SHA-256, so it cannot be checked; reinstall SAINRSlicer, or give a "
                "checkpoint file with --weights FILE.pt"
            )
        return models_dir() / entry["file"], entry["sha256"]
    path = Path(name)
    if not path.is_file():
        if models and not path.suffix and path.name == name:  # a name, not a path
            raise WeightsError(_unknown_model(name, models))
        raise WeightsError(f"weights file not found: {path}; give a .pt file or a model name")
    return path, None


def _unknown_model(name: str, models: dict[str, Any]) -> str:
    """The error for a model name the catalog does not list, naming the shipped models."""
    shipped = ", ".join(sorted(models))
    return f"no model {name!r}; shipped models: {shipped} (or give a weights file .pt)"


@dataclass(frozen=True)
class OpenedWeights:
    """A checkpoint read and checked once (present, intact, a SA-INR checkpoint), so that a
    run can plan with what the model was trained for and then build it, without reading or
    hashing the file again."""

    name: str
    checkpoint: dict[str, Any]

    @property
    def trained_thickness(self) -> tuple[float, float] | None:
        """:func:`thickness_range` of the checkpoint."""
        return thickness_range(self.checkpoint)

    def build(self) -> SAINR:
        """The model, in eval mode, knowing its trained thickness range."""
        model = build_model(self.checkpoint, self.name).eval()
        model.trained_thickness = self.trained_thickness
        return model


def open_weights(weights: str | os.PathLike | None = None) -> OpenedWeights:
    """The checkpoint of a shipped model name (default: the default model) or weights file,
    read once: checksum for shipped models, no code execution."""
    path = _checked(weights)
    return OpenedWeights(path.name, read_checkpoint(path))


def load_model(weights: str | os.PathLike | None = None) -> SAINR:
    """Build the model from a checkpoint; strict keys, checksum for shipped models."""
    return open_weights(weights).build()


def _checked(weights: str | os.PathLike | None) -> Path:
    """The weights file of ``weights``, present and (for a shipped model) intact."""
    path, expected = resolve(weights)
    if not path.is_file():
        raise WeightsError(f"the weights file {path} is missing; reinstall SAINRSlicer")
    if expected is not None and sha256(path) != expected:
        raise WeightsError(f"{path.name} fails its SHA-256 check (corrupt or replaced); reinstall")
    return path


def thickness_range(ckpt: dict[str, Any]) -> tuple[float, float] | None:
    """The relative slice thicknesses (thickness / spacing) a checkpoint's model was trained
    for: None when it is not told the thickness (any thickness is alike to it); the range its
    meta records (``thickness_range``, written by training since it was added), else the one
    its training config implies, else the first thick-slice models'
    (:data:`FALLBACK_TRAINED_RANGE`)."""
    if not ckpt.get("config", {}).get("conditioning", False):
        return None
    meta = ckpt.get("meta", {})
    recorded = meta.get("thickness_range")
    if isinstance(recorded, (list, tuple)) and len(recorded) == 2:
        return float(recorded[0]), float(recorded[1])
    patch = meta.get("config", {}).get("patch") if isinstance(meta.get("config"), dict) else None
    if isinstance(patch, dict):
        try:
            return PatchSpec(**patch).sampler.relative_range
        except (TypeError, ValueError):
            pass
    return FALLBACK_TRAINED_RANGE


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict in ``path``, loaded without executing code; a WeightsError with
    one line for anything that is not a SA-INR checkpoint."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; give a .pt file or a model name")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path.name} is not a SA-INR checkpoint: it holds Python objects, not only weights "
            "(e.g. a whole pickled model), which are never loaded (they could run code); use a "
            "checkpoint written by sainr train, adapt or export"
        ) from exc
    except Exception as exc:  # torch raises many types for truncated/garbage files
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"cannot read weights {path.name}: not a valid checkpoint, e.g. truncated ({reason})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(
            f"{path.name} is not a SA-INR checkpoint (no '{FORMAT}' format tag); use a "
            "checkpoint written by sainr train, adapt or export"
        )
    return ckpt


def build_model(ckpt: dict[str, Any], name: str) -> SAINR:
    """The model a checkpoint declares, with its weights (their moving average when the run
    kept one: ``ema`` in training). The declared architecture is first built without memory
    (torch's meta device) and compared with the stored weights, so a config with absurd sizes
    is refused before anything is allocated; module counts (encoder blocks, decoder layers)
    are first checked against the number of stored tensors, so that an absurd count is refused
    before that skeleton is built."""
    state = ckpt.get("ema_state_dict", ckpt.get("state_dict"))
    state = state if isinstance(state, dict) else {}
    try:
        config = ModelConfig.from_dict(ckpt["config"])
        _check_module_counts(config, state, name)
        with torch.device("meta"):
            skeleton = SAINR(config)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise WeightsError(f"{name} declares an unknown SA-INR configuration: {exc}") from exc
    mismatch = _state_mismatch(skeleton, state)
    if mismatch:
        raise WeightsError(
            f"{name} holds weights of another architecture than the one it declares "
            f"({mismatch}); use the checkpoint that belongs to this configuration"
        )
    model = SAINR(config)
    model.load_state_dict(state, strict=True)
    return model


def _check_module_counts(config: ModelConfig, state: dict[str, Any], name: str) -> None:
    """Refuse a config whose module counts declare more state tensors than the checkpoint
    holds (counted from skeletons with at most 3 modules each), so that the skeleton built
    next is no larger than the file; the comparison with it describes any other mismatch."""
    for field in _COUNT_FIELDS:
        if not isinstance(getattr(config, field), int) or getattr(config, field) < 1:
            raise ValueError(f"{field} must be a positive integer, got {getattr(config, field)!r}")
    small = {field: 2 for field in _COUNT_FIELDS}
    base = _tensor_count(replace(config, **small))
    declared = base + sum(
        (_tensor_count(replace(config, **{**small, field: 3})) - base)
        * (getattr(config, field) - 2)
        for field in _COUNT_FIELDS
    )
    if declared > len(state):
        counts = ", ".join(f"{field}={getattr(config, field)}" for field in _COUNT_FIELDS)
        raise WeightsError(
            f"{name} declares a model of {declared} weight tensors ({counts}) but holds only "
            f"{len(state)}: it is corrupt or of another architecture; use the checkpoint that "
            "belongs to this configuration"
        )


def _tensor_count(config: ModelConfig) -> int:
    """Entries of the state dict of a model built from ``config`` (on the meta device)."""
    with torch.device("meta"):
        return len(SAINR(config).state_dict())


def _state_mismatch(model: SAINR, state: dict[str, Any]) -> str:
    """Short description of how ``state`` differs from ``model``'s parameters ('' if not)."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shaped = sorted(
        k
        for k in expected.keys() & state.keys()
        if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape
    )
    parts = [
        f"{len(keys)} {what}, e.g. {keys[0]}"
        for keys, what in (
            (missing, "missing"),
            (unexpected, "unexpected"),
            (shaped, "wrong-shaped"),
        )
        if keys
    ]
    return "; ".join(parts)


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
    write_atomically(path, lambda tmp: torch.save(payload, tmp), ".tmp")


def shipped_model_folders() -> list[Path]:
    """Folders holding shipped weights: the catalog in use and the repo/install layouts."""
    folders = resource_folders("Models")
    if os.environ.get("SAINR_MODELS_DIR"):
        folders.append(Path(os.environ["SAINR_MODELS_DIR"]))
    return [f.resolve() for f in folders if (f / CATALOG).is_file()]


def check_not_shipped(path: Path) -> None:
    """Refuse writing weights into a shipped models folder: a replaced file fails its
    checksum on every later run, and the folder is reinstalled with the extension."""
    folder = path.resolve().parent
    for shipped in shipped_model_folders():
        if folder == shipped or shipped in folder.parents:
            raise OutputPathError(
                f"{path} is in the shipped models folder {shipped}; write adapted weights "
                "elsewhere (only sainr export adds models there)"
            )


def export_model(
    checkpoint: str | os.PathLike,
    name: str,
    description: str,
    models: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Ship a training checkpoint: weights + config + provenance only (no optimizer state),
    written to ``<models>/sainr_<name>.pt`` and registered with its SHA-256 in the catalog.
    Everything is checked before anything is written."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SainrError(f"model name {name!r}: use letters, digits, '_', '-' and '.' only")
    folder = Path(models) if models is not None else models_dir()
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"the models folder {folder} is a file; give a folder")
    if not folder.is_dir():
        raise OutputPathError(f"models folder does not exist: {folder}; create it first")
    check_writable(folder)
    ckpt = read_checkpoint(Path(checkpoint))
    model = build_model(ckpt, Path(checkpoint).name)
    index = folder / CATALOG
    try:
        data = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {"models": {}}
    except (OSError, ValueError) as exc:
        data = {"error": str(exc)}
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise WeightsError(f"the model catalog {index} is unreadable; fix or remove it")
    meta = {
        **ckpt.get("meta", {}),
        "thickness_range": thickness_range(ckpt),
        "step": ckpt.get("step"),
        "minutes": ckpt.get("elapsed", 0) / 60,
    }
    target = folder / f"sainr_{name}.pt"
    save_checkpoint(model, target, meta=meta)
    entry = {
        "file": target.name,
        "sha256": sha256(target),
        "bytes": target.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "description": description,
    }
    data["models"][name] = entry
    write_atomically(
        index,
        lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"),
        ".json",
    )
    return entry
