"""Every shipped experiment file in ``configs/`` loads, validates, builds its network, and agrees with its
dataset's input shape, so that a typo there fails here rather than an hour into a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from relpsp.config import config_from_dict, load_toml
from relpsp.data import dataset_info
from relpsp.models import model_from_config
from relpsp.train import data_options
from relpsp.train.validation import validate_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_consistent(path):
    d = load_toml(path)
    assert d.get("name") == path.stem
    cfg = config_from_dict(d)
    validate_config(cfg)
    info = dataset_info(cfg.data.dataset, **data_options(cfg))
    assert tuple(cfg.model.input_shape) == tuple(info.input_shape)
    model = model_from_config(cfg.model)
    n_out = int(cfg.model.arch.rsplit("-", 1)[1])
    assert n_out == info.num_classes
    assert sum(p.numel() for p in model.parameters()) > 0
