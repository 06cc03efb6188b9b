"""Training loop: results files, determinism, exact resume after an interruption, checkpoint safety."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from relpsp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from relpsp.config import Config, DataConfig, ModelConfig, TrainConfig
from relpsp.train import CHECKPOINT_NAME, fit, load_trained


def _tiny_splits(seed: int = 0, n: int = 96) -> dict:
    """Three classes of 1x4x4 images: a bright row at a class-dependent position, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 4, 4, generator=g)
    x[torch.arange(n), 0, y, :] = 0.9
    return {"train": (x[: n - 32], y[: n - 32]), "test": (x[n - 32 :], y[n - 32 :])}


def _cfg(epochs: int = 2, **train) -> Config:
    return Config(
        model=ModelConfig(arch="16-12-3", input_shape=(1, 4, 4)),
        data=DataConfig(dataset="tiny"),
        train=TrainConfig(**({"epochs": epochs, "batch_size": 16, "lr": 3e-3, "seed": 3, "threads": 1} | train)),
    )


def _weights(path) -> dict[str, np.ndarray]:
    arrays, _ = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith("model.")}


def test_fit_writes_results_metrics_and_checkpoint(tmp_path):
    res = fit(_cfg(), tmp_path, progress=False, splits=_tiny_splits(), log=lambda s: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(res["test_accuracy"])
    for key in ("config", "versions", "device", "wall_time_s", "firing_rates", "test_no_output_spike_fraction"):
        assert key in saved, key
    assert len(saved["firing_rates"]) == 4  # encode, flatten, hidden, output
    if shutil.which("git") and (Path(__file__).resolve().parents[1] / ".git").exists():  # a git checkout
        assert len(saved["versions"]["commit"]) >= 7 and saved["versions"]["source_modified"] in ("yes", "no")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    model, cfg, meta = load_trained(tmp_path / CHECKPOINT_NAME)
    assert cfg.model.arch == "16-12-3" and meta["progress"]["epoch"] == 2
    x, _ = _tiny_splits()["test"]
    assert model(x).shape == (len(x), 3)


def test_an_epoch_with_every_output_silent_is_reported_and_warned_about(tmp_path):
    """Black images fire no input spike, so no output fires and no step has a gradient: the run says so."""
    splits = {k: (torch.zeros_like(x), y) for k, (x, y) in _tiny_splits().items()}
    lines: list[str] = []
    res = fit(_cfg(), tmp_path / "dark", progress=False, splits=splits, log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 2 and "epoch 1:" in warnings[0] and "epoch 2:" in warnings[1]
    assert "100.0% of the training samples had no output spike" in warnings[0]
    assert "train.silent_penalty" in warnings[0]
    for row in res["history"]:
        assert row["train_no_output_spike_fraction"] == 1.0 and "grad_norm_geomean" not in row

    lines.clear()  # a run that trains: no warning, and the fraction is what the forward passes saw
    res = fit(_cfg(), tmp_path / "lit", progress=False, splits=_tiny_splits(), log=lines.append)
    assert not [line for line in lines if line.startswith("warning:")]
    fractions = [row["train_no_output_spike_fraction"] for row in res["history"]]
    assert all(0.0 <= f < 1.0 for f in fractions)


def test_same_seed_gives_identical_runs(tmp_path):
    a = fit(_cfg(), tmp_path / "a", progress=False, splits=_tiny_splits(), log=lambda s: None)
    b = fit(_cfg(), tmp_path / "b", progress=False, splits=_tiny_splits(), log=lambda s: None)
    for ra, rb in zip(a["history"], b["history"]):
        assert ra["train_loss"] == rb["train_loss"] and ra["test_accuracy"] == rb["test_accuracy"]
    wa, wb = _weights(tmp_path / "a" / CHECKPOINT_NAME), _weights(tmp_path / "b" / CHECKPOINT_NAME)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])


def test_small_networks_train_the_same_on_one_thread_or_two(tmp_path):
    """Every kernel call of this network is below the numba kernels' SERIAL_WORK, so it runs on one thread
    whatever ``train.threads`` says, and the weight-gradient sums keep one order: the runs are identical."""
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here: nothing to compare")
    one = fit(_cfg(threads=1), tmp_path / "one", progress=False, splits=_tiny_splits(), log=lambda s: None)
    two = fit(_cfg(threads=2), tmp_path / "two", progress=False, splits=_tiny_splits(), log=lambda s: None)
    assert [r["train_loss"] for r in one["history"]] == [r["train_loss"] for r in two["history"]]
    w1, w2 = _weights(tmp_path / "one" / CHECKPOINT_NAME), _weights(tmp_path / "two" / CHECKPOINT_NAME)
    for k in w1:
        np.testing.assert_array_equal(w1[k], w2[k], err_msg=k)


class _Interrupt(Exception):
    pass


def _fit_interrupted(cfg: Config, out, stop_at: tuple[int, int]) -> None:
    """Run ``fit`` until the step ``stop_at = (epoch, step)`` (0-based epoch) and stop it there, as a kill would."""

    def boom(epoch: int, step: int) -> None:
        if (epoch, step) == stop_at:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        fit(cfg, out, progress=False, splits=_tiny_splits(), on_step=boom, log=lambda s: None)


@pytest.mark.parametrize("stop_at", [(0, 1), (1, 2), (2, 3)], ids=["epoch1-step2", "epoch2-step3", "last-step"])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, stop_at):
    cfg = _cfg(epochs=3, checkpoint_every=1)
    fit(cfg, tmp_path / "ref", progress=False, splits=_tiny_splits(), log=lambda s: None)
    _fit_interrupted(cfg, tmp_path / "cut", stop_at)
    res = fit(cfg, tmp_path / "cut", resume=True, progress=False, splits=_tiny_splits(), log=lambda s: None)
    ref = _weights(tmp_path / "ref" / CHECKPOINT_NAME)
    cut = _weights(tmp_path / "cut" / CHECKPOINT_NAME)
    for k in ref:
        np.testing.assert_array_equal(ref[k], cut[k], err_msg=k)
    ref_hist = json.loads((tmp_path / "ref" / "results.json").read_text())["history"]
    assert [r["train_loss"] for r in res["history"]] == [r["train_loss"] for r in ref_hist]


def test_resume_refuses_a_different_config(tmp_path):
    fit(_cfg(epochs=1), tmp_path, progress=False, splits=_tiny_splits(), log=lambda s: None)
    other = Config(model=ModelConfig(arch="16-20-3", input_shape=(1, 4, 4)), train=_cfg().train)
    with pytest.raises(ValueError, match="different config"):
        fit(other, tmp_path, resume=True, progress=False, splits=_tiny_splits(), log=lambda s: None)


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    """A second run into a folder that holds one does not replace it silently: without resume or overwrite
    it is refused before anything is written; overwrite deletes the old files first; resume needs a
    checkpoint (leftover results without one are refused too)."""
    quiet = {"progress": False, "splits": _tiny_splits(), "log": lambda s: None}
    first = fit(_cfg(epochs=1), tmp_path, **quiet)
    before = {n: (tmp_path / n).read_bytes() for n in (CHECKPOINT_NAME, "metrics.jsonl", "results.json")}
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoint\.ckpt, metrics\.jsonl, results\.json\)"):
        fit(_cfg(epochs=1, lr=1e-3), tmp_path, **quiet)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before  # nothing touched
    lines: list[str] = []
    (tmp_path / "curves.png").write_bytes(b"old run's figure")  # as `relpsp plot` leaves it
    again = fit(_cfg(epochs=1, lr=1e-3), tmp_path, overwrite=True, **(quiet | {"log": lines.append}))
    assert sum("overwrite: deleted" in line for line in lines) == 3
    assert f"overwrite: kept curves.png in {tmp_path}: the old run's; remake or delete them" in lines
    assert json.loads((tmp_path / "results.json").read_text())["config"]["train"]["lr"] == 1e-3
    assert again["history"][0]["train_loss"] != first["history"][0]["train_loss"]
    (tmp_path / CHECKPOINT_NAME).unlink()  # results without a checkpoint: nothing to resume from
    with pytest.raises(ValueError, match="has no checkpoint to resume from") as refused:
        fit(_cfg(epochs=1, lr=1e-3), tmp_path, resume=True, **quiet)
    assert "pass --resume" not in str(refused.value)  # it was passed; the message used to advise it
    before = {n: (tmp_path / n).read_bytes() for n in ("metrics.jsonl", "results.json")}
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        fit(_cfg(epochs=1, lr=1e-3), tmp_path, resume=True, overwrite=True, **quiet)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before  # neither continued nor deleted


def test_overwrite_deletes_nothing_when_the_new_run_cannot_start(tmp_path, monkeypatch):
    """The data are loaded and checked before the old run is deleted: a run that fails on its data (here
    an input shape that does not fit) leaves the previous run's files as they were."""
    quiet = {"progress": False, "splits": _tiny_splits(), "log": lambda s: None}
    fit(_cfg(epochs=1), tmp_path, **quiet)
    before = {n: (tmp_path / n).read_bytes() for n in (CHECKPOINT_NAME, "metrics.jsonl", "results.json")}
    bad = Config(model=ModelConfig(arch="25-12-3", input_shape=(1, 5, 5)), train=_cfg(epochs=1).train)
    with pytest.raises(ValueError, match="has inputs of shape"):
        fit(bad, tmp_path, overwrite=True, **quiet)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    # a backend that cannot run on the device used to fail only at the first step, after the deletion
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # test_triton sets it for the whole session
    triton_on_cpu = dataclasses.replace(
        _cfg(epochs=1), train=dataclasses.replace(_cfg(epochs=1).train, backend="triton")
    )
    with pytest.raises(
        ValueError,
        match=r"train\.backend 'triton' cannot run on 'cpu': backend 'triton' runs float32/float64 CUDA tensors",
    ):
        fit(triton_on_cpu, tmp_path, overwrite=True, **quiet)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    # spike dropout for a layer type the network lacks used to be refused only after the deletion
    conv_drop = _cfg(epochs=1, spike_dropout_conv=0.2)  # the 16-12-3 network has no convolution
    with pytest.raises(ValueError, match="spike_dropout_conv needs a network with a spiking convolution layer"):
        fit(conv_drop, tmp_path, overwrite=True, **quiet)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    # labels the network has no output for used to fail in the loss, after the deletion
    two_outputs = dataclasses.replace(_cfg(epochs=1), model=ModelConfig(arch="16-12-2", input_shape=(1, 4, 4)))
    with pytest.raises(ValueError, match=r"train split has labels 0\.\.2, but model.arch '16-12-2' ends in 2 outputs"):
        fit(two_outputs, tmp_path, overwrite=True, **quiet)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    float_labels = {k: (x, y.float()) for k, (x, y) in _tiny_splits().items()}
    with pytest.raises(ValueError, match=r"train split's labels must be integers, got torch\.float32"):
        fit(_cfg(epochs=1), tmp_path, overwrite=True, **(quiet | {"splits": float_labels}))
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    # inputs the encoder refuses (not intensities, or not the model's dtype) used to fail at the first step
    for change, message in (
        (lambda x: x * 255, r"train split's inputs must be intensities in \[0, 1\] \(no NaN\)"),
        (
            lambda x: x.double(),
            r"train split's inputs must be float32 intensities \(the model's dtype\), got torch\.float64",
        ),
    ):
        bad_x = {k: (change(x), y) for k, (x, y) in _tiny_splits().items()}
        with pytest.raises(ValueError, match=message):
            fit(_cfg(epochs=1), tmp_path, overwrite=True, **(quiet | {"splits": bad_x}))
        assert {n: (tmp_path / n).read_bytes() for n in before} == before
    # a Config built in Python skipped the TOML type checks: epochs 2.5 failed in the loop, after the deletion
    half_epochs = dataclasses.replace(_cfg(epochs=1), train=dataclasses.replace(_cfg(epochs=1).train, epochs=2.5))
    with pytest.raises(ValueError, match=r"TrainConfig\.epochs must be an integer, got 2\.5"):
        fit(half_epochs, tmp_path, overwrite=True, **quiet)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


def test_fit_puts_the_thread_counts_back_as_it_found_them(tmp_path):
    """fit gives torch and numba the threads its kernels want (here 1 each, train.threads = 1); the
    caller's later work used to run on them."""
    numba = pytest.importorskip("numba")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores to tell the settings apart")
    before = torch.get_num_threads(), numba.get_num_threads()
    try:
        torch.set_num_threads(2)
        numba.set_num_threads(2)
        fit(_cfg(epochs=1), tmp_path / "ok", progress=False, splits=_tiny_splits(), log=lambda s: None)
        assert (torch.get_num_threads(), numba.get_num_threads()) == (2, 2)
        with pytest.raises(ValueError, match="has inputs of shape"):  # and when it fails
            bad = Config(model=ModelConfig(arch="25-12-3", input_shape=(1, 5, 5)), train=_cfg(epochs=1).train)
            fit(bad, tmp_path / "bad", progress=False, splits=_tiny_splits(), log=lambda s: None)
        assert (torch.get_num_threads(), numba.get_num_threads()) == (2, 2)
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


