"""Shared fixtures: real test crops, small models, single-threaded torch for CI's 2 cores."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sainr.model import SAINR, ModelConfig

DATA = Path(__file__).parent / "Data"
KNEE_QDESS = DATA / "knee_qdess_crop_1p5mm.nii.gz"
KNEE_FAIR = DATA / "knee_fair_crop_1mm.nii.gz"

torch.set_num_threads(int(os.environ.get("SAINR_TEST_THREADS", "1")))

#: A model small enough for exact-equivalence tests in milliseconds.
TINY = ModelConfig(channels=8, blocks=1, hidden=16, window=3, dilation=2)


@pytest.fixture(autouse=True)
def _ctrl_c_interrupts():
    """SIGINT raises KeyboardInterrupt, as for a program in a terminal's foreground, even when
    the suite itself runs in the background (where it starts ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def tiny_model() -> SAINR:
    torch.manual_seed(0)
    return SAINR(TINY).eval()


@pytest.fixture(scope="session")
def knee_image() -> sitk.Image:
    """Real knee crop, 64 x 64 x 40 at 0.3125 x 0.3125 x 1.5 mm (int16)."""
    return sitk.ReadImage(str(KNEE_QDESS))


@pytest.fixture(scope="session")
def knee_thick(knee_image: sitk.Image) -> sitk.Image:
    """The knee crop with every second slice dropped: 3.0 mm slices, 20 of them."""
    return knee_image[:, :, ::2]


def slice_points(image: sitk.Image, axis: int, positions) -> np.ndarray:
    """Physical points (LPS) of the corner voxel at continuous positions along ``axis``."""
    rows = []
    for p in positions:
        index = [0.0, 0.0, 0.0]
        index[axis] = float(p)
        rows.append(image.TransformContinuousIndexToPhysicalPoint(index))
    return np.array(rows)
