"""A student cut from its teacher keeps the teacher's strongest channels and their weights."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import KNEE_QDESS
from sainr.model import SAINR, ModelConfig, SliceQueries, acquisition_tensor
from sainr.train.prune import narrowed

CONFIG = ModelConfig(channels=8, blocks=2, hidden=16, window=3, conditioning=True)
#: Feature channels, inner channels of every residual block and decoder units to silence.
DEAD_STREAM, DEAD_INNER, DEAD_UNITS = [1, 6], [0, 3], [4, 9]


def _answers(model: SAINR, lr: torch.Tensor) -> torch.Tensor:
    """Whole thin slices of ``lr`` at ×3 with slices half as thick as their spacing."""
    queries = SliceQueries(
        lower=torch.tensor([0, 0, 1, 2, 3]),
        t=torch.tensor([0.0, 0.4, 0.7, 0.2, 0.9]),
        ys=slice(0, lr.shape[-2]),
        xs=slice(0, lr.shape[-1]),
    )
    with torch.inference_mode():
        return model.query_slices(model.encode(lr, acquisition_tensor(3.0, 0.5)), queries).value


@pytest.fixture(scope="module")
def knee() -> torch.Tensor:
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(KNEE_QDESS))).astype(np.float32)
    volume /= np.percentile(volume, 99.5)
    return torch.from_numpy(volume[:5, 10:30, 12:36].copy())[None, None]


def _silence(model: SAINR) -> None:
    """Zero every weight that writes or reads the dead channels and units: they then carry
    nothing, and a model without them computes exactly the same."""
    stream, inner, units = DEAD_STREAM, DEAD_INNER, DEAD_UNITS
    enc, lasa = model.encoder, model.lasa
    with torch.no_grad():
        for conv in (enc.head, enc.tail):
            conv.weight[stream] = 0
            conv.bias[stream] = 0
        enc.tail.weight[:, stream] = 0
        for block in enc.residual_blocks():
            first, second = block.convs()
            first.weight[inner], first.bias[inner] = 0, 0
            first.weight[:, stream] = 0
            second.weight[stream], second.bias[stream] = 0, 0
            second.weight[:, inner] = 0
        for linear in (lasa.query, lasa.key):
            linear.weight[stream], linear.bias[stream] = 0, 0
            linear.weight[:, stream] = 0
        lasa.value.weight[stream], lasa.value.bias[stream] = 0, 0
        lasa.value.weight[:, stream] = 0
        lasa.offset.weight[stream], lasa.offset.bias[stream] = 0, 0
        model.gate.proj.weight[:, stream] = 0
        model.gate.proj.bias.fill_(50.0)  # every query attends: the attention's cut counts
        layers = model.decoder.linears()
        layers[0].weight[:, stream] = 0
        for layer, after in zip(layers[:-1], layers[1:]):
            layer.weight[units], layer.bias[units] = 0, 0
            after.weight[:, units] = 0


def test_a_cut_to_the_same_widths_is_the_same_model(knee):
    torch.manual_seed(0)
    model = SAINR(CONFIG).eval()
    same = narrowed(model, CONFIG.channels, CONFIG.hidden).eval()
    torch.testing.assert_close(_answers(same, knee), _answers(model, knee))


def test_the_cut_drops_the_channels_that_carry_nothing_and_keeps_the_answers(knee):
    """Silenced channels are the weakest: the narrow model keeps every other channel with
    its weights and answers as the wide one (the attention's narrower scale included)."""
    torch.manual_seed(1)
    model = SAINR(CONFIG).eval()
    _silence(model)
    small = narrowed(model, CONFIG.channels - 2, CONFIG.hidden - 2).eval()
    assert small.config.channels == 6 and small.config.hidden == 14
    assert small.config.window == CONFIG.window and small.config.conditioning
    torch.testing.assert_close(_answers(small, knee), _answers(model, knee), rtol=1e-4, atol=1e-5)


def test_a_wider_cut_is_refused():
    with pytest.raises(ValueError, match="cannot widen 8 channels / 16 units to 12 / 16"):
        narrowed(SAINR(CONFIG), 12, 16)


def test_a_shallower_cut_answers_as_the_model_whose_dropped_block_adds_nothing(knee):
    """A residual block whose branch writes zeros leaves the stream unchanged: the cut without
    it has one block fewer, keeps the others' weights and answers exactly as the deep model."""
    torch.manual_seed(2)
    model = SAINR(CONFIG).eval()
    with torch.no_grad():
        dropped = list(model.encoder.residual_blocks())[0].convs()[1]
        dropped.weight.zero_()
        dropped.bias.zero_()
    shallow = narrowed(model, CONFIG.channels, CONFIG.hidden, blocks=[1]).eval()
    assert shallow.config.blocks == 1 and shallow.halo < model.halo
    kept = list(model.encoder.residual_blocks())[1].convs()[0].weight
    torch.testing.assert_close(next(shallow.encoder.residual_blocks()).convs()[0].weight, kept)
    torch.testing.assert_close(_answers(shallow, knee), _answers(model, knee), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("blocks", [[], [1, 0], [2], [0, 0]])
def test_a_shallower_cut_needs_increasing_blocks_of_the_model(blocks):
    with pytest.raises(ValueError, match="increasing indices below 2"):
        narrowed(SAINR(CONFIG), CONFIG.channels, CONFIG.hidden, blocks=blocks)
