"""The benchmark reports what it measured, and inference respects its memory budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import KNEE_QDESS
from sainr.cli import main
from sainr.geometry import slice_grid
from sainr.model import SAINR, ModelConfig
from sainr.runtime.backends import load_backend
from sainr.runtime.inference import plan, super_resolve
from sainr.runtime.precision import resolve_precision

INT8 = load_backend("int8").available()


def test_bench_reports_times_ratios_stages_and_configuration(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(["bench", str(KNEE_QDESS), "--spacing", "0.75", "--repeats", "1", "--json", str(out)])
        == 0
    )
    report = json.loads(out.read_text(encoding="utf-8"))
    cfg = report["configuration"]
    assert cfg["torch"] == torch.__version__ and cfg["threads"] >= 1 and cfg["device"] == "cpu"
    (row,) = report["results"]
    assert row["size_out"] == [64, 64, 79]
    assert row["bspline_s"] > 0 and row["linear_s"] > 0
    assert row["ratio_bspline"] == pytest.approx(row["sainr"]["total_s"] / row["bspline_s"])
    assert row["sainr"]["runs_s"] == [row["sainr"]["total_s"]]  # --repeats 1: one timed run
    stages = row["sainr"]
    assert 0 < stages["encoder_s"] + stages["lasa_s"] + stages["decoder_s"] <= stages["total_s"]
    assert 0 < stages["gated_fraction"] < 1 and row["sainr_ungated"]["gated_fraction"] == 1
    assert row["peak_rss_mb"] > 0
    printed = capsys.readouterr().out
    assert "| volume |" in printed
    features = cfg["cpu_features"]
    assert set(features) == {"isa", "amx", "avx512_bf16", "vnni"}
    assert f"VNNI {'yes' if features['vnni'] else 'no'}" in printed
    assert cfg["precision"] == resolve_precision(torch.device("cpu"), "auto")
    assert (
        f"-> precision {cfg['precision']}" in printed and f"vector ISA {features['isa']}" in printed
    )


def test_bench_without_the_ungated_run(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", str(KNEE_QDESS), "--spacing", "0.75", "--repeats", "2", "--no-ungated"]
    assert main([*args, "--precision", "fp32", "--json", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["configuration"]["precision"] == "fp32"
    (row,) = report["results"]
    assert "sainr_ungated" not in row and 0 < row["sainr"]["gated_fraction"] < 1
    runs = row["sainr"]["runs_s"]  # SA-INR is timed like SimpleITK: the best of --repeats
    assert len(runs) == 2 and row["sainr"]["total_s"] == min(runs)


def _encoded_tiles(p, n_h: int, n_w: int) -> list[tuple[int, int]]:
    """(rows, columns) each tile of plan ``p`` encodes: its core plus the halo inside the plane."""
    return [
        (
            min(ys.stop + p.halo, n_h) - max(ys.start - p.halo, 0),
            min(xs.stop + p.halo, n_w) - max(xs.start - p.halo, 0),
        )
        for ys, xs in p.tiles(n_h, n_w)
    ]


@pytest.mark.parametrize("budget_mb", [64, 512, 2048])
def test_tile_and_chunk_sizes_follow_the_memory_budget(budget_mb):
    model = SAINR(ModelConfig(channels=32, blocks=4, hidden=128))
    p = plan(model, (40, 384, 384), budget_mb=budget_mb)
    tiles = _encoded_tiles(p, 384, 384)
    encoder_bytes = max(h * w for h, w in tiles) * 40 * 4 * 32 * 6
    query_bytes = p.chunk * 4 * (32 * 98 * 3 + 4 * 128)
    assert encoder_bytes <= 0.6 * budget_mb * 2**20 or min(p.tile) == 16
    assert query_bytes <= 0.4 * budget_mb * 2**20 or p.chunk == 256
    assert p.halo == model.halo == 2 * 4 + 2 + 3 * 2


def test_tiling_repeats_little_encoder_work():
    """Halos overlap (repeated encoder work) only between tiles, never at the volume's edge:
    a plane that fits the budget is one tile, and a knee-sized 384 x 384 x 40 volume at the
    default 2 GB re-encodes under 30 % of its pixels (square tiles re-encoded 36 %)."""
    model = SAINR(ModelConfig(channels=32, blocks=4, hidden=128))
    assert _encoded_tiles(plan(model, (40, 192, 192), 2048), 192, 192) == [(192, 192)]
    tiles = _encoded_tiles(plan(model, (40, 384, 384), 2048), 384, 384)
    assert len(tiles) > 1
    assert sum(h * w for h, w in tiles) <= 1.3 * 384 * 384


def test_small_budget_gives_the_same_volume(tiny_model):
    volume = np.random.default_rng(3).random((6, 40, 36), dtype=np.float32)
    grid = slice_grid(6, 3.0, 1.0)
    cpu = torch.device("cpu")
    # fp32: int8 (auto on CPUs without bf16) calibrates each tile on its own values
    big = super_resolve(tiny_model, volume, grid, cpu, budget_mb=2048, precision="fp32")[0]
    small = super_resolve(tiny_model, volume, grid, cpu, budget_mb=0.5, precision="fp32")[0]
    assert len(list(plan(tiny_model, (6, 40, 36), 0.5).tiles(40, 36))) > 1  # really tiled
    np.testing.assert_allclose(small, big, rtol=1e-5, atol=1e-5)


def test_query_chunks_cover_every_voxel_once_and_never_exceed_the_chunk():
    """A tile row wider than the query budget is cut into row blocks: the working set of a
    query chunk stays bounded however large the tile."""
    from sainr.runtime.inference import query_chunks

    for n_hr, rows, n_cols, chunk in [(10, slice(0, 50), 40, 4000), (7, slice(16, 200), 128, 1000)]:
        hits = np.zeros((n_hr, rows.stop), dtype=int)
        for js, block in query_chunks(n_hr, rows, n_cols, chunk):
            assert len(js) * (block.stop - block.start) * n_cols <= chunk
            hits[js[0] : js[-1] + 1, block] += 1
        assert (hits[:, rows] == 1).all() and not hits[:, : rows.start].any()


def test_chunks_smaller_than_a_slice_give_the_same_volume(tiny_model):
    from sainr.runtime.inference import Plan

    volume = np.random.default_rng(4).random((6, 40, 36), dtype=np.float32)
    grid = slice_grid(6, 3.0, 1.0)
    cpu = torch.device("cpu")
    whole = super_resolve(tiny_model, volume, grid, cpu, tile_plan=Plan((40, 36), 0, 1 << 20))
    rows = super_resolve(tiny_model, volume, grid, cpu, tile_plan=Plan((40, 36), 0, 100))
    np.testing.assert_allclose(rows[0], whole[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rows[1], whole[1])


def _reduce_at(image: sitk.Image, model, *precisions: str) -> list:
    from sainr import ReduceOptions, reduce_spacing

    return [reduce_spacing(image, 1.0, ReduceOptions(precision=p), model=model) for p in precisions]


def _assert_close(full, low, mean_tol: float, p99_tol: float) -> np.ndarray:
    """Mean and 99th-percentile |difference| relative to the 99.5th percentile of ``full``,
    and the same gated fraction within 2 %; returns ``full``'s voxels."""
    a = sitk.GetArrayFromImage(full.image).astype(np.float64)
    b = sitk.GetArrayFromImage(low.image).astype(np.float64)
    scale = np.percentile(a, 99.5)
    assert np.abs(a - b).mean() / scale < mean_tol
    assert np.percentile(np.abs(a - b), 99) / scale < p99_tol
    assert abs(full.info["gated_fraction"] - low.info["gated_fraction"]) < 0.02
    return a