def test_a_data_dir_given_as_a_path_is_kept_as_its_text(tmp_path):
    """fit checks a Config built in Python as a TOML file's values; a data_dir given as a pathlib.Path is a
    string setting all the same (written to results.json as its text), not a wrong type."""
    cfg = _cfg(epochs=1)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=tmp_path / "data"))
    fit(cfg, tmp_path / "run", progress=False, splits=_tiny_splits(), log=lambda s: None)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["config"]["data"]["data_dir"]
    assert saved == str(tmp_path / "data")


def test_a_run_folder_that_is_a_file_is_refused_with_its_name(tmp_path):
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(ValueError, match=r"afile is a file, not a folder; choose another --out"):
        fit(_cfg(epochs=1), tmp_path / "afile", progress=False, splits=_tiny_splits(), log=lambda s: None)
    assert (tmp_path / "afile").read_text() == "keep"


def test_a_network_whose_outputs_do_not_match_the_datasets_classes_is_refused(tmp_path):
    """For a dataset of the registry the class count is known: 2 or 5 outputs on the 3-class Yin-Yang set
    are refused before anything is written (5 used to train, with two outputs that no label names)."""
    for arch in ("4-30-2", "4-30-5"):
        cfg = Config(model=ModelConfig(arch=arch, input_shape=(4,)), data=DataConfig(dataset="yinyang"))
        cfg = dataclasses.replace(cfg, train=_cfg(epochs=1).train)
        with pytest.raises(ValueError, match=f"ends in {arch[-1]} outputs but 'yinyang' has 3 classes"):
            fit(cfg, tmp_path / arch, progress=False, log=lambda s: None)
        assert not any(p.name != ".relpsp.lock" for p in (tmp_path / arch).iterdir())


@pytest.mark.parametrize("kernel", ["alpha", "window"])
def test_a_backend_the_kernel_does_not_use_is_refused(tmp_path, kernel):
    """The alpha and window kernels have one implementation each; a named backend used to be recorded
    in results.json and ignored."""
    cfg = _cfg(epochs=1)
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, kernel=kernel), train=dataclasses.replace(cfg.train, backend="numba")
    )
    with pytest.raises(ValueError, match=rf"model\.kernel '{kernel}' has one implementation"):
        fit(cfg, tmp_path, progress=False, splits=_tiny_splits(), log=lambda s: None)
    assert not (tmp_path / "results.json").exists()


def test_a_failure_during_evaluation_keeps_the_epochs_training(tmp_path, monkeypatch):
    """The epoch's end is checkpointed before its evaluation: a crash there (e.g. out of memory at a
    too-large eval batch) resumes without repeating a training step, to the same weights and history."""
    import relpsp.train.loop as train_module

    quiet = {"progress": False, "splits": _tiny_splits(), "log": lambda s: None}
    fit(_cfg(epochs=2), tmp_path / "ref", **quiet)
    real = train_module.evaluate_on_ranks
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_on_ranks", failing)
    steps: list[tuple[int, int]] = []
    with pytest.raises(RuntimeError, match="simulated"):
        fit(_cfg(epochs=2), tmp_path / "cut", on_step=lambda e, s: steps.append((e, s)), **quiet)
    assert steps == [(0, s) for s in range(4)]  # 64 training images, batches of 16
    steps.clear()
    res = fit(_cfg(epochs=2), tmp_path / "cut", resume=True, on_step=lambda e, s: steps.append((e, s)), **quiet)
    assert steps == [(1, s) for s in range(4)]  # epoch 1's steps were not run again
    ref, cut = _weights(tmp_path / "ref" / CHECKPOINT_NAME), _weights(tmp_path / "cut" / CHECKPOINT_NAME)
    for k in ref:
        np.testing.assert_array_equal(ref[k], cut[k], err_msg=k)
    ref_hist = json.loads((tmp_path / "ref" / "results.json").read_text())["history"]
    assert [r["test_accuracy"] for r in res["history"]] == [r["test_accuracy"] for r in ref_hist]
    # both calls trained, so both are named in the results; a call that trains nothing adds none
    assert [(s["from_epoch"], s["from_step"]) for s in res["sessions"]] == [(0, 0), (0, 4)]
    assert all(s["versions"] == res["versions"] for s in res["sessions"])
    lines: list[str] = []
    again = fit(_cfg(epochs=2), tmp_path / "cut", resume=True, **(quiet | {"log": lines.append}))
    assert again["sessions"] == res["sessions"]
    finished = f"{tmp_path / 'cut' / CHECKPOINT_NAME} has finished its 2 epochs: evaluating it again"
    assert any(line.startswith(finished) for line in lines), lines  # not "resumed ... at epoch 3"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"augment": True, "max_shift": 4}, "would shift 4x4 images out of the frame"),
        ({"augment": True, "max_shift": 0}, "changes nothing"),
        ({"augment": True, "max_rotation": 200.0}, r"data\.max_rotation is an angle in degrees in \[0, 180\]"),
        ({"augment": True, "max_rotation": -1.0}, r"data\.max_rotation"),
        ({"augment": True, "max_scale": 1.0}, r"data\.max_scale is a fraction in \[0, 1\)"),
        ({"max_rotation": 10.0}, r"need data\.augment = true"),
        ({"max_scale": 0.1}, r"need data\.augment = true"),
        ({"elastic_alpha": 34.0}, r"need data\.augment = true"),
        ({"augment": True, "elastic_alpha": -1.0}, r"data\.elastic_alpha must be in \[0, 1000\]"),
        ({"augment": True, "elastic_alpha": 34.0, "elastic_sigma": 0.0}, r"data\.elastic_sigma in \(0, 100\]"),
        ({"max_shift": 1}, r"data\.max_shift = 1 does nothing without data\.augment = true"),
        (
            {"augment": True, "elastic_sigma": 8.0},
            r"data\.elastic_sigma = 8\.0 does nothing without data\.elastic_alpha",
        ),
        ({"dog_threshold": 0.1}, r"data\.dog_threshold = 0\.1 does nothing without data\.dog = true"),
        ({"dog_sigmas": (3.0, 1.0)}, r"data\.dog_sigmas = \(3\.0, 1\.0\) does nothing without data\.dog"),
    ],
    ids=[
        "shift-beyond-the-image",
        "augment-that-does-nothing",
        "rotation-above-180",
        "negative-rotation",
        "scale-of-1",
        "rotation-without-augment",
        "scale-without-augment",
        "elastic-without-augment",
        "negative-elastic-alpha",
        "elastic-sigma-of-0",
        "shift-without-augment",
        "elastic-sigma-without-alpha",
        "dog-threshold-without-dog",
        "dog-sigmas-without-dog",
    ],
)
def test_augmentation_settings_that_cannot_work_are_refused(tmp_path, data, needle):
    cfg = Config(model=_cfg().model, data=DataConfig(dataset="tiny", **data), train=_cfg().train)
    with pytest.raises(ValueError, match=needle):
        fit(cfg, tmp_path, progress=False, splits=_tiny_splits(), log=lambda s: None)
    ok = Config(model=_cfg().model, data=DataConfig(dataset="tiny", augment=True, max_shift=3), train=_cfg(1).train)
    assert fit(ok, tmp_path / "ok", progress=False, splits=_tiny_splits(), log=lambda s: None)["history"]


def test_the_silent_penalty_records_only_training_passes():
    """Evaluation passes (eval mode, no grad) used to be recorded and held until the next step."""
    from relpsp.models import model_from_config
    from relpsp.train.regularisers import SilentPenalty

    model = model_from_config(ModelConfig(arch="16-12-3", input_shape=(1, 4, 4)))
    pen = SilentPenalty(model)
    x, _ = _tiny_splits()["train"]
    model.eval()
    with torch.no_grad():
        model(x)
    assert pen.records == []
    model.train()
    model(x)
    assert len(pen.records) == 2  # both spiking layers
    pen.close()


def test_a_folder_another_process_trains_into_is_refused(tmp_path):
    """The lock of a run folder: held (as by another process), a second run is refused before it reads
    or writes anything; released, training proceeds, and an interrupted run releases it."""
    from relpsp.train.run_folder import LOCK_NAME, run_folder_lock

    quiet = {"progress": False, "splits": _tiny_splits(), "log": lambda s: None}
    with run_folder_lock(tmp_path):
        with pytest.raises(ValueError, match="another process is training into"):
            fit(_cfg(epochs=1), tmp_path, **quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]
    _fit_interrupted(_cfg(epochs=1, checkpoint_every=1), tmp_path, (0, 1))
    assert fit(_cfg(epochs=1, checkpoint_every=1), tmp_path, resume=True, **quiet)["history"]


def test_resume_refuses_fewer_epochs_than_trained_and_allows_machine_settings(tmp_path):
    """A checkpoint past the asked number of epochs is refused (the results would describe a longer
    run); the settings that only change where and how fast it runs may differ."""
    quiet = {"progress": False, "splits": _tiny_splits(), "log": lambda s: None}
    fit(_cfg(epochs=2), tmp_path, **quiet)
    with pytest.raises(ValueError, match=r"has trained 2 epochs, more than the 1 epochs asked for"):
        fit(_cfg(epochs=1), tmp_path, resume=True, **quiet)
    moved = _cfg(epochs=2, threads=2, eval_batch_size=7, checkpoint_every=3)
    res = fit(replace(moved, data=replace(moved.data, data_dir=str(tmp_path))), tmp_path, resume=True, **quiet)
    assert [r["epoch"] for r in res["history"]] == [1, 2]
    with pytest.raises(ValueError, match=r"different config \(train\.lr 0\.003 -> 0\.001\)"):
        fit(_cfg(epochs=2, lr=1e-3), tmp_path, resume=True, **quiet)
    cut = tmp_path / "cut"
    _fit_interrupted(_cfg(epochs=2, checkpoint_every=1), cut, (1, 1))  # stopped in epoch 2, after its step 2
    with pytest.raises(ValueError, match=r"has trained 1 epochs and 2 steps, more than the 1 epochs"):
        fit(_cfg(epochs=1, checkpoint_every=1), cut, resume=True, **quiet)


def test_resume_restores_a_metrics_file_that_missed_its_last_line(tmp_path):
    """The checkpoint is written before metrics.jsonl; a kill between the two is repaired on resume."""
    quiet = {"progress": False, "splits": _tiny_splits(), "log": lambda s: None}
    fit(_cfg(epochs=2), tmp_path, **quiet)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n")
    fit(_cfg(epochs=2), tmp_path, resume=True, **quiet)
    restored = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in restored] == [json.loads(line) for line in lines]


def test_resume_with_more_epochs_says_the_cosine_schedule_restarts(tmp_path):
    """--epochs may grow on resume; the cosine rate is then recomputed over the new length, and the log says so."""
    fit(_cfg(epochs=2), tmp_path, progress=False, splits=_tiny_splits(), log=lambda s: None)  # 4 steps per epoch
    lines: list[str] = []
    res = fit(_cfg(epochs=4), tmp_path, resume=True, progress=False, splits=_tiny_splits(), log=lines.append)
    note = [line for line in lines if "epochs changed from 2 to 4" in line]
    assert len(note) == 1, lines
    assert "at this step it is 0.0015 (it would have been 0)" in note[0]  # 3e-3 * (1 + cos(pi/2)) / 2, and 0
    assert [r["epoch"] for r in res["history"]] == [1, 2, 3, 4]
    assert res["history"][2]["lr_end"] == pytest.approx(3e-3 * 0.5 * (1 + np.cos(np.pi * 11 / 16)))
    lines.clear()
    fit(_cfg(epochs=4), tmp_path, resume=True, progress=False, splits=_tiny_splits(), log=lines.append)
    assert not [line for line in lines if "epochs changed" in line]


def test_resume_on_a_cpu_with_other_code_targets_says_the_rounding_differs(tmp_path, monkeypatch):
    """A run resumed where torch's kernel level or numba's target CPU differ from its last session's logs
    a note naming them; resumed where they agree, it says nothing."""
    import relpsp.train.runtime as runtime

    quiet = {"progress": False, "splits": _tiny_splits()}
    fit(_cfg(epochs=1), tmp_path, log=lambda s: None, **quiet)
    targets = runtime.cpu_code_targets()
    monkeypatch.setattr(runtime, "cpu_code_targets", lambda: {**targets, "torch_cpu": "OTHER"})
    lines: list[str] = []
    res = fit(_cfg(epochs=2), tmp_path, resume=True, log=lines.append, **quiet)
    note = [line for line in lines if "other code targets" in line]
    assert note == [
        f"note: the run last trained on a CPU with other code targets (torch_cpu {targets['torch_cpu']} -> OTHER);"
        " the float rounding differs from a run that stayed there"
    ], lines
    assert [s["versions"]["torch_cpu"] for s in res["sessions"]] == [targets["torch_cpu"], "OTHER"]
    lines.clear()
    fit(_cfg(epochs=3), tmp_path, resume=True, log=lines.append, **quiet)  # the same targets as the last session
    assert not [line for line in lines if "other code targets" in line]


