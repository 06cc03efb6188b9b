"""``relpsp summary``: accuracy over seeds of run folders, exact decision counts against a target,
grouping by settings, stopped and running runs, and bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from relpsp.checkpoint import save_checkpoint
from relpsp.cli import main
from relpsp.config import Config, DataConfig, ModelConfig, TrainConfig, config_to_dict
from relpsp.summary import format_summary, group_runs, read_run, summarize, target_reached
from relpsp.train import fit
from relpsp.train.run_folder import run_folder_lock
from tests.test_train import _cfg, _tiny_splits


def _mnist_cfg(seed: int = 0, **train) -> Config:
    return Config(
        model=ModelConfig(arch="784-800-10", input_shape=(1, 28, 28)),
        data=DataConfig(dataset="mnist"),
        train=TrainConfig(**({"epochs": 30, "seed": seed} | train)),
    )


def _finished(
    folder: Path,
    cfg: Config,
    accuracy: float,
    test_samples: int | None = None,
    wall_s: float = 60.0,
    val_accuracy: float | None = None,
) -> Path:
    """A finished run folder as `relpsp train` writes it (only the fields the summary reads)."""
    folder.mkdir(parents=True)
    results = {
        "config": config_to_dict(cfg),
        "epochs": cfg.train.epochs,
        "test_accuracy": accuracy,
        "wall_time_s": wall_s,
    }
    if test_samples is not None:
        results["test_samples"] = test_samples
    if val_accuracy is not None:
        results["val_accuracy"] = val_accuracy
    (folder / "results.json").write_text(json.dumps(results))
    rows = [
        {"epoch": e + 1, "train_loss": 0.1, "train_accuracy": 0.9, "test_accuracy": accuracy}
        for e in range(cfg.train.epochs)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _summary(paths: list[Path], target: str | None = None) -> list[dict]:
    return [summarize(g, target) for g in group_runs([read_run(p) for p in paths])]


def test_mean_sample_deviation_and_exact_counts_against_a_target(tmp_path):
    """Protocol (17)'s three seeds: 99.34, 99.41, 99.40 % of 10,000 MNIST test images (the size from the
    dataset registry: older results.json files do not record it). By hand: 29,815 right; the mean is
    99.3833 %; deviations -0.0433, 0.0267, 0.0167, so s = sqrt(0.0028667 / 2) = 0.03786; 99.4 % of 30,000
    is 29,820."""
    paths = [_finished(tmp_path / f"cnn-seed{s}", _mnist_cfg(s), a) for s, a in enumerate((0.9934, 0.9941, 0.9940))]
    (s,) = _summary(paths, "99.4")
    assert s["label"] == str(tmp_path / "cnn")
    assert [d["seed"] for d in s["finished"]] == [0, 1, 2] and s["stopped"] == []
    assert s["mean_percent"] == pytest.approx(99.38333333, abs=1e-6)
    assert s["std_percent"] == pytest.approx(0.0378594, abs=1e-6)
    assert (s["test_right"], s["test_total"]) == (29815, 30000)
    assert s["target"] == {"percent": 99.4, "reached": False, "needed": 29820}
    assert _summary(paths, "99.38")[0]["target"]["reached"] is True  # 29,814 needed


def test_validation_probes_show_their_validation_accuracy(tmp_path, capsys):
    """Runs trained with a validation split (a probe) report its accuracy beside the test accuracy: over
    seeds as mean ± sample deviation, and for a stopped run its last epoch's; runs without one show none."""

    def probe_cfg(seed: int) -> Config:
        return replace(_mnist_cfg(seed), data=DataConfig(dataset="mnist", val_size=5000))

    paths = [
        _finished(tmp_path / f"p-seed{s}", probe_cfg(s), t, val_accuracy=v)
        for s, t, v in ((0, 0.9925, 0.9916), (1, 0.9929, 0.9934))
    ]
    (s,) = _summary(paths)
    assert [d["val_accuracy_percent"] for d in s["finished"]] == pytest.approx([99.16, 99.34])
    assert s["val_size"] == 5000 and s["val_mean_percent"] == pytest.approx(99.25)
    assert s["val_std_percent"] == pytest.approx(0.127279, abs=1e-6)  # 0.18 / sqrt(2)
    text = format_summary(s)
    assert s["val_right"] == 4958 + 4967 and s["val_total"] == 10000
    assert "validation (5,000 held-out training samples): 99.250 ± 0.13 % (99.16, 99.34); 9,925 of 10,000 right" in text
    (one,) = _summary(paths[:1])
    assert "validation (5,000 held-out training samples): 99.16 %; 4,958 of 5,000 right\n" in format_summary(one) + "\n"
    (plain,) = _summary([_finished(tmp_path / "m-seed0", _mnist_cfg(0), 0.98)])
    assert plain["val_mean_percent"] is None and "held-out" not in format_summary(plain)
    assert plain["val_right"] is None and plain["val_total"] is None
    own = replace(_mnist_cfg(0), data=DataConfig(dataset="mnist", val_size=0))  # a set with its own split
    (own_split,) = _summary([_finished(tmp_path / "y-seed0", own, 0.98, val_accuracy=0.976)])
    assert "validation (the dataset's own validation split): 97.60 %\n" in format_summary(own_split) + "\n"
    assert own_split["val_right"] is None  # its size is not the run's to know
    (odd,) = _summary([_finished(tmp_path / "o-seed0", probe_cfg(0), 0.99, val_accuracy=0.12345)])
    assert odd["val_right"] is None and odd["val_mean_percent"] == pytest.approx(12.345)  # no whole count

    stopped = tmp_path / "p-seed2"
    stopped.mkdir()
    save_checkpoint(
        stopped / "checkpoint.ckpt", {"w": np.zeros(2, np.float32)}, {"config": config_to_dict(probe_cfg(2))}
    )
    row = {"epoch": 3, "train_loss": 0.1, "train_accuracy": 0.9, "val_accuracy": 0.97, "test_accuracy": 0.96}
    (stopped / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    (s,) = _summary([*paths, stopped])
    assert s["stopped"][0]["last_val_accuracy_percent"] == pytest.approx(97.0)
    assert "test 96.00 % after it (validation 97.00 %)" in format_summary(s)


def test_a_mean_just_under_a_target_is_not_rounded_up_to_it():
    """98.497 % over 3 x 10,000 (29,549 right) is not 98.5 % (29,550): exact fractions, not floats."""
    assert target_reached(29549, 30000, "98.5") == (False, 29550)
    assert target_reached(29550, 30000, "98.5") == (True, 29550)
    # 0.1 + 0.2 style float error cannot move the threshold: 0.3 % of 1,000 is exactly 3
    assert target_reached(3, 1000, "0.3") == (True, 3)


def test_runs_group_by_settings_but_not_by_seed_device_or_threads(tmp_path):
    a = _finished(tmp_path / "x-seed0", _mnist_cfg(0), 0.98)
    b = _finished(tmp_path / "x-seed1", replace(_mnist_cfg(1), train=replace(_mnist_cfg(1).train, threads=2)), 0.99)
    c = _finished(tmp_path / "x-seed2", _mnist_cfg(2, lr=1e-3), 0.97)  # another experiment, the same folder name
    d = _finished(tmp_path / "y-seed0", _mnist_cfg(0, epochs=40), 0.96)  # more epochs: another experiment
    groups = _summary([a, b, c, d])
    assert [len(g["finished"]) for g in groups] == [2, 1, 1]
    assert groups[0]["mean_percent"] == pytest.approx(98.5)
    assert groups[1]["label"] == f"{tmp_path / 'x'} (train.lr 0.0003 -> 0.001)"
    assert groups[2]["label"] == str(tmp_path / "y") and groups[2]["epochs"] == 40


def test_stopped_and_running_runs_are_listed_but_not_averaged(tmp_path):
    cfg = _mnist_cfg(0)
    done = [_finished(tmp_path / f"r-seed{s}", _mnist_cfg(s), a) for s, a in ((0, 0.99), (1, 0.98))]
    stopped = tmp_path / "r-seed2"
    stopped.mkdir()
    save_checkpoint(
        stopped / "checkpoint.ckpt", {"w": np.zeros(2, np.float32)}, {"config": config_to_dict(_mnist_cfg(2))}
    )
    (stopped / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"epoch": e, "train_loss": 0.1, "train_accuracy": 0.9, "test_accuracy": 0.5}) + "\n"
            for e in (1, 2)
        )
    )
    (s,) = _summary([*done, stopped], "98")
    assert s["mean_percent"] == pytest.approx(98.5) and s["test_total"] == 20000
    assert s["stopped"] == [
        {
            "seed": 2,
            "path": str(stopped),
            "epochs_done": 2,
            "training": False,
            "last_test_accuracy_percent": 50.0,
            "last_val_accuracy_percent": None,
        }
    ]
    with run_folder_lock(stopped):  # a process training into the folder holds its lock
        (s,) = _summary([*done, stopped])
        assert s["stopped"][0]["training"] is True
    # a finished run resumed with more epochs and stopped again: its checkpoint's settings, not results.json's
    resumed = _finished(tmp_path / "q-seed0", cfg, 0.97)
    save_checkpoint(
        resumed / "checkpoint.ckpt",
        {"w": np.zeros(2, np.float32)},
        {"config": config_to_dict(_mnist_cfg(0, epochs=31))},
    )
    with (resumed / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 31, "train_loss": 0.1, "train_accuracy": 0.9, "test_accuracy": 0.975}) + "\n")
    (q,) = _summary([resumed])
    assert q["finished"] == [] and q["epochs"] == 31 and q["stopped"][0]["epochs_done"] == 31
    # ... and stopped inside its next epoch, before a metrics row: still not counted with its old numbers
    inside = _finished(tmp_path / "p-seed0", cfg, 0.97)
    assert read_run(inside).finished
    save_checkpoint(
        inside / "checkpoint.ckpt", {"w": np.zeros(2, np.float32)}, {"config": config_to_dict(_mnist_cfg(0, epochs=31))}
    )
    (p,) = _summary([inside])
    assert p["finished"] == [] and p["stopped"][0]["epochs_done"] == 30
    # a finished run that a process is training further (it holds the folder's lock)
    again = _finished(tmp_path / "o-seed0", cfg, 0.97)
    with run_folder_lock(again):
        assert not read_run(again).finished and read_run(again).training
    assert read_run(again).finished