def test_bf16_autocast_stays_close_to_fp32_on_a_real_knee(knee_thick):
    """Reduced precision (opt-in on CPU, fp16 by default on CUDA) changes the result by far less
    than what SA-INR adds over interpolation. The central 32 x 32 of the crop: CPUs without
    bf16 hardware emulate it, slowly."""
    from sainr.runtime.weights import load_model

    centre = knee_thick[16:48, 16:48, :]
    _assert_close(*_reduce_at(centre, load_model(), "fp32", "bf16"), 5e-4, 5e-3)


def test_auto_precision_is_fp16_on_cuda_bf16_with_amx_else_int8():
    from sainr.runtime.device import cpu_features
    from sainr.runtime.precision import cpu_auto

    cpu = torch.device("cpu")
    assert resolve_precision(torch.device("cuda"), "auto") == "fp16"
    assert resolve_precision(cpu, "auto") == cpu_auto(cpu_features(), False, INT8)
    assert resolve_precision(cpu, "auto", training=True) == cpu_auto(cpu_features(), True, INT8)
    assert resolve_precision(cpu, "fp32") == "fp32"
    if INT8:
        assert resolve_precision(cpu, "int8") == "int8"
    assert resolve_precision(cpu, "int8", training=True) == "fp32"  # adaptation trains fp32
    with pytest.raises(ValueError, match="CPU only"):
        resolve_precision(torch.device("cuda"), "int8")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision(cpu, "int4")


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "inference", "training", "without_int8"),
    [
        (True, True, "bf16", "bf16", "bf16"),  # Intel Sapphire Rapids and later
        (False, True, "int8", "bf16", "bf16"),  # AMD Zen 4, Intel Cooper Lake
        (False, False, "int8", "fp32", "fp32"),  # AVX2 laptops
    ],
)
def test_auto_precision_per_cpu_family(amx, avx512_bf16, inference, training, without_int8):
    """What 'auto' runs on each CPU family: bf16 only where AMX makes it the fastest, int8
    inference elsewhere, gradients in bf16 where there is bf16 hardware."""
    from sainr.runtime.precision import cpu_auto

    features = {"isa": "AVX512" if avx512_bf16 else "AVX2", "amx": amx, "avx512_bf16": avx512_bf16}
    assert cpu_auto(features, training=False, int8_available=True) == inference
    assert cpu_auto(features, training=True, int8_available=True) == training
    assert cpu_auto(features, training=False, int8_available=False) == without_int8


