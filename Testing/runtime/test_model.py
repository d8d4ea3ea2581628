"""Model invariants: exact equivalences the fast paths must keep, and gradient flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY
from sainr.evaluation.baselines import linear_interpolate
from sainr.geometry import slice_grid
from sainr.model import SAINR, ModelConfig, Queries, SliceQueries, acquisition_tensor
from sainr.runtime.inference import Plan, super_resolve


def _random_queries(shape: tuple[int, int, int, int], n: int, seed: int = 0) -> Queries:
    g = torch.Generator().manual_seed(seed)
    n_b, n_s, n_h, n_w = shape
    return Queries(
        b=torch.randint(0, n_b, (n,), generator=g),
        s=torch.randint(0, n_s, (n,), generator=g),
        y=torch.randint(0, n_h, (n,), generator=g),
        x=torch.randint(0, n_w, (n,), generator=g),
        t=torch.rand(n, generator=g),
    )


def _naive_lasa(lasa, fm, z0, q):
    """Eq. 7 literally: h_n = F_n + Omega(delta_n), keys/values projected per pair."""
    idx, dz = lasa.neighbours(fm, q)
    delta = torch.cat([dz[..., None], lasa.in_plane.expand(len(dz), -1, -1)], dim=-1)
    h = fm.feat[idx] + lasa.offset(delta)
    logits = torch.einsum("qc,qnc->qn", lasa.query(z0), lasa.key(h)) * lasa.scale
    return z0 + torch.einsum("qn,qnc->qc", torch.softmax(logits, -1), lasa.value(h))


def test_lasa_equals_eq7_computed_per_neighbour(tiny_model):
    lr = torch.rand(2, 1, 5, 12, 11)
    fm = tiny_model.encode(lr)
    q = _random_queries(fm.shape, 300)
    z0, _ = fm.lerp(q)
    fast = tiny_model.lasa(z0, fm, q)
    torch.testing.assert_close(fast, _naive_lasa(tiny_model.lasa, fm, z0, q), rtol=1e-5, atol=1e-5)


def test_zero_decoder_without_lasa_is_linear_interpolation():
    model = SAINR(ModelConfig(channels=8, blocks=1, hidden=16, lasa=False)).eval()
    torch.nn.init.zeros_(model.decoder.net[-1].weight)
    torch.nn.init.zeros_(model.decoder.net[-1].bias)
    volume = np.random.default_rng(0).random((6, 10, 9), dtype=np.float32)
    grid = slice_grid(6, 3.0, 1.0)
    out, _ = super_resolve(model, volume, grid, torch.device("cpu"))
    np.testing.assert_allclose(out, linear_interpolate(volume, grid), rtol=0, atol=1e-6)


def test_all_ones_mask_equals_ungated_lasa(tiny_model):
    ungated = SAINR(ModelConfig(**{**TINY.to_dict(), "gating": False})).eval()
    ungated.load_state_dict(tiny_model.state_dict(), strict=False)
    lr = torch.rand(1, 1, 4, 10, 10)
    q = _random_queries((1, 4, 10, 10), 200)
    with torch.no_grad():
        tiny_model.gate.proj.bias.fill_(1e6)  # every query gated
        gated = tiny_model(lr, q)
        ref = ungated(lr, q)
    assert gated.mask.min() == 1
    torch.testing.assert_close(gated.value, ref.value)


def test_gated_inference_only_attends_masked_queries(tiny_model):
    lr = torch.rand(1, 1, 4, 10, 10)
    q = _random_queries((1, 4, 10, 10), 400)
    with torch.no_grad():
        fm = tiny_model.encode(lr)
        out = tiny_model.query(fm, q)
        z0, _ = fm.lerp(q)
        attended = tiny_model.lasa(z0, fm, q)
    keep = out.mask.bool()
    assert 0 < keep.sum() < len(q)  # the random gate splits the queries
    expect = torch.where(keep[:, None], attended, z0)
    torch.testing.assert_close(out.value, tiny_model.decoder(expect) + fm.lerp(q)[1])


def test_gated_inference_under_bf16_autocast_matches_fp32(tiny_model):
    """A distillation teacher runs gated point queries under the training's bf16 autocast:
    LASA's float32 output goes back into the bf16 features of the queries it attended."""
    lr = torch.rand(1, 1, 4, 10, 10)
    q = _random_queries((1, 4, 10, 10), 400)
    with torch.no_grad():
        ref = tiny_model(lr, q)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny_model(lr, q)
    assert 0 < ref.mask.sum() < len(q)  # some queries attend, others keep their feature
    torch.testing.assert_close(low.value.float(), ref.value, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("conditioning", [False, True])
def test_whole_slice_queries_equal_the_same_point_queries(conditioning):
    """Inference reads whole thin slices (slab lerp, per-slice conditions in the decoder's
    first layer); it answers exactly what the point-query path of training answers."""
    torch.manual_seed(1)
    model = SAINR(ModelConfig(**{**TINY.to_dict(), "conditioning": conditioning})).eval()
    lr = torch.rand(1, 1, 5, 12, 14)
    sq = SliceQueries(
        lower=torch.tensor([0, 1, 1, 3, 4]),
        t=torch.tensor([0.0, 0.25, 0.75, 0.5, 0.0]),
        ys=slice(2, 9),
        xs=slice(3, 14),
    )
    acquisition = acquisition_tensor(3.0, 0.6)
    with torch.no_grad():
        fm = model.encode(lr, acquisition)
        whole = model.query_slices(fm, sq)
        points = model.query(fm, sq.select(None))
    assert 0 < whole.mask.sum() < len(sq)  # both attended and skipped queries occur
    torch.testing.assert_close(whole.value, points.value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole.mask, points.mask)


def test_fast_head_conv_equals_pytorchs_and_leaves_training_to_autograd():
    """The encoder's one-channel head conv takes oneDNN at fp32 CPU inference: same values
    as PyTorch's own convolution for any stride, padding and dilation, either layout."""
    from sainr.model.edsr import head_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 4, 3, stride=(1, 2, 1), padding=(1, 0, 2), dilation=(1, 1, 2))
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        x = torch.randn(1, 1, 6, 13, 11).contiguous(memory_format=layout)
        with torch.inference_mode():
            torch.testing.assert_close(head_conv(conv, x), conv(x), rtol=1e-5, atol=1e-6)
    out = head_conv(conv, x)
    out.sum().backward()
    assert out.requires_grad and conv.weight.grad is not None