def test_real_runs_record_their_test_size_and_the_command_reports_them(tmp_path, capsys):
    """Two seeds of a tiny training run (32 test samples: a set the registry does not know) and a third
    with another learning rate; `relpsp summary FOLDER` finds them inside the folder."""
    for seed, lr in ((3, 3e-3), (4, 3e-3), (5, 1e-2)):
        fit(
            _cfg(seed=seed, lr=lr),
            tmp_path / f"tiny-seed{seed}",
            progress=False,
            splits=_tiny_splits(),
            log=lambda s: None,
        )
    runs = [json.loads((tmp_path / f"tiny-seed{s}" / "results.json").read_text()) for s in (3, 4)]
    assert [r["test_samples"] for r in runs] == [32, 32]
    assert main(["summary", str(tmp_path), "--target", "50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 2 and [d["seed"] for d in out[0]["finished"]] == [3, 4]
    assert out[0]["test_right"] == sum(round(32 * r["test_accuracy"]) for r in runs) and out[0]["test_total"] == 64
    assert out[0]["target"]["needed"] == 32 and out[0]["target"]["reached"] == (out[0]["test_right"] >= 32)
    assert main(["summary", str(tmp_path / "tiny-seed3"), str(tmp_path / "tiny-seed4")]) == 0
    text = capsys.readouterr().out
    mean = 100 * sum(r["test_accuracy"] for r in runs) / 2
    assert f"2 finished (seeds 3, 4): {mean:.3f} ± " in text and "of 64" in text


def test_an_accuracy_that_is_no_whole_count_is_judged_on_the_mean(tmp_path):
    """A test size that does not divide the accuracy (data from elsewhere than the registry says) gives
    no counts rather than wrong ones."""
    p = _finished(tmp_path / "odd-seed0", _mnist_cfg(0), 0.123456)
    (s,) = _summary([p], "12")
    assert s["test_right"] is None and s["target"] == {"percent": 12.0, "reached": True, "needed": None}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "neither results.json nor checkpoint.ckpt"),
        (lambda p: (p / "results.json").write_text("{not json"), "not a JSON file"),
        (lambda p: (p / "results.json").write_text("[1, 2]"), "expected a JSON object"),
        (
            lambda p: (p / "results.json").write_text(json.dumps({"epochs": 3, "test_accuracy": "high", "config": {}})),
            "'test_accuracy' is missing",
        ),
        (
            lambda p: (p / "results.json").write_text(json.dumps({"epochs": 3, "test_accuracy": 0.5})),
            "no 'config' object",
        ),
    ],
)
def test_bad_run_folders_are_refused_with_the_reason(tmp_path, setup, message):
    run = tmp_path / "run"
    run.mkdir()
    setup(run)
    with pytest.raises(ValueError, match=message):
        read_run(run)


