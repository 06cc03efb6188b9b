"""The shipped CIFAR-10 experiment (``configs/cifar10_vgg7.toml``) and the commands documented for users
who have the data (README, docs/DATA.md), run end to end on generated files of the real format: the
``cifar-10-batches-py/`` folder that ``cifar-10-python.tar.gz`` extracts to, one pickled batch per file.
No accuracy is asserted: the labels are random, and the point is that the real data would train,
evaluate, simulate event by event and export without a change."""

from __future__ import annotations

import json

import numpy as np
import pytest

from relpsp import cli
from relpsp.config import PACKAGED_CONFIG_DIR, config_from_dict, load_toml
from relpsp.data import load_dataset
from tests.test_data import write_cifar_batches

TRAIN_PER_BATCH, TEST_IMAGES = 4, 6


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """``<data_dir>/cifar10/cifar-10-batches-py/`` as extracted from the official archive."""
    data_dir = tmp_path_factory.mktemp("data")
    write_cifar_batches(data_dir / "cifar10" / "cifar-10-batches-py", TRAIN_PER_BATCH, TEST_IMAGES)
    return data_dir


@pytest.fixture(scope="module")
def cifar_run(cifar_dir, tmp_path_factory):
    """One epoch of the documented command, ``relpsp train cifar10_vgg7 --data-dir DIR``."""
    out = tmp_path_factory.mktemp("runs") / "cifar10"
    argv = ["train", "cifar10_vgg7", "--data-dir", str(cifar_dir), "--epochs", "1", "--threads", "1"]
    assert cli.main([*argv, "--out", str(out), "--no-progress"]) == 0
    return out


def test_the_config_is_the_shipped_one_with_the_usual_cifar_augmentation():
    cfg = config_from_dict(load_toml(PACKAGED_CONFIG_DIR / "cifar10_vgg7.toml"))
    assert cfg.data.dataset == "cifar10" and tuple(cfg.model.input_shape) == (3, 32, 32)
    assert cfg.data.augment and cfg.data.flip and cfg.data.max_shift == 4


def test_the_documented_training_command_runs_on_files_of_the_real_format(cifar_run, cifar_dir):
    res = json.loads((cifar_run / "results.json").read_text())
    cfg = res["config"]
    assert cfg["data"]["dataset"] == "cifar10" and cfg["data"]["data_dir"] == str(cifar_dir)
    assert cfg["model"]["arch"] == "64C3p1-128C3p1-P2-256C3p1-256C3p1-P2-512C3p1-512C3p1-P2-10"
    assert cfg["data"]["augment"] and cfg["data"]["flip"]
    assert res["epochs"] == 1 and res["test_samples"] == TEST_IMAGES
    assert np.isfinite(res["history"][0]["train_loss"]) and np.isfinite(res["test_loss"])
    assert round(res["test_accuracy"] * TEST_IMAGES) == pytest.approx(res["test_accuracy"] * TEST_IMAGES)
    # the run read all five training batches: 5 x 4 images, one step of batch 128
    x, y = load_dataset("cifar10", "train", data_dir=cifar_dir)
    assert tuple(x.shape) == (5 * TRAIN_PER_BATCH, 3, 32, 32) and len(y) == 5 * TRAIN_PER_BATCH


def test_eval_simulate_and_export_take_the_cifar_checkpoint(cifar_run, tmp_path, capsys):
    ckpt = str(cifar_run / "checkpoint.ckpt")
    res = json.loads((cifar_run / "results.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", ckpt, "--json"]) == 0  # the run's own data folder, from its config
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == TEST_IMAGES and ev["accuracy"] == pytest.approx(res["test_accuracy"])
    assert cli.main(["eval", ckpt, "--per-class"]) == 0  # the confusion rows name CIFAR-10's classes
    text = capsys.readouterr().out
    assert "\n0 airplane " in text and "\n9 truck " in text and "indices in cifar10 test" in text
    sim = tmp_path / "sim.json"
    assert cli.main(["simulate", ckpt, "--limit", "2", "--compare", "--out", str(sim)]) == 0
    report = json.loads(sim.read_text())
    assert report["compare"]["decision_agreement"] == 1.0 and report["n_images"] == 2
    nir_file = tmp_path / "vgg7.nir"
    assert cli.main(["export", ckpt, str(nir_file)]) == 0
    assert nir_file.stat().st_size > 0
