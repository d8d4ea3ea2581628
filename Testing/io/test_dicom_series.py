"""DICOM series: a regular stack reads with its exact geometry; every broken one is refused.

Each series is written here, slice by slice with SimpleITK, from the real knee crop
(Testing/Data), with the per-slice ImagePositionPatient / ImageOrientationPatient a scanner
would write; the broken ones then get one slice removed, moved, duplicated, tilted or turned.
ITK's series reader alone would load each of them with a wrong geometry (issue 13).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_runs import _tree
from dicom_write import write_series

from conftest import KNEE_QDESS, TINY
from sainr.cli import main
from sainr.errors import InputImageError
from sainr.io.read import dicom_slice_thickness, read_volume
from sainr.model import SAINR, ModelConfig
from sainr.runtime.weights import save_checkpoint

SLICES = 8


@pytest.fixture(scope="module")
def knee() -> sitk.Image:
    """16 x 16 x 8 voxels of the real knee crop (0.3125 x 0.3125 x 1.5 mm, oblique direction)."""
    return sitk.ReadImage(str(KNEE_QDESS))[24:40, 24:40, 10 : 10 + SLICES]


def _position(volume: sitk.Image, k: float) -> np.ndarray:
    return np.array(volume.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(k))))


def _rotated(volume: sitk.Image, degrees: float) -> np.ndarray:
    """Row and column cosines of ``volume`` turned by ``degrees`` about the row direction."""
    cosines = np.array(volume.GetDirection()).reshape(3, 3)
    row, col, normal = cosines[:, 0], cosines[:, 1], cosines[:, 2]
    t = np.radians(degrees)
    return np.concatenate([row, np.cos(t) * col + np.sin(t) * normal])


def _turned_in_plane(volume: sitk.Image, degrees: float) -> np.ndarray:
    """Row and column cosines of ``volume`` turned by ``degrees`` about the slice normal."""
    cosines = np.array(volume.GetDirection()).reshape(3, 3)
    row, col = cosines[:, 0], cosines[:, 1]
    t = np.radians(degrees)
    return np.concatenate([np.cos(t) * row + np.sin(t) * col, np.cos(t) * col - np.sin(t) * row])


def assert_same_grid(image: sitk.Image, volume: sitk.Image) -> None:
    """``image`` has exactly the grid and voxels of ``volume``."""
    assert image.GetSize() == volume.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), volume.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(image.GetSpacing(), volume.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), volume.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(volume)
    )


def test_a_regular_series_reads_with_its_exact_geometry(tmp_path, knee):
    folder = write_series(tmp_path / "dcm", knee)
    image = read_volume(folder)
    assert_same_grid(image, knee)
    for k in range(SLICES):  # every acquired slice where its header says
        np.testing.assert_allclose(
            image.TransformIndexToPhysicalPoint((0, 0, k)), _position(knee, k), atol=1e-5
        )


def test_file_order_does_not_matter(tmp_path, knee):
    """Slices named against their position order (as some exports do) still stack right."""
    folder = write_series(tmp_path / "dcm", knee)
    names = sorted(folder.iterdir())
    for path in names:
        path.rename(path.with_name("tmp" + path.name))
    for path, new in zip(sorted(folder.iterdir()), reversed(names)):
        path.rename(new)
    image = read_volume(folder)
    np.testing.assert_allclose(image.GetOrigin(), knee.GetOrigin(), atol=1e-5)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(knee)
    )


def _missing(folder: Path, knee: sitk.Image) -> Path:
    write_series(folder, knee)
    (folder / "IM0004.dcm").unlink()
    return folder


BROKEN = {
    "missing slice": (
        _missing,
        r"misses 1 slice: the gap between IM0003.dcm and IM0005.dcm is 3 mm, the slice spacing 1.5 mm; export the complete series",
    ),
    "uneven spacing (1.5 then 2 mm)": (
        lambda f, v: write_series(
            f, v, positions={k: _position(v, 4 + (k - 4) * 4 / 3) for k in range(5, SLICES)}
        ),
        r"slice spacing is not uniform: it varies from 1.5 to 2 mm \(first change between IM0004.dcm and IM0005.dcm\); resample",
    ),
    "duplicate position": (
        lambda f, v: write_series(f, v, positions={5: _position(v, 4)}),
        r"1 pair of DICOM images lies at the same position, e.g. IM000[45].dcm and IM000[45].dcm .*one image per slice position",
    ),
    "gantry tilt (1 mm per slice)": (
        lambda f, v: write_series(
            f,
            v,
            positions={
                k: _position(v, k) + k * np.array(v.GetDirection()).reshape(3, 3)[:, 1]
                for k in range(SLICES)
            },
        ),
        r"shifted in-plane by 1 mm per slice \(a gantry tilt of about 33.7 degrees; .*IM0007.dcm is 7 mm off.*regularization",
    ),
    "mixed orientation (half turned 20 degrees)": (
        lambda f, v: write_series(
            f, v, orientations={k: _rotated(v, 20) for k in range(4, SLICES)}
        ),
        r"mixes slice orientations: 4 of its 8 images \(IM0004.dcm, IM0005.dcm, IM0006.dcm and 1 more\) are turned by 20.0 degrees",
    ),
    "mixed orientation (half turned 30 degrees within the slice plane)": (
        lambda f, v: write_series(
            f, v, orientations={k: _turned_in_plane(v, 30) for k in range(4, SLICES)}
        ),
        r"mixes slice orientations: 4 of its 8 images \(IM0004.dcm, IM0005.dcm, IM0006.dcm and 1 more\) are turned by 30.0 degrees",
    ),
    "two series in one folder": (
        lambda f, v: write_series(
            write_series(f, v[:, :, :4]),
            v[:, :, 4:],
            uid="1.2.826.0.1.3680043.2.1125.2",
            description="COR PD",
            prefix="CO",
        ),
        r'holds 2 DICOM series: 1.2.826.0.1.3680043.2.1125.1 \(4 images, "SAG qDESS"\); 1.2.826.0.1.3680043.2.1125.2 \(4 images, "COR PD"\); choose one with --series UID',
    ),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_series_is_refused_by_the_api(tmp_path, knee, name):
    make, pattern = BROKEN[name]
    with pytest.raises(InputImageError, match=pattern):
        read_volume(make(tmp_path / "dcm", knee))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny model told the slice thickness (only such a model's summary names it)."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(SAINR(ModelConfig(**{**TINY.to_dict(), "conditioning": True})), path)
    return path


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_series_is_refused_by_the_cli(tmp_path, knee, name, tiny_weights, capfd):
    make, pattern = BROKEN[name]
    folder = make(tmp_path / "dcm", knee)
    before = _tree(tmp_path)
    code = main(
        [
            "reduce",
            str(folder),
            str(tmp_path / "out.nrrd"),
            "--factor",
            "2",
            "--weights",
            str(tiny_weights),
            "--progress",
            "none",
        ]
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("sainr: error: "), err
    assert re.search(pattern, err[0]), err[0]
    assert _tree(tmp_path) == before


def test_series_option_picks_one_of_several(tmp_path, knee, tiny_weights, capfd):
    folder = write_series(tmp_path / "dcm", knee[:, :, :4])
    write_series(folder, knee[:, :, 4:], uid="1.2.826.0.1.3680043.2.1125.2", prefix="CO")
    for uid, first in (("1.2.826.0.1.3680043.2.1125.1", 0), ("1.2.826.0.1.3680043.2.1125.2", 4)):
        image = read_volume(folder, uid)
        assert image.GetSize() == (16, 16, 4)
        np.testing.assert_allclose(image.GetOrigin(), _position(knee, first), atol=1e-5)
    out = tmp_path / "out.nrrd"
    argv = [
        "reduce",
        str(folder),
        str(out),
        "--factor",
        "2",
        "--weights",
        str(tiny_weights),
        "--progress",
        "none",
        "--series",
        "1.2.826.0.1.3680043.2.1125.2",
    ]
    assert main(argv) == 0, capfd.readouterr().err
    result = sitk.ReadImage(str(out))
    assert result.GetSize() == (16, 16, 7)
    np.testing.assert_allclose(result.GetOrigin(), _position(knee, 4), atol=1e-4)
    with pytest.raises(
        InputImageError, match=r"does not hold series 9.9.*choose one with --series"
    ):
        read_volume(folder, "9.9")


def test_slice_thickness_of_a_series(tmp_path, knee):
    assert dicom_slice_thickness(write_series(tmp_path / "a", knee, thickness="3.0")) == 3.0
    assert dicom_slice_thickness(write_series(tmp_path / "b", knee, thickness="")) is None
    assert dicom_slice_thickness(write_series(tmp_path / "c", knee, thickness="-1")) is None
    assert dicom_slice_thickness(KNEE_QDESS) is None  # not a DICOM folder
    assert dicom_slice_thickness(tmp_path) is None  # a folder without DICOM images


def test_micro_scale_spacing_is_judged_relative_to_the_spacing(tmp_path, knee):
    """A 1.5 um slice spacing (a microscope stack) is regular, not 'duplicate positions'."""
    micro = sitk.Image(knee)
    micro.SetSpacing([s * 1e-3 for s in knee.GetSpacing()])
    micro.SetOrigin([o * 1e-3 for o in knee.GetOrigin()])
    image = read_volume(write_series(tmp_path / "dcm", micro))
    np.testing.assert_allclose(image.GetSpacing(), micro.GetSpacing(), rtol=1e-3)


def test_reduce_uses_the_series_slice_thickness_unless_told_otherwise(
    tmp_path, knee, tiny_weights, capfd
):
    folder = write_series(tmp_path / "dcm", knee, thickness="1.2")  # 1.5 mm spacing: gaps
    argv = [
        "reduce",
        str(folder),
        str(tmp_path / "out.nrrd"),
        "--factor",
        "2",
        "--weights",
        str(tiny_weights),
        "--progress",
        "none",
    ]
    assert main(argv) == 0
    assert "(1.2 mm thick, DICOM SliceThickness)" in capfd.readouterr().err
    assert main([*argv, "--slice-thickness", "1.5"]) == 0
    assert "(1.5 mm thick, given)" in capfd.readouterr().err
    bad = write_series(tmp_path / "bad", knee, thickness="12")  # 8x the spacing: a typo
    assert (
        main(
            [
                "reduce",
                str(bad),
                str(tmp_path / "bad.nrrd"),
                "--factor",
                "2",
                "--weights",
                str(tiny_weights),
                "--progress",
                "none",
            ]
        )
        == 2
    )
    assert "limit 3x" in capfd.readouterr().err


def test_reduce_reads_the_series_slice_thickness_once_and_adapts_with_it(
    tmp_path, knee, tiny_weights, monkeypatch, capfd
):
    """Checks, adaptation and reconstruction share one reading of the SliceThickness tags
    (each reading opens every file's header)."""
    import sainr.cli.common

    reads = []

    def counted(folder, series=None):
        reads.append(folder)
        return dicom_slice_thickness(folder, series)

    monkeypatch.setattr(sainr.cli.common, "dicom_slice_thickness", counted)
    folder = write_series(tmp_path / "dcm", knee, thickness="1.2")
    weights = tmp_path / "adapted.pt"
    argv = [
        "reduce",
        str(folder),
        str(tmp_path / "out.nrrd"),
        "--factor",
        "2",
        "--weights",
        str(tiny_weights),
        "--progress",
        "none",
        "--adapt-steps",
        "1",
        "--save-adapted",
        str(weights),
    ]
    assert main(argv) == 0, capfd.readouterr().err
    assert reads == [folder]
    assert "(1.2 mm thick, DICOM SliceThickness)" in capfd.readouterr().err
    meta = torch.load(weights, map_location="cpu", weights_only=True)["meta"]["adapted"]
    assert meta["thickness"] == pytest.approx(1.2 / 1.5, rel=1e-3)
