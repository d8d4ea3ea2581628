"""Slice thickness from the data: the estimate tells thin gapped slices from contiguous thick
ones on real MRI, the sources are consulted in order (given, DICOM, NRRD, estimate), values
outside the model's trained range are refused with the range, and the summary names the source.

Every volume is real (Testing/Data crops, the bundled sample); thick slices are simulated with
the project's own acquisition model along the native slice axis. Files are real SimpleITK I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_write import write_series

from conftest import KNEE_FAIR, KNEE_QDESS, TINY
from sainr.acquisition import Acquisition, acquire, lr_count
from sainr.cli import main
from sainr.errors import SpacingError
from sainr.geometry import relative_thickness
from sainr.io.resources import resource_folders
from sainr.model import SAINR
from sainr.request import ReduceOptions
from sainr.runtime.weights import open_weights, save_checkpoint
from sainr.thickness import (
    SOURCE_ASSUMED,
    SOURCE_ESTIMATE,
    SliceThickness,
    ThicknessEstimateError,
    estimate_relative_thickness,
    resolve_slice_thickness,
)

SAMPLE = resource_folders("Sample")[0] / "knee_qdess_sag_3mm.nii.gz"


def thick(path: Path, profile: str, factor: int, thickness: float = 1.0) -> sitk.Image:
    """The real volume at ``path`` with slices ``factor`` times further apart along its native
    slice axis (k), acquired with ``profile`` and ``thickness`` (relative to the new spacing)."""
    image = sitk.ReadImage(str(path))
    hr = sitk.GetArrayFromImage(image).astype(np.float32)  # (k, j, i): slice axis first
    lr = acquire(hr, Acquisition(factor, thickness, profile), lr_count(hr.shape[0], factor))
    out = sitk.GetImageFromArray(lr)
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    out.SetSpacing((*image.GetSpacing()[:2], image.GetSpacing()[2] * factor))
    return out


def estimate(image: sitk.Image) -> float:
    return estimate_relative_thickness(sitk.GetArrayViewFromImage(image), image.GetSpacing(), 2)


@pytest.mark.parametrize(("path", "factor"), [(KNEE_FAIR, 3), (KNEE_QDESS, 2)])
def test_the_estimate_tells_gapped_from_contiguous_slices(path, factor):
    """Thin slices kept every factor-th (gaps) come out thinner than half the spacing;
    contiguous thick slices (Gaussian, FWHM = the spacing) come out near the spacing."""
    gapped = estimate(thick(path, "none", factor))
    contiguous = estimate(thick(path, "gaussian", factor, 1.0))
    assert gapped <= 0.45, gapped
    assert contiguous >= 0.7, contiguous
    assert contiguous >= 2 * gapped


@pytest.mark.parametrize(("path", "factor"), [(KNEE_FAIR, 3), (KNEE_QDESS, 2)])
def test_overlapping_slices_read_at_least_as_thick_as_they_are(path, factor):
    """Gaussian slices 1.5x as thick as their spacing (overlapping) are not read thin: a model
    told too thin a slice under-deblurs, so the bound is the truth itself."""
    overlapping = estimate(thick(path, "gaussian", factor, 1.5))
    assert overlapping >= 1.5, overlapping


def test_the_estimate_sees_the_bundled_sample_has_gaps():
    """The demo volume: 1.5 mm-thick slices every 3 mm (relative thickness 0.5)."""
    image = sitk.ReadImage(str(SAMPLE))
    assert estimate(image) < 0.7


def test_the_estimate_is_independent_of_the_array_axis():
    """The same volume with its slice axis stored as i gives the same estimate (up to the
    order in which lines are thinned and noise is drawn)."""
    image = thick(KNEE_FAIR, "gaussian", 3, 1.0)
    array = sitk.GetArrayFromImage(image)  # (k, j, i)
    turned = np.ascontiguousarray(np.transpose(array, (2, 1, 0)))  # slice axis is now i
    spacing = image.GetSpacing()[::-1]
    assert estimate_relative_thickness(turned, spacing, 0) == pytest.approx(
        estimate(image), rel=0.05
    )


def test_too_few_slices_fall_back_to_contiguous_with_a_warning():
    image = sitk.ReadImage(str(KNEE_FAIR))[:, :, :3]
    with pytest.raises(ThicknessEstimateError, match="too few"):
        estimate(image)
    resolved = resolve_slice_thickness(image, 2)
    assert (resolved.relative, resolved.source) == (1.0, SOURCE_ASSUMED)
    assert "give --slice-thickness" in resolved.warning


def test_sources_in_order_given_then_header_then_estimate():
    image = thick(KNEE_FAIR, "none", 3)  # 3 mm spacing
    assert resolve_slice_thickness(image, 2).source == SOURCE_ESTIMATE
    image.SetMetaData("0018|0050", "1.0")
    header = resolve_slice_thickness(image, 2)
    assert (header.mm, header.source) == (pytest.approx(1.0), "DICOM SliceThickness")
    given = resolve_slice_thickness(image, 2, given_mm=2.0)
    assert (given.mm, given.relative, given.source) == (2.0, pytest.approx(2 / 3), "given")


def test_a_header_the_image_contradicts_is_kept_with_a_warning():
    image = thick(KNEE_FAIR, "none", 3)  # gaps: the image looks thin
    image.SetMetaData("0018|0050", "3.0")  # the header says contiguous
    resolved = resolve_slice_thickness(image, 2, trained=(0.2, 1.2))
    assert resolved.mm == pytest.approx(3.0)
    assert "disagree" in resolved.warning


def test_an_estimate_outside_the_trained_range_is_clipped_with_a_warning():
    image = thick(KNEE_FAIR, "none", 3)
    free = resolve_slice_thickness(image, 2)
    clipped = resolve_slice_thickness(image, 2, trained=(free.relative * 1.5, 1.2))
    assert clipped.relative == pytest.approx(free.relative * 1.5)
    assert "outside" in clipped.warning


def test_a_given_thickness_outside_the_trained_range_is_refused_with_the_range():
    with pytest.raises(SpacingError, match=r"2\.6x the slice spacing.*trained for 0\.2-1\.2x"):
        relative_thickness(7.8, 3.0, (0.2, 1.2))
    with pytest.raises(SpacingError, match=r"limit 3x"):
        relative_thickness(12.0, 3.0)
    assert relative_thickness(1.5, 3.0, (0.2, 1.2)) == pytest.approx(0.5)


def test_the_trained_range_comes_from_the_checkpoint(tmp_path):
    conditioned = SAINR(dataclasses.replace(TINY, conditioning=True))
    path = tmp_path / "m.pt"
    save_checkpoint(conditioned, path, meta={"thickness_range": (0.3, 2.0)})
    assert open_weights(path).trained_thickness == (0.3, 2.0)
    save_checkpoint(conditioned, path, meta={})  # an older checkpoint: the fallback range
    assert open_weights(path).trained_thickness == (0.2, 1.2)
    save_checkpoint(SAINR(TINY), path)  # not told the thickness: no range
    assert open_weights(path).trained_thickness is None
    # the shipped default, from its config
    assert open_weights(None).trained_thickness == (0.2, 2.0)


def _reduce(src: Path, out: Path, weights: Path, *extra: str) -> list[str]:
    return [
        "reduce",
        str(src),
        str(out),
        "--factor",
        "2",
        "--weights",
        str(weights),
        "--progress",
        "none",
        *extra,
    ]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny model told the thickness (the summary names the thickness only for such a
    model), without a recorded range: the fallback 0.2-1.2x applies."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(SAINR(dataclasses.replace(TINY, conditioning=True)), path)
    return path


def test_auto_is_the_default_and_the_summary_names_the_source(tmp_path, tiny_weights, capfd):
    src = tmp_path / "gapped.nii.gz"
    sitk.WriteImage(thick(KNEE_FAIR, "none", 3), str(src))
    assert ReduceOptions().slice_thickness_mm is None
    assert main(_reduce(src, tmp_path / "a.nii.gz", tiny_weights)) == 0
    default = capfd.readouterr().err
    assert main(_reduce(src, tmp_path / "b.nii.gz", tiny_weights, "--slice-thickness", "auto")) == 0
    auto = capfd.readouterr().err
    assert "mm thick, estimated from the image)" in default
    assert default.split("(")[1] == auto.split("(")[1]  # same thickness, same source
    assert main(_reduce(src, tmp_path / "c.nii.gz", tiny_weights, "--slice-thickness", "1")) == 0
    assert "(1 mm thick, given)" in capfd.readouterr().err


def test_the_cli_refuses_a_thickness_the_shipped_model_was_not_trained_for(tmp_path, capfd):
    src = tmp_path / "gapped.nii.gz"
    sitk.WriteImage(thick(KNEE_FAIR, "none", 3), str(src))
    argv = _reduce(src, tmp_path / "out.nii.gz", Path("default"), "--slice-thickness", "7.5")
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert "2.5x the slice spacing 3 mm; this model was trained for 0.2-2x" in err
    assert not (tmp_path / "out.nii.gz").exists()


def write_nrrd(path: Path, image: sitk.Image, thicknesses: str) -> Path:
    """``image`` (int16) as a raw NRRD whose header holds a ``thicknesses`` field, the way 3D
    Slicer writes a volume loaded from DICOM."""
    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkInt16))
    sx, sy, sz = image.GetSpacing()
    d = np.array(image.GetDirection()).reshape(3, 3)
    vectors = " ".join(
        f"({','.join(f'{v:.9g}' for v in d[:, a] * s)})" for a, s in enumerate((sx, sy, sz))
    )
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {' '.join(str(n) for n in image.GetSize())}\nspace directions: {vectors}\n"
        f"thicknesses: {thicknesses}\nkinds: domain domain domain\nendian: little\n"
        f"encoding: raw\nspace origin: ({','.join(f'{v:.9g}' for v in image.GetOrigin())})\n\n"
    )
    path.write_bytes(header.encode() + array.astype("<i2").tobytes())
    return path


def test_an_nrrd_thicknesses_field_is_the_header_source(tmp_path, tiny_weights, capfd):
    src = write_nrrd(tmp_path / "in.nrrd", thick(KNEE_FAIR, "none", 3), "nan nan 1.2")
    assert sitk.ReadImage(str(src)).GetSpacing()[2] == pytest.approx(3.0)
    assert main(_reduce(src, tmp_path / "out.nrrd", tiny_weights)) == 0
    assert "(1.2 mm thick, NRRD thicknesses)" in capfd.readouterr().err
    assert main(_reduce(src, tmp_path / "o2.nrrd", tiny_weights, "--slice-thickness", "2")) == 0
    assert "(2 mm thick, given)" in capfd.readouterr().err


def test_a_dicom_slice_thickness_comes_before_the_estimate(tmp_path, tiny_weights, capfd):
    knee = sitk.ReadImage(str(KNEE_QDESS))[24:40, 24:40, 10:18]
    folder = write_series(tmp_path / "dcm", knee, thickness="1.2")
    assert main(_reduce(folder, tmp_path / "out.nrrd", tiny_weights)) == 0
    assert "(1.2 mm thick, DICOM SliceThickness)" in capfd.readouterr().err


def test_the_api_reports_thickness_and_source(tiny_model):
    from sainr import reduce_spacing

    image = thick(KNEE_FAIR, "none", 3)[:24, :24, :]
    info = reduce_spacing(image, 1.5, ReduceOptions(device="cpu"), model=tiny_model).info
    assert info["slice_thickness_source"] == SOURCE_ESTIMATE
    assert info["slice_thickness"] == pytest.approx(3.0 * estimate(image), rel=1e-6)
    given = reduce_spacing(
        image, 1.5, replace(ReduceOptions(device="cpu"), slice_thickness_mm=1.0), model=tiny_model
    ).info
    assert (given["slice_thickness"], given["slice_thickness_source"]) == (1.0, "given")


def test_a_resolved_thickness_is_a_frozen_record():
    value = SliceThickness(1.5, 0.5, "given")
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.mm = 2.0  # type: ignore[misc]


def test_training_and_export_record_the_thickness_range(tmp_path):
    """A model trained on Gaussian slices 0.4-1.5x thick and on decimation at x2/x3 carries
    1/3-1.5x in its checkpoint and in the exported copy; a reduction refuses 1.6x."""
    import torch

    from sainr.runtime.weights import export_model
    from sainr.train.training import TrainConfig, train

    patch = {"lr_slices": 5, "size": 24, "queries": 256, "factors": [2, 3]}
    patch |= {"profiles": ["none", "gaussian"], "profile_weights": [1, 1], "thickness": [0.4, 1.5]}
    config = TrainConfig(
        data=[{"path": KNEE_QDESS.name}],
        val=[],
        model={"channels": 8, "blocks": 1, "hidden": 16, "conditioning": True},
        patch=patch,
        steps=2,
        batch=2,
        checkpoint_minutes=100,
        log_every=1000,
    )
    train(config, tmp_path / "run", KNEE_QDESS.parent, log=lambda *_: None)
    meta = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["meta"]
    assert meta["thickness_range"] == pytest.approx((1 / 3, 1.5))
    (tmp_path / "models").mkdir()
    entry = export_model(tmp_path / "run" / "last.pt", "t", "test", tmp_path / "models")
    exported = tmp_path / "models" / entry["file"]
    assert open_weights(exported).trained_thickness == pytest.approx((1 / 3, 1.5))
    with pytest.raises(SpacingError, match=r"trained for 0\.33-1\.5x"):
        relative_thickness(4.8, 3.0, open_weights(exported).trained_thickness)
