"""``sainr adapt``, ``export`` and ``evaluate`` check their paths before any work (issue 13).

Adapted weights never go into the shipped models folder (a replaced file would fail its
checksum on every later run); ``export`` and ``evaluate`` refuse bad paths with one line and
create nothing (not even an empty output folder). Each refusal hashes the whole test folder
before and after.
"""

from __future__ import annotations

import json

import pytest
import torch
from cli_runs import _catalog, _tiny_checkpoint, _volume, assert_cli_refuses

from sainr.cli import main
from sainr.runtime.weights import load_model


def test_adapted_weights_never_go_into_the_shipped_models_folder(tmp_path, monkeypatch, capfd):
    _catalog(tmp_path, monkeypatch)  # SAINR_MODELS_DIR = tmp_path/models
    src = _volume(tmp_path)
    for out in (tmp_path / "models" / "sainr_default.pt", tmp_path / "models" / "mine.pt"):
        argv = ["adapt", str(src), "--factor", "2", "--out", str(out), "--steps", "1"]
        assert_cli_refuses(
            tmp_path,
            argv,
            "is in the shipped models folder .*models; write adapted weights elsewhere",
            capfd,
        )
        argv = [
            "reduce",
            str(src),
            str(tmp_path / "o.nrrd"),
            "--factor",
            "2",
            "--adapt-steps",
            "1",
            "--save-adapted",
            str(out),
            "--progress",
            "none",
        ]
        assert_cli_refuses(tmp_path, argv, "is in the shipped models folder", capfd)


def test_export_refuses_bad_paths_and_writes_nothing(tmp_path, capfd):
    models = tmp_path / "models"
    models.mkdir()
    tiny = str(_tiny_checkpoint(tmp_path / "tiny.pt"))
    whole = tmp_path / "whole.pt"
    torch.save({"not": "a checkpoint"}, whole)
    cases = [
        ([str(tmp_path / "none.pt")], "weights file not found: .*none.pt"),
        ([str(whole)], "whole.pt is not a SA-INR checkpoint"),
        ([tiny, "--models-dir", str(tmp_path / "nope")], "models folder does not exist"),
        ([tiny, "--models-dir", tiny], "the models folder .*tiny.pt is a file"),
        ([tiny, "--name", "../escape"], "model name '../escape': use letters, digits"),
    ]
    for extra, pattern in cases:
        argv = ["export", *extra] + (
            [] if "--models-dir" in extra else ["--models-dir", str(models)]
        )
        assert_cli_refuses(tmp_path, argv, pattern, capfd)
    (models / "models.json").write_text("{ broken")
    assert_cli_refuses(
        tmp_path, ["export", tiny, "--models-dir", str(models)], "catalog .* is unreadable", capfd
    )


def test_export_ships_a_checkpoint_with_its_checksum(tmp_path, monkeypatch, capfd):
    models = tmp_path / "models"
    models.mkdir()
    tiny = _tiny_checkpoint(tmp_path / "tiny.pt")
    assert main(["export", str(tiny), "--name", "small", "--models-dir", str(models)]) == 0
    entry = json.loads((models / "models.json").read_text(encoding="utf-8"))["models"]["small"]
    assert entry["file"] == "sainr_small.pt" and sorted(p.name for p in models.iterdir()) == [
        "models.json",
        "sainr_small.pt",
    ]
    monkeypatch.setenv("SAINR_MODELS_DIR", str(models))
    assert load_model("small").config == load_model(tiny).config


@pytest.mark.parametrize("case", ["output is a file", "input missing"])
def test_evaluate_refuses_bad_paths_before_creating_anything(tmp_path, case, capfd):
    src = _volume(tmp_path)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    argv, pattern = {
        "output is a file": (
            ["evaluate", str(src), "--out", str(a_file)],
            "the output .*notes.txt is a file, not a folder",
        ),
        "input missing": (
            ["evaluate", str(tmp_path / "nope.nrrd"), "--out", str(tmp_path / "new")],
            "input not found: .*nope.nrrd",
        ),
    }[case]
    assert_cli_refuses(tmp_path, argv, pattern, capfd)
    assert not (tmp_path / "new").exists()