BF16_UNITS = {"isa": "AVX512", "amx": False, "avx512_bf16": True}
NO_BF16 = {"isa": "AVX2", "amx": False, "avx512_bf16": False}


@pytest.mark.parametrize(
    ("device", "asked", "slices", "features", "runs"),
    [
        ("cpu", "bf16", 2, BF16_UNITS, "fp32"),  # NaN weight gradients on Zen 4
        ("cpu", "bf16", 3, BF16_UNITS, "bf16"),
        ("cpu", "bf16", 3, {**BF16_UNITS, "amx": True, "avx512_bf16": False}, "bf16"),
        ("cpu", "bf16", 17, NO_BF16, "fp32"),  # emulated bf16: far slower than fp32
        ("cpu", "fp32", 2, BF16_UNITS, "fp32"),
        ("cuda", "fp16", 2, NO_BF16, "fp16"),
        ("cuda", "bf16", 2, NO_BF16, "bf16"),
    ],
)
def test_training_precision_of_thin_inputs_and_cpus_without_bf16(
    device, asked, slices, features, runs
):
    """Training and adaptation share one rule for what the CPU's bf16 kernels cannot do well,
    and say why they changed the precision."""
    from sainr.runtime.precision import training_precision

    precision, why = training_precision(torch.device(device), asked, slices, features)
    assert precision == runs
    assert bool(why) == (runs != asked)


@pytest.mark.skipif(not INT8, reason="this torch build lacks oneDNN int8 kernels")
def test_int8_stays_close_to_fp32_on_a_real_knee_and_keeps_the_geometry(knee_thick):
    """int8 (auto on CPUs without AMX) changes the shipped model's result by far
    less than what SA-INR adds over interpolation, and nothing else."""
    from sainr.runtime.weights import load_model

    model = load_model()
    full, low, again = _reduce_at(knee_thick, model, "fp32", "int8", "fp32")
    for get in ("GetSize", "GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(low.image, get)() == getattr(full.image, get)()
    # Without AVX-512, oneDNN's u8 x s8 products pass through saturating 16-bit sums
    # (vpmaddubsw): twice the mean difference, still far below SA-INR's gain.
    wide = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    a = _assert_close(full, low, 1e-3 if wide else 2e-3, 1e-2)
    # the float model is untouched: a later fp32 run gives the same volume
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.image), a.astype(np.int16))