def test_truncated_checkpoint_is_refused(tmp_path):
    fit(_cfg(epochs=1), tmp_path, progress=False, splits=_tiny_splits(), log=lambda s: None)
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated|corrupted"):
        load_trained(path)


def test_silent_penalty_gives_silent_neurons_a_gradient():
    from relpsp.functional import relpsp_linear, silent_neuron_penalty

    torch.manual_seed(0)
    t_in = torch.rand(4, 6)
    w = torch.full((3, 6), -0.1, requires_grad=True)  # nobody fires
    t_out = relpsp_linear(t_in, w)
    assert not torch.isfinite(t_out).any()
    pen = silent_neuron_penalty(t_in, w, t_out, t_end=2.0)
    pen.backward()
    # d/dw of (theta - sum_i w_i (t_end - t_i)) summed over samples / B = -mean_b (t_end - t_i)
    expected = -(2.0 - t_in).mean(0).expand(3, 6)
    torch.testing.assert_close(w.grad, expected)
    assert float(pen.detach()) == pytest.approx(float((1 + 0.1 * (2.0 - t_in).sum(1)).sum() * 3 / 4), rel=1e-5)


def test_silent_penalty_horizon_of_a_layer_that_fired_nothing_is_one_unit_after_its_last_input():
    """No neuron of the first layer fires in the batch: its t_end is its latest input spike + 1; the
    second layer then receives no spike and has no term."""
    from relpsp.functional import latency_encode, silent_neuron_penalty
    from relpsp.models import model_from_config
    from relpsp.train.regularisers import SilentPenalty

    model = model_from_config(ModelConfig(arch="16-12-3", input_shape=(1, 4, 4)))
    with torch.no_grad():
        model[2].weight.fill_(-0.05)  # model[0] encodes, model[1] flattens
    x = _tiny_splits()["train"][0][:8]
    pen = SilentPenalty(model)
    t_out = model(x)
    assert not torch.isfinite(t_out).any()
    t_in = latency_encode(x).flatten(1)
    with torch.no_grad():  # not recorded by the penalty's hook
        t_hidden = model[2](t_in)
    assert not torch.isfinite(t_hidden).any()
    want = silent_neuron_penalty(t_in, model[2].weight, t_hidden, t_end=float(t_in[torch.isfinite(t_in)].max()) + 1)
    torch.testing.assert_close(pen(), want * len(x))
    pen.close()


def test_target_penalty_acts_only_on_silent_correct_outputs():
    """The target-only penalty is max(0, theta - V(t_end)) of each sample's correct output where that
    output is silent, summed over samples; other outputs, silent or not, get nothing."""
    from relpsp.models import model_from_config
    from relpsp.train.regularisers import SilentPenalty

    torch.manual_seed(0)
    model = model_from_config(ModelConfig(arch="16-12-3", input_shape=(1, 4, 4)))
    out_layer = model[-1]
    with torch.no_grad():
        out_layer.weight[0] = -0.05  # output 0 never fires
        out_layer.weight[2] = -0.05  # nor output 2
    x, y = _tiny_splits()["train"]
    pen = SilentPenalty(model, target_only=True)
    t_out = model(x)
    assert not torch.isfinite(t_out[:, 0]).any() and not torch.isfinite(t_out[:, 2]).any()
    assert torch.isfinite(t_out[:, 1]).all()
    total = pen(None, y)
    pen.close()
    with torch.no_grad():
        hidden = model[:-1](x)
        t_end = float(t_out[:, 1].max())
        v_end = torch.where(torch.isfinite(hidden), (t_end - hidden).clamp_min(0), 0) @ out_layer.weight.t()
        silent_target = (y != 1).float()
        expected = ((1.0 - v_end.gather(1, y[:, None])[:, 0]).clamp_min(0) * silent_target).sum()
    assert float(total.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(total.detach()) > 0
    total.backward()
    g = out_layer.weight.grad
    assert g[0].abs().sum() > 0 and g[2].abs().sum() > 0  # the silent targets are pushed up
    assert float(g[1].abs().sum()) == 0.0  # output 1 fires for every sample: untouched
    pen = SilentPenalty(model, target_only=True)
    model(x)
    assert float(pen(None, torch.ones_like(y)).detach()) == 0.0  # every correct output fired: no term
    with pytest.raises(ValueError, match="labels"):
        pen(None)
    pen.close()
    with pytest.raises(ValueError, match="ends in a spiking dense layer"):
        SilentPenalty(torch.nn.Sequential(*model[:-1], torch.nn.Flatten()), target_only=True)


def test_target_penalty_trains_and_is_validated(tmp_path):
    splits = _tiny_splits()
    res = fit(_cfg(epochs=3, target_penalty=0.01), tmp_path / "run", progress=False, splits=splits, log=lambda s: None)
    assert res["test_accuracy"] > 0.5  # three classes: chance is 1/3
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["config"]["train"]["target_penalty"] == 0.01
    with pytest.raises(ValueError, match="target_penalty"):
        fit(_cfg(target_penalty=-1.0), tmp_path / "bad", splits=splits, progress=False, log=lambda s: None)


def test_grad_clip_bounds_the_step_and_counts_it(tmp_path):
    """One SGD step from the seeded initial weights moves them by lr * g, with |g| cut to grad_clip."""
    from relpsp.models import model_from_config

    splits = _tiny_splits()  # 64 training samples: batch 64 makes one step per epoch

    def step_length(name: str, clip: float) -> tuple[float, dict]:
        cfg = _cfg(epochs=1, optimizer="sgd", lr=0.5, batch_size=64, grad_clip=clip)
        torch.manual_seed(cfg.train.seed)  # fit builds its initial model right after this same call
        start = {f"model.{k}": v.detach().numpy().copy() for k, v in model_from_config(cfg.model).state_dict().items()}
        res = fit(cfg, tmp_path / name, progress=False, splits=splits, log=lambda s: None)
        after = _weights(tmp_path / name / CHECKPOINT_NAME)
        assert after.keys() == start.keys()
        return float(np.sqrt(sum(((after[k] - start[k]) ** 2).sum() for k in start))), res

    free, res_free = step_length("free", 0.0)
    cut, res_cut = step_length("cut", 1e-3)
    assert free > 10 * 0.5 * 1e-3  # the gradient's norm is well above the clip
    assert cut == pytest.approx(0.5 * 1e-3, rel=1e-3)  # lr * grad_clip: rescaled to the clip exactly
    assert res_cut["history"][0]["clipped_steps"] == 1
    assert "clipped_steps" not in res_free["history"][0]
    # One SGD step of length lr * |g|: the logged norm is |g|, taken before clipping in both runs.
    for res in (res_free, res_cut):
        row = res["history"][0]
        assert row["grad_norm_geomean"] == pytest.approx(free / 0.5, rel=1e-4)
        assert row["grad_norm_max"] == pytest.approx(free / 0.5, rel=1e-4)
    with pytest.raises(ValueError, match="grad_clip"):
        fit(_cfg(grad_clip=-1.0), tmp_path / "bad", splits=splits, progress=False, log=lambda s: None)


def test_weight_average_is_the_running_mean_of_every_step_and_is_what_gets_saved(tmp_path):
    """With ema_decay d the saved model is a_k = d a_(k-1) + (1 - d) w_k over the weights w_k after each step
    (a_0 = the initial weights), recomputed here from the checkpoint written after every step; the weights
    being trained are kept beside it, and the reported accuracy is the average's."""
    from relpsp.models import model_from_config
    from relpsp.train import TRAINING_PREFIX, evaluate

    d = 0.8
    cfg = _cfg(epochs=2, checkpoint_every=1, ema_decay=d)
    torch.manual_seed(cfg.train.seed)  # fit builds its initial model right after this same call
    avg = {
        f"model.{k}": v.detach().numpy().astype(np.float64)
        for k, v in model_from_config(cfg.model).state_dict().items()
    }
    trained: list[dict[str, np.ndarray]] = []

    def record(epoch: int, step: int) -> None:
        arrays, _ = load_checkpoint(tmp_path / CHECKPOINT_NAME)
        trained.append({k[len(TRAINING_PREFIX) :]: v for k, v in arrays.items() if k.startswith(TRAINING_PREFIX)})

    res = fit(cfg, tmp_path, progress=False, splits=_tiny_splits(), on_step=record, log=lambda s: None)
    assert len(trained) == 8 and trained[0].keys() == avg.keys()  # 64 samples, batch 16, 2 epochs
    assert not np.array_equal(trained[0]["model.2.weight"], trained[-1]["model.2.weight"])  # it trained
    for w in trained:
        avg = {k: d * avg[k] + (1 - d) * w[k] for k in avg}
    saved = _weights(tmp_path / CHECKPOINT_NAME)
    for k in avg:
        np.testing.assert_allclose(saved[k], avg[k], rtol=1e-5, atol=1e-6, err_msg=k)
        assert not np.allclose(saved[k], trained[-1][k], rtol=1e-3, atol=1e-4), k  # not the trained weights
    model, _, _ = load_trained(tmp_path / CHECKPOINT_NAME)
    x, y = _tiny_splits()["test"]
    assert res["test_accuracy"] == evaluate(model, x, y, tau=cfg.train.tau)["accuracy"]
    assert all("raw_test_accuracy" in row for row in res["history"])


def test_weight_average_run_also_reports_the_trained_weights_on_val_and_test(tmp_path):
    from relpsp.models import load_model_arrays, model_from_config
    from relpsp.train import TRAINING_PREFIX, evaluate

    cfg = _cfg(epochs=1, ema_decay=0.9, lr=0.03)  # 3 steps: the average still trails the trained weights
    splits = _tiny_splits()
    x, y = splits.pop("train")
    splits.update(train=(x[:48], y[:48]), val=(x[48:], y[48:]))
    res = fit(cfg, tmp_path, progress=False, splits=splits, log=lambda s: None)
    arrays, _ = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    trained = model_from_config(cfg.model)
    load_model_arrays(trained, arrays, prefix=TRAINING_PREFIX + "model.")
    averaged, _, _ = load_trained(tmp_path / CHECKPOINT_NAME)
    last = res["history"][-1]
    for split in ("val", "test"):
        assert last[f"raw_{split}_accuracy"] == evaluate(trained, *splits[split], tau=cfg.train.tau)["accuracy"]
        assert last[f"{split}_accuracy"] == evaluate(averaged, *splits[split], tau=cfg.train.tau)["accuracy"]
        assert last[f"raw_{split}_accuracy"] != last[f"{split}_accuracy"]  # so a swap of the two would fail


def test_weight_average_resumes_exactly(tmp_path):
    cfg = _cfg(epochs=2, checkpoint_every=1, ema_decay=0.9)
    fit(cfg, tmp_path / "ref", progress=False, splits=_tiny_splits(), log=lambda s: None)
    _fit_interrupted(cfg, tmp_path / "cut", (1, 1))
    fit(cfg, tmp_path / "cut", resume=True, progress=False, splits=_tiny_splits(), log=lambda s: None)
    ref, _ = load_checkpoint(tmp_path / "ref" / CHECKPOINT_NAME)
    cut, _ = load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)
    names = [k for k in ref if k.startswith(("model.", "training."))]
    assert len(names) == 4  # two weight matrices, each averaged and trained
    for k in names:
        np.testing.assert_array_equal(ref[k], cut[k], err_msg=k)


def test_weight_average_resume_without_trained_weights_names_the_missing_array(tmp_path):
    """A checkpoint written with averaging but stripped of its ``training.*`` arrays is refused, and the
    error names the array that is missing as it is stored."""
    cfg = _cfg(epochs=2, checkpoint_every=1, ema_decay=0.9)
    _fit_interrupted(cfg, tmp_path, (1, 1))
    path = tmp_path / CHECKPOINT_NAME
    arrays, meta = load_checkpoint(path)
    stripped = {k: v for k, v in arrays.items() if not k.startswith("training.")}
    assert len(stripped) < len(arrays)
    save_checkpoint(path, stripped, meta)
    with pytest.raises(ValueError, match=r"no array 'training\.model\.\d+\.weight'"):
        fit(cfg, tmp_path, resume=True, progress=False, splits=_tiny_splits(), log=lambda s: None)