def test_gate_noise_only_in_training_mode(tiny_model):
    z0 = torch.randn(2000, TINY.channels)
    gate = tiny_model.gate
    gate.eval()
    a, b = gate(z0)[1], gate(z0)[1]
    assert torch.equal(a, b) and torch.equal(a, (gate.proj(z0).squeeze(-1) >= 0).float())
    gate.train()
    assert not torch.equal(gate(z0)[1], gate(z0)[1])


def test_straight_through_gradient_reaches_the_mask_predictor(tiny_model):
    tiny_model.train()
    lr = torch.rand(1, 1, 4, 10, 10)
    q = _random_queries((1, 4, 10, 10), 256)
    out = tiny_model(lr, q)
    assert set(out.mask.detach().unique().tolist()) <= {0.0, 1.0}
    out.value.sum().backward()  # fidelity term only, no mask loss
    grad = tiny_model.gate.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("tile, chunk", [(5, 37), (7, 1000), (64, 1 << 20)])
def test_chunked_and_tiled_equals_unchunked(tiny_model, tile, chunk):
    volume = np.random.default_rng(1).random((5, 23, 19), dtype=np.float32)
    grid = slice_grid(5, 2.5, 1.0)
    dev = torch.device("cpu")
    # fp32: int8 (auto on CPUs without bf16) calibrates each tile on its own values
    whole, whole_mask = super_resolve(
        tiny_model, volume, grid, dev, tile_plan=Plan(64, 0, 1 << 20), precision="fp32"
    )
    part, part_mask = super_resolve(
        tiny_model,
        volume,
        grid,
        dev,
        tile_plan=Plan(tile, tiny_model.halo, chunk),
        precision="fp32",
    )
    np.testing.assert_allclose(part, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(part_mask, whole_mask)
