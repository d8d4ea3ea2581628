"""The fused CPU twins of the encoder and the decoder answer what the float modules answer."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import KNEE_QDESS, TINY
from sainr.geometry import slice_grid
from sainr.model import SAINR, ModelConfig, SliceQueries, acquisition_tensor
from sainr.model.decoder import MLPDecoder
from sainr.model.decoder_fused import FusedMLP
from sainr.model.edsr import EDSR3d
from sainr.model.edsr_fused import FusedEDSR
from sainr.runtime.backends import load_backend
from sainr.runtime.backends.base import ENCODER_FLOATS
from sainr.runtime.backends.floating import fused_kernels_run
from sainr.runtime.inference import encoded_extent, plan, super_resolve

pytestmark = pytest.mark.skipif(
    not fused_kernels_run(torch.float32), reason="this torch build lacks the fused kernels"
)


@pytest.fixture(scope="module")
def knee_lr() -> torch.Tensor:
    """A real knee crop (1, 1, S, H, W), scaled to about [0, 1], channels-last."""
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(KNEE_QDESS))).astype(np.float32)
    volume /= np.percentile(volume, 99.5)
    lr = torch.from_numpy(volume[:, :40, :36].copy())[None, None]
    return lr.contiguous(memory_format=torch.channels_last_3d)


def test_fused_encoder_gives_the_float_encoders_features(knee_lr):
    torch.manual_seed(3)
    encoder = EDSR3d(8, 2).eval()
    with torch.inference_mode():
        reference = encoder(knee_lr)
        fused = FusedEDSR(encoder, torch.float32)(knee_lr)
        torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)
        if fused_kernels_run(torch.bfloat16):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                autocast = encoder(knee_lr)
            low = FusedEDSR(encoder, torch.bfloat16)(knee_lr)
            assert low.dtype == torch.bfloat16  # it really ran in bf16
            scale = reference.abs().max()
            assert (low.float() - reference).abs().max() < 0.02 * scale
            assert (low.float() - autocast.float()).abs().mean() < 1e-3 * scale


@pytest.mark.parametrize("weights_layout", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("input_layout", [torch.contiguous_format, torch.channels_last_3d])
def test_fused_encoder_runs_channels_last_whatever_the_layouts_it_is_given(
    knee_lr, weights_layout, input_layout
):
    """The one-channel input and head weight describe both layouts; the twin still runs every
    convolution channels-last, so the features are the same to the bit whichever layout the
    float model and the tile arrive in (another backend may have re-laid the weights)."""
    torch.manual_seed(5)
    encoder = EDSR3d(8, 2).eval()
    with torch.inference_mode():
        reference = FusedEDSR(encoder, torch.float32)(knee_lr)
        encoder.to(memory_format=weights_layout)
        features = FusedEDSR(encoder, torch.float32)(knee_lr.contiguous(memory_format=input_layout))
    assert features.is_contiguous(memory_format=torch.channels_last_3d)
    assert features.stride(1) == 1  # channels innermost, not just "contiguous either way"
    torch.testing.assert_close(features, reference, rtol=0, atol=0)


def test_fused_runners_size_tiles_by_their_leaner_encoder(knee_lr):
    """The fused twins keep fewer activations alive than the model's own modules, and say
    so: the tiler gives them larger tiles, so a knee-sized plane repeats less halo."""
    model = SAINR(ModelConfig(channels=32, blocks=4, hidden=128)).eval()
    volume = knee_lr[0, 0].numpy()
    cpu = torch.device("cpu")
    fused = load_backend("fp32").prepare(model, volume, cpu)
    assert fused.encoder is not None  # the twins run
    assert fused.encoder_floats < ENCODER_FLOATS
    lean = plan(model, (40, 384, 384), 2048, fused.encoder_floats)
    generic = plan(model, (40, 384, 384), 2048)
    assert _encoded_pixels(lean, 384, 384) < _encoded_pixels(generic, 384, 384)


def _encoded_pixels(p, n_h: int, n_w: int) -> int:
    """Pixels of the plane that plan ``p`` encodes, halos included."""
    return encoded_extent(n_h, p.tile[0], p.halo)[0] * encoded_extent(n_w, p.tile[1], p.halo)[0]


@pytest.mark.parametrize("shared_rows", [None, 3])
def test_fused_decoder_gives_the_float_decoders_values_in_any_blocks(shared_rows):
    """Groups of rows with their own conditions, blocks that cut a group and do not divide
    it: the same values as the float decoder."""
    torch.manual_seed(4)
    decoder = MLPDecoder(11, 24, 4).eval()
    groups, per_group = 3, 50
    shared = None if shared_rows is None else torch.rand(groups, shared_rows)
    z = torch.randn(groups * per_group, 11 - (shared_rows or 0))
    fused = FusedMLP(decoder, torch.float32)
    fused.block = 17
    with torch.inference_mode():
        torch.testing.assert_close(fused(z, shared), decoder(z, shared), rtol=1e-5, atol=1e-6)


def test_the_cpu_float_backend_runs_the_twins_and_answers_as_the_model(knee_lr):
    """super_resolve in fp32 through the twins equals the model's own whole-slice queries."""
    torch.manual_seed(5)
    model = SAINR(ModelConfig(**{**TINY.to_dict(), "conditioning": True})).eval()
    volume = knee_lr[0, 0, :6].numpy()
    cpu = torch.device("cpu")
    runner = load_backend("fp32").prepare(model, volume, cpu)
    assert isinstance(runner.encoder, FusedEDSR) and isinstance(runner.mlp, FusedMLP)
    grid = slice_grid(volume.shape[0], 3.0, 1.0)
    out, mask = super_resolve(model, volume, grid, cpu, precision="fp32", thickness=0.7)
    n_h, n_w = volume.shape[1:]
    queries = SliceQueries(
        lower=torch.as_tensor(grid.lower),
        t=torch.as_tensor(grid.frac, dtype=torch.float32),
        ys=slice(0, n_h),
        xs=slice(0, n_w),
    )
    with torch.inference_mode():
        fm = model.encode(torch.from_numpy(volume)[None, None], acquisition_tensor(3.0, 0.7))
        expected = model.query_slices(fm, queries)
    np.testing.assert_allclose(out.ravel(), expected.value.numpy(), rtol=1e-4, atol=1e-5)
    assert (mask.ravel() != expected.mask.numpy()).mean() < 1e-3
