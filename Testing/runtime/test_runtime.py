"""The runtime's layers: light precision selection for training, one backend per precision
behind one interface, and the allocator tuned at the process boundary only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sainr.geometry import slice_grid
from sainr.runtime import heap
from sainr.runtime.backends import REGISTRY, load_backend
from sainr.runtime.inference import super_resolve
from sainr.runtime.precision import PRECISIONS, resolve_precision

CORE = os.path.join(os.path.dirname(__file__), "..", "..", "SAINRSlicer")
#: Modules training and adaptation must not load: the backends, their lowered twins and the
#: allocator.
HEAVY = (
    "sainr.runtime.backends.int8",
    "sainr.model.edsr_int8",
    "sainr.model.decoder_int8",
    "sainr.model.quantized",
    "sainr.runtime.backends.floating",
    "sainr.model.edsr_fused",
    "sainr.model.decoder_fused",
    "sainr.runtime.heap",
)
#: Mean |difference| from fp32, relative to the output's 99.5th percentile, per precision.
#: Without AVX-512 oneDNN's u8 x s8 products pass through saturating 16-bit sums (vpmaddubsw),
#: which doubles int8's difference.
WIDE = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
TOLERANCE = {"fp32": 1e-6, "bf16": 5e-4, "fp16": 5e-4, "int8": 1e-3 if WIDE else 2e-3}


def _python(code: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter that finds the core; its stdout."""
    environment = {**os.environ, **(env or {}), "PYTHONPATH": CORE}
    done = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_training_and_adaptation_load_no_backend_and_no_allocator_tuning():
    loaded = json.loads(
        _python(
            "import json, sys\n"
            "import sainr.train.training, sainr.train.adapt\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('sainr.'))))"
        )
    )
    assert "sainr.runtime.precision" in loaded  # what they do import (the check can fail)
    assert [m for m in HEAVY if m in loaded] == []


@pytest.fixture(scope="module")
def knee() -> np.ndarray:
    """The real knee at 3 mm, every second voxel in-plane (20 x 32 x 32), scaled to about
    [0, 1]: small, with the whole knee's mix of tissue and background."""
    from conftest import KNEE_QDESS

    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(KNEE_QDESS)))[::2, ::2, ::2]
    volume = volume.astype(np.float32)
    return volume / np.percentile(volume, 99.5)


@pytest.mark.parametrize("precision", sorted(REGISTRY))
def test_every_backend_gives_the_fp32_volume_within_its_tolerance(precision, knee, tiny_model):
    if not load_backend(precision).available():
        pytest.skip(f"this torch build cannot run {precision}")
    cpu = torch.device("cpu")
    grid = slice_grid(knee.shape[0], 3.0, 1.0)
    full, full_mask = super_resolve(tiny_model, knee, grid, cpu, precision="fp32")
    low, low_mask = super_resolve(tiny_model, knee, grid, cpu, precision=precision)
    assert low.shape == full.shape and low.dtype == np.float32
    difference = np.abs(low - full).mean() / np.percentile(np.abs(full), 99.5)
    assert difference < TOLERANCE[precision]
    assert (difference > 0) == (precision != "fp32")  # the precision really ran
    assert (low_mask != full_mask).mean() < 0.02
    again, _ = super_resolve(tiny_model, knee, grid, cpu, precision="fp32")
    np.testing.assert_array_equal(again, full)  # the float model is left as it was


def test_an_unknown_precision_is_refused_by_name():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"unknown precision 'int4'; use auto or one of fp32"):
        load_backend("int4")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        resolve_precision(cpu, "int4")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        super_resolve(None, np.zeros((2, 4, 4), np.float32), slice_grid(2, 2.0, 1.0), cpu, precision="int4")  # fmt: skip
    assert PRECISIONS == ("auto", *REGISTRY)  # what --precision offers


def test_an_inference_only_precision_trains_in_fp32_and_stays_on_its_devices():
    inference_only = [name for name, r in REGISTRY.items() if not r.trains]
    assert inference_only  # int8
    for name in inference_only:
        assert resolve_precision(torch.device("cpu"), name, training=True) == "fp32"
    with pytest.raises(ValueError, match="int8 runs on the CPU only; use auto, fp32"):
        resolve_precision(torch.device("cuda"), "int8")


#: Allocates and frees 256 MB, then prints how much of it is still resident (MB).
_KEEPS = """
import os, torch
def resident():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
{setup}
before = resident()
block = torch.ones(64 * 2**20)
del block
print(resident() - before)
"""


@pytest.mark.skipif(heap._glibc() is None, reason="the heap is retained on glibc only")
@pytest.mark.parametrize(
    ("setup", "env", "kept"),
    [
        ("", {}, False),  # glibc's defaults: the freed block goes back to the OS
        ("from sainr.runtime.heap import retain_freed_memory; retain_freed_memory()", {}, True),
        ("", heap.environment(), True),  # what the Slicer worker starts with
    ],
    ids=["defaults", "cli", "environment"],
)
def test_a_process_set_up_to_retain_its_heap_keeps_freed_memory(setup, env, kept):
    resident = float(_python(_KEEPS.format(setup=setup), env))
    assert (resident > 200) == kept, f"{resident:.0f} MB of a freed 256 MB block resident"


def test_the_command_line_retains_the_heap_for_inference_commands_only(monkeypatch, tmp_path):
    import sainr.cli

    calls = []
    monkeypatch.setattr(sainr.cli, "retain_freed_memory", lambda: calls.append(1))
    missing = str(tmp_path / "missing.nii.gz")
    assert sainr.cli.main(["reduce", missing, str(tmp_path / "out.nii.gz"), "--spacing", "1"]) == 2
    assert calls == [1]
    assert (
        sainr.cli.main(["adapt", missing, "--spacing", "1", "--out", str(tmp_path / "w.pt")]) == 2
    )
    assert calls == [1, 1]  # adaptation trains on the volume, then may reduce it
    assert sainr.cli.main(["export", missing, "--models-dir", str(tmp_path)]) == 2
    assert calls == [1, 1]  # export runs no inference


def test_a_library_run_leaves_the_allocator_alone():
    """Whole-volume inference through the library loads its backend, never the allocator
    tuning: that belongs to the process that runs it."""
    loaded = json.loads(
        _python(
            "import json, sys, numpy as np, torch\n"
            "from sainr.geometry import slice_grid\n"
            "from sainr.model import SAINR, ModelConfig\n"
            "from sainr.runtime.inference import super_resolve\n"
            "model = SAINR(ModelConfig(channels=8, blocks=1, hidden=16, window=3))\n"
            "volume = np.random.default_rng(0).random((4, 16, 16), dtype=np.float32)\n"
            "super_resolve(model, volume, slice_grid(4, 2.0, 1.0), torch.device('cpu'), precision='fp32')\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('sainr.'))))"
        )
    )
    assert "sainr.runtime.backends.floating" in loaded and "sainr.runtime.heap" not in loaded


@pytest.mark.skipif(heap._glibc() is None, reason="the heap is retained on glibc only")
def test_the_slicer_worker_starts_with_the_retained_heap_settings():
    from slicer_scene import SAINRSlicerLib

    process = SAINRSlicerLib.process
    code = "import os; print(os.environ.get('MALLOC_MMAP_MAX_'))"
    child, _job = process.startProcess(
        [sys.executable, "-c", code], process.subprocessEnvironment()
    )
    out, _err = child.communicate(timeout=60)
    assert out.strip() == heap.environment()["MALLOC_MMAP_MAX_"] == "0"