@pytest.mark.parametrize(("vnni", "top"), [(True, 255), (False, 127)])
def test_int8_activations_keep_to_7_bits_without_vnni(vnni, top):
    """Without VNNI, oneDNN sums pairs of u8 x s8 products in 16 bits: 7-bit codes cannot
    overflow them, so the codes the backend makes stop at 127 there."""
    from sainr.model.quantized import Range, quantize
    from sainr.runtime.backends.int8 import activation_top

    assert activation_top({"isa": "AVX2", "vnni": vnni}) == top
    x = torch.linspace(-1.0, 3.0, 101)
    r = Range.of(x, activation_top({"vnni": vnni}))
    codes = quantize(x, r)
    assert int(codes.max()) == round(3.0 / r.scale) + r.zero_point <= top
    decoded = (codes.float() - r.zero_point) * r.scale
    assert (decoded - x).abs().max() <= r.scale / 2 + 1e-6


def test_int8_codes_round_to_nearest_saturate_and_fill_the_given_buffers():
    from sainr.model.quantized import Range, quantize

    x = torch.randn(2, 3, 5, 7, 9) * 3
    r = Range(-2.0, 4.0)
    expected = torch.floor(x.double() / r.scale + r.zero_point + 0.5).clamp(0, 255)
    codes = quantize(x, r)
    assert codes.dtype == torch.uint8
    off = (codes.double() - expected).abs()
    assert off.max() <= 1 and (off > 0).float().mean() < 1e-3  # float ties only
    assert codes.min() == 0 and codes.max() == 255  # x exceeds the range both ways
    scratch, out = torch.empty_like(x), torch.empty_like(x, dtype=torch.uint8)
    again = quantize(x, r, scratch, out)
    assert again.data_ptr() == out.data_ptr() and torch.equal(again, codes)


@pytest.mark.skipif(not INT8, reason="this torch build lacks oneDNN int8 kernels")
def test_int8_runs_are_timed_per_stage(tiny_model):
    """The int8 twins of the encoder and decoder count in the benchmark's stage times."""
    from sainr.evaluation.bench import stage_timer

    volume = np.random.default_rng(5).random((6, 48, 48), dtype=np.float32)
    with stage_timer(torch.device("cpu")) as stages:
        super_resolve(tiny_model, volume, slice_grid(6, 3.0, 1.0), torch.device("cpu"), precision="int8")  # fmt: skip
    assert stages["encoder"] > 0 and stages["decoder"] > 0


def test_attention_stays_fp32_inside_a_bf16_autocast_region(tiny_model):
    """LASA is gather-bound: it opts out of autocast, so its output is the fp32 result."""
    from sainr.model import Queries

    rng = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 1, 5, 20, 20, generator=rng)
    n = 300
    q = Queries(
        b=torch.zeros(n, dtype=torch.long),
        s=torch.randint(0, 4, (n,), generator=rng),
        y=torch.randint(0, 20, (n,), generator=rng),
        x=torch.randint(0, 20, (n,), generator=rng),
        t=torch.rand(n, generator=rng),
    )
    with torch.inference_mode():
        fm = tiny_model.encode(lr)
        z0, _ = fm.lerp(q)
        full = tiny_model.lasa(z0, fm, q)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = tiny_model.lasa(z0, fm, q)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, full, rtol=0, atol=0)


def test_reduced_precision_layout_does_not_change_later_fp32_results(tiny_model):
    """A bf16 run switches the encoder to channels-last; an fp32 run afterwards gives the
    same volume as before it."""
    volume = np.random.default_rng(5).random((6, 32, 32), dtype=np.float32)
    grid = slice_grid(6, 3.0, 1.0)
    cpu = torch.device("cpu")
    before = super_resolve(tiny_model, volume, grid, cpu, precision="fp32")[0]
    half = super_resolve(tiny_model, volume, grid, cpu, precision="bf16")[0]
    after = super_resolve(tiny_model, volume, grid, cpu, precision="fp32")[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert np.abs(half - before).max() < 0.05 * np.abs(before).max()