def test_label_smoothing_changes_the_training_loss(tmp_path):
    # One epoch from the same start: the smoothed target raises the training loss; the option is saved.
    runs = {}
    for eps in (0.0, 0.3):
        res = fit(
            _cfg(epochs=1, label_smoothing=eps),
            tmp_path / str(eps),
            splits=_tiny_splits(),
            progress=False,
            log=lambda s: None,
        )
        runs[eps] = res["history"][-1]
    assert runs[0.3]["train_loss"] > runs[0.0]["train_loss"]  # the smoothed target cannot be met exactly
    saved = json.loads((tmp_path / "0.3" / "results.json").read_text())
    assert saved["config"]["train"]["label_smoothing"] == 0.3


@pytest.mark.parametrize("eps", [-0.1, 1.0, float("nan")])
def test_bad_label_smoothing_is_refused(tmp_path, eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        fit(_cfg(label_smoothing=eps), tmp_path, splits=_tiny_splits(), progress=False, log=lambda s: None)
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("decay", [-0.1, 1.0, float("nan")])
def test_bad_ema_decay_is_refused(tmp_path, decay):
    with pytest.raises(ValueError, match="ema_decay"):
        fit(_cfg(ema_decay=decay), tmp_path, splits=_tiny_splits(), progress=False, log=lambda s: None)


def test_bad_training_settings_raise(tmp_path):
    with pytest.raises(ValueError, match="lr"):
        fit(Config(model=_cfg().model, train=TrainConfig(lr=-1.0)), tmp_path, splits=_tiny_splits(), progress=False)
    wrong_shape = {
        "train": (torch.rand(8, 1, 5, 5), torch.zeros(8, dtype=torch.long)),
        "test": (torch.rand(8, 1, 5, 5), torch.zeros(8, dtype=torch.long)),
    }
    with pytest.raises(ValueError, match=r"input_shape"):
        fit(_cfg(epochs=1), tmp_path, splits=wrong_shape, progress=False, log=lambda s: None)


def test_augment_shifts_and_flips():
    from relpsp.train.inputs import augment

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 12, 12)
    x[:, :, 4:8, 3:8] = torch.rand(64, 1, 4, 5, generator=g)  # content clear of the borders
    assert torch.equal(augment(x, 1, 2, 3, max_shift=0), x)
    flipped = augment(x, 1, 2, 3, max_shift=0, flip=True)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and same.any() and mirrored.any()
    a = augment(x, 1, 2, 3, max_shift=3, flip=True)
    assert torch.equal(a, augment(x, 1, 2, 3, max_shift=3, flip=True))  # seeded: resumes see the same
    assert torch.allclose(a.sum((1, 2, 3)), x.sum((1, 2, 3)))  # shifts of at most 3 px lose nothing here
    assert not torch.equal(a, x)


def test_elastic_warp_moves_content_by_the_field():
    """Zero field: the images themselves; a constant field of whole pixels: an exact shift (zero fill);
    one field per image."""
    from relpsp.train.inputs import elastic_warp

    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 7, 9, generator=g, dtype=torch.float64)
    field = torch.zeros(2, 2, 7, 9, dtype=torch.float64)
    torch.testing.assert_close(elastic_warp(x, field), x)
    field[0, 0] = 2.0  # image 0: output column j takes input column j + 2
    field[1, 1] = -1.0  # image 1: output row i takes input row i - 1
    out = elastic_warp(x, field)
    torch.testing.assert_close(out[0, :, :, :7], x[0, :, :, 2:])
    assert float(out[0, :, :, 7:].abs().max()) < 1e-12  # zero fill (up to rounding of the weights)
    torch.testing.assert_close(out[1, :, 1:], x[1, :, :6])
    assert float(out[1, :, 0].abs().max()) < 1e-12
    half = torch.zeros(1, 2, 7, 9, dtype=torch.float64)
    half[0, 0] = 0.5  # half a pixel: the mean of the two neighbours (bilinear)
    torch.testing.assert_close(elastic_warp(x[:1], half)[..., :8], (x[:1, ..., :8] + x[:1, ..., 1:]) / 2)
    with pytest.raises(ValueError, match="field of shape"):
        elastic_warp(x, field[:1])


def test_elastic_field_is_smooth_seeded_and_of_the_documented_size():
    from relpsp.train.inputs import elastic_field

    def draw(seed, alpha=34.0, sigma=4.0, h=64, w=64):
        return elastic_field(16, h, w, alpha, sigma, torch.Generator().manual_seed(seed))

    f = draw(0)
    assert f.shape == (16, 2, 64, 64) and torch.equal(f, draw(0)) and not torch.equal(f, draw(1))
    inner = f[..., 16:48, 16:48]  # clear of the zero fill beyond the borders
    expected_std = 34.0 / (math.sqrt(12 * math.pi) * 4.0)  # about 1.38 px
    assert abs(float(inner.std()) - expected_std) < 0.15 * expected_std
    # smooth: neighbouring displacements nearly equal (white noise would give a correlation near 0)
    a, b = inner[..., :-1].flatten(), inner[..., 1:].flatten()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.9
    torch.testing.assert_close(draw(0, alpha=17.0), f / 2)  # linear in alpha
    for bad in ((0.0, 4.0), (34.0, 0.0), (math.nan, 4.0)):
        with pytest.raises(ValueError, match="alpha > 0 and sigma > 0"):
            draw(0, *bad)


def test_augment_elastic_is_seeded_keeps_mass_and_leaves_runs_without_it_unchanged():
    from relpsp.train.inputs import augment

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(32, 1, 28, 28)
    x[:, :, 9:19, 10:18] = torch.rand(32, 1, 10, 8, generator=g)
    plain = augment(x, 1, 2, 3, max_shift=1, max_rotation=10.0)
    assert torch.equal(plain, augment(x, 1, 2, 3, max_shift=1, max_rotation=10.0, elastic_alpha=0.0))
    bent = augment(x, 1, 2, 3, max_shift=1, max_rotation=10.0, elastic_alpha=34.0, elastic_sigma=4.0)
    assert torch.equal(bent, augment(x, 1, 2, 3, max_shift=1, max_rotation=10.0, elastic_alpha=34.0))
    assert float((bent - plain).abs().amax()) > 0.1
    # a smooth displacement of about 1.4 px per pixel moves each image's centre of mass by a few pixels at most
    # (measured: up to 2.7 px here), and the content stays in the frame
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")

    def centre(t):
        m = t.sum((1, 2, 3))
        return torch.stack([(t[:, 0] * ys).sum((1, 2)) / m, (t[:, 0] * xs).sum((1, 2)) / m], 1)

    assert float((centre(bent) - centre(plain)).norm(dim=1).max()) < 4.0
    assert float((bent.sum((1, 2, 3)) / plain.sum((1, 2, 3))).mean()) == pytest.approx(1.0, abs=0.15)


def test_affine_warp_rotates_counter_clockwise_and_scales_about_the_centre():
    """Checked against exact pixel permutations (quarter turns of square and non-square images, whose
    pixel centres map onto pixel centres) and against the mass a scaling keeps."""
    from relpsp.train.inputs import affine_warp

    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 2, 8, 8, generator=g, dtype=torch.float64)
    one = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(affine_warp(x, 0 * one, one), x)
    # counter-clockwise on screen: the top-right corner goes to the top-left
    torch.testing.assert_close(affine_warp(x, 90 * one, one), torch.rot90(x, 1, (2, 3)))
    torch.testing.assert_close(affine_warp(x, -90 * one, one), torch.rot90(x, -1, (2, 3)))
    torch.testing.assert_close(affine_warp(x, 180 * one, one), x.flip(2).flip(3))
    # a 6x10 image turned a quarter: its centre 4x4 block (inside both frames) turns without shear
    r = torch.rand(1, 1, 6, 10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        affine_warp(r, 90 * one[:1], one[:1])[..., 1:5, 3:7], torch.rot90(r[..., 1:5, 3:7], 1, (2, 3))
    )
    # per image: the angles and factors belong to their own images
    mixed = affine_warp(x, torch.tensor([0.0, 90.0, 0.0], dtype=torch.float64), one)
    torch.testing.assert_close(mixed[0], x[0])
    torch.testing.assert_close(mixed[1], torch.rot90(x[1], 1, (1, 2)))
    # a blob clear of the borders: scaling by s multiplies its mass by about s^2
    blob = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    blob[..., 12:20, 12:20] = 1.0
    for s in (0.8, 1.25):
        mass = affine_warp(blob, one[:1] * 0, one[:1] * s).sum().item()
        assert abs(mass - 64 * s * s) < 0.05 * 64 * s * s
    with pytest.raises(ValueError, match="positive"):
        affine_warp(x, one, 0 * one)
    with pytest.raises(ValueError, match="one angle and one scale per image"):
        affine_warp(x, one[:2], one)


def test_augment_rotations_and_scalings_are_seeded_bounded_and_leave_runs_without_them_unchanged():
    from relpsp.train.inputs import augment

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 6:10, 5:11] = torch.rand(64, 1, 4, 6, generator=g)
    plain = augment(x, 1, 2, 3, max_shift=1, flip=True)
    turned = augment(x, 1, 2, 3, max_shift=1, flip=True, max_rotation=15.0, max_scale=0.1)
    assert torch.equal(turned, augment(x, 1, 2, 3, max_shift=1, flip=True, max_rotation=15.0, max_scale=0.1))
    assert not torch.equal(turned, augment(x, 1, 2, 4, max_shift=1, flip=True, max_rotation=15.0, max_scale=0.1))
    # the shifts and mirrors are drawn first and kept: each warped image's centre of mass stays within what
    # a 15-degree turn and a 10% scaling about the frame's centre move this content (under 1.5 px)
    assert (turned - plain).abs().amax() > 0.05
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")

    def centre(t):
        m = t.sum((1, 2, 3))
        return torch.stack([(t[:, 0] * ys).sum((1, 2)) / m, (t[:, 0] * xs).sum((1, 2)) / m], 1)

    assert float((centre(turned) - centre(plain)).abs().max()) < 1.5
    # a smooth round blob at the centre is unchanged by any rotation (to interpolation error) ...
    blob = torch.exp(-((ys - 7.5) ** 2 + (xs - 7.5) ** 2) / 8).expand(8, 1, 16, 16).clone()
    assert float((augment(blob, 5, 0, 0, max_shift=0, max_rotation=90.0) - blob).abs().amax()) < 0.05
    # ... but not by scaling, and a square is changed by a turn: it shows at the corners
    assert float((augment(blob, 5, 0, 0, max_shift=0, max_scale=0.3) - blob).abs().amax()) > 0.1
    sq = torch.zeros(8, 1, 16, 16)
    sq[..., 4:12, 4:12] = 1.0  # a square is not: a turn of up to 45 degrees shows at its corners
    assert float((augment(sq, 5, 0, 0, max_shift=0, max_rotation=45.0) - sq).abs().amax()) > 0.5


def test_step_keys_keep_the_packed_formula_in_range_and_never_repeat_or_overflow_outside():
    """The per-step generator keys of augmentation and spike dropout are the packed numbers earlier runs
    used wherever those are one-to-one; past that (more steps per epoch than the packing allows, or a seed
    whose packed key would overflow torch's 64-bit seed) they are hashed into a range no packed key uses."""
    from relpsp.models import model_from_config
    from relpsp.train.inputs import augment, step_key
    from relpsp.train.regularisers import SpikeDropout

    assert step_key("augment", (3 * 1_000_003 + 2) * 100_003 + 7, True, 3, 2, 7) == 300_010_100_040
    big = [step_key("s", 2**70, True, 9), step_key("s", 5, False, 1), step_key("s", 5, False, 2)]
    assert all(2**63 <= k < 2**64 for k in big) and len(set(big)) == 3
    assert step_key("s", 5, False, 1) == step_key("s", 6, False, 1)  # the hash ignores the packed number

    # augment draws its shifts from the packed key: image n moved by (dy, dx) with zero fill
    x = torch.arange(1.0, 4 * 64 + 1).view(4, 1, 8, 8)
    got = augment(x, 3, 2, 7, max_shift=2)
    shifts = torch.randint(-2, 3, (4, 2), generator=torch.Generator().manual_seed(300_010_100_040)).tolist()
    assert any(s != [0, 0] for s in shifts)
    for n, (dy, dx) in enumerate(shifts):
        expected = torch.roll(x[n, 0], (dy, dx), dims=(0, 1))
        rows, cols = torch.arange(8)[:, None] - dy, torch.arange(8)[None, :] - dx
        expected[(rows < 0) | (rows > 7) | (cols < 0) | (cols > 7)] = 0  # what the roll wrapped round
        assert torch.equal(got[n, 0], expected), (n, dy, dx)

    x = torch.rand(4, 1, 8, 8)  # the largest seed used to overflow the packed augmentation key
    a = augment(x, 2**32 - 1, 3, 5, max_shift=2)
    assert torch.equal(a, augment(x, 2**32 - 1, 3, 5, max_shift=2))

    drop = SpikeDropout(model_from_config(ModelConfig(arch="16-12-3", input_shape=(1, 4, 4))), 0.5)
    drop.reseed(3, 2, 7, "cpu")  # in range: the packed key the committed runs used
    assert drop.generator is not None
    assert drop.generator.initial_seed() == (3 * 1_000_003 + 2 * 10_007 + 7) * 1_009 + 0x5D10
    # pairs whose packed keys are equal: too many steps per epoch, and a long run meeting the next seed
    for a, b in (((0, 0, 10_007), (0, 1, 0)), ((0, 100, 5), (1, 0, 702))):
        masks = []
        for seed, epoch, step in (a, b):
            drop.reseed(seed, epoch, step, "cpu")
            assert drop.generator is not None
            masks.append(torch.rand(64, generator=drop.generator))
        assert not torch.equal(masks[0], masks[1]), (a, b)
    drop.close()


