"""``benchmarks.ann_twin``: the ReLU twin has the spiking network's connections, and its summary is the
mean, sample standard deviation and decisions right of the seeds it trained."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from torch import nn

from benchmarks import ann_twin
from relpsp.config import PACKAGED_CONFIG_DIR as PACKAGED
from relpsp.models import build_model

ARCH = "16C5p2-P2-32C5-P2-128-10"


def test_the_twin_has_the_spiking_networks_layers_and_weights():
    twin = ann_twin.relu_twin(ARCH, (1, 28, 28), dropout=0.2)
    kinds = [type(m).__name__ for m in twin]
    assert kinds == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
        "Dropout", "Linear", "ReLU", "Dropout", "Linear",
    ]  # fmt: skip
    convs = [m for m in twin if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.padding) for c in convs] == [((5, 5), (1, 1), (2, 2)), ((5, 5), (1, 1), (0, 0))]
    spiking = build_model(ARCH, (1, 28, 28))
    twin_weights = sorted(p.shape for name, p in twin.named_parameters() if name.endswith("weight"))
    assert twin_weights == sorted(p.shape for p in spiking.parameters())  # the same connections, plus biases
    assert twin(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert not any(isinstance(m, nn.Dropout) for m in ann_twin.relu_twin(ARCH, (1, 28, 28)))


def test_accuracy_counts_the_largest_logit_ties_to_the_lowest_class():
    class Fixed(nn.Module):
        def forward(self, x):
            return x

    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    assert ann_twin.accuracy(Fixed(), logits, torch.tensor([0, 2, 0]), batch=2) == (2, 3)


def test_main_trains_each_seed_and_summarises_them(tmp_path, capsys):
    out = tmp_path / "twin.json"
    argv = ["yinyang", "--seeds", "0,1", "--epochs", "2", "--threads", "1", "--out", str(out)]
    assert ann_twin.main(argv) == 0
    res = json.loads(out.read_text())
    runs, summary = res["runs"], res["summary"]
    assert [r["seed"] for r in runs] == [0, 1] and res["settings"]["epochs"] == 2
    assert all(
        len(r["history"]) == 2 and r["test_right"] == round(r["test_accuracy"] * r["test_samples"]) for r in runs
    )
    assert runs[0]["val_accuracy"] is not None  # Yin-Yang has its own validation split
    assert all(r["val_right"] == round(r["val_accuracy"] * r["val_samples"]) for r in runs)
    assert summary["val_right"] == sum(r["val_right"] for r in runs)
    assert summary["val_samples"] == sum(r["val_samples"] for r in runs)
    acc = [100 * r["test_accuracy"] for r in runs]
    assert summary["test_accuracy_mean"] == pytest.approx(statistics.fmean(acc))
    assert summary["test_accuracy_sd"] == pytest.approx(statistics.stdev(acc))
    assert summary["test_right"] == sum(r["test_right"] for r in runs)
    printed = capsys.readouterr().out
    assert "ReLU twin of yinyang" in printed and f"validation right: {summary['val_right']:,} of" in printed
    assert "seed 0 epoch 2/2: train " in printed and "  val " in printed  # each epoch's line


def test_bad_arguments_are_refused_before_training(capsys):
    with pytest.raises(SystemExit):
        ann_twin.main(["yinyang", "--dropout", "1.5"])
    assert "--dropout must be in [0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ann_twin.main(["no_such_experiment"])
    assert "neither a file nor the name" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # validated as relpsp train validates its settings
        ann_twin.main(["yinyang", "--weight-decay", "-1"])
    assert "train.weight_decay must be a finite number >= 0" in capsys.readouterr().err


def test_the_input_shape_follows_the_dataset_when_the_experiment_leaves_it_out(tmp_path, capsys):
    cfg = tmp_path / "exp.toml"  # as relpsp train resolves it: no model.input_shape, Yin-Yang's 4 features
    cfg.write_text('[model]\narch = "4-8-3"\n[data]\ndataset = "yinyang"\n[train]\nepochs = 1\n')
    out = tmp_path / "twin.json"
    assert ann_twin.main([str(cfg), "--seeds", "0", "--threads", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["runs"][0]["parameters"] == 4 * 8 + 8 + 8 * 3 + 3


def test_settings_without_a_relu_counterpart_are_named(tmp_path, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('extends = "%s"\n[train]\nlabel_smoothing = 0.1\ngrad_clip = 5.0\n' % (PACKAGED / "yinyang.toml"))
    out = tmp_path / "twin.json"
    assert ann_twin.main([str(cfg), "--seeds", "0", "--epochs", "1", "--threads", "1", "--out", str(out)]) == 0
    left = json.loads(out.read_text())["settings"]["left_out"]
    assert "label_smoothing" in left and "grad_clip" in left and "silent_penalty" in left  # yinyang's own
    assert "left out (no counterpart in a ReLU network): " in capsys.readouterr().out


def test_set_overrides_a_field_as_relpsp_train_does(tmp_path, capsys):
    out = tmp_path / "twin.json"
    argv = ["yinyang", "--seeds", "0", "--epochs", "1", "--threads", "1", "--out", str(out)]
    argv += ["--set", "model.arch=4-6-3"]
    assert ann_twin.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["arch"] == "4-6-3" and res["settings"]["set"] == ["model.arch=4-6-3"]
    assert res["runs"][0]["parameters"] == 4 * 6 + 6 + 6 * 3 + 3
    with pytest.raises(SystemExit):
        ann_twin.main(["yinyang", "--set", "model.arch=4-6-"])
    assert "arch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ann_twin.main(["yinyang", "--set", "train.epoch=3"])
    assert "did you mean 'epochs'" in capsys.readouterr().err
