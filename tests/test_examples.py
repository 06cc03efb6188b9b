"""examples/: the example scripts run end to end on small settings and check what they claim."""

from __future__ import annotations

import pytest

from tests.helpers import load_script

pytest.importorskip("numba")


def test_own_training_loop_gradient_check_and_training():
    example = load_script("own_training_loop", "examples")
    assert example.check_one_layer(seed=3) < 1e-6
    accuracy = example.main(["--epochs", "2", "--train-size", "600", "--test-size", "300"])
    assert 0.5 < accuracy <= 1.0  # three balanced classes: chance is 1/3


def test_train_and_deploy_agrees_everywhere_and_resumes(tmp_path, capsys):
    pytest.importorskip("nir")
    example = load_script("train_and_deploy", "examples")
    out = tmp_path / "run"
    first = example.main(["--epochs", "2", "--out", str(out)])
    assert first["sim_agreement"] == 1.0
    assert first["sim_accuracy"] == pytest.approx(first["test_accuracy"], abs=1e-12)
    assert 0.0 < first["quantised_accuracy"] <= 1.0
    assert (out / "checkpoint.ckpt").is_file() and (out / "model.nir").is_file()
    text = capsys.readouterr().out
    assert "energy per image" in text and "same decisions as the checkpoint on every test sample: True" in text
    again = example.main(["--epochs", "2", "--out", str(out)])  # a finished run: evaluated again, not retrained
    assert again == first
    assert "epoch 1:" not in capsys.readouterr().out


def test_own_data_trains_on_an_archive_and_the_simulator_agrees(tmp_path):
    example = load_script("own_data", "examples")
    res = example.main(["--epochs", "2", "--out", str(tmp_path)])
    assert res["sim_accuracy"] == pytest.approx(res["test_accuracy"], abs=1e-12)
    assert res["test_accuracy"] > 0.6  # four orientations: chance is 1/4
    assert (tmp_path / "bars.npz").is_file() and (tmp_path / "run" / "checkpoint.ckpt").is_file()
