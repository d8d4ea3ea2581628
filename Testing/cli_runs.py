"""What the command-line tests of several areas share: small smooth inputs, a tiny random
checkpoint (and a models catalog naming it), one CLI run with its stderr lines, and the check
that a refused command changed nothing in its folder.

Kept here, beside ``conftest.py`` (whose folder pytest puts on ``sys.path``), so that test files
in any area folder import it by name.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from conftest import TINY
from sainr.cli import main
from sainr.model import SAINR
from sainr.runtime.weights import save_checkpoint, sha256


def _array(shape=(4, 12, 12), dtype=np.float32) -> np.ndarray:
    """A smooth image with contrast, numpy (k, j, i) order, scaled into ``dtype``'s range."""
    idx = np.indices(shape)
    values = 0.5 + 0.4 * np.sin(0.7 * idx[-1] + 0.3 * idx[-2]) * np.cos(0.9 * idx[0])
    if np.issubdtype(dtype, np.integer):
        values = values * min(np.iinfo(dtype).max, 4000)
    return values.astype(dtype)


def _image(array: np.ndarray, spacing=(0.5, 0.5, 2.0)) -> sitk.Image:
    """``array`` as an image with ``spacing`` (in-plane first), origin 0, identity direction."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: image.GetDimension()])
    return image


def _write(folder: Path, name: str, image: sitk.Image) -> Path:
    """``image`` written as ``folder / name`` (the suffix picks the format)."""
    path = folder / name
    sitk.WriteImage(image, str(path))
    return path


def _volume(folder: Path, name: str = "in.nrrd", **kwargs) -> Path:
    """A small smooth volume (``_array(**kwargs)``) written as ``folder / name``."""
    return _write(folder, name, _image(_array(**kwargs)))


def _tiny_checkpoint(path: Path) -> Path:
    """A random TINY model saved at ``path``: the same weights each time, runs in milliseconds."""
    torch.manual_seed(0)
    save_checkpoint(SAINR(TINY), path)
    return path


def _catalog(folder: Path, monkeypatch, file: str = "sainr_default.pt") -> Path:
    """A models folder (tiny model + catalog with its SHA-256) selected by SAINR_MODELS_DIR."""
    models = folder / "models"
    models.mkdir()
    weights = _tiny_checkpoint(models / "sainr_default.pt")
    entry = {"file": file, "sha256": sha256(weights), "bytes": weights.stat().st_size}
    (models / "models.json").write_text(json.dumps({"models": {"default": entry}}))
    monkeypatch.setenv("SAINR_MODELS_DIR", str(models))
    return weights


def _tree(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (hidden temp files included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli(argv: list[str], capfd) -> tuple[int, list[str]]:
    """Exit code and stderr lines (file-descriptor level: native ITK output included)."""
    code = main(argv)
    err = capfd.readouterr().err.strip()
    return code, err.splitlines() if err else []


def assert_cli_refuses(folder: Path, argv: list[str], pattern: str, capfd) -> None:
    """Exit 2, one ``sainr: error:`` line matching ``pattern``, ``folder`` unchanged."""
    before = _tree(folder)
    code, err = run_cli(argv, capfd)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("sainr: error: "), err
    assert re.search(pattern, err[0]), err[0]
    assert _tree(folder) == before  # input unchanged, no output, no temp or probe file
