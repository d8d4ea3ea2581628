"""Distillation: the student also learns a frozen teacher's values on the same queries."""

from __future__ import annotations

import copy
import csv
import functools

import numpy as np
import pytest
import torch

from conftest import KNEE_QDESS
from sainr.acquisition import Acquisition
from sainr.io.files import sha256
from sainr.model import SAINR, ModelConfig
from sainr.runtime.precision import unblocked_widths
from sainr.runtime.weights import load_model, save_checkpoint
from sainr.train.data import PatchSpec, collate, load_volume, sample_patch
from sainr.train.prune import narrowed
from sainr.train.training import TrainConfig, batch_loss, train

TINY = {"channels": 8, "blocks": 1, "hidden": 16, "window": 3, "conditioning": True}
PATCH = {
    "lr_slices": 5,
    "size": 24,
    "queries": 512,
    "factors": [2, 3],
    "profiles": ["none", "gaussian"],
    "profile_weights": [0.5, 0.5],
    "thickness": [0.5, 1.5],
    "label_noise": 0.2,
}
QUIET = {"log": lambda *_: None}


def _teacher(path, seed: int, residual: float = 1.0) -> SAINR:
    """A tiny conditioned model saved at ``path``; ``residual`` scales its MLP output so that
    its values differ clearly from the HR the student also learns."""
    torch.manual_seed(seed)
    model = SAINR(ModelConfig(**TINY))
    with torch.no_grad():
        model.decoder.net[-1].weight.mul_(residual)
    save_checkpoint(model, path, meta={"thickness_range": [0.5, 1.5]})
    return load_model(path)


@functools.cache
def _batch(seed: int = 3) -> tuple:
    """Four real knee patches with Gaussian slices, the model told their thickness."""
    vol = load_volume(KNEE_QDESS)
    rng = np.random.default_rng(seed)
    spec = PatchSpec(**{**PATCH, "queries": 1024})
    acq = Acquisition(2.0, 1.2, "gaussian")
    return collate([sample_patch([vol], spec, acq, rng) for _ in range(4)])


def _config(steps: int, teacher: str, distil: float, **extra) -> TrainConfig:
    extra.setdefault("lr", 3e-3)
    extra.setdefault("model", TINY)
    return TrainConfig(
        data=[{"path": KNEE_QDESS.name}],
        patch=PATCH,
        steps=steps,
        checkpoint_minutes=100,
        log_every=1000,
        teacher=teacher,
        distil=distil,
        **extra,
    )


def _gap(student: SAINR, teacher: SAINR, batch) -> float:
    """Mean |student - teacher| of the values on ``batch`` (both in eval mode)."""
    lr, q, tgt = batch
    with torch.no_grad():
        a = student.eval()(lr, q, tgt["acquisition"]).value
        b = teacher.eval()(lr, q, tgt["acquisition"]).value
    return float((a - b).abs().mean())


def test_the_loss_holds_the_teacher_term(tmp_path):
    """An exact copy of the teacher adds nothing; one whose output is shifted by 0.05 adds
    distil x 0.05 (gate deterministic: both in eval mode)."""
    teacher = _teacher(tmp_path / "teacher.pt", seed=1)
    batch, cpu = _batch(), torch.device("cpu")

    def loss(student: SAINR, distil: float) -> tuple[float, dict]:
        cfg = _config(1, "teacher.pt", distil)
        total, parts = batch_loss(student.eval(), batch, teacher, cfg, 1.0, cpu, "fp32")
        return float(total.detach()), parts

    twin = copy.deepcopy(teacher)
    assert loss(twin, 2.0)[1]["distil"] == 0.0
    assert loss(twin, 2.0)[0] == loss(twin, 0.0)[0]
    with torch.no_grad():
        twin.decoder.net[-1].bias.add_(0.05)
    (with_teacher, parts), (without, _) = loss(twin, 2.0), loss(twin, 0.0)
    assert parts["distil"] == pytest.approx(0.05, abs=1e-5)
    assert with_teacher - without == pytest.approx(2.0 * 0.05, abs=1e-5)


