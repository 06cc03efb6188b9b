"""What the benchmarks and result scripts record: timing statistics, samples/s, provenance, memory
baselines, op counts, the results table's mean and standard deviation, the depth study's dead fraction.
Every speed claim comes from these numbers, so each is pinned against a fake clock or a hand count."""

from __future__ import annotations

import json
import shutil
import subprocess
import types

import pytest


class _Clock:
    """A fake time.perf_counter: returns the given readings in order."""

    def __init__(self, readings):
        self.readings = list(readings)

    def __call__(self):
        return self.readings.pop(0)


def _keeping_threads(call):
    """``call()``, with torch's and numba's thread counts put back afterwards (run_one sets them)."""
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    try:
        return call()
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


def test_time_it_reports_the_median_minimum_and_maximum_and_syncs_each_timed_call(monkeypatch):
    """Per-call durations 0.3, 0.1, 0.2, 0.1, 0.9 s: median 0.2 (not the mean 0.32), min 0.1, max 0.9; the
    warm-up calls are not timed, and each timed call is followed by ``sync`` before the clock is read
    (GPU work is asynchronous)."""
    import benchmarks.common as common

    durations = [0.3, 0.1, 0.2, 0.1, 0.9]
    events, now = [], [0.0]

    def clock():
        events.append("t")
        return now[0]

    def fn():
        events.append("f")
        if events.count("t") % 2 == 1:  # inside a timed interval
            now[0] += durations[events.count("t") // 2]

    monkeypatch.setattr(common, "time", types.SimpleNamespace(perf_counter=clock))
    r = common.time_it(fn, warmup=2, repeat=5, sync=lambda: events.append("s"))
    assert r["median_s"] == pytest.approx(0.2) and r["min_s"] == pytest.approx(0.1)
    assert r["max_s"] == pytest.approx(0.9) and r["repeat"] == 5
    assert "".join(events) == "ff" + "s" + "tfst" * 5


def test_environment_says_whether_the_measured_source_differs_from_its_commit(tmp_path, monkeypatch):
    """``source_modified``: "no" for a clean checkout, "yes" once relpsp/ or benchmarks/ differ (new files
    too); changes elsewhere (docs) do not count."""
    import benchmarks.common
    from benchmarks.common import environment

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "r"
    (repo / "relpsp").mkdir(parents=True)
    (repo / "relpsp" / "a.py").write_text("x = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    monkeypatch.setattr(benchmarks.common, "REPO", repo)
    env = environment("cpu")
    assert env["commit"] and env["source_modified"] == "no"
    (repo / "docs").mkdir()
    (repo / "docs" / "n.md").write_text("notes\n")
    assert environment("cpu")["source_modified"] == "no"
    (repo / "benchmarks").mkdir()
    (repo / "benchmarks" / "new.py").write_text("y = 2\n")
    assert environment("cpu")["source_modified"] == "yes"
    (repo / "benchmarks" / "new.py").unlink()
    (repo / "relpsp" / "a.py").write_text("x = 2\n")
    assert environment("cpu")["source_modified"] == "yes"


def test_environment_records_the_versions_and_threads():
    """Every speed claim prints the device, the versions and the threads (docs/PERFORMANCE.md)."""
    from benchmarks.common import environment

    env = environment("cpu")
    assert {
        "device",
        "cpu_count",
        "python",
        "torch",
        "numpy",
        "torch_threads",
        "numba",
        "commit",
        "source_modified",
        "torch_cpu",
        "numba_cpu",
    } <= set(env)
    assert env["python"] and env["numpy"] and env["cpu_count"] >= 1 and env["torch_threads"] >= 1


def test_layers_benchmark_turns_each_timer_into_its_own_fields(monkeypatch):
    """fwd_* fields come from the forward timer, fwd_bwd_* from the forward+backward one: samples/s is
    the batch over the median, *_ms the median, *_min_ms the minimum."""
    pytest.importorskip("numba")
    import benchmarks.layers as layers

    results = iter(
        [
            {"median_s": 0.2, "min_s": 0.1, "max_s": 0.3, "repeat": 3},
            {"median_s": 0.8, "min_s": 0.5, "max_s": 0.9, "repeat": 3},
        ]
    )

    def fake_time_it(fn, **kw):
        fn()
        return next(results)

    monkeypatch.setattr(layers, "time_it", fake_time_it)
    r = _keeping_threads(lambda: layers.run_one("800-10", "numba", batch=4, device="cpu", threads=1, repeat=3))
    assert r["fwd_ms"] == pytest.approx(200) and r["fwd_min_ms"] == pytest.approx(100)
    assert r["fwd_bwd_ms"] == pytest.approx(800) and r["fwd_bwd_min_ms"] == pytest.approx(500)
    assert r["fwd_samples_per_s"] == pytest.approx(4 / 0.2)
    assert r["fwd_bwd_samples_per_s"] == pytest.approx(4 / 0.8)


def test_train_step_reports_samples_per_second_from_the_median_step(monkeypatch):
    """Step times 0.3, 0.1, 0.2 s at batch 2: 10 samples/s (batch over the median), median 200 ms,
    minimum 100 ms, three steps timed."""
    pytest.importorskip("numba")
    import benchmarks.train_step as ts

    clock = _Clock([0.0, 0.3, 1.0, 1.1, 2.0, 2.2])
    monkeypatch.setattr(ts, "time", types.SimpleNamespace(perf_counter=clock))
    r = _keeping_threads(lambda: ts.run_one("784-4-10", batch=2, device="cpu", backend="numba", steps=3, threads=1))
    assert r["samples_per_s"] == pytest.approx(10.0)
    assert r["step_ms_median"] == pytest.approx(200) and r["step_ms_min"] == pytest.approx(100)
    assert r["steps_timed"] == 3


def test_simulate_rate_is_all_images_over_the_timed_run(monkeypatch):
    """images_per_s counts every image simulated in the timed run (not the warm-up's eight)."""
    import numpy as np

    import benchmarks.simulate as sim

    monkeypatch.setattr(sim, "time", types.SimpleNamespace(perf_counter=_Clock([0.0, 0.5])))
    images = np.random.default_rng(0).random((10, 1, 28, 28)).astype(np.float32)
    r = sim.run_case("784-8-10", images, "numpy", seed=0)
    assert r["images"] == 10 and r["seconds"] == pytest.approx(0.5) and r["images_per_s"] == pytest.approx(20)


def test_reset_peak_rss_baseline_is_the_memory_now_not_an_earlier_high_water_mark():
    """After 200 MiB is allocated and freed, the baseline is the resident memory now (below the earlier
    mark), so a later step's smaller growth still shows (docstring of reset_peak_rss)."""
    from pathlib import Path

    import numpy as np

    from benchmarks.common import _proc_status_mib, peak_rss_mib, reset_peak_rss

    if _proc_status_mib("VmHWM") is None:
        pytest.skip("needs Linux /proc")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("/proc/self/clear_refs is not writable here")
    big = np.ones(200 * 2**20 // 8)
    mark = peak_rss_mib()
    del big
    base = reset_peak_rss()
    assert base < mark - 100 and peak_rss_mib() < mark - 100, (base, peak_rss_mib(), mark)
    grow = np.ones(50 * 2**20 // 8)
    assert peak_rss_mib() - base >= 40
    del grow


def test_counts_on_a_non_square_input_and_the_largest_buffer_and_target_rate(tmp_path):
    """2C3 on 1x4x6: 2x4 positions x 2 channels x 9 = 144 synapses; then 16 -> 5. The largest im2col
    buffer is the larger layer's (not their sum); TFLOP/s at the target is FLOP/sample x rate / 1e12."""
    from benchmarks.op_count import TARGETS, count, main

    r = count("2C3-5", (1, 4, 6), batch=3, active=1.0)
    assert [x["synapses_per_sample"] for x in r["layers"]] == [144, 80]
    assert r["largest_patch_buffer_bytes"] == 3 * 8 * 9 * 4  # conv: 3 x 8 rows x 9; dense: 3 x 1 x 16
    assert r["adam_bytes_per_step"] == 7 * 4 * (2 * 9 + 5 * 16)
    out = tmp_path / "oc.json"
    assert main(["--archs", "784-800-10", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["archs"][0]
    assert row["target_samples_per_s"] == TARGETS["784-800-10"]
    assert row["tflops_needed_at_target"] == pytest.approx(row["flop_per_sample"] * 1_000_000 / 1e12)


def test_results_table_groups_seeds_and_gives_mean_and_sample_std(tmp_path, capsys):
    """scripts/results_table.py: runs named <name>-seedN form one row; accuracy is the mean over seeds
    with the (sample) standard deviation, three decimals on the mean; wall times as a range; devices
    every distinct value, a resumed run's sessions included."""
    from tests.helpers import load_script

    results_table = load_script("results_table")

    def run(folder, seed, acc, wall, device, sessions=()):
        d = tmp_path / folder
        d.mkdir()
        cfg = {"data": {"dataset": "mnist"}, "model": {"arch": "784-10"}, "train": {"seed": seed}}
        r = {
            "config": cfg,
            "test_accuracy": acc,
            "wall_time_s": wall,
            "epochs": 3,
            "device": device,
            "sessions": [{"device": s} for s in sessions],
        }
        (d / "results.json").write_text(json.dumps(r))

    run("mlp-seed1", 1, 0.98, 60, "cpu A")
    run("mlp-seed2", 2, 0.99, 120, "cpu A", sessions=["gpu B"])
    run("mlp-seed3", 3, 0.97, 90, "cpu A")
    assert results_table.main(str(tmp_path)) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| mnist")]
    assert len(rows) == 1, rows
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:4] == ["mnist", "784-10", "mlp", "1,2,3"]
    assert cells[4] == "98.000 ± 1.00"  # sample std of 98, 99, 97 is 1.00 (population: 0.82)
    assert cells[5] == "3" and cells[6] == "cpu A; gpu B" and cells[7] == "1.0–2.0 min"


def test_diagnose_dead_fraction_counts_neurons_silent_for_every_sample():
    """A neuron that fires for some samples is silent there but not dead: with one neuron always firing,
    one never, one for one sample of two, silent is 3/6 and dead 1/3."""
    pytest.importorskip("numba")
    import torch

    from relpsp.models import build_model
    from tests.helpers import load_script

    depth_study = load_script("depth_study")
    model = build_model("4-3", init_mean=5.0)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[10.0] * 4, [-1.0] * 4, [10.0, 0.0, 0.0, 0.0]]))
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    d = depth_study.diagnose(model, x, torch.zeros(2, dtype=torch.long), 0.1)
    (layer,) = d["layers"]
    assert layer["silent_fraction"] == pytest.approx(0.5)
    assert layer["dead_fraction"] == pytest.approx(1 / 3)