def test_spike_dropout_deletes_inputs_and_scales_the_threshold_in_training_only():
    """In training mode a hooked dense layer sees its input with a seeded random subset of spikes set to
    +inf and fires at threshold theta * (1 - p); in evaluation mode, and after close(), it is untouched."""
    from relpsp.functional import relpsp_linear
    from relpsp.models import model_from_config
    from relpsp.train.regularisers import SpikeDropout

    torch.manual_seed(0)
    model = model_from_config(ModelConfig(arch="16-12-3", input_shape=(1, 4, 4)))
    hidden = model[-2]
    x, _ = _tiny_splits()["train"]
    with torch.no_grad():
        t_enc = model[:-2](x)  # encoded and flattened input of the hidden layer
        plain = model(x)
    seen: list = []  # registered first, so it runs before the dropout's hook restores the threshold
    hook = hidden.register_forward_hook(lambda m, inp, out: seen.append((inp[0].clone(), m.theta, out.clone())))
    drop = SpikeDropout(model, 0.25)
    model.train()
    drop.reseed(0, 0, 0, "cpu")
    with torch.no_grad():
        model(x)
    t_in, theta, out = seen[0]
    dropped = torch.isinf(t_in) & torch.isfinite(t_enc)
    assert torch.equal(t_in[~dropped], t_enc[~dropped])  # kept spikes keep their times
    frac = float(dropped.sum()) / float(torch.isfinite(t_enc).sum())
    assert 0.15 < frac < 0.35  # about p of the spikes are deleted
    assert theta == pytest.approx(0.75)
    with torch.no_grad():
        assert torch.allclose(out, relpsp_linear(t_in, hidden.weight, theta=0.75), equal_nan=True)
    assert hidden.theta == 1.0  # restored after the pass
    drop.reseed(0, 0, 0, "cpu")  # the same seed draws the same mask
    with torch.no_grad():
        model(x)
    assert torch.equal(seen[1][0], t_in)
    drop.reseed(0, 0, 1, "cpu")  # the next step draws another
    with torch.no_grad():
        model(x)
    assert not torch.equal(seen[2][0], t_in)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain)  # no dropout in evaluation
    drop.close()
    hook.remove()
    model.train()
    with torch.no_grad():
        assert torch.equal(model(x), plain)  # hooks removed


def test_spike_dropout_masks_do_not_depend_on_how_the_batch_is_split():
    """A process holding rows lo:hi of the global batch (data-parallel training) drops exactly the spikes
    of those rows that a single process holding the whole batch drops."""
    from relpsp.models import model_from_config
    from relpsp.train.regularisers import SpikeDropout

    torch.manual_seed(0)
    model = model_from_config(ModelConfig(arch="16-12-3", input_shape=(1, 4, 4))).train()
    x, _ = _tiny_splits()["train"]
    seen: list = []
    hooks = [m.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone())) for m in model[-2:]]
    drop = SpikeDropout(model, 0.4)
    with torch.no_grad():
        drop.reseed(5, 1, 2, "cpu")
        model(x)
        whole = list(seen)
        parts = []
        for lo, hi in ((0, 3), (3, len(x))):
            seen.clear()
            drop.reseed(5, 1, 2, "cpu", rows=(lo, hi, len(x)))
            model(x[lo:hi])
            parts.append(list(seen))
        for layer in range(2):  # both dense layers draw their own mask
            assert torch.isinf(whole[layer]).any()
            assert torch.equal(torch.cat([p[layer] for p in parts]), whole[layer])
        drop.reseed(5, 1, 2, "cpu", rows=(0, 3, len(x)))
        with pytest.raises(RuntimeError, match="rows 0:3"):
            model(x[:4])
    drop.close()
    for h in hooks:
        h.remove()


def _epoch_losses(folder: Path, splits: dict, **train) -> list[float]:
    """The training losses of a 2-epoch run of ``_cfg`` with ``train`` settings, into ``folder``."""
    res = fit(_cfg(epochs=2, **train), folder, progress=False, splits=splits, log=lambda s: None)
    return [r["train_loss"] for r in res["history"]]


def test_spike_dropout_trains_deterministically_and_is_validated(tmp_path):
    splits = _tiny_splits()
    losses = [_epoch_losses(tmp_path / n, splits, spike_dropout=p) for n, p in (("a", 0.2), ("b", 0.2), ("off", 0.0))]
    assert losses[0] == losses[1]  # seeded masks: the same run twice
    assert losses[0] != losses[2]  # and the masks change training
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["config"]["train"]["spike_dropout"] == 0.2
    for bad, match in (
        (_cfg(spike_dropout=1.0), "spike_dropout"),
        (_cfg(spike_dropout=-0.1), "spike_dropout"),
        (_cfg(spike_dropout=0.2, target_penalty=0.01), "cannot be combined"),
    ):
        with pytest.raises(ValueError, match=match):
            fit(bad, tmp_path / "bad", splits=splits, progress=False, log=lambda s: None)


def test_spike_dropout_resumes_exactly(tmp_path):
    """The masks are drawn from (seed, epoch, step): a run stopped mid-epoch and resumed draws the ones
    the uninterrupted run drew, and ends with the same weights."""
    cfg = _cfg(epochs=2, checkpoint_every=1, spike_dropout=0.3)
    fit(cfg, tmp_path / "ref", progress=False, splits=_tiny_splits(), log=lambda s: None)
    _fit_interrupted(cfg, tmp_path / "cut", (1, 1))
    fit(cfg, tmp_path / "cut", resume=True, progress=False, splits=_tiny_splits(), log=lambda s: None)
    ref, cut = _weights(tmp_path / "ref" / CHECKPOINT_NAME), _weights(tmp_path / "cut" / CHECKPOINT_NAME)
    for k in ref:
        np.testing.assert_array_equal(ref[k], cut[k], err_msg=k)


def test_spike_jitter_moves_every_emitted_spike_in_training_only():
    """train.spike_jitter: the encoder's and every ReL-PSP layer's spikes are moved by N(0, sigma^2) draws
    (clamped at 0) in training mode; each layer computes its exact times from the moved inputs; silent
    neurons stay silent; the gradient passes through the moved times; eval mode and closed hooks leave the
    network plain; the draws follow (seed, epoch, step) and the rows a process holds."""
    from relpsp.functional import relpsp_conv2d
    from relpsp.models import layer_outputs, model_from_config
    from relpsp.nn import LatencyEncode, SpikingConv2d, SpikingLinear
    from relpsp.train.regularisers import SpikeJitter

    torch.manual_seed(0)
    model = model_from_config(ModelConfig(arch="4C3p1-P2-6-3", input_shape=(1, 4, 4))).double().train()
    x, _ = _tiny_splits()["train"]
    x = x.double()
    sigma = 0.05
    plain = layer_outputs(model, x)
    jitter = SpikeJitter(model, sigma)
    jitter.reseed(5, 1, 2)
    moved = layer_outputs(model, x)
    conv = next(i for i, m in enumerate(model) if isinstance(m, SpikingConv2d))
    deltas = []
    for i, m in enumerate(model):
        if isinstance(m, (LatencyEncode, SpikingLinear, SpikingConv2d)):
            fired = torch.isfinite(moved[i])
            # the exact times from the moved inputs: forward() runs no hooks
            exact = plain[0] if i == 0 else m.forward(moved[i - 1]).detach()
            if i == conv:  # the conv layer's own op, as a cross-check of forward()
                ref = relpsp_conv2d(moved[i - 1], m.weight.detach(), padding=m.padding, theta=m.theta)
                assert torch.equal(torch.isfinite(ref), torch.isfinite(exact))
            assert torch.equal(fired, torch.isfinite(exact))
            d = (moved[i] - torch.where(fired, exact, 0.0))[fired]
            deltas.append(d[moved[i][fired] > 0].detach())
    d = torch.cat(deltas)
    assert len(d) > 100 and abs(d.mean()) < 0.02 and abs(d.std() / sigma - 1) < 0.2
    assert (torch.cat([t[torch.isfinite(t)] for t in moved]) >= 0).all()
    jitter.reseed(5, 1, 2)
    again = layer_outputs(model, x)
    assert all(torch.equal(a, b) for a, b in zip(again, moved, strict=True))
    parts = []
    for lo, hi in ((0, 5), (5, len(x))):
        jitter.reseed(5, 1, 2, rows=(lo, hi, len(x)))
        parts.append(layer_outputs(model, x[lo:hi])[-1])
    assert torch.equal(torch.cat(parts), moved[-1])
    jitter.reseed(5, 1, 3)
    assert not torch.equal(layer_outputs(model, x)[-1], moved[-1])
    w = model[-1].weight
    w.grad = None
    jitter.reseed(5, 1, 2)
    out = model(x)
    out[torch.isfinite(out)].sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(layer_outputs(model, x), plain, strict=True))
    model.train()
    jitter.close()
    assert all(torch.equal(a, b) for a, b in zip(layer_outputs(model, x), plain, strict=True))


def test_spike_jitter_trains_deterministically_resumes_exactly_and_is_validated(tmp_path):
    splits = _tiny_splits()
    losses = [_epoch_losses(tmp_path / n, splits, spike_jitter=v) for n, v in (("a", 0.05), ("b", 0.05), ("off", 0.0))]
    assert losses[0] == losses[1] and losses[0] != losses[2]
    assert json.loads((tmp_path / "a" / "results.json").read_text())["config"]["train"]["spike_jitter"] == 0.05
    cfg = _cfg(epochs=2, checkpoint_every=1, spike_jitter=0.05, spike_dropout=0.2)
    fit(cfg, tmp_path / "ref", progress=False, splits=splits, log=lambda s: None)
    _fit_interrupted(cfg, tmp_path / "cut", (1, 1))
    fit(cfg, tmp_path / "cut", resume=True, progress=False, splits=splits, log=lambda s: None)
    ref, cut = _weights(tmp_path / "ref" / CHECKPOINT_NAME), _weights(tmp_path / "cut" / CHECKPOINT_NAME)
    for k in ref:
        np.testing.assert_array_equal(ref[k], cut[k], err_msg=k)
    for bad, match in (
        (_cfg(spike_jitter=-0.1), "spike_jitter must be a finite number >= 0"),
        (_cfg(spike_jitter=math.inf), "spike_jitter must be a finite number >= 0"),
        (_cfg(spike_jitter=0.1, silent_penalty=0.01), "cannot be combined"),
        (
            replace(_cfg(spike_jitter=0.1), model=ModelConfig(arch="16-12-3", input_shape=(1, 4, 4), kernel="alpha")),
            "ReL-PSP kernel only",
        ),
    ):
        with pytest.raises(ValueError, match=match):
            fit(bad, tmp_path / "bad", splits=splits, progress=False, log=lambda s: None)