def test_distillation_pulls_the_student_to_the_teacher_and_records_it(tmp_path):
    """The same short run with and without the teacher term: only with it does the student
    come close to a teacher whose values are far from the HR; the checkpoint names the
    teacher by its path and SHA-256."""
    path = tmp_path / "teacher.pt"
    teacher = _teacher(path, seed=1, residual=20.0)
    torch.manual_seed(7)
    start = SAINR(ModelConfig(**TINY))
    batch = _batch()
    for distil in (0.0, 5.0):
        train(_config(15, str(path), distil), tmp_path / f"d{distil}", KNEE_QDESS.parent, **QUIET)
    plain = _gap(load_model(tmp_path / "d0.0" / "last.pt"), teacher, batch)
    taught = _gap(load_model(tmp_path / "d5.0" / "last.pt"), teacher, batch)
    assert taught < 0.6 * min(plain, _gap(start, teacher, batch))
    meta = torch.load(tmp_path / "d5.0" / "last.pt", weights_only=True)["meta"]
    assert meta["teacher"] == {"name": str(path), "sha256": sha256(path)}


def test_history_compares_with_the_teacher_and_resume_keeps_it(tmp_path):
    """A student started as the teacher's copy and not moved (lr 0) scores exactly the
    teacher's PSNR on every validation row; resuming with another teacher file is refused."""
    path = tmp_path / "teacher.pt"
    _teacher(path, seed=1)
    cfg = _config(
        1,
        str(path),
        1.0,
        lr=0.0,
        init=str(path),
        val=[{"path": KNEE_QDESS.name}],
        val_factors=(2,),
        val_profiles=("none", "gaussian"),
        val_size=32,
    )
    train(cfg, tmp_path / "run", KNEE_QDESS.parent, **QUIET)
    with open(tmp_path / "run" / "history.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["0", "1"]
    for row in rows:
        assert row["teacher_x2"] == row["psnr_x2"]
        assert row["teacher_x2_gaussian"] == row["psnr_x2_gaussian"]
        assert float(row["teacher_gap"]) == float(row["teacher_gap_gaussian"]) == 0.0
    _teacher(path, seed=2)  # the teacher file changed since
    with pytest.raises(ValueError, match="distilled from"):
        train(_config(2, str(path), 1.0), tmp_path / "run", KNEE_QDESS.parent, **QUIET)


def test_a_narrower_student_starts_as_its_teachers_strongest_channels(tmp_path):
    """``init`` from a wider checkpoint: the run starts from the teacher's cut
    (sainr.train.prune), and a student that has not moved (lr 0) holds exactly its weights.
    Widths the CPU kernels do not block by are named in the log: they buy less speed."""
    path = tmp_path / "teacher.pt"
    teacher = _teacher(path, seed=4)
    model = {**TINY, "channels": 6, "hidden": 12}
    cfg = _config(1, str(path), 1.0, lr=0.0, init=str(path), model=model)
    lines: list[str] = []
    train(cfg, tmp_path / "run", KNEE_QDESS.parent, log=lambda line: lines.append(str(line)))
    notes = [line for line in lines if "not a multiple of 8" in line]
    assert len(notes) == 1 and "channels 6" in notes[0] and "hidden 12" in notes[0], lines
    student = load_model(tmp_path / "run" / "last.pt")
    assert (student.config.channels, student.config.hidden) == (6, 12)
    expected = narrowed(teacher, 6, 12).state_dict()
    for key, value in student.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)


def test_widths_in_blocks_of_eight_pass_without_a_note():
    assert unblocked_widths({"channels": 16, "hidden": 48}) is None
    assert unblocked_widths({"channels": 12, "hidden": 48}).startswith("channels 12: ")


def test_the_teacher_is_told_the_thickness_the_student_sees_misread(tmp_path):
    """With misread labels the student is shown one thickness and the teacher told another:
    the distillation target is the teacher's answer for the told one."""
    teacher = _teacher(tmp_path / "teacher.pt", seed=1)
    lr, q, tgt = _batch()
    misread = {**tgt, "acquisition": tgt["taught"] * torch.tensor([1.0, 0.25])}
    student, cpu = copy.deepcopy(teacher).eval(), torch.device("cpu")
    cfg = _config(1, "teacher.pt", 1.0)
    _, parts = batch_loss(student, (lr, q, misread), teacher, cfg, 1.0, cpu, "fp32")
    with torch.no_grad():
        shown = student(lr, q, misread["acquisition"]).value
        told = teacher(lr, q, tgt["taught"]).value
    assert parts["distil"] == pytest.approx(float((shown - told).abs().mean()), rel=1e-5)
    assert parts["distil"] > 1e-3  # the twin shown a thinner label answers otherwise
