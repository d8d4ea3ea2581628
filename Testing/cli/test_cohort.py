"""Cohorts: ``torchrun ... -m sainr reduce IN_DIR OUT_DIR`` shares a folder between processes.

The end-to-end test starts two real processes on the CPU through PyTorch's launcher on crops
of the repository's knee; the others check the pieces (shares, completeness, the environment,
per-input failures, the summary) directly.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_runs import _tiny_checkpoint, run_cli

import sainr
from conftest import KNEE_QDESS
from sainr import cohort
from sainr.cohort import Launch, Report
from sainr.errors import InputImageError, SainrError
from sainr.io.outputs import LandedInterrupt, is_complete
from sainr.runtime.consistency import describe as describe_consistency

CROPS = ["a.nii.gz", "b.nrrd", "c.nii.gz", "d.mha"]  # sorted: a, c -> rank 0; b, d -> rank 1


def _results(folder: Path) -> list[str]:
    """The result files in ``folder`` (without their ``.sainr.json`` records)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".sainr.json"))


def _torchrun(src: Path, dst: Path, mask: Path) -> subprocess.CompletedProcess:
    """``sainr reduce`` on two CPU processes started by torchrun, their stderr lines prefixed
    with their rank (``--tee 2``), running this checkout's ``sainr`` with a tiny model that is
    not told the slice thickness (next to ``src``, written once)."""
    weights = src.parent / "tiny.pt"
    if not weights.is_file():
        _tiny_checkpoint(weights)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(Path(sainr.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    )
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "--tee",
            "2",
            "-m",
            "sainr",
            "reduce",
            str(src),
            str(dst),
            "--factor",
            "2",
            "--mask",
            str(mask),
            "--weights",
            str(weights),
            "--device",
            "cpu",
            "--progress",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _by_rank(stderr: str) -> dict[int, list[str]]:
    """The lines each rank printed (torchrun's ``[<role><local rank>]:`` prefixes)."""
    lines: dict[int, list[str]] = {}
    for line in stderr.splitlines():
        if match := re.match(r"\[[A-Za-z_]*(\d+)\]:(.*)", line):
            lines.setdefault(int(match[1]), []).append(match[2])
    return lines


def _reduced(lines: dict[int, list[str]]) -> dict[str, list[int]]:
    """Input name -> the ranks that printed its result line."""
    done: dict[str, list[int]] = {}
    for rank, texts in lines.items():
        for text in texts:
            if " -> " in text and not text.startswith("sainr:"):
                done.setdefault(text.split(":")[0], []).append(rank)
    return done


def test_two_processes_reduce_a_folder_once_skip_complete_results_and_report_a_bad_input(
    tmp_path, knee_thick
):
    src, dst, mask = tmp_path / "in", tmp_path / "out", tmp_path / "mask"
    src.mkdir()
    corners = [(0, 0), (32, 0), (0, 32), (32, 32)]
    for name, (x, y) in zip(CROPS, corners):
        sitk.WriteImage(knee_thick[x : x + 32, y : y + 32, :], str(src / name))

    first = _torchrun(src, dst, mask)
    assert first.returncode == 0, first.stderr
    lines = _by_rank(first.stderr)
    assert _reduced(lines) == {"a.nii.gz": [0], "b.nrrd": [1], "c.nii.gz": [0], "d.mha": [1]}
    assert lines[0][-1] == (
        "sainr: cohort of 4 input(s) on 2 process(es): "
        "4 done, 0 skipped (already complete), 0 failed"
    )
    assert not any("cohort of" in text for text in lines[1])  # one summary, from rank 0
    assert _results(dst) == _results(mask) == sorted(CROPS)
    for name, (x, y) in zip(CROPS, corners):
        result, gate = sitk.ReadImage(str(dst / name)), sitk.ReadImage(str(mask / name))
        assert result.GetSize() == gate.GetSize() == (32, 32, 39)
        np.testing.assert_allclose(result.GetSpacing(), (0.3125, 0.3125, 1.5), atol=1e-5)
        corner = knee_thick.TransformIndexToPhysicalPoint((x, y, 0))
        np.testing.assert_allclose(result.GetOrigin(), corner, atol=1e-4)
        np.testing.assert_allclose(result.GetDirection(), knee_thick.GetDirection(), atol=1e-6)
    stamps = {p: p.stat().st_mtime_ns for p in [*dst.iterdir(), *mask.iterdir()]}

    again = _torchrun(src, dst, mask)
    assert again.returncode == 0, again.stderr
    assert _reduced(_by_rank(again.stderr)) == {}
    assert "0 done, 4 skipped (already complete), 0 failed" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten

    (dst / "a.nii.gz").unlink()  # cut short: a without result, d with its result but no mask
    (mask / "d.mha").unlink()
    (src / "a2.nii.gz").write_bytes(b"not a volume")  # sorted second: rank 1's
    rest = _torchrun(src, dst, mask)
    assert rest.returncode != 0  # rank 0 exits with 2 for the failed input; torchrun says so
    lines = _by_rank(rest.stderr)
    assert _reduced(lines) == {"a.nii.gz": [0], "d.mha": [0]}  # d is 5th of 5 now: rank 0's
    assert any(t.startswith("sainr: error: a2.nii.gz: cannot read") for t in lines[1])
    summary = [t for t in lines[0] if t.startswith("sainr: ")][-2:]
    assert summary[0].endswith("2 done, 2 skipped (already complete), 1 failed")
    assert summary[1].startswith("sainr: failed: a2.nii.gz (rank 1): cannot read")
    assert (dst / "a.nii.gz").is_file() and (mask / "d.mha").is_file()
    untouched = {p for p in stamps if p.name in ("b.nrrd", "c.nii.gz")}
    assert {p: p.stat().st_mtime_ns for p in untouched} == {p: stamps[p] for p in untouched}
    assert not list(dst.glob(".sainr-*")) and not list(mask.glob(".sainr-*"))


@pytest.mark.parametrize("count, world", [(4, 2), (7, 3), (2, 4), (0, 2), (5, 1)])
def test_shares_are_disjoint_cover_every_input_and_differ_by_at_most_one(count, world):
    items = [f"in{i:02d}.nii.gz" for i in range(count)]
    shares = [cohort.share(items, rank, world) for rank in range(world)]
    assert sorted(x for s in shares for x in s) == items
    assert len({x for s in shares for x in s}) == count
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert shares == [cohort.share(list(items), rank, world) for rank in range(world)]


def test_launch_is_read_from_torchrun_environment_and_absent_without_it():
    assert cohort.launch_from_env({}) is None
    assert cohort.launch_from_env({"WORLD_SIZE": "2"}) is None
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert cohort.launch_from_env(env) == Launch(3, 4, 1, 2)
    assert cohort.launch_from_env({"RANK": "0", "WORLD_SIZE": "1"}) == Launch(0, 1, 0, 1)
    with pytest.raises(SainrError, match="whole numbers"):
        cohort.launch_from_env({"RANK": "one", "WORLD_SIZE": "2"})
    with pytest.raises(SainrError, match="no place in a launch"):
        cohort.launch_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_a_bad_input_fails_alone_and_complete_ones_are_kept(tmp_path, capsys):
    (tmp_path / "kept.nii.gz").write_bytes(b"result")
    pairs = [(tmp_path / n, tmp_path / n, None) for n in ("bad.nrrd", "good.nrrd", "kept.nii.gz")]
    reduced, prepared = [], []

    def prepare() -> cohort.ReduceFn:
        prepared.append(True)

        def reduce_one(src: Path, dst: Path, mask: Path | None) -> None:
            if src.name == "bad.nrrd":
                raise InputImageError("bad.nrrd has\nNaN voxels")
            reduced.append(src.name)

        return reduce_one

    report = cohort.reduce_share(1, pairs, prepare, lambda pair: pair[1].is_file())
    assert report == Report(
        1,
        done=["good.nrrd"],
        kept=["kept.nii.gz"],
        failed=[("bad.nrrd", "bad.nrrd has NaN voxels")],
    )
    assert reduced == ["good.nrrd"] and prepared == [True]  # the model is loaded once
    assert capsys.readouterr().err == "sainr: error: bad.nrrd: bad.nrrd has NaN voxels\n"


def test_nothing_to_do_loads_no_model(tmp_path):
    (tmp_path / "kept.nii.gz").write_bytes(b"result")
    pair = (tmp_path / "in.nii.gz", tmp_path / "kept.nii.gz", None)
    report = cohort.reduce_share(
        0, [pair], lambda: pytest.fail("the model was loaded"), lambda pair: True
    )
    assert report == Report(0, kept=["in.nii.gz"])


def test_summary_counts_every_process_and_names_each_failure():
    reports = [
        Report(0, done=["a"], kept=["c"]),
        Report(1, done=["b"], failed=[("d", "bad volume")]),
    ]
    assert cohort.summary(reports).splitlines() == [
        "sainr: cohort of 4 input(s) on 2 process(es): 2 done, 1 skipped (already complete), 1 failed",
        "sainr: failed: d (rank 1): bad volume",
    ]


def test_each_cpu_process_gets_its_share_of_the_cores():
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        assert cohort.bind_device(Launch(1, 2, 1, 2), "cpu") == torch.device("cpu")
        assert torch.get_num_threads() == max(1, cores // 2)
        cohort.bind_device(Launch(0, 64, 0, 64), "cpu")
        assert torch.get_num_threads() == max(1, cores // 64)
    finally:
        torch.set_num_threads(before)


def test_a_process_started_without_torchrun_is_told_so(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SainrError, match="could not join the other processes.*start with torchrun"):
        cohort.join(Launch(0, 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cohort_rerun_with_another_target_redoes_every_result(tmp_path, capfd, monkeypatch):
    """Issue 26: a cohort rerun with --spacing 1 over earlier 2 mm results printed "0 done,
    4 skipped (already complete)": complete is judged by each result's record, as in a plain
    batch. One process of a launch (RANK 0 of 1), in the test's own process."""
    knee = sitk.ReadImage(str(KNEE_QDESS))[24:36, 24:36, 10:18:2]  # 12 x 12 x 4 at 3 mm
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.nrrd", "b.nrrd"):
        sitk.WriteImage(knee, str(src / name))
    weights = str(_tiny_checkpoint(tmp_path / "tiny.pt"))
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        monkeypatch.setenv(name, value)
    argv = ["reduce", str(src), str(tmp_path / "out"), "--device", "cpu", "--weights", weights]
    threads = torch.get_num_threads()
    try:
        for spacing, summary in (
            ("2", "2 done, 0 skipped (already complete), 0 failed"),
            ("2", "0 done, 2 skipped (already complete), 0 failed"),
            ("1", "2 done, 0 skipped (already complete), 0 failed"),
        ):
            monkeypatch.setenv("MASTER_PORT", str(_free_port()))
            code, err = run_cli([*argv, "--spacing", spacing, "--progress", "none"], capfd)
            assert code == 0 and err[-1].endswith(summary), err
    finally:
        torch.set_num_threads(threads)
    assert sitk.ReadImage(str(tmp_path / "out" / "a.nrrd")).GetSize() == (12, 12, 10)


def test_results_made_before_the_consistency_step_are_redone(tmp_path, capfd):
    """A batch rerun keeps a complete result, but one whose record predates the data
    consistency step (its ``made`` names no such step) holds other voxels than a run now
    makes: the rerun redoes it instead of keeping it."""
    knee = sitk.ReadImage(str(KNEE_QDESS))[24:36, 24:36, 10:18:2]  # 12 x 12 x 4 at 3 mm
    src = tmp_path / "in"
    src.mkdir()
    sitk.WriteImage(knee, str(src / "a.nrrd"))
    out = tmp_path / "out"
    weights = str(_tiny_checkpoint(tmp_path / "tiny.pt"))
    argv = ["reduce", str(src), str(out), "--device", "cpu", "--weights", weights]
    argv += ["--spacing", "2", "--progress", "none"]
    record = out / "a.nrrd.sainr.json"

    def run_id() -> str:
        assert run_cli(argv, capfd)[0] == 0
        return json.loads(record.read_text())["run"]

    first = run_id()
    made = json.loads(record.read_text())["made"]
    assert made["consistency"] == describe_consistency()
    assert run_id() == first  # complete: kept
    old = json.loads(record.read_text())
    del old["made"]["consistency"]  # as written before the step existed
    record.write_text(json.dumps(old))
    assert not is_complete([out / "a.nrrd"], made)
    assert run_id() != first  # redone
    assert json.loads(record.read_text())["made"] == made


def test_an_interrupt_as_a_result_lands_counts_that_result(tmp_path):
    """Ctrl+C held back until a result was whole in place: that result is counted."""
    pairs = [(tmp_path / n, tmp_path / "out" / n, None) for n in ("a.nrrd", "b.nrrd")]

    def stopped_as(exc: type[KeyboardInterrupt]) -> cohort.ReduceFn:
        def reduce_one(src: Path, dst: Path, mask: Path | None) -> None:
            raise exc(dst) if exc is LandedInterrupt else exc()

        return reduce_one

    landed = r"this process wrote 1 result\(s\) \(the last: .*a.nrrd\); the same command does"
    with pytest.raises(KeyboardInterrupt, match=landed):
        cohort.reduce_share(0, pairs, lambda: stopped_as(LandedInterrupt), lambda p: False)
    before = r"this process wrote 0 result\(s\), not the one in progress"
    with pytest.raises(KeyboardInterrupt, match=before):
        cohort.reduce_share(0, pairs, lambda: stopped_as(KeyboardInterrupt), lambda p: False)