def test_conv_spike_dropout_drops_convolution_inputs_at_its_own_rate(tmp_path):
    """``train.spike_dropout_conv`` hooks the convolution layers (the first one's input is the encoded
    image) at their own rate and threshold scale, beside the dense layers' rate; with it at 0 only the
    dense layers are hooked, so the runs before it draw the same masks; it is validated like the dense
    rate, and a network without a convolution layer refuses it."""
    from relpsp.models import model_from_config
    from relpsp.nn import SpikingConv2d, SpikingLinear
    from relpsp.train.regularisers import SpikeDropout

    torch.manual_seed(0)
    model = model_from_config(ModelConfig(arch="4C3-P2-6-3", input_shape=(1, 4, 4))).train()
    conv = next(m for m in model if isinstance(m, SpikingConv2d))
    dense = [m for m in model if isinstance(m, SpikingLinear)]
    x, _ = _tiny_splits()["train"]
    seen: dict = {}

    def record(m, inp, out) -> None:  # registered first, so it runs before the dropout restores theta
        seen[id(m)] = (inp[0].clone(), m.theta)

    hooks = [m.register_forward_hook(record) for m in (conv, *dense)]
    with torch.no_grad():
        t_enc = model[: list(model).index(conv)](x)  # the encoded image, the convolution's input
    drop = SpikeDropout(model, 0.3, 0.1)
    assert drop.layers == [conv, *dense]
    drop.reseed(0, 0, 0, "cpu")
    with torch.no_grad():
        model(x)
    t_in, theta = seen[id(conv)]
    dropped = torch.isinf(t_in) & torch.isfinite(t_enc)
    assert torch.equal(t_in[~dropped], t_enc[~dropped])
    frac = float(dropped.sum()) / float(torch.isfinite(t_enc).sum())
    assert 0.05 < frac < 0.15 and theta == pytest.approx(0.9)
    assert [seen[id(m)][1] for m in dense] == [pytest.approx(0.7)] * 2
    assert conv.theta == 1.0 and all(m.theta == 1.0 for m in dense)  # restored after the pass
    drop.close()
    assert SpikeDropout(model, 0.3).layers == dense  # rate 0: the convolutions are not hooked
    assert SpikeDropout(model, 0.0, 0.2).layers == [conv]
    for h in hooks:
        h.remove()
    with pytest.raises(ValueError, match="convolution layer"):
        SpikeDropout(model_from_config(ModelConfig(arch="16-12-3", input_shape=(1, 4, 4))), 0.0, 0.2)
    splits = _tiny_splits()
    conv_cfg = dataclasses.replace(_cfg(epochs=1), model=ModelConfig(arch="4C3-P2-6-3", input_shape=(1, 4, 4)))
    runs = [
        fit(
            dataclasses.replace(conv_cfg, train=dataclasses.replace(conv_cfg.train, spike_dropout_conv=p)),
            tmp_dir,
            progress=False,
            splits=splits,
            log=lambda s: None,
        )
        for p, tmp_dir in ((0.2, tmp_path / "a"), (0.2, tmp_path / "b"), (0.0, tmp_path / "off"))
    ]
    losses = [[r["train_loss"] for r in res["history"]] for res in runs]
    assert losses[0] == losses[1] and losses[0] != losses[2]
    for bad, match in (
        (_cfg(spike_dropout_conv=1.0), "spike_dropout_conv must be in"),
        (_cfg(spike_dropout_conv=0.2, silent_penalty=0.01), "cannot be combined"),
        (_cfg(spike_dropout_conv=0.2), "convolution layer"),
    ):
        with pytest.raises(ValueError, match=match):
            fit(bad, tmp_path / "bad", splits=splits, progress=False, log=lambda s: None)


def _two_output_model():
    """4 inputs -> 2 outputs; output 1 has zero weights, so it never fires."""
    from relpsp.models import model_from_config

    model = model_from_config(ModelConfig(arch="4-2", input_shape=(4,)))
    with torch.no_grad():
        model[-1].weight.copy_(torch.tensor([[2.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    return model


def test_evaluation_loss_uses_the_silent_margin_and_not_the_batch_size():
    """Silent outputs count as firing at the latest output spike of the whole set plus silent_margin: the
    same loss for any evaluation batch size, and the margin of the training config."""
    from relpsp.functional import spike_time_cross_entropy
    from relpsp.train import evaluate

    model = _two_output_model()
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.2, 0.3, 0.0, 0.0], [0.0, 0.1, 0.9, 0.0]])
    y = torch.tensor([0, 1, 0])
    with torch.no_grad():
        t_out = model(x)
    assert torch.isinf(t_out[:, 1]).all() and torch.isfinite(t_out[:, 0]).all()
    latest = float(t_out[:, 0].max())
    for margin in (1.0, 5.0):
        filled = torch.where(torch.isfinite(t_out), t_out, torch.tensor(latest + margin))
        expected = float(spike_time_cross_entropy(filled.double(), y, tau=0.5, reduction="mean"))
        losses = [evaluate(model, x, y, batch_size=b, tau=0.5, silent_margin=margin)["loss"] for b in (1, 2, 3)]
        np.testing.assert_allclose(losses, [expected] * 3, rtol=1e-6)
    assert evaluate(model, x, y, tau=0.5, silent_margin=5.0)["loss"] != evaluate(model, x, y, tau=0.5)["loss"]


def test_evaluate_runs_in_eval_mode_and_leaves_the_model_in_the_mode_it_came_in():
    from relpsp.train import evaluate

    model = _two_output_model()
    seen: list[bool] = []
    model[-1].register_forward_pre_hook(lambda m, _: seen.append(m.training))
    x, y = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.2, 0.3, 0.0, 0.0]]), torch.tensor([0, 1])
    for mode in (True, False):
        model.train(mode)
        evaluate(model, x, y)
        assert model.training is mode and all(m.training is mode for m in model)
    assert seen == [False, False]


def test_evaluation_counts_decisions_that_several_outputs_tie():
    """Two outputs with equal weights fire together: every sample that fires is a tie, decoded as class 0,
    so the accuracy is the share of label 0; the tie fraction makes that visible."""
    from relpsp.train import evaluate

    model = _two_output_model()
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.2, 0.3, 0.0, 0.0], [0.0, 0.1, 0.9, 0.0], [0.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    assert evaluate(model, x, y)["tied_decision_fraction"] == 0.0  # output 1 never fires: no tie
    with torch.no_grad():
        model[-1].weight[1] = model[-1].weight[0]
    ev = evaluate(model, x, y, batch_size=3)
    assert ev["no_output_spike_fraction"] == 0.25  # the blank input fires nothing
    assert ev["tied_decision_fraction"] == 0.75 and ev["accuracy"] == 0.25
    with torch.no_grad():
        t_first = model(x).min(1).values
    assert ev["mean_decision_time"] == pytest.approx(float(t_first[:3].mean()))  # over the decided samples
    # nothing decided: there is no winner's time to average (it used to read 0.0, an instant decision)
    assert math.isnan(evaluate(model, x[3:], y[3:])["mean_decision_time"])


def test_margin_summary_counts_the_infinite_cases_apart():
    """Quantiles come from the finite margins only; a lone right spike (+inf) and a silent labelled
    output (-inf) are counted, not folded into them; with no finite margin the quantiles are None."""
    from relpsp.train import margin_summary
    from relpsp.train.evaluation import MARGIN_QUANTILES

    m = torch.tensor([0.5, -0.25, math.inf, -math.inf, -math.inf, 1.0, 0.0], dtype=torch.float64)
    got = margin_summary(m)
    assert (got["n_both_fired"], got["right_silent"], got["only_right_fired"]) == (4, 2, 1)
    finite = torch.tensor([0.5, -0.25, 1.0, 0.0], dtype=torch.float64)
    assert list(got["quantiles"].values()) == pytest.approx(
        finite.quantile(torch.tensor(MARGIN_QUANTILES, dtype=torch.float64)).tolist()
    )
    assert got["quantiles"]["50%"] == pytest.approx(0.25)
    none = margin_summary(torch.tensor([math.inf, -math.inf]))
    assert none["n_both_fired"] == 0 and set(none["quantiles"].values()) == {None}
    with pytest.raises(ValueError, match="1-d"):
        margin_summary(torch.zeros(2, 2))


def test_confusion_counts_place_every_decision_and_match_the_evaluation():
    """Rows are labels, columns decisions, the last column the samples with no output spike; the diagonal
    gives evaluate's accuracy and the last column its no-spike fraction, for any batch size."""
    from relpsp.train import confusion_counts, evaluate

    model = _two_output_model()
    with torch.no_grad():
        model[-1].weight[1] = torch.tensor([0.0, 3.0, 0.0, 0.0])  # output 1 wins when feature 1 is strong
    x = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.2, 0.9, 0.0, 0.0], [0.0, 0.1, 0.9, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.8, 0.0, 0.0]]
    )
    y = torch.tensor([1, 1, 1, 0, 0])
    decisions: list[torch.Tensor] = []
    ev = evaluate(model, x, y, batch_size=2, decisions=decisions)
    assert [len(d) for d in decisions] == [2, 2, 1]
    pred, k = torch.cat(decisions), model[-1].out_features
    assert k == 2 and pred.tolist() == [0, 1, 1, -1, 1]
    whole: list[torch.Tensor] = []
    assert evaluate(model, x, y, batch_size=5, decisions=whole)["accuracy"] == ev["accuracy"]
    assert torch.cat(whole).tolist() == pred.tolist()
    conf = confusion_counts(pred, y, k)
    assert conf.tolist() == [[0, 1, 1], [1, 2, 0]]
    assert conf.diagonal().sum().item() / len(y) == ev["accuracy"] == 0.4
    assert conf[:, k].sum().item() / len(y) == ev["no_output_spike_fraction"] == 0.2
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        confusion_counts(pred, torch.tensor([1, 1, 2, 0, 0]), 2)
    with pytest.raises(ValueError, match="decisions must lie"):
        confusion_counts(torch.tensor([0, 1, 5, 0, 0]), y, 2)
    with pytest.raises(ValueError, match="one length"):
        confusion_counts(pred[:3], y, 2)


def test_a_resume_that_starts_at_the_end_of_an_epoch_reports_that_epochs_speed(tmp_path):
    """4 steps per epoch with a checkpoint every 2: stopped after the epoch's last step (its checkpoint is
    on disk, its evaluation is not), the resume runs no step of that epoch and still reports the rate of
    the steps the checkpoint holds."""
    cfg = _cfg(epochs=2, checkpoint_every=2)
    _fit_interrupted(cfg, tmp_path / "cut", (0, 3))
    res = fit(cfg, tmp_path / "cut", resume=True, progress=False, splits=_tiny_splits(), log=lambda s: None)
    rates = [row["samples_per_s"] for row in res["history"]]
    assert len(rates) == 2 and all(np.isfinite(r) and r > 0 for r in rates), rates


def test_rerunning_a_finished_run_keeps_its_recorded_wall_time(tmp_path):
    first = fit(_cfg(epochs=1), tmp_path, progress=False, splits=_tiny_splits(), log=lambda s: None)
    _, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    again = fit(_cfg(epochs=1), tmp_path, resume=True, progress=False, splits=_tiny_splits(), log=lambda s: None)
    assert again["wall_time_s"] == meta["progress"]["wall_time_s"] == first["wall_time_s"]
    assert again["test_accuracy"] == first["test_accuracy"]


def test_spike_dropout_masks_do_not_depend_on_the_device_named():
    """The masks come from a CPU generator and are moved to the layer's device, so a run resumed on another
    device type draws the same ones (a CUDA generator gives other numbers for the same seed)."""
    from relpsp.models import model_from_config
    from relpsp.train.regularisers import SpikeDropout

    torch.manual_seed(0)
    model = model_from_config(ModelConfig(arch="16-12-3", input_shape=(1, 4, 4))).train()
    x, _ = _tiny_splits()["train"]
    drop = SpikeDropout(model, 0.4)
    outs = []
    with torch.no_grad():
        for device in ("cpu", "cuda:0"):  # only named: the generator no longer lives there
            drop.reseed(5, 1, 2, device)
            outs.append(model(x))
    drop.close()
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"flip": True}, "data.flip"),
        ({"bias_input": 0.5}, "data.bias_input applies to the Yin-Yang"),
        ({"image_size": (8, 8)}, "data.image_size applies"),
        ({"dataset": "yinyang", "val_size": 100}, "has a validation split of its own"),
        ({"dataset": "yinyang", "bias_input": 3.0}, r"data\.bias_input is the intensity .* in \[0, 1\]"),
        ({"dataset": "yinyang", "bias_input": float("inf")}, r"data\.bias_input is the intensity"),
        ({"dataset": "yinyang", "bias_input": -float("inf")}, r"data\.bias_input is the intensity"),
    ],
    ids=[
        "flip-without-augment",
        "bias-input-on-images",
        "image-size-on-mnist",
        "val-size-on-yinyang",
        "bias-input-above-1",
        "bias-input-inf",
        "bias-input-minus-inf",
    ],
)
def test_data_settings_that_would_do_nothing_are_refused(tmp_path, data, needle):
    cfg = Config(model=_cfg().model, data=DataConfig(**{"dataset": "mnist", **data}), train=_cfg().train)
    with pytest.raises(ValueError, match=needle):
        fit(cfg, tmp_path, progress=False, splits=_tiny_splits(), log=lambda s: None)


def test_augmentation_of_inputs_that_are_not_images_is_refused(tmp_path):
    flat = {k: (x.flatten(1), y) for k, (x, y) in _tiny_splits().items()}
    cfg = Config(
        model=ModelConfig(arch="16-12-3", input_shape=(16,)),
        data=DataConfig(dataset="tiny", augment=True),
        train=_cfg().train,
    )
    with pytest.raises(ValueError, match=r"data\.augment shifts images"):
        fit(cfg, tmp_path, progress=False, splits=flat, log=lambda s: None)


