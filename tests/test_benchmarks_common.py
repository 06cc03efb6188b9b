"""The benchmarks' shared helpers (strict JSON output and honest provenance) and the layer benchmark's timing record."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.common import environment, write_json


def test_write_json_is_strict_json_with_non_finite_numbers_as_null(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": math.inf, "b": [math.nan, 1.5, np.float32(2.0)], "c": np.int64(3), "d": (True, None)})
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.5, 2.0], "c": 3, "d": [True, None]}


def test_environment_outside_a_git_checkout_says_unknown(tmp_path, monkeypatch):
    """Without git history (a copied tree) the commit is null and the source state unknown, not "clean"."""
    import benchmarks.common

    monkeypatch.setattr(benchmarks.common, "REPO", tmp_path)
    env = environment("cpu")
    assert env["commit"] is None and env["source_modified"] == "unknown"
    assert env["torch"] and env["device"]


def test_environment_names_this_checkout_from_any_folder(tmp_path, monkeypatch):
    """Run from inside another git repository, the commit recorded is still this checkout's."""
    import shutil
    import subprocess

    import benchmarks.common

    if shutil.which("git") is None:
        import pytest

        pytest.skip("git is not installed")
    here = environment("cpu")["commit"]
    other = tmp_path / "other"
    other.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(other)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    monkeypatch.chdir(other)
    assert environment("cpu")["commit"] == here
    assert benchmarks.common.REPO == Path(benchmarks.common.__file__).resolve().parents[1]


def test_mnist_like_batch_gives_the_batch_asked_for(tmp_path):
    """A batch larger than the 10,000 test images used to come back short and be timed as full."""
    from benchmarks.common import mnist_like_batch

    x, source = mnist_like_batch(10_050)
    assert x.shape == (10_050, 1, 28, 28)
    assert "replacement" in source or "synthetic" in source


def test_checkpoint_benchmarks_refuse_to_write_over_the_checkpoint(tmp_path, capsys):
    """``--out`` (or ``--plot``) naming the checkpoint being measured, a folder, or (``--plot``) the JSON
    file or a file that is not a PNG, is refused before any work with a usage error (exit 2); the
    checkpoint used to be replaced by the JSON at the end, and a figure by the JSON."""
    import pytest

    from benchmarks import deploy_check, quantization
    from tests.test_sim import _tiny_checkpoint

    ckpt, _ = _tiny_checkpoint(tmp_path)
    before = ckpt.read_bytes()
    cases = [
        (quantization.main, ["--out", str(ckpt)], "would overwrite"),
        (deploy_check.main, ["--out", str(ckpt)], "would overwrite"),
        (quantization.main, ["--out", str(tmp_path)], "is a folder"),
        (deploy_check.main, ["--out", str(tmp_path)], "is a folder"),
        (quantization.main, ["--plot", str(ckpt)], "would overwrite"),
        (quantization.main, ["--out", str(tmp_path / "q.png"), "--plot", str(tmp_path / "q.png")], "the same file"),
        (quantization.main, ["--plot", str(tmp_path / "q.pdf")], "ending in .png"),
    ]
    for main, extra, needle in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main([str(ckpt), *extra])
        assert info.value.code == 2 and needle in capsys.readouterr().err, (main, extra)
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ckpt.name, "data.npz"])  # nothing written


def test_layers_benchmark_records_median_and_minimum_over_the_requested_calls():
    """benchmarks.layers on a tiny batch: the row carries the median and the minimum of ``repeat`` calls."""
    pytest.importorskip("numba")
    from benchmarks.layers import run_one

    r = run_one("800-10", "numba", batch=4, device="cpu", threads=1, repeat=3)
    assert r["repeat"] == 3
    assert 0 < r["fwd_min_ms"] <= r["fwd_ms"] and 0 < r["fwd_bwd_min_ms"] <= r["fwd_bwd_ms"]
    assert r["fwd_samples_per_s"] == pytest.approx(4 / (r["fwd_ms"] / 1000))


