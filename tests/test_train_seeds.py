"""``relpsp train --seeds``: one experiment over several seeds, in this process or in several at once, gives
each seed the run that ``relpsp train --seed S`` gives, and refuses what would lose a run before starting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relpsp import cli
from relpsp.commands.seeds import MAX_SEEDS, check_folders, job_threads, parse_seeds, seed_folder

_TRAIN = "train --dataset yinyang --arch 4-10-3 --epochs 1 --batch-size 128 --lr 0.01 --threads 1 --no-progress"


def _main(*args: str) -> int:
    return cli.main([*_TRAIN.split(), *args])


def _accuracy(folder) -> float:
    return json.loads((folder / "results.json").read_text())["test_accuracy"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Seeds 0 and 1 trained one at a time with --seed: what every other way must reproduce."""
    root = tmp_path_factory.mktemp("single")
    for s in (0, 1):
        assert _main("--seed", str(s), "--out", str(root / f"one-seed{s}")) == 0
    return {s: _accuracy(root / f"one-seed{s}") for s in (0, 1)}


def test_parse_seeds_takes_lists_and_ranges_in_order():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds(" 5, 0-1 ,9") == [5, 0, 1, 9]
    assert parse_seeds("7") == [7]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "seeds >= 0"),
        ("a,b", "seeds >= 0"),
        ("-1", "seeds >= 0"),
        ("1,,2", "seeds >= 0"),
        ("3-1", "runs backwards"),
        ("0-2,1", "seed 1 more than once"),
        (f"0-{MAX_SEEDS}", f"more than {MAX_SEEDS} seeds"),
    ],
)
def test_parse_seeds_refuses_bad_lists(text, message):
    with pytest.raises(ValueError, match=message):
        parse_seeds(text)


def test_seed_folders_and_thread_shares(tmp_path, monkeypatch):
    assert seed_folder(tmp_path / "runs" / "exp", 3) == tmp_path / "runs" / "exp-seed3"
    for bad in (".", "..", "/"):
        with pytest.raises(ValueError, match="--out is the prefix of the folders"):
            seed_folder(Path(bad), 0)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert job_threads(0, 3) == 2 and job_threads(0, 16) == 1 and job_threads(0, 1) == 0
    assert job_threads(4, 3) == 4  # the experiment's own count is kept


def test_seeds_in_this_process_reproduce_single_runs(single, tmp_path, capsys):
    capsys.readouterr()
    assert _main("--seeds", "0,1", "--out", str(tmp_path / "exp")) == 0
    assert {s: _accuracy(tmp_path / f"exp-seed{s}") for s in (0, 1)} == single
    printed = capsys.readouterr().out
    assert "seeds 0, 1 -> " in printed and "2 finished (seeds 0, 1)" in printed
    mean = 100 * (single[0] + single[1]) / 2
    assert f"{mean:.3f} ± " in printed


def test_seeds_in_parallel_processes_reproduce_single_runs(single, tmp_path, capsys):
    capsys.readouterr()
    assert _main("--seeds", "0-1", "--jobs", "2", "--out", str(tmp_path / "exp")) == 0
    assert {s: _accuracy(tmp_path / f"exp-seed{s}") for s in (0, 1)} == single
    assert "epoch 1:" in (tmp_path / "exp-seed1.log").read_text()  # each process prints into its own log
    printed = capsys.readouterr().out
    assert "2 at once" in printed and "2 finished (seeds 0, 1)" in printed
    assert f"seed 1: test accuracy {100 * single[1]:.2f}%, " in printed


def test_a_folder_holding_a_run_refuses_every_seed_before_any_starts(tmp_path, capsys):
    assert _main("--seed", "1", "--out", str(tmp_path / "exp-seed1")) == 0
    before = (tmp_path / "exp-seed1" / "results.json").read_bytes()
    assert _main("--seeds", "0,1", "--out", str(tmp_path / "exp")) == 2
    assert "exp-seed1 (checkpoint.ckpt, metrics.jsonl, results.json): it already holds a run" in capsys.readouterr().err
    assert not (tmp_path / "exp-seed0").exists()  # nothing started
    assert (tmp_path / "exp-seed1" / "results.json").read_bytes() == before  # nothing lost
    with pytest.raises(ValueError, match="has no checkpoint to resume from"):
        (tmp_path / "bare-seed0").mkdir()
        (tmp_path / "bare-seed0" / "results.json").write_text("{}")
        check_folders([tmp_path / "bare-seed0"], resume=True, overwrite=False)
    check_folders([tmp_path / "exp-seed1"], resume=False, overwrite=True)  # replaced: allowed


def test_a_failing_seed_does_not_stop_the_others_and_fails_the_command(tmp_path, capsys):
    # seed 0's folder holds a 2-epoch checkpoint, which a 1-epoch --resume refuses to continue
    assert _main("--seed", "0", "--epochs", "2", "--out", str(tmp_path / "exp-seed0")) == 0
    capsys.readouterr()
    assert _main("--seeds", "0,1", "--resume", "--out", str(tmp_path / "exp")) == 1
    captured = capsys.readouterr()
    assert "seed 0: failed: " in captured.err and "relpsp train: seed 0 failed" in captured.err
    assert (tmp_path / "exp-seed1" / "results.json").is_file()  # seed 1 trained all the same


def test_seeds_arguments_that_cannot_go_together_are_refused(tmp_path, capsys, monkeypatch):
    assert _main("--seed", "1", "--jobs", "2", "--out", str(tmp_path / "a")) == 2
    assert "--jobs goes with --seeds" in capsys.readouterr().err
    assert _main("--seeds", "0,1", "--jobs", "0", "--out", str(tmp_path / "b")) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one or the other
        _main("--seed", "1", "--seeds", "0,1")
    assert "not allowed with argument" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _main("--seeds", "0,1", "--out", str(tmp_path / "c")) == 2
    assert "under torchrun train one seed" in capsys.readouterr().err
    assert not any(tmp_path.glob("[abc]-seed*"))