def test_a_non_finite_gradient_stops_training_before_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """A NaN loss in the second epoch: the run stops with an error naming the step, and the checkpoint of
    the first epoch is still there with finite weights (a step with a NaN gradient would have made every
    weight NaN, and the next save would have replaced the good checkpoint)."""
    import relpsp.train.loop as train_module

    real = train_module.spike_time_cross_entropy
    calls = {"n": 0}

    def nan_in_epoch_2(*args, **kwargs):
        loss = real(*args, **kwargs)
        if kwargs.get("reduction") == "sum" and args[0].requires_grad:  # training steps only
            calls["n"] += 1
            if calls["n"] > 4:  # 4 steps per epoch: the first step of epoch 2
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train_module, "spike_time_cross_entropy", nan_in_epoch_2)
    with pytest.raises(RuntimeError, match=r"epoch 2, step 1: the gradient is not finite") as info:
        fit(_cfg(epochs=2), tmp_path, progress=False, splits=_tiny_splits(), log=lambda s: None)
    assert f"{tmp_path / CHECKPOINT_NAME} holds the last checkpoint" in str(info.value)
    assert "in a new --out or with --overwrite" in str(info.value)  # a resume refuses other settings
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert meta["progress"]["epoch"] == 1
    assert all(np.isfinite(v).all() for k, v in arrays.items() if k.startswith("model."))
    # in the first epoch no checkpoint exists yet, and the message does not name one
    calls["n"] = 4
    with pytest.raises(RuntimeError, match=r"epoch 1, step 1: the gradient is not finite") as info:
        fit(_cfg(epochs=2), tmp_path / "new", progress=False, splits=_tiny_splits(), log=lambda s: None)
    assert "holds the last checkpoint" not in str(info.value)
    assert not (tmp_path / "new" / CHECKPOINT_NAME).exists()


def test_resume_on_other_training_data_is_refused(tmp_path):
    """The checkpoint keeps a digest of the training split: a resume whose data differ (a changed
    --data-dir holding other files, say) would not continue the same run, so it is refused."""
    fit(_cfg(epochs=1), tmp_path, progress=False, splits=_tiny_splits(), log=lambda s: None)
    other = _tiny_splits()
    x, y = other["train"]
    other["train"] = (x.flip(0), y.flip(0))  # the same samples in another order: other data for the steps
    with pytest.raises(ValueError, match="other training data"):
        fit(_cfg(epochs=2), tmp_path, resume=True, progress=False, splits=other, log=lambda s: None)
    res = fit(_cfg(epochs=2), tmp_path, resume=True, progress=False, splits=_tiny_splits(), log=lambda s: None)
    assert len(res["history"]) == 2


def test_code_versions_record_changes_anywhere_in_the_package(tmp_path):
    """``source_modified`` covers the whole package folder (a change in any module, not only the training
    package's own files), and the folder it looks at is relpsp's."""
    import subprocess

    import relpsp
    from relpsp.train.runtime import PACKAGE_DIR, code_versions

    assert PACKAGE_DIR == Path(relpsp.__file__).resolve().parent
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    pkg = tmp_path / "pkg"
    (pkg / "train").mkdir(parents=True)
    (pkg / "core.py").write_text("x = 1\n")
    (pkg / "train" / "loop.py").write_text("y = 1\n")

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    clean = code_versions(pkg)
    assert len(clean["commit"]) >= 7 and clean["source_modified"] == "no"
    (pkg / "core.py").write_text("x = 2\n")  # outside the training package's folder
    assert code_versions(pkg)["source_modified"] == "yes"
    assert code_versions(tmp_path.parent / "elsewhere-not-a-repo").get("commit") is None


def test_runs_and_benchmarks_record_the_same_versions_and_commit():
    """A run's ``versions`` and a benchmark's environment come from the same helpers, so they name the
    same libraries, CPU targets and commit; a ``git status`` that fails (here a path outside the
    checkout) gives no commit rather than a clean one."""
    from benchmarks.common import environment
    from relpsp.train.runtime import PACKAGE_DIR, code_versions, git_source_state, library_versions

    versions, env = code_versions(), environment("cpu")
    libraries = library_versions()
    assert set(libraries) == {"python", "torch", "numpy", "numba"} and libraries["torch"] == torch.__version__
    for key in ("python", "torch", "numpy", "numba", "torch_cpu", "numba_cpu"):
        assert versions.get(key) == env[key], key
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    state = git_source_state(PACKAGE_DIR)
    if state is not None:  # a checkout (not an installed copy)
        assert versions["commit"] == env["commit"] == state[0]
    assert git_source_state(PACKAGE_DIR, ("/not-inside-this-checkout",)) is None


def test_code_versions_record_the_cpu_code_targets(monkeypatch):
    """Every run records the instruction sets its CPU arithmetic was built for (torch's kernel level, the
    CPU numba compiles for): the same seed rounds differently on hosts where these differ. numba's follows
    ``NUMBA_CPU_NAME`` (numba.config.CPU_NAME) when it is set, else the host's CPU."""
    numba = pytest.importorskip("numba")
    from llvmlite import binding

    from relpsp.train.runtime import CPU_TARGET_KEYS, code_versions, cpu_code_targets

    monkeypatch.setattr(numba.config, "CPU_NAME", None)
    host = cpu_code_targets()
    assert host == {"torch_cpu": torch.backends.cpu.get_cpu_capability(), "numba_cpu": binding.get_host_cpu_name()}
    assert host["torch_cpu"] and host["numba_cpu"] and tuple(host) == CPU_TARGET_KEYS
    monkeypatch.setattr(numba.config, "CPU_NAME", "znver3")
    versions = code_versions()
    assert versions["numba_cpu"] == "znver3" and versions["torch_cpu"] == host["torch_cpu"]


def test_fit_applies_the_elastic_distortion_from_the_config(tmp_path):
    """data.elastic_alpha reaches the training loop: seeded (the same losses twice), and not a no-op."""

    def losses(name: str, **data) -> list[float]:
        cfg = Config(model=_cfg().model, data=DataConfig(dataset="tiny", **data), train=_cfg(2).train)
        res = fit(cfg, tmp_path / name, progress=False, splits=_tiny_splits(), log=lambda s: None)
        return [r["train_loss"] for r in res["history"]]

    bent = dict(augment=True, max_shift=0, elastic_alpha=3.0, elastic_sigma=1.0)
    a, b, plain = losses("a", **bent), losses("b", **bent), losses("plain")
    assert a == b and a != plain


# --- documented randomness of training: augmentation draws, epoch order, held-out splits, optimizers ---
def _asymmetric_images(n: int, h: int = 12, w: int = 12) -> torch.Tensor:
    """n copies of an image with a single bright pixel at (h//2, w//2 - 2): left-right mirroring moves it."""
    x = torch.zeros(n, 1, h, w)
    x[:, 0, h // 2, w // 2 - 2] = 1.0
    return x


def test_augment_flip_mirrors_about_half_the_images():
    """DataConfig.flip / augment docstring: 'mirror it left-right with probability 1/2'."""
    from relpsp.train.inputs import augment

    x = _asymmetric_images(2000)
    fractions = []
    for step in range(3):
        out = augment(x, 1, 0, step, max_shift=0, flip=True)
        mirrored = (out == x.flip(3)).flatten(1).all(1)
        assert bool(((out == x).flatten(1).all(1) | mirrored).all())
        fractions.append(float(mirrored.float().mean()))
    assert all(0.45 < f < 0.55 for f in fractions), fractions  # binomial sd ~0.011


def test_augment_draws_angles_and_scales_on_both_sides(monkeypatch):
    """augment docstring / DataConfig: 'a uniform angle in [-max_rotation, max_rotation]' and 'a uniform factor
    in [1 - max_scale, 1 + max_scale]': both signs of turn and both shrinking and enlarging occur, none beyond."""
    import relpsp.train.inputs as inputs

    seen = {}
    real = inputs.affine_warp

    def spy(x, angles, scales):
        seen["angles"], seen["scales"] = angles.clone(), scales.clone()
        return real(x, angles, scales)

    monkeypatch.setattr(inputs, "affine_warp", spy)
    inputs.augment(torch.rand(400, 1, 8, 8), 3, 1, 2, max_shift=0, max_rotation=20.0, max_scale=0.2)
    a, s = seen["angles"], seen["scales"]
    assert float(a.min()) >= -20.0 and float(a.max()) <= 20.0
    assert float(a.min()) < -15.0 and float(a.max()) > 15.0  # both directions of turn are drawn
    assert abs(float(a.mean())) < 2.0  # uniform on a symmetric range: mean ~0 (sd of the mean ~0.6)
    assert float(s.min()) >= 0.8 and float(s.max()) <= 1.2
    assert float(s.min()) < 0.85 and float(s.max()) > 1.15  # shrinking and enlarging both occur
    assert abs(float(s.mean()) - 1.0) < 0.02


def test_augment_draws_new_transformations_every_epoch():
    """augment docstring: 'Drawn from a generator seeded by (seed, epoch, step)': the same step of another
    epoch sees other shifts (otherwise every epoch repeats the first epoch's augmentation)."""
    from relpsp.train.inputs import augment

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 12, 12)
    x[:, :, 4:8, 3:8] = torch.rand(64, 1, 4, 5, generator=g)
    kw = dict(max_shift=2, flip=True, max_rotation=10.0)
    a = augment(x, 1, 0, 3, **kw)
    assert torch.equal(a, augment(x, 1, 0, 3, **kw))
    assert not torch.equal(a, augment(x, 1, 1, 3, **kw))  # another epoch
    assert not torch.equal(a, augment(x, 2, 0, 3, **kw))  # another seed


def test_epoch_order_is_a_fresh_permutation_every_epoch():
    """relpsp.train docstring: 'the sample order of epoch e is a permutation drawn from a generator seeded
    with (seed, e)'."""
    from relpsp.train.inputs import epoch_order

    orders = [epoch_order(3, e, 50) for e in range(3)]
    for o in orders:
        assert sorted(o.tolist()) == list(range(50))
    assert torch.equal(orders[0], epoch_order(3, 0, 50))
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    assert not torch.equal(orders[0], epoch_order(4, 0, 50))


def _fake_dataset(monkeypatch, n_train: int = 40, n_test: int = 10):
    """relpsp.data's loader replaced by a set whose every image holds its own index (so samples are traceable)."""
    import relpsp.data as D

    def load(name, split, data_dir=None, **opts):
        n = n_train if split == "train" else n_test
        x = (torch.arange(n, dtype=torch.float32) / 1000).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
        return x, torch.arange(n) % 10

    monkeypatch.setattr(D, "load_dataset", load)
    return load


def test_held_out_validation_set_is_disjoint_from_training_and_sources_point_at_the_samples(monkeypatch):
    """DataConfig.val_size: 'samples held out of the training set for validation'; load_splits: ``source``
    holds 'indices into' the dataset split of each split's samples (also after data.train_size)."""
    from relpsp.train.inputs import load_splits

    load = _fake_dataset(monkeypatch)
    full_x, _ = load("mnist", "train")
    for train_size in (0, 12):
        cfg = Config(
            model=ModelConfig(arch="4-10", input_shape=(1, 2, 2)),
            data=DataConfig(dataset="mnist", val_size=15, train_size=train_size),
            train=TrainConfig(seed=5),
        )
        source: dict = {}
        splits = load_splits(cfg, source)
        ids = {k: set((splits[k][0][:, 0, 0, 0] * 1000).round().long().tolist()) for k in ("train", "val")}
        assert len(ids["val"]) == 15 and len(splits["val"][1]) == 15
        assert not ids["train"] & ids["val"]  # held out: no validation sample is trained on
        if not train_size:
            assert ids["train"] | ids["val"] == set(range(40))
        else:
            assert len(splits["train"][1]) == train_size
        for k in ("train", "val"):
            name, index = source[k]
            assert name == "train"
            assert torch.equal(full_x[index], splits[k][0]), k  # the indices name the very samples


def test_make_optimizer_honours_weight_decay_and_sgd_momentum():
    """make_optimizer docstring (docs/API.md): 'adam, adamw or sgd with momentum 0.9) at train.lr and
    train.weight_decay' (torch's AdamW would otherwise decay by 0.01 by default)."""
    from relpsp.train import make_optimizer

    p = [torch.nn.Parameter(torch.zeros(3))]
    for opt_name in ("adam", "adamw", "sgd"):
        for wd in (0.0, 0.25):
            cfg = Config(train=TrainConfig(optimizer=opt_name, lr=0.01, weight_decay=wd))
            opt = make_optimizer(cfg, p)
            group = opt.param_groups[0]
            assert group["lr"] == 0.01 and group["weight_decay"] == wd, (opt_name, wd)
            if opt_name == "sgd":
                assert group["momentum"] == 0.9
    assert type(make_optimizer(Config(train=TrainConfig(optimizer="adamw")), p)).__name__ == "AdamW"