def test_layers_benchmark_rows_record_the_threads_each_implementation_ran_with():
    """set_threads gives the cores to numba for the numba rows and to torch for the torch rows, so each row
    names its own thread counts (the environment line is read once, before any row)."""
    pytest.importorskip("numba")
    from benchmarks.layers import run_one

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores to tell the two thread settings apart")
    import numba

    before = torch.get_num_threads(), numba.get_num_threads()
    try:
        numba_row = run_one("800-10", "numba", batch=2, device="cpu", threads=2, repeat=1)
        torch_row = run_one("800-10", "torch", batch=2, device="cpu", threads=2, repeat=1)
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
    assert (numba_row["torch_threads"], numba_row["numba_threads"]) == (1, 2)
    assert (torch_row["torch_threads"], torch_row["numba_threads"]) == (2, 1)


def test_profile_ops_ranks_the_operators_of_a_layer_by_self_time():
    """benchmarks.profile_ops on a tiny conv1 batch: rows sorted by self time, shares of the total in
    (0, 1] summing to at most 1, the torch path's own work (its autograd function, its prefix sums) among
    them; an unknown case is refused."""
    pytest.importorskip("numba")
    from benchmarks.profile_ops import main, profile_case

    r = profile_case("conv1", batch=2, device="cpu", backend="torch", calls=2, top=40)
    times = [row["self_us_per_call"] for row in r["top"]]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert all(0 < row["share"] <= 1 for row in r["top"]) and sum(row["share"] for row in r["top"]) <= 1 + 1e-9
    assert r["time_kind"] == "self CPU time of operators" and r["wall_ms_per_call"] > 0
    assert 0 < r["busy_fraction"] <= 1.5  # self times of one thread; the profiler adds a little
    names = {row["name"] for row in r["top"]}
    assert {"RelpspLinearFn", "aten::cumsum"} <= names, names
    with pytest.raises(SystemExit):
        main(["--cases", "conv9"])


