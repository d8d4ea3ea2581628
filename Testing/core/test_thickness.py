"""Slice thickness as an input: it reaches the model, it is validated, warm starts keep outputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TINY
from sainr import ReduceOptions, reduce_spacing
from sainr.cli import main
from sainr.errors import SpacingError
from sainr.geometry import relative_thickness, slice_grid
from sainr.model import SAINR, ModelConfig, Queries
from sainr.runtime.inference import super_resolve
from sainr.thickness import resolve_slice_thickness
from sainr.train.training import warm_start

CONDITIONED = ModelConfig(**{**TINY.to_dict(), "conditioning": True})


@pytest.fixture
def conditioned() -> SAINR:
    torch.manual_seed(3)
    return SAINR(CONDITIONED).eval()


def _reduce(image: sitk.Image, model: SAINR, thickness_mm: float | None) -> np.ndarray:
    result = reduce_spacing(image, 1.0, ReduceOptions(slice_thickness_mm=thickness_mm), model=model)
    return sitk.GetArrayFromImage(result.image).astype(np.float64)


def test_the_slice_thickness_changes_a_conditioned_models_output(knee_thick, conditioned):
    auto = _reduce(knee_thick, conditioned, None)  # default: estimated from the image
    estimated = resolve_slice_thickness(knee_thick, 2).mm
    # mm -> relative thickness may round differently in the last bit: one int16 unit at most
    told = _reduce(knee_thick, conditioned, estimated)
    np.testing.assert_allclose(told, auto, rtol=0, atol=1)
    assert np.mean(told != auto) < 1e-3
    contiguous = _reduce(knee_thick, conditioned, 3.0)
    gapped = _reduce(knee_thick, conditioned, 1.0)
    assert np.abs(gapped - contiguous).mean() > 0.5  # int16 units


def test_a_model_without_conditioning_ignores_the_thickness(knee_thick, tiny_model):
    """The network itself; the data consistency step after it re-acquires with the thickness
    whatever the model (Testing/runtime/test_consistency.py)."""
    volume = sitk.GetArrayFromImage(knee_thick).astype(np.float32) / 1000  # slice axis k first
    grid = slice_grid(len(volume), 3.0, 1.0)
    runs = [
        super_resolve(tiny_model, volume, grid, torch.device("cpu"), thickness=t)[0]
        for t in (1 / 3, 1.0)
    ]
    np.testing.assert_array_equal(*runs)


def test_warm_start_reproduces_the_source_model_exactly(knee_thick, tiny_model, conditioned):
    warm_start(conditioned, tiny_model)
    for thickness in (1.0, 3.0, 6.0):  # the new inputs start at zero weight
        # the conditioned decoder adds the conditions' part of its first layer separately
        # (once per thin slice); float rounding may move an int16 output by one unit
        expected = _reduce(knee_thick, tiny_model, thickness)
        out = _reduce(knee_thick, conditioned, thickness)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1)
        assert np.mean(out != expected) < 0.1


def test_warm_start_without_attention_keeps_the_ungated_queries(knee_image, tiny_model):
    """The LASA ablation's arm starts from a model with attention: encoder and decoder are
    copied, so it answers exactly like the source wherever the source's gate skips LASA."""
    plain = SAINR(ModelConfig(**{**TINY.to_dict(), "lasa": False, "gating": False})).eval()
    warm_start(plain, tiny_model)
    lr = torch.from_numpy(sitk.GetArrayFromImage(knee_image)[::3, :24, :24].astype(np.float32))
    lr = (lr / lr.max())[None, None]
    n = 300
    q = Queries(
        b=torch.zeros(n, dtype=torch.long),
        s=torch.randint(0, lr.shape[2] - 1, (n,)),
        y=torch.randint(0, 24, (n,)),
        x=torch.randint(0, 24, (n,)),
        t=torch.rand(n),
    )
    with torch.no_grad():
        source, ablated = tiny_model.query(tiny_model.encode(lr), q), plain(lr, q)
    skipped = source.mask < 0.5
    assert 0 < skipped.sum() < n  # both kinds of query occur
    torch.testing.assert_close(ablated.value[skipped], source.value[skipped])
    assert not torch.allclose(ablated.value[~skipped], source.value[~skipped])


def test_warm_start_refuses_another_architecture(tiny_model):
    other = SAINR(ModelConfig(**{**TINY.to_dict(), "channels": 12}))
    with pytest.raises(ValueError, match="cannot warm-start"):
        warm_start(other, tiny_model)


@pytest.mark.parametrize(
    ("thickness", "message"),
    [
        (0.0, "positive number"),
        (-1.0, "positive number"),
        (float("nan"), "positive number"),
        (9.5, "3.2x the slice spacing"),
    ],
)
def test_bad_thickness_is_refused_with_a_reason(thickness: float, message: str) -> None:
    with pytest.raises(SpacingError, match=message):
        relative_thickness(thickness, 3.0)


def test_thickness_relative_to_the_spacing() -> None:
    assert relative_thickness(None, 3.0) == 1.0
    assert relative_thickness(1.5, 3.0) == pytest.approx(0.5)
    assert relative_thickness(9.0, 3.0) == pytest.approx(3.0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "positive number"),
        ("-1", "positive number"),
        ("nan", "positive number"),
        ("10", "3.3x the slice spacing 3 mm; this model was trained for 0.2-2x"),
    ],
)
def test_cli_refuses_a_bad_slice_thickness_before_any_work(
    tmp_path: Path, knee_thick, value: str, message: str, capsys
) -> None:
    src = tmp_path / "knee_3mm.nrrd"
    sitk.WriteImage(knee_thick, str(src))
    before = _sha(src)
    out = tmp_path / "out.nii.gz"
    code = main(
        [
            "reduce",
            str(src),
            str(out),
            "--spacing",
            "1",
            "--slice-thickness",
            value,
            "--progress",
            "none",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists() and _sha(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["knee_3mm.nrrd"]


def test_cli_reports_the_thickness_it_used(tmp_path: Path, knee_thick, capsys) -> None:
    src = tmp_path / "knee_3mm.nrrd"
    sitk.WriteImage(knee_thick, str(src))
    out = tmp_path / "out.nii.gz"
    assert (
        main(
            [
                "reduce",
                str(src),
                str(out),
                "--spacing",
                "1",
                "--slice-thickness",
                "2",
                "--progress",
                "none",
            ]
        )
        == 0
    )
    assert "(2 mm thick, given)" in capsys.readouterr().err