def test_bad_command_lines_exit_2_with_one_line(tmp_path, capsys):
    run = _finished(tmp_path / "a-seed0", _mnist_cfg(0), 0.98)
    (tmp_path / "empty").mkdir()
    for argv, message in [
        (["summary", str(run), "--target", "high"], "--target must be a percentage"),
        (["summary", str(run), "--target", "0"], "--target must be in (0, 100]"),
        (["summary", str(run), "--target", "nan"], "--target must be in (0, 100]"),
        (["summary", str(tmp_path / "missing")], "is not a folder"),
        (["summary", str(tmp_path / "empty")], "neither a run folder nor a folder of run folders"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("relpsp: error: ") and message in err and err.count("\n") == 1, err
    assert main(["summary", str(run)]) == 0 and "1 finished (seed 0): 98.00 %" in capsys.readouterr().out


def test_a_run_in_its_first_epoch_is_listed_though_it_wrote_nothing_yet(tmp_path, capsys):
    """With checkpoint_every = 0 a new run's folder holds only its lock until its first epoch ends; it used
    to be left out of `relpsp summary DIR`, and naming it was an error."""
    _finished(tmp_path / "r-seed0", _mnist_cfg(0), 0.99)
    starting = tmp_path / "r-seed1"
    starting.mkdir()  # fit makes the folder, then takes its lock
    with run_folder_lock(starting):  # what `relpsp train` holds while it trains
        for args in ([str(tmp_path)], [str(starting)]):
            capsys.readouterr()
            assert main(["summary", *args]) == 0
            assert f"{starting}: training, in its first epoch" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["summary", str(starting)]) == 2  # a lock that no process holds is no run
    assert "neither a run folder nor a folder of run folders" in capsys.readouterr().err


def test_a_seed_finished_in_two_folders_is_named_in_a_warning(tmp_path, capsys):
    """`relpsp summary docs/results` merges a rerun's folders with the original's (same settings): each
    seed then counts twice in the mean, which used to pass without a word."""
    _finished(tmp_path / "a-seed0", _mnist_cfg(0), 0.99)
    _finished(tmp_path / "a-seed1", _mnist_cfg(1), 0.98)
    _finished(tmp_path / "a_rerun-seed0", _mnist_cfg(0), 0.97)
    (s,) = _summary([tmp_path / "a-seed0", tmp_path / "a-seed1", tmp_path / "a_rerun-seed0"])
    assert s["repeated_seeds"] == {"0": [str(tmp_path / "a-seed0"), str(tmp_path / "a_rerun-seed0")]}
    assert main(["summary", str(tmp_path)]) == 0
    assert "warning: seed 0 finished in 2 folders, each counted above" in capsys.readouterr().out
    (one,) = _summary([tmp_path / "a-seed0", tmp_path / "a-seed1"])
    assert one["repeated_seeds"] == {}


# --- summary.target_reached: "at least ceil(p / 100 * sum_i N_i)" (relpsp/summary.py module docstring)
def test_needed_decisions_round_up_when_the_target_is_no_whole_count():
    # 98.51 % of 1,000 is 985.1: 986 right are needed (985 is 98.50 %)
    assert target_reached(985, 1000, "98.51") == (False, 986)
    assert target_reached(986, 1000, "98.51") == (True, 986)
    # 85 % of 10 is 8.5 exactly: 9 needed (round-half-even would say 8)
    assert target_reached(8, 10, "85") == (False, 9)


def test_summary_text_gives_the_verdict_counts_and_needed_decisions(tmp_path, capsys):
    """docs/GUIDE.md: `relpsp summary ... --target 99.4` prints 99.383 ± 0.04%, 29,815 of 30,000 right, 29,820
    needed; the text says whether the mean reaches the target; --target takes (0, 100], 100 included; the
    command reports (exit 0) whether or not the target is reached."""
    from relpsp.cli import main

    for s, a in enumerate((0.9934, 0.9941, 0.9940)):
        _finished(tmp_path / f"cnn-seed{s}", _mnist_cfg(s), a)
    capsys.readouterr()
    assert main(["summary", str(tmp_path), "--target", "99.4"]) == 0
    text = capsys.readouterr().out
    assert "3 finished (seeds 0, 1, 2): 99.383 ± 0.04 % (99.34, 99.41, 99.40;" in text
    assert "test decisions right: 29,815 of 30,000" in text
    assert "target 99.4 %: not reached; 29,820 right needed" in text
    assert main(["summary", str(tmp_path), "--target", "99.38"]) == 0
    assert "target 99.38 %: reached; 29,814 right needed" in capsys.readouterr().out
    assert main(["summary", str(tmp_path), "--target", "100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["target"] == {"percent": 100.0, "reached": False, "needed": 30000}


def test_summary_json_stays_json_while_a_run_is_starting(tmp_path, capsys):
    """--json: "print JSON instead of text"; the note on a run in its first epoch goes to stderr, so stdout
    still parses."""
    from relpsp.cli import main
    from relpsp.train.run_folder import run_folder_lock

    _finished(tmp_path / "r-seed0", _mnist_cfg(0), 0.99)
    starting = tmp_path / "r-seed1"
    starting.mkdir()
    with run_folder_lock(starting):
        capsys.readouterr()
        assert main(["summary", str(tmp_path), "--json"]) == 0
        out, err = capsys.readouterr()
    assert [d["seed"] for d in json.loads(out)[0]["finished"]] == [0]
    assert f"{starting}: training, in its first epoch" in err