def test_profile_ops_steps_the_network_it_is_given():
    """The cnn-step case trains the network of ``--step-arch`` (built by train_step's ``make_step``): a
    dense one has no convolution among its operators, the paper's CNN has, and the step changes the
    weights."""
    pytest.importorskip("numba")
    from benchmarks.profile_ops import profile_case
    from benchmarks.train_step import make_step

    dense = profile_case("cnn-step", batch=2, device="cpu", backend="numba", calls=1, top=60, step_arch="784-20-10")
    conv = profile_case("cnn-step", batch=2, device="cpu", backend="numba", calls=1, top=60)
    assert dense["arch"] == "784-20-10" and conv["arch"] == "16C5-P2-32C5-P2-800-128-10"
    assert "RelpspLinearFn" in {row["name"] for row in dense["top"]}
    assert not any("Conv2d" in row["name"] for row in dense["top"])
    assert any("RelpspConv2dFn" in row["name"] for row in conv["top"])
    step, model, x_all, y_all, _ = make_step("784-20-10", 2, "cpu", "numba")
    before = [p.detach().clone() for p in model.parameters()]
    step(0)
    assert len(x_all) == len(y_all) == 8
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_train_step_times_a_network_on_the_input_shape_it_is_given(tmp_path, monkeypatch):
    """benchmarks.train_step with ``--input-shape``: the timed child builds the network for that shape on
    synthetic images, and the JSON row says so; a malformed shape is refused before anything runs."""
    pytest.importorskip("numba")
    from benchmarks.train_step import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the child runs `python -m benchmarks.train_step`
    out = tmp_path / "step.json"
    args = ["--archs", "4C5-P2-2", "--input-shape", "1,16,16", "--batch", "2", "--steps", "1", "--threads", "1"]
    assert main([*args, "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["arch"] == "4C5-P2-2" and row["input_source"] == "synthetic 16x16x1"
    assert row["samples_per_s"] > 0 and row["steps_timed"] == 1
    for bad in ("1,16", "1,16,x", "0,16,16", "0"):
        with pytest.raises(SystemExit):
            main(["--archs", "4C5-P2-2", "--input-shape", bad])
    args = ["--archs", "4-6-3", "--input-shape", "4", "--batch", "8", "--steps", "1", "--threads", "1"]
    assert main([*args, "--out", str(out)]) == 0  # a feature vector, as Yin-Yang's
    (row,) = json.loads(out.read_text())["results"]
    assert row["arch"] == "4-6-3" and row["input_source"] == "synthetic 4 features" and row["samples_per_s"] > 0


def test_train_step_window_kernel_builds_the_windowed_network(tmp_path, monkeypatch):
    """``--kernel window``: make_step builds windowed layers with standardised weights (configs/
    mnist_cnn_window.toml's settings) and steps them; the timed child's JSON row names the kernel."""
    from benchmarks.train_step import main, make_step
    from relpsp.nn import WindowConv2d, WindowLinear

    step, model, _, _, _ = make_step("4C5-P2-3", 2, "cpu", "auto", (1, 12, 12), kernel="window")
    layers = [m for m in model if isinstance(m, (WindowConv2d, WindowLinear))]
    assert len(layers) == 2 and all(m.gain is not None for m in layers)
    before = [p.detach().clone() for p in model.parameters()]
    step(0)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the child runs `python -m benchmarks.train_step`
    out = tmp_path / "step.json"
    args = ["--archs", "4C5-P2-3", "--input-shape", "1,12,12", "--batch", "2", "--steps", "1", "--threads", "1"]
    assert main([*args, "--kernel", "window", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["kernel"] == "window" and row["samples_per_s"] > 0


def test_simulate_benchmark_times_each_backend_on_the_same_fresh_network(tmp_path):
    """benchmarks.simulate on 4 images of a small MLP: one row per backend, the same network (same spike
    count and decisions) under both, and the JSON holds the environment beside the rows."""
    import json

    from benchmarks.simulate import main

    out = tmp_path / "sim.json"
    res = main(["--archs", "784-30-10", "--images", "4", "--backends", "numba,numpy", "--out", str(out)])
    rows = res["rows"]
    assert [r["backend"] for r in rows] == ["numba", "numpy"]
    assert rows[0]["spikes_per_image"] == rows[1]["spikes_per_image"] > 30  # input spikes + 30 hidden + outputs
    assert all(r["same_decisions_across_backends"] and r["images_per_s"] > 0 for r in rows)
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and "device" in saved["environment"]
    # --kernel window: one row (NumPy runs windowed layers), every neuron firing once
    rows = main(["--archs", "784-30-10", "--images", "4", "--kernel", "window", "--backends", "numba"])["rows"]
    assert [(r["kernel"], r["backend"]) for r in rows] == [("window", "numpy")]
    assert rows[0]["spikes_per_image"] > 40  # the input's spikes, then all 30 hidden and 10 output neurons


def test_train_step_memory_counts_the_steps_gradients_and_optimizer_state(tmp_path):
    """The warm-up that loads torch's code is a step of a narrow network (every width 2), so its freed
    memory cannot hide the timed steps' own: for 784-4000-10 (3.2 million weights) the peak growth covers
    at least the gradients and Adam's two moments (3 x 12.1 MiB). A full-size copy as the warm-up hid
    them (0.1 MiB at batch 64)."""
    pytest.importorskip("numba")
    from benchmarks.train_step import main, narrow_arch

    assert narrow_arch("16C3p1-16C3p1-P2-32C3p1-32C3p1-P2-800-128-10") == "2C3p1-2C3p1-P2-2C3p1-2C3p1-P2-2-2-10"
    assert narrow_arch("784-800-10") == "784-2-10" and narrow_arch("64C3-P2-10") == "2C3-P2-10"
    # in a fresh process, as the benchmark times each network; it resets the high-water mark at its
    # baseline (a test run before this one in the suite used to leave a mark that hid the growth)
    out = tmp_path / "step.json"
    main(["--archs", "784-4000-10", "--batch", "64", "--steps", "1", "--threads", "1", "--out", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    params_mib = (784 * 4000 + 4000 * 10) * 4 / 2**20
    assert row["peak_mem_mib"] >= 3 * params_mib, row["peak_mem_mib"]
