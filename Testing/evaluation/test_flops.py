"""MAC accounting per 256 x 256 x 2 slab: the paper's Table III and our own model's work."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from sainr.evaluation.flops import (
    Slab,
    decoder_macs_per_query,
    encoder_macs_per_voxel,
    flops_table,
    lasa_macs_per_query,
    slab_macs,
)
from sainr.geometry import slice_grid
from sainr.model import SAINR, ModelConfig
from sainr.runtime.backends.floating import fused_kernels_run
from sainr.runtime.inference import Plan, super_resolve

PAPER = ModelConfig()  # C = 64, B = 8, hidden 256, 5 layers, 7 x 7 window
NO_LASA = replace(PAPER, lasa=False, gating=False)
LASA_ALL = replace(PAPER, gating=False)
SMALL = ModelConfig(channels=8, blocks=1, hidden=16, decoder_layers=3, window=3)


def gmac(cfg: ModelConfig, k: float, attended: float = 1.0, accounting: str = "paper") -> float:
    return slab_macs(cfg, k, attended, accounting)["total"] / 1e9


@pytest.mark.parametrize(
    ("k", "no_lasa", "lasa", "gated"),
    [(2, 288.6, 447.3, 320.3), (3, 302.6, 514.2, 344.9), (4, 316.5, 580.3, 369.4)],
)
def test_reproduces_table_iii(k: int, no_lasa: float, lasa: float, gated: float) -> None:
    assert gmac(NO_LASA, k) == pytest.approx(no_lasa, abs=0.05)
    assert gmac(PAPER, k, 0.2) == pytest.approx(gated, abs=0.06)
    # The paper's x4 LASA entry is 0.6 G below the arithmetic that reproduces all its other
    # entries to 0.15 G, hence the wider tolerance there.
    assert gmac(LASA_ALL, k) == pytest.approx(lasa, abs=0.15 if k < 4 else 0.7)


def test_components_match_the_papers_per_voxel_and_per_query_counts() -> None:
    assert encoder_macs_per_voxel(PAPER) / 1e6 == pytest.approx(1.882, abs=5e-4)
    assert decoder_macs_per_query(PAPER) / 1e6 == pytest.approx(0.213, abs=5e-4)
    assert lasa_macs_per_query(PAPER, "paper") == 98 * 2 * 64**2 + 64**2
    parts = slab_macs(PAPER, 3, 1.0, "paper")
    assert parts["encoder"] / 1e9 == pytest.approx(246.7, abs=0.05)
    assert parts["decoder"] / 1e9 == pytest.approx(55.9, abs=0.05)


def test_counts_follow_the_actual_modules() -> None:
    model = SAINR(PAPER)
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv3d)]
    assert encoder_macs_per_voxel(PAPER) == sum(m.weight.numel() for m in convs)
    linears = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert decoder_macs_per_query(PAPER) == sum(m.weight.numel() for m in linears)


def _convolution_flops(x_shape, w_shape, *_args, out_shape=None, **_kwargs) -> int:
    return conv_flop_count(x_shape, w_shape, out_shape)


def _fused_convolution_flops(x_shape, *args, out_shape=None, **_kwargs) -> int:
    """oneDNN's fused convolution: (X, W, B, ...) or, with a skip sum, (X, other, W, B, ...)."""
    with_skip = args[1] is not None and len(args[1]) == 5
    return conv_flop_count(x_shape, args[1] if with_skip else args[0], out_shape)


def _fused_convolution_into_flops(_skip_shape, x_shape, w_shape, *_args, out_shape=None, **_kw):
    """oneDNN's fused convolution summed into its skip tensor in place: (other, X, W, ...)."""
    return conv_flop_count(x_shape, w_shape, out_shape)


def _fused_linear_flops(x_shape, w_shape, *_args, out_shape=None, **_kwargs) -> int:
    return 2 * int(np.prod(x_shape[:-1])) * w_shape[0] * w_shape[1]


#: Ops of the CPU inference path the counter does not know, counted as what they compute: the
#: oneDNN head conv (model/edsr.py: head_conv) and the fused twins (model/*_fused.py).
ONEDNN_OPS = {
    torch.ops.aten.mkldnn_convolution: _convolution_flops,
    torch.ops.mkldnn._convolution_pointwise: _fused_convolution_flops,
    torch.ops.mkldnn._convolution_pointwise_: _fused_convolution_into_flops,
    torch.ops.mkldnn._linear_pointwise: _fused_linear_flops,
}


@pytest.mark.parametrize("cfg", [SMALL, replace(SMALL, offset_embed=False, gating=False)])
@pytest.mark.parametrize("k", [2, 3])
def test_our_accounting_matches_torchs_flop_counter_on_a_real_slab(
    cfg: ModelConfig, k: int
) -> None:
    torch.manual_seed(0)
    model = SAINR(cfg).eval()
    lr = np.random.default_rng(k).random((2, 16, 16), dtype=np.float32)
    fused_kernels_run(torch.float32)  # the backend's one-time probe is not the model's work
    with FlopCounterMode(display=False, custom_mapping=ONEDNN_OPS) as counter:
        _, mask = super_resolve(
            model,
            lr,
            slice_grid(2, float(k), 1.0),
            torch.device("cpu"),
            tile_plan=Plan(16, 0, 1 << 20),
            precision="fp32",  # the accounting is of the float model (int8 calibrates too)
        )
    expected = slab_macs(cfg, k, float(mask.mean()), "ours", Slab(side=16))["total"]
    assert counter.get_total_flops() / 2 == expected


def test_gating_scales_only_the_lasa_term() -> None:
    full, gated = slab_macs(PAPER, 3, 1.0), slab_macs(PAPER, 3, 0.2)
    assert gated["lasa"] == pytest.approx(0.2 * full["lasa"])
    assert {k: v for k, v in gated.items() if k not in ("lasa", "total")} == {
        k: v for k, v in full.items() if k not in ("lasa", "total")
    }
    assert slab_macs(LASA_ALL, 3, 0.2)["lasa"] == full["lasa"]  # no gate: every query attends


def test_attending_features_directly_makes_lasa_cheap() -> None:
    ours, paper = slab_macs(LASA_ALL, 4, 1.0, "ours"), slab_macs(LASA_ALL, 4, 1.0, "paper")
    assert ours["lasa"] * 20 < paper["lasa"]
    assert ours["encoder"] == paper["encoder"] and ours["decoder"] == paper["decoder"]
    assert slab_macs(NO_LASA, 4, 1.0, "ours")["lasa"] == 0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="accounting"):
        slab_macs(PAPER, 2, 1.0, "thop")
    with pytest.raises(ValueError, match="attended"):
        slab_macs(PAPER, 2, 1.5)


def test_table_lists_all_variants() -> None:
    table = flops_table(PAPER, (2, 3, 4), attended=0.2)
    lines = table.splitlines()
    assert lines[0] == "| variant | ×2 | ×3 | ×4 |"
    assert "| encoder + MLP, no LASA | 288.6 | 302.6 | 316.5 |" in lines
    assert any(
        line.startswith("| LASA on 20 % (gated), as coded in the paper | 320.3") for line in lines
    )
    assert len(lines) == 2 + 5
    assert len(flops_table(NO_LASA).splitlines()) == 3