def test_augment_shifts_reach_every_offset_up_to_max_shift_in_both_axes():
    """augment docstring: 'Shift every image by its own random offset of up to max_shift pixels in each
    direction (zero fill)': every offset in [-max_shift, max_shift] occurs on both axes, and none beyond."""
    from relpsp.train.inputs import augment

    x = torch.zeros(500, 1, 11, 11)
    x[:, 0, 5, 5] = 1.0  # one bright pixel at the centre: its new position is the offset
    out = augment(x, 7, 0, 0, max_shift=2)
    assert torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # never shifted out of the frame
    pos = out[:, 0].flatten(1).argmax(1)
    dy, dx = pos // 11 - 5, pos % 11 - 5
    assert set(dy.tolist()) == set(range(-2, 3)) and set(dx.tolist()) == set(range(-2, 3))
    assert not torch.equal(dy, dx)  # the two axes are drawn independently


@pytest.mark.parametrize("init_mean", [5.0, 1.5], ids=["all-outputs-fire", "some-outputs-silent"])
def test_one_step_epoch_reports_the_initial_models_loss_accuracy_and_silence(tmp_path, init_mean):
    """Batch 64 = the whole training set: the epoch's train_* metrics are those of the forward pass of the
    initial weights, which evaluate() recomputes (same tau, same silent margin, one batch). At init_mean 1.5
    every sample has some silent outputs but none has all of them silent."""
    from dataclasses import replace

    from relpsp.models import model_from_config
    from relpsp.train import evaluate

    cfg = _cfg(epochs=1, batch_size=64)
    cfg = replace(cfg, model=replace(cfg.model, init_mean=init_mean))
    torch.manual_seed(cfg.train.seed)  # fit builds its initial model right after this same call
    start = model_from_config(cfg.model)
    splits = _tiny_splits()
    ev = evaluate(start, *splits["train"], tau=cfg.train.tau, silent_margin=cfg.train.silent_margin)
    row = fit(cfg, tmp_path, progress=False, splits=splits, log=lambda s: None)["history"][0]
    assert row["train_loss"] == pytest.approx(ev["loss"], rel=1e-5)
    assert row["train_accuracy"] == ev["accuracy"]
    assert row["train_no_output_spike_fraction"] == ev["no_output_spike_fraction"]


def test_step_checkpoints_are_written_every_checkpoint_every_steps(tmp_path):
    """4 steps per epoch, checkpoint_every=3: a checkpoint after the 3rd step of each epoch (progress step 3),
    none after the 1st or 2nd, and the epoch's end ones."""
    seen: list[tuple[int, int] | None] = []

    def record(epoch: int, step: int) -> None:
        path = tmp_path / CHECKPOINT_NAME
        if not path.exists():
            seen.append(None)
            return
        p = load_checkpoint(path)[1]["progress"]
        seen.append((p["epoch"], p["step"]))

    fit(
        _cfg(epochs=2, checkpoint_every=3),
        tmp_path,
        progress=False,
        splits=_tiny_splits(),
        on_step=record,
        log=lambda s: None,
    )
    assert seen == [None, None, (0, 3), (0, 3), (1, 0), (1, 0), (1, 3), (1, 3)]


def test_clipped_steps_counts_every_clipped_step_of_each_epoch_and_survives_a_resume(tmp_path):
    """A clip far below any gradient norm cuts all 4 steps of each epoch: 4 per epoch, not a running total
    and not just the last step, also when the second epoch was interrupted and resumed."""
    cfg = _cfg(epochs=2, grad_clip=1e-6, checkpoint_every=1)
    res = fit(cfg, tmp_path / "ref", progress=False, splits=_tiny_splits(), log=lambda s: None)
    assert [r["clipped_steps"] for r in res["history"]] == [4, 4]
    _fit_interrupted(cfg, tmp_path / "cut", (1, 1))
    res = fit(cfg, tmp_path / "cut", resume=True, progress=False, splits=_tiny_splits(), log=lambda s: None)
    assert [r["clipped_steps"] for r in res["history"]] == [4, 4]


def test_results_summarise_the_history_and_match_metrics_jsonl(tmp_path):
    """results.json's val_accuracy is the last epoch's, train_samples_per_s_mean the mean over the epochs,
    and its history is metrics.jsonl line for line."""
    splits = _tiny_splits()
    x, y = splits.pop("train")
    splits.update(train=(x[:48], y[:48]), val=(x[48:], y[48:]))
    res = fit(_cfg(epochs=3, lr=0.01), tmp_path, progress=False, splits=splits, log=lambda s: None)
    vals = [r["val_accuracy"] for r in res["history"]]
    assert len(set(vals)) > 1, vals  # so that another epoch's value would be told apart
    assert res["val_accuracy"] == vals[-1]
    assert res["train_samples_per_s_mean"] == pytest.approx(np.mean([r["samples_per_s"] for r in res["history"]]))
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == json.loads((tmp_path / "results.json").read_text())["history"] == res["history"]


def test_a_failure_in_a_later_epochs_evaluation_keeps_that_epochs_training(tmp_path, monkeypatch):
    """As test_a_failure_during_evaluation_keeps_the_epochs_training, but in epoch 2 of a run that has
    written step checkpoints: the end of epoch 2's steps must still be checkpointed before its evaluation."""
    import relpsp.train.loop as train_module

    quiet = {"progress": False, "splits": _tiny_splits(), "log": lambda s: None}
    real = train_module.evaluate_on_ranks
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the test-set evaluation after epoch 2
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_on_ranks", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        fit(_cfg(epochs=2, checkpoint_every=3), tmp_path, **quiet)
    monkeypatch.setattr(train_module, "evaluate_on_ranks", real)
    steps: list[tuple[int, int]] = []
    fit(_cfg(epochs=2, checkpoint_every=3), tmp_path, resume=True, on_step=lambda e, s: steps.append((e, s)), **quiet)
    assert steps == []  # epoch 2's steps were all in the checkpoint: none is run again


def test_weight_average_run_reports_the_averaged_network_in_results(tmp_path):
    """results.json's final test_loss and firing rates are the averaged network's, not the trained one's."""
    from relpsp.models import load_model_arrays, model_from_config
    from relpsp.train import TRAINING_PREFIX, evaluate, load_trained

    cfg = _cfg(epochs=1, ema_decay=0.9, lr=0.03)
    splits = _tiny_splits()
    res = fit(cfg, tmp_path, progress=False, splits=splits, log=lambda s: None)
    arrays, _ = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    trained = model_from_config(cfg.model)
    load_model_arrays(trained, arrays, prefix=TRAINING_PREFIX + "model.")
    averaged, _, _ = load_trained(tmp_path / CHECKPOINT_NAME)
    avg = evaluate(averaged, *splits["test"], tau=cfg.train.tau)
    raw = evaluate(trained, *splits["test"], tau=cfg.train.tau)
    assert avg["loss"] != pytest.approx(raw["loss"], rel=1e-3)  # so that a swap would be seen
    assert res["test_loss"] == pytest.approx(avg["loss"], rel=1e-6)


def test_wall_time_of_a_resumed_run_adds_the_interrupted_calls_time(tmp_path):
    """results.json's wall_time_s is over every call (package docstring / fit's comment): the first call is
    slowed to >= 1.5 s, so a resume that forgot it would report less than the checkpoint it started from."""
    import time

    cfg = _cfg(epochs=2, checkpoint_every=1)

    def slow_then_stop(epoch: int, step: int) -> None:
        time.sleep(0.3)
        if (epoch, step) == (1, 1):
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        fit(cfg, tmp_path, progress=False, splits=_tiny_splits(), on_step=slow_then_stop, log=lambda s: None)
    before = load_checkpoint(tmp_path / CHECKPOINT_NAME)[1]["progress"]["wall_time_s"]
    assert before >= 1.5
    res = fit(cfg, tmp_path, resume=True, progress=False, splits=_tiny_splits(), log=lambda s: None)
    assert res["wall_time_s"] > before


def test_augment_batch_is_augment_with_the_configs_settings():
    """What the training loop (and benchmarks.ann_twin) draws per step: ``augment`` with every setting of
    ``cfg.data`` and the run's seed, or the batch itself when augmentation is off."""
    from relpsp.config import config_from_dict
    from relpsp.train.inputs import augment, augment_batch

    x = torch.rand(6, 1, 12, 12)
    plain = config_from_dict({"data": {"dataset": "mnist"}})
    assert augment_batch(x, plain, 1, 2) is x
    cfg = config_from_dict(
        {
            "data": {"dataset": "mnist", "augment": True, "max_shift": 3, "flip": True, "max_rotation": 5.0},
            "train": {"seed": 7},
        }
    )
    want = augment(x, 7, 1, 2, max_shift=3, flip=True, max_rotation=5.0)
    assert torch.equal(augment_batch(x, cfg, 1, 2), want) and not torch.equal(want, x)
    assert not torch.equal(augment_batch(x, cfg, 1, 3), want)  # another step, other draws


# ----------------------------------------------------------------------------------------- train.init_from


def test_init_from_starts_from_another_runs_network(tmp_path):
    """Fine-tuning: the run begins at the source run's weights (at lr 1e-12 it ends there too, to rounding),
    with a fresh optimizer; its first session records the source file's SHA-256. A run folder or its
    checkpoint may be named."""
    from relpsp.data._files import sha256_file

    quiet = {"progress": False, "splits": _tiny_splits(), "log": lambda s: None}
    fit(_cfg(), tmp_path / "source", **quiet)
    source = _weights(tmp_path / "source" / CHECKPOINT_NAME)
    lines: list[str] = []
    for name, init_from in (("by_folder", tmp_path / "source"), ("by_file", tmp_path / "source" / CHECKPOINT_NAME)):
        cfg = _cfg(epochs=1, lr=1e-12, init_from=str(init_from))
        fit(cfg, tmp_path / name, **{**quiet, "log": lines.append})
        tuned = _weights(tmp_path / name / CHECKPOINT_NAME)
        assert all(np.allclose(tuned[k], source[k], rtol=0, atol=1e-8) for k in source), name
        first = json.loads((tmp_path / name / "results.json").read_text())["sessions"][0]
        assert first["init_from_sha256"] == sha256_file(tmp_path / "source" / CHECKPOINT_NAME)
    assert any(line.startswith("train.init_from: starting from the network in ") for line in lines)
    with pytest.raises(ValueError, match=r"train\.init_from"):  # a resume keeps its source ...
        fit(_cfg(epochs=2, lr=1e-12, init_from=str(tmp_path / "elsewhere")), tmp_path / "by_file", resume=True, **quiet)
    shutil.move(tmp_path / "source", tmp_path / "moved")  # ... which it no longer reads
    cfg = _cfg(epochs=2, lr=1e-12, init_from=str(tmp_path / "source" / CHECKPOINT_NAME))
    assert fit(cfg, tmp_path / "by_file", resume=True, **quiet)["epochs"] == 2
    fresh = _weights(tmp_path / "by_folder" / CHECKPOINT_NAME)
    fit(_cfg(epochs=1, lr=1e-12), tmp_path / "random", **quiet)  # the same seed without it: other weights
    assert not np.allclose(_weights(tmp_path / "random" / CHECKPOINT_NAME)["model.2.weight"], fresh["model.2.weight"])


def test_init_from_refuses_another_network_before_writing(tmp_path):
    quiet = {"progress": False, "splits": _tiny_splits(), "log": lambda s: None}
    fit(_cfg(), tmp_path / "source", **quiet)
    other = dataclasses.replace(_cfg(init_from=str(tmp_path / "source")), model=ModelConfig("16-10-3", (1, 4, 4)))
    cases = [
        (other, ValueError, r"holds a network with model\.arch = '16-12-3', this run's is '16-10-3'"),
        (_cfg(init_from=str(tmp_path / "nowhere")), CheckpointError, "nowhere"),
        (_cfg(init_from="  "), ValueError, "train.init_from must name a checkpoint or a run folder"),
    ]
    for cfg, error, match in cases:
        with pytest.raises(error, match=match):
            fit(cfg, tmp_path / "run", **quiet)
        assert not (tmp_path / "run").exists()


def test_init_from_leaves_the_weights_as_they_were_when_an_array_is_refused(tmp_path):
    from relpsp.models import model_from_config
    from relpsp.train.checkpointing import load_initial_weights

    fit(_cfg(), tmp_path / "source", progress=False, splits=_tiny_splits(), log=lambda s: None)
    arrays, meta = load_checkpoint(tmp_path / "source" / CHECKPOINT_NAME)
    arrays["model.3.weight"] = np.full_like(arrays["model.3.weight"], np.nan)  # the last layer: read last
    save_checkpoint(tmp_path / "bad.ckpt", arrays, {k: v for k, v in meta.items() if k not in ("format", "sha256")})
    cfg = _cfg(init_from=str(tmp_path / "bad.ckpt"))
    model = model_from_config(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"'model\.3\.weight' holds NaN or infinite weights"):
        load_initial_weights(model, cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
