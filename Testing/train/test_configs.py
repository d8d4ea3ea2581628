"""Every training schedule the repository ships parses: its keys, model, patch sampler and
validation rows are checked as `sainr train --config` checks them before a run starts, so a
typo fails here, not hours into a session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sainr.train.data import PatchSpec
from sainr.train.training import TrainConfig

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))


def test_the_repository_ships_training_configs() -> None:
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_a_shipped_config_loads(path: Path) -> None:
    cfg = TrainConfig.load(path)
    assert cfg.steps > 0 and cfg.data
    low, high = PatchSpec(**cfg.patch).sampler.relative_range
    assert 0 < low <= high
