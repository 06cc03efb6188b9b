"""The ``relpsp`` command end to end on a small generated dataset (Yin-Yang: no files needed)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from relpsp import cli

_TRAIN = "train --dataset yinyang --arch 4-10-3 --epochs 2 --batch-size 128 --lr 0.01 --seed 1 --threads 1"


def _train(out, *extra: str) -> int:
    return cli.main([*_TRAIN.split(), "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert _train(out) == 0
    return out


def test_train_writes_run_folder(run_dir, capsys):
    res = json.loads((run_dir / "results.json").read_text())
    assert res["config"]["model"]["arch"] == "4-10-3"
    assert res["config"]["model"]["input_shape"] == [4]  # inferred from the dataset
    assert 0.0 <= res["test_accuracy"] <= 1.0 and res["epochs"] == 2
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run_dir / "checkpoint.ckpt").is_file()


def test_eval_reports_the_same_accuracy(run_dir, capsys):
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir / "checkpoint.ckpt"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    res = json.loads((run_dir / "results.json").read_text())
    assert out["accuracy"] == pytest.approx(res["test_accuracy"])
    assert out["n"] == 1000
    assert out["layers"] == ["input", "dense 10", "dense 3"] and len(out["firing_rates"]) == 3
    assert cli.main(["eval", str(run_dir / "checkpoint.ckpt")]) == 0
    assert "firing rate per layer: input 1.000, dense 10 " in capsys.readouterr().out  # named, not bare numbers


def test_eval_threads_gives_the_kernels_that_many_and_the_same_numbers(run_dir, capsys):
    """--threads 1 (e.g. beside a training run) puts the compiled kernels and torch on one thread and prints
    the same result; a negative count is refused before the checkpoint is read."""
    import torch

    from relpsp.kernels import cpu_kernels_available
    from relpsp.train.runtime import threads_restored

    ckpt = str(run_dir / "checkpoint.ckpt")
    capsys.readouterr()
    with threads_restored():
        assert cli.main(["eval", ckpt, "--json"]) == 0
        every_core = json.loads(capsys.readouterr().out)
        assert cli.main(["eval", ckpt, "--json", "--threads", "1"]) == 0
        one = json.loads(capsys.readouterr().out)
        assert torch.get_num_threads() == 1
        if cpu_kernels_available():
            import numba

            assert numba.get_num_threads() == 1
    assert one == every_core
    assert cli.main(["eval", str(run_dir / "missing.ckpt"), "--threads", "-1"]) == 2
    assert "--threads must be an integer >= 0, got -1" in capsys.readouterr().err


def test_train_init_from_records_the_source_by_its_absolute_path(run_dir, tmp_path, monkeypatch, capsys):
    """--init-from RUN (a path relative to where the command runs) is stored absolute, so that a --resume from
    another folder names the same source; the run starts from that network."""
    monkeypatch.chdir(run_dir.parent)
    assert _train(tmp_path / "tuned", "--init-from", run_dir.name, "--epochs", "1") == 0
    res = json.loads((tmp_path / "tuned" / "results.json").read_text())
    assert res["config"]["train"]["init_from"] == str(run_dir.resolve())
    assert "train.init_from: starting from the network in " in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert _train(tmp_path / "tuned", "--init-from", str(run_dir), "--epochs", "2", "--resume") == 0
    assert len((tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()) == 2


def test_eval_per_class_gives_the_confusion_matrix_and_the_wrong_samples(run_dir, capsys):
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir / "checkpoint.ckpt"), "--json", "--per-class"]) == 0
    out = json.loads(capsys.readouterr().out)
    pc = out["per_class"]
    conf = np.array(pc["confusion"])
    assert conf.shape == (3, 4) and conf.sum() == out["n"] == 1000
    correct = int(np.trace(conf[:, :3]))
    assert correct / out["n"] == pytest.approx(out["accuracy"])
    assert conf[:, 3].sum() / out["n"] == pytest.approx(out["no_output_spike_fraction"])
    assert len(pc["wrong"]) == out["n"] - correct and pc["wrong"] == sorted(set(pc["wrong"]))
    for i, acc in enumerate(pc["accuracy"]):
        assert acc == pytest.approx(conf[i, i] / conf[i].sum())
    assert cli.main(["eval", str(run_dir / "checkpoint.ckpt"), "--per-class"]) == 0
    text = capsys.readouterr().out
    assert "confusion (rows: label" in text and f"wrong samples ({len(pc['wrong'])}; indices in yinyang test)" in text
    from relpsp.data.yinyang import YINYANG_CLASSES

    assert pc["class_names"] == list(YINYANG_CLASSES)  # and the text's rows name them
    assert all(f"\n{i} {name} " in text for i, name in enumerate(YINYANG_CLASSES))


def test_eval_margins_summarise_each_samples_lead(run_dir, capsys):
    """--margins: quantiles of the labelled output's lead over the rest, beside the loss's tau; they
    agree with the accuracy (the share of positive margins) and with a direct computation."""
    import torch

    from relpsp.functional import decision_margin
    from relpsp.train import load_trained, run_split

    capsys.readouterr()
    assert cli.main(["eval", str(run_dir / "checkpoint.ckpt"), "--json", "--margins"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = out["margins"]
    model, cfg, _ = load_trained(run_dir / "checkpoint.ckpt")
    x, y, _ = run_split(cfg, "test", None)
    with torch.no_grad():
        direct = decision_margin(model.eval()(x).double(), y)
    finite = direct[torch.isfinite(direct)]
    assert m["tau"] == cfg.train.tau and m["n_both_fired"] == finite.numel()
    assert m["right_silent"] == int((direct == -math.inf).sum())
    assert m["n_both_fired"] + m["right_silent"] + m["only_right_fired"] == out["n"] == 1000
    assert list(m["quantiles"]) == ["1%", "5%", "10%", "25%", "50%", "75%", "90%"]
    assert m["quantiles"]["50%"] == pytest.approx(finite.double().quantile(0.5).item())
    values = list(m["quantiles"].values())
    assert values == sorted(values)
    correct, right, ties = round(out["accuracy"] * out["n"]), int((direct > 0).sum()), int((direct == 0).sum())
    assert right <= correct <= right + ties
    assert cli.main(["eval", str(run_dir / "checkpoint.ckpt"), "--margins"]) == 0
    text = capsys.readouterr().out
    assert f"the loss's tau {cfg.train.tau:g}) over the {m['n_both_fired']} samples where both fired: 1% " in text
    assert f"labelled output silent: {m['right_silent']}" in text


def test_eval_on_a_dataset_whose_inputs_do_not_fit_names_both_shapes(run_dir, tmp_path, capsys):
    """Before, the layer refused the input from inside ("t_in must have 2 dimensions")."""
    from tests.test_data import cifar_batch

    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes(cifar_batch(3, seed=0)[0])
    argv = ["eval", str(run_dir / "checkpoint.ckpt"), "--dataset", "cifar10", "--data-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "cifar10 has inputs of shape (3, 32, 32), but the network takes (4,)" in capsys.readouterr().err


def test_eval_uses_the_runs_own_splits(run_dir, tmp_path, capsys):
    """On the dataset it was trained on, `eval --split val` is the run's validation set (its last
    val_accuracy) and `--split train` its training subset (data.train_size), not the whole file."""
    res = json.loads((run_dir / "results.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir / "checkpoint.ckpt"), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(res["val_accuracy"])
    small = tmp_path / "small"
    assert _train(small, "--set", "data.train_size=100") == 0
    capsys.readouterr()
    assert cli.main(["eval", str(small / "checkpoint.ckpt"), "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 100
    # --per-class names the wrong samples by their index in the dataset's own split, not in the subset
    assert cli.main(["eval", str(small / "checkpoint.ckpt"), "--split", "train", "--json", "--per-class"]) == 0
    pc = json.loads(capsys.readouterr().out)["per_class"]
    assert pc["wrong_indices_in"] == "yinyang train" and pc["wrong"] == sorted(pc["wrong"])
    from relpsp.data import load_dataset
    from relpsp.train import load_splits, load_trained

    source: dict = {}
    split = load_splits(load_trained(small / "checkpoint.ckpt")[1], source)["train"]
    name, index = source["train"]
    full_x, full_y = load_dataset("yinyang", name)
    assert name == "train" and len(full_y) > 100 and np.array_equal(full_x[index], split[0])
    assert pc["wrong"] and set(pc["wrong"]) <= set(index.tolist())
    assert cli.main(["eval", str(small / "checkpoint.ckpt"), "--split", "bogus"]) == 2
    assert "this run has the splits test, train, val, not 'bogus'" in capsys.readouterr().err


def test_plot_of_a_one_epoch_run_draws_its_point(tmp_path):
    """A single epoch is a single point: drawn with a marker, so the figure differs from one with no data."""
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from relpsp.plots import plot_curves

    row = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "test_loss": 0.6, "test_accuracy": 0.7}
    empty = {k: (v if k == "epoch" else float("nan")) for k, v in row.items()}
    a = matplotlib.image.imread(plot_curves([row], tmp_path / "one.png"))
    b = matplotlib.image.imread(plot_curves([empty], tmp_path / "none.png"))
    assert a.shape == b.shape and (a != b).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["none.png", "one.png"]  # no temporary files left


def test_plot_with_a_bad_sample_writes_no_figure(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    run.mkdir()
    for name in ("metrics.jsonl", "checkpoint.ckpt"):
        shutil.copy(run_dir / name, run / name)
    assert cli.main(["plot", str(run), "--sample", "100000"]) == 2
    assert "--sample must be in" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.ckpt", "metrics.jsonl"]


def test_plot_writes_pngs(run_dir, capsys):
    assert cli.main(["plot", str(run_dir)]) == 0
    for name in ("curves.png", "output_times.png", "raster.png"):
        data = (run_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name


def test_plot_of_a_folder_without_checkpoint_draws_the_curves_elsewhere(run_dir, tmp_path, capsys):
    """A committed results folder keeps metrics.jsonl and results.json only; --out leaves it untouched."""
    import shutil

    kept = tmp_path / "kept"
    kept.mkdir()
    shutil.copy(run_dir / "metrics.jsonl", kept / "metrics.jsonl")
    figures = tmp_path / "figures"
    assert cli.main(["plot", str(kept), "--out", str(figures)]) == 0
    assert "only the training curves were drawn" in capsys.readouterr().out
    assert sorted(p.name for p in figures.iterdir()) == ["curves.png"]
    assert sorted(p.name for p in kept.iterdir()) == ["metrics.jsonl"]
    assert (figures / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_run_stopped_in_its_first_epoch_draws_all_figures(run_dir, tmp_path, capsys):
    """With train.checkpoint_every a run stopped in its first epoch leaves a checkpoint and no
    metrics.jsonl; plot used to ask whether the folder was written by relpsp train. eval reads a run
    folder without a checkpoint as such, not as "a folder, not a file"."""
    import shutil

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copy(run_dir / "checkpoint.ckpt", stopped / "checkpoint.ckpt")
    figures = tmp_path / "figures"
    assert cli.main(["plot", str(stopped), "--out", str(figures)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in figures.iterdir()) == ["curves.png", "output_times.png", "raster.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["plot", str(empty)]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err
    assert cli.main(["eval", str(empty)]) == 2
    assert f"{empty} is a folder, not a file, and holds no checkpoint.ckpt" in capsys.readouterr().err


def test_every_command_that_reads_a_checkpoint_takes_its_run_folder(run_dir, tmp_path, capsys):
    """eval, simulate, cost and export read the checkpoint inside a run folder, as eval always did."""
    from relpsp.commands import RUN_CHECKPOINT
    from relpsp.train import CHECKPOINT_NAME

    assert RUN_CHECKPOINT == CHECKPOINT_NAME
    for argv in (
        ["simulate", str(run_dir), "--limit", "20"],
        ["cost", str(run_dir), "--limit", "20", "--time-bits", "8"],
    ):
        assert cli.main(argv) == 0, capsys.readouterr().err
        assert "images" in capsys.readouterr().out
    assert cli.main(["export", str(run_dir), str(tmp_path / "m.nir")]) == 0
    assert (tmp_path / "m.nir").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in ("simulate", "cost"):
        assert cli.main([command, str(empty)]) == 2
        assert "is a folder, not a file, and holds no checkpoint.ckpt" in capsys.readouterr().err


def test_resume_of_a_finished_run_changes_nothing(run_dir):
    before = (run_dir / "checkpoint.ckpt").read_bytes()
    rc = _train(run_dir, "--resume")
    assert rc == 0
    from relpsp.checkpoint import load_checkpoint

    a, _ = load_checkpoint(run_dir / "checkpoint.ckpt")
    (run_dir / "before.ckpt").write_bytes(before)
    b, _ = load_checkpoint(run_dir / "before.ckpt")
    for k in a:
        assert (a[k] == b[k]).all(), k


def test_config_file_and_overrides(tmp_path, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('[model]\narch = "4-6-3"\n[data]\ndataset = "yinyang"\n[train]\nepochs = 1\nbatch_size = 256\n')
    rc = cli.main(
        [
            "train",
            str(cfg),
            "--set",
            "train.lr=0.02",
            "--set",
            "model.theta=1.5",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["config"]["train"]["lr"] == 0.02 and res["config"]["model"]["theta"] == 1.5


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--set", "bogus"], "--set expects"),
        (["train", "--set", "train.nope=1"], "unknown key"),
        (["train", "--dataset", "yinyang", "--arch", "4-x-3"], "cannot parse token"),
        (["eval", "/nonexistent/ckpt"], "does not exist"),
        (["train", "--epochs", "0"], "train.epochs must be >= 1"),
        (["train", "--set", "train.optimizer=rmsprop"], "train.optimizer must be"),
    ],
    ids=["bad-set", "unknown-key", "bad-arch", "missing-checkpoint", "zero-epochs", "bad-optimizer"],
)
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert needle in err and err.startswith("relpsp: error:") and "\n" not in err.strip()
    assert out == ""  # no header line naming a run that will not train


def test_train_backend_flag_offers_every_library_backend(tmp_path, monkeypatch, capsys):
    from relpsp.autograd import BACKENDS
    from relpsp.commands.train import TRAIN_BACKENDS

    assert TRAIN_BACKENDS == BACKENDS
    # the flag reaches the kernel boundary, which refuses triton on a CPU tensor outside the interpreter
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    argv = ["train", "--dataset", "yinyang", "--arch", "4-6-3", "--epochs", "1", "--backend", "triton"]
    assert cli.main([*argv, "--threads", "1", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "relpsp: error:" in err and "triton" in err


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    """`--resume` continues the run in OUT and `--overwrite` deletes it: together they are an error, not a
    silent resume (scripts/train.sh passes --resume unless --overwrite is given)."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--resume", "--overwrite", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "--overwrite: not allowed with argument --resume" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"epoch": 0}', "missing or non-numeric train_loss, train_accuracy"),
        ("[1, 2]", "expected a JSON object"),
        ("{", "not JSON"),
    ],
    ids=["keys", "list", "truncated"],
)
def test_plot_of_a_malformed_metrics_file_is_one_line(run_dir, tmp_path, capsys, line, needle):
    """A damaged metrics.jsonl gives an error naming the file and line, not a KeyError traceback."""
    first = (run_dir / "metrics.jsonl").read_text().splitlines()[0]
    (tmp_path / "metrics.jsonl").write_text(f"{first}\n{line}\n")
    capsys.readouterr()
    assert cli.main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("relpsp: error:") and "metrics.jsonl, line 2" in err and needle in err


def test_set_reads_each_value_by_its_fields_type():
    """Number fields take any float literal (.2, 1., +1e-3, inf), string fields keep digits as text, lists
    and booleans are JSON; NaN and text that is not the field's type are refused, naming the field."""
    from relpsp.commands.train import resolve_config

    def resolve(*sets: str):
        argv = ["train", "--dataset", "yinyang"]
        for item in sets:
            argv += ["--set", item]
        return resolve_config(cli.build_parser().parse_args(argv))

    cfg = resolve(
        "train.spike_dropout=.2",
        "train.lr=1.",
        "train.weight_decay=+1e-3",
        "model.t_max=inf",
        "data.data_dir=2024",
        "train.epochs=7",
        "data.augment=false",
        "model.input_shape=[4]",
    )
    assert (cfg.train.spike_dropout, cfg.train.lr, cfg.train.weight_decay) == (0.2, 1.0, 1e-3)
    assert cfg.model.t_max == float("inf") and cfg.data.data_dir == "2024" and cfg.train.epochs == 7
    assert cfg.data.augment is False and cfg.model.input_shape == (4,)
    for bad, needle in (
        ("train.tau=nan", "TrainConfig.tau must be a number"),
        ("data.bias_input=nan", "DataConfig.bias_input must be a number"),
        ("train.epochs=2.5", "TrainConfig.epochs must be an integer"),
        ("train.lr=fast", "TrainConfig.lr must be a number"),
    ):
        with pytest.raises(ValueError, match=needle):
            resolve(bad)


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["train", ""], "config"),  # `relpsp train "$CFG"` with CFG unset used to train the default network
        (["train", "--dataset", "yinyang", "--out", ""], "--out"),  # used to fall back to runs/<default>
        (["simulate", "x.ckpt", "--out", ""], "--out"),  # used to write nothing and exit 0
        (["export", "x.ckpt", ""], "OUT"),
        (["eval", "x.ckpt", "--dataset", "", "--data-dir", ""], "--dataset, --data-dir"),
        (["data", "fetch", "caltech-face-motorbike", "--source", ""], "--source"),  # used to mean "."
    ],
    ids=["train-config", "train-out", "simulate-out", "export-out", "eval-dataset", "data-fetch-source"],
)
def test_an_empty_argument_is_refused_before_any_work(argv, name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert f"empty value for {name}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no run folder, no file


def test_simulate_and_cost_refuse_to_write_over_their_input_or_into_a_folder(tmp_path, monkeypatch, capsys):
    """``--out`` naming the checkpoint (or the .npz images) being read used to replace it with the JSON,
    exit 0; a folder, or a path under a file, failed only after the whole simulation. All are refused first,
    and nothing changes."""
    from tests.test_sim import _tiny_checkpoint

    ckpt, data = _tiny_checkpoint(tmp_path)
    before = {p: p.read_bytes() for p in (ckpt, data)}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.json").symlink_to(ckpt)
    for command in (["simulate"], ["cost", "--time-bits", "4"]):
        # the same files by other names: relative, with "..", and a symbolic link
        for out in (ckpt.name, f"../{tmp_path.name}/{data.name}", "link.json"):
            capsys.readouterr()
            assert cli.main([*command[:1], str(ckpt), *command[1:], "--dataset", str(data), "--out", str(out)]) == 2
            assert "would overwrite" in capsys.readouterr().err
        assert cli.main([command[0], str(ckpt), *command[1:], "--dataset", str(data), "--out", str(tmp_path)]) == 2
        err = capsys.readouterr()
        assert f"the output file {tmp_path} is a folder" in err.err and "simulated" not in err.out
        # a folder above the output that is a file: the write failed after the whole simulation, as errno 17
        out = tmp_path / data.name / "sub" / "x.json"
        assert cli.main([command[0], str(ckpt), *command[1:], "--dataset", str(data), "--out", str(out)]) == 2
        err = capsys.readouterr()
        assert f"cannot be written: {tmp_path / data.name} is a file, not a folder" in err.err
        assert "simulated" not in err.out
    assert cli.main(["export", str(ckpt), str(tmp_path / data.name / "net.nir")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (ckpt, data)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ckpt.name, data.name, "link.json"])


def test_inputs_that_are_folders_or_not_text_get_errors_naming_them(tmp_path, capsys):
    """A folder given as a checkpoint, config or simulate source says so (it used to say "does not
    exist"); a binary file given as a config or metrics file names the file (it used to print only the
    codec's message, which did not say which file of an ``extends`` chain was bad)."""
    folder = tmp_path / "adir"
    folder.mkdir()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # exists, but is no regular file: it used to be reported as missing
    for path, why in ((folder, "is a folder, not a file"), (fifo, "is not a regular file")):
        for argv in (["eval", str(path)], ["simulate", str(path)], ["train", str(path)]):
            capsys.readouterr()
            assert cli.main(argv) == 2
            assert f"{path} {why}" in capsys.readouterr().err
    png = tmp_path / "fake.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    child = tmp_path / "child.toml"
    child.write_text('extends = "fake.png"\n')
    capsys.readouterr()
    assert cli.main(["train", str(child)]) == 2
    assert f"config file {png} is not a UTF-8 text (TOML) file" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(png.read_bytes())
    assert cli.main(["plot", str(run)]) == 2
    assert "metrics.jsonl is not a UTF-8 text (JSON lines) file" in capsys.readouterr().err


def test_the_raster_axis_keeps_the_bulk_but_always_shows_the_outputs():
    """A windowed network's outputs fire in its last window, after more than 98% of all spikes: the axis
    (1.2 x the 98th percentile) used to cut every output spike off; a single very late hidden spike is
    still left beyond it."""
    from relpsp.models import build_model, layer_outputs
    from relpsp.plots import raster_x_limit

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_model("784-800-10", (784,), kernel="window", window=1.0)
    with torch.no_grad():
        times = [t[0] for t in layer_outputs(model, torch.rand(1, 784))]
    out = times[-1][torch.isfinite(times[-1])]
    assert out.numel() and float(out.min()) >= 2.0  # the third window
    x_hi, late = raster_x_limit(times)
    assert x_hi is not None and x_hi >= float(out.max()) and late == 0
    bulk = [torch.linspace(0, 1, 200), torch.tensor([1.0, 50.0]), torch.tensor([0.9, float("inf")])]
    x_hi, late = raster_x_limit(bulk)
    assert x_hi is not None and 1.0 < x_hi < 2.0 and late == 1  # the hidden spike at 50
    assert raster_x_limit([torch.tensor([0.5, float("inf")])]) == (None, 0)


def test_show_config_prints_the_resolved_experiment_and_trains_nothing(tmp_path, monkeypatch, capsys):
    import argparse

    from relpsp.commands.train import configure, resolve_config
    from relpsp.config import config_from_dict, load_toml

    monkeypatch.chdir(tmp_path)
    argv = ["mnist_cnn_flat800_b64", "--set", "train.weight_decay=0.01", "--epochs", "3", "--set", "data.val_size=500"]
    assert cli.main(["train", *argv, "--show-config"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "shown.toml").write_text(text, encoding="utf-8")  # the output is an experiment file
    shown = config_from_dict(load_toml(tmp_path / "shown.toml"))
    parser = argparse.ArgumentParser()
    configure(parser)
    assert shown == resolve_config(parser.parse_args(argv))
    # the extends chain, the --set values and the flags, resolved
    assert (shown.model.arch, shown.train.weight_decay, shown.train.epochs) == ("16C5p2-P2-32C5-P2-128-10", 0.01, 3)
    assert (shown.train.spike_dropout, shown.train.batch_size, shown.data.val_size) == (0.2, 64, 500)
    assert "weight_decay = 0.01  # the optimizer's weight decay" in text
    assert not (tmp_path / "runs").exists()


def test_shipped_experiments_are_listed_and_found_by_name(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from relpsp.config import PACKAGED_CONFIG_DIR, find_config

    repo_configs = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert sorted(p.name for p in PACKAGED_CONFIG_DIR.glob("*.toml")) == repo_configs  # the package ships them all
    assert cli.main(["train", "--list-configs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == [name.removesuffix(".toml") for name in repo_configs]
    assert any(line.startswith("yinyang ") and "Yin-Yang" in line for line in listed)
    # a description is its first sentence: not cut at "et al." (it was, for 20 of them), at most 120 characters
    yy = next(line for line in listed if line.startswith("yinyang "))
    assert "(Kriener et al. 2021)" in yy and all(len(line.split(None, 1)[1]) <= 120 for line in listed)
    assert find_config("yinyang") == find_config("yinyang.toml") == PACKAGED_CONFIG_DIR / "yinyang.toml"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "yinyang.toml").write_text('[data]\ndataset = "yinyang"\n')
    assert find_config("yinyang.toml") == Path("yinyang.toml")  # a file at the path wins over a shipped one
    assert find_config("yinyang") == PACKAGED_CONFIG_DIR / "yinyang.toml"
    (tmp_path / "yinyang").mkdir()  # a folder of the name (a run folder, say) does not hide the shipped one
    assert find_config("yinyang") == PACKAGED_CONFIG_DIR / "yinyang.toml"
    # the README's configs/... paths hold in the repository's root; elsewhere the error names the way
    with pytest.raises(ValueError, match="shipped with relpsp runs from anywhere as: relpsp train mnist_mlp"):
        find_config("configs/mnist_mlp.toml")


def test_a_shipped_experiment_trains_by_name_into_its_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["train", "yinyang", "--epochs", "1", "--threads", "1", "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "runs" / "yinyang-seed0" / "results.json").read_text())
    assert res["config"]["model"]["arch"] == "4-30-3" and res["config"]["train"]["tau"] == 0.25


@pytest.mark.parametrize("name", ["nosuch", "nosuch.toml"])
def test_an_unknown_experiment_name_says_where_names_come_from(name, capsys):
    assert cli.main(["train", name]) == 2
    err = capsys.readouterr().err
    assert f"config '{name}' is neither a file nor the name of an experiment shipped with relpsp" in err
    assert "--list-configs" in err


def test_a_dataset_alias_is_stored_under_its_registry_name(tmp_path, capsys):
    """``--dataset yin-yang`` and ``--dataset yinyang`` are one experiment: the run stores "yinyang", so
    summary groups the two seeds together and either name resumes the other; a checkpoint written under
    an alias by older code still resumes (resume_key compares registry names)."""
    import dataclasses

    from relpsp.config import Config, DataConfig
    from relpsp.train.checkpointing import resume_key

    argv = _TRAIN.replace("--dataset yinyang", "--dataset yin-yang").replace("--epochs 2", "--epochs 1").split()
    assert cli.main([*argv, "--out", str(tmp_path / "r-seed1"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "r-seed1" / "results.json").read_text())["config"]["data"]["dataset"] == "yinyang"
    argv0 = _TRAIN.replace("--epochs 2", "--epochs 1").replace("--seed 1", "--seed 0").split()
    assert cli.main([*argv0, "--out", str(tmp_path / "r-seed0"), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["summary", str(tmp_path)]) == 0
    assert "2 finished (seeds 0, 1)" in capsys.readouterr().out
    alias = Config(data=DataConfig(dataset="Yin_Yang"))
    assert resume_key(alias) == resume_key(dataclasses.replace(alias, data=DataConfig(dataset="yinyang")))
    assert resume_key(Config(data=DataConfig(dataset="tiny"))).data.dataset == "tiny"  # not a registry name


def test_eval_takes_a_run_folder_and_names_a_nir_file_for_what_it_is(run_dir, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--json"]) == 0  # the folder's checkpoint
    res = json.loads((run_dir / "results.json").read_text())
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(res["test_accuracy"])
    pytest.importorskip("nir")
    nir_file = tmp_path / "m.nir"
    assert cli.main(["export", str(run_dir / "checkpoint.ckpt"), "--format", "nir", str(nir_file)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(nir_file)]) == 2
    assert "is a NIR file; relpsp eval reads checkpoints: run it with relpsp simulate" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("exc", "code", "needle"),
    [
        (ModuleNotFoundError("No module named 'tomli'"), 2, "No module named 'tomli'; install it, e.g. pip install"),
        (ImportError("reading image folders needs Pillow"), 2, "relpsp: error: reading image folders needs Pillow"),
        (BrokenPipeError(32, "Broken pipe"), 141, ""),  # `relpsp ... | head`: quiet, as any Unix tool
        (KeyboardInterrupt(), 130, "--resume continues it (scripts/train.sh: run it again) (from scratch if none had"),
    ],
    ids=["missing-module", "import-error", "broken-pipe", "interrupt"],
)
def test_failures_end_in_one_line_not_a_traceback(monkeypatch, capsys, exc, code, needle):
    from relpsp.commands import train

    def boom(args):
        raise exc

    monkeypatch.setattr(train, "run", boom)
    monkeypatch.setattr("sys.stdout.fileno", lambda: os.open(os.devnull, os.O_WRONLY), raising=False)
    assert cli.main(["train", "--epochs", "1"]) == code
    err = capsys.readouterr().err
    assert (needle in err) if needle else err == ""
    if isinstance(exc, KeyboardInterrupt):  # after --overwrite the same command again would delete the checkpoint
        assert cli.main(["train", "--epochs", "1", "--overwrite"]) == code
        err = capsys.readouterr().err
        assert "the same command with --resume instead of --overwrite continues it" in err
        assert "run it again without --overwrite" in err


def test_curves_have_whole_epoch_ticks(tmp_path, monkeypatch):
    """Two epochs used to get ticks at 1.25, 1.5, 1.75."""
    pytest.importorskip("matplotlib")
    from relpsp import plots

    ticks: list[float] = []
    save = plots._save

    def grab(fig, path):
        ticks.extend(t for ax in fig.axes for t in ax.get_xticks())
        save(fig, path)

    monkeypatch.setattr(plots, "_save", grab)
    rows = [
        {"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5, "test_loss": 1 / e, "test_accuracy": 0.5}
        for e in (1, 2)
    ]
    plots.plot_curves(rows, tmp_path / "c.png")
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_every_option_of_every_command_has_help_text():
    """``relpsp COMMAND --help`` explains each option (several used to show a bare flag)."""
    import argparse

    def parsers(p: argparse.ArgumentParser, name: str):
        yield name, p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from parsers(sub, f"{name} {sub_name}")

    bare = [
        f"{name}: {action.option_strings or action.dest}"
        for name, p in parsers(cli.build_parser(), "relpsp")
        for action in p._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and action.help != argparse.SUPPRESS
        and not action.help
    ]
    assert bare == []


def test_flags_override_set_which_overrides_the_config_file(tmp_path):
    """train.py: "flags override the config file's fields"; resolve_config: defaults <- TOML file <- --set <-
    named flags (--set: "override any config field")."""
    from relpsp.commands.train import resolve_config

    cfg_file = tmp_path / "exp.toml"
    cfg_file.write_text('[data]\ndataset = "yinyang"\n[train]\nlr = 0.05\nepochs = 9\nseed = 4\n')

    def resolve(*argv: str):
        return resolve_config(cli.build_parser().parse_args(["train", str(cfg_file), *argv]))

    assert (resolve().train.lr, resolve().train.epochs) == (0.05, 9)
    cfg = resolve("--set", "train.lr=0.02", "--set", "train.epochs=7")  # --set over the file
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.seed) == (0.02, 7, 4)
    cfg = resolve("--set", "train.lr=0.02", "--lr", "0.003", "--set", "train.epochs=7", "--epochs", "3")
    assert (cfg.train.lr, cfg.train.epochs) == (0.003, 3)  # named flags over --set
    assert resolve("--set", "train.seed=2", "--seed", "5").train.seed == 5
    assert resolve("--set", "train.batch_size=64", "--batch-size", "32").train.batch_size == 32
    assert resolve("--set", "data.data_dir=a", "--data-dir", "b").data.data_dir == "b"
    assert resolve("--set", "data.dataset=mnist", "--dataset", "yinyang").model.input_shape == (4,)


def test_default_run_folder_is_dataset_arch_seed(tmp_path, monkeypatch, capsys):
    """--out help: "run folder (default: runs/<config or dataset-arch>-seed<seed>)"."""
    import relpsp.train

    seen = []

    def fake_fit(cfg, out, **kw):
        seen.append(out)
        return {"test_accuracy": 0.5, "test_no_output_spike_fraction": 0.0, "wall_time_s": 0.0}

    monkeypatch.setattr(relpsp.train, "fit", fake_fit)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--dataset", "yinyang", "--arch", "4-10-3", "--seed", "2", "--no-progress"]) == 0
    assert cli.main(["train", "yinyang", "--seed", "3", "--no-progress"]) == 0
    assert [str(p) for p in seen] == ["runs/yinyang-4-10-3-seed2", "runs/yinyang-seed3"]


def test_eval_per_class_rows_are_labels_and_columns_decisions(run_dir, capsys):
    """--per-class help: "the confusion matrix (rows: label, ...; columns: decision, then no output spike)": each
    row sums to that label's sample count (the trace and the none column are the same for the transpose)."""
    from relpsp.data import load_dataset

    capsys.readouterr()
    assert cli.main(["eval", str(run_dir / "checkpoint.ckpt"), "--json", "--per-class"]) == 0
    conf = np.array(json.loads(capsys.readouterr().out)["per_class"]["confusion"])
    _, y = load_dataset("yinyang", "test")
    assert conf.sum(1).tolist() == np.bincount(y.numpy(), minlength=3).tolist()


def test_eval_on_another_dataset_reads_the_split_asked_for(tmp_path, capsys):
    """--split (train | test | val) applies to --dataset NAME too: a cifar10-shaped network evaluated on
    cifar10 --split train reads the training batches, not the test batch."""
    from relpsp.checkpoint import save_checkpoint
    from relpsp.config import Config, DataConfig, ModelConfig, config_to_dict
    from relpsp.models import build_model, model_arrays
    from tests.test_data import write_cifar_batches

    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar_batches(folder, 2, 3)
    cfg = Config(model=ModelConfig(arch="3072-10", input_shape=(3, 32, 32)), data=DataConfig(dataset="yinyang"))
    ckpt = tmp_path / "c.ckpt"
    save_checkpoint(ckpt, model_arrays(build_model("3072-10", (3, 32, 32))), {"config": config_to_dict(cfg)})
    base = ["eval", str(ckpt), "--dataset", "cifar10", "--data-dir", str(tmp_path), "--json"]
    capsys.readouterr()
    assert cli.main([*base, "--split", "train"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["n"] == 10
    assert cli.main(base) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3


def test_eval_reads_the_runs_data_dir_by_default(tmp_path, monkeypatch, capsys):
    """--data-dir help: "dataset folder (default: the run's, else $RELPSP_DATA or ~/.cache/relpsp)"."""
    from relpsp.checkpoint import save_checkpoint
    from relpsp.config import Config, DataConfig, ModelConfig, config_to_dict
    from relpsp.models import build_model, model_arrays
    from tests.test_data import write_cifar_batches

    data = tmp_path / "data"
    folder = data / "cifar10" / "cifar-10-batches-py"
    write_cifar_batches(folder, 2, 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("RELPSP_DATA", str(empty))
    cfg = Config(
        model=ModelConfig(arch="3072-10", input_shape=(3, 32, 32)),
        data=DataConfig(dataset="cifar10", data_dir=str(data)),
    )
    ckpt = tmp_path / "c.ckpt"
    save_checkpoint(ckpt, model_arrays(build_model("3072-10", (3, 32, 32))), {"config": config_to_dict(cfg)})
    capsys.readouterr()
    assert cli.main(["eval", str(ckpt), "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["n"] == 3
    # the run's folder also for another dataset given by --dataset (here a run "trained" on mnist)
    cfg = Config(
        model=ModelConfig(arch="3072-10", input_shape=(3, 32, 32)),
        data=DataConfig(dataset="mnist", data_dir=str(data)),
    )
    save_checkpoint(ckpt, model_arrays(build_model("3072-10", (3, 32, 32))), {"config": config_to_dict(cfg)})
    assert cli.main(["eval", str(ckpt), "--dataset", "cifar10", "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["n"] == 3


@pytest.mark.parametrize("command", ["eval", "simulate", "summary"])
def test_an_interrupt_of_another_command_gives_no_resume_hint(command, monkeypatch, capsys):
    """Ctrl-C ends every command with exit code 130 and "relpsp: interrupted"; only train has a
    checkpoint to resume, so only train names --resume."""
    import importlib

    module = importlib.import_module(f"relpsp.commands.{command}")

    def boom(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", boom)
    assert cli.main([command, "x"]) == 130
    assert capsys.readouterr().err == "relpsp: interrupted\n"


def test_relpsp_without_a_command_trains_the_default_network(monkeypatch):
    """cli.main: `relpsp` with no command runs the main job (train's help: "default: MNIST 784-800-10")."""
    from relpsp.commands import train

    seen = []
    monkeypatch.setattr(train, "run", lambda args: seen.append(args) or 0)
    assert cli.main([]) == 0
    assert len(seen) == 1 and seen[0].command == "train" and seen[0].config is None


def test_eval_text_gives_the_accuracy_of_the_json(run_dir, capsys):
    """README: `relpsp eval runs/try/checkpoint.ckpt`; the text line and --json report one accuracy."""
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir / "checkpoint.ckpt"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert cli.main(["eval", str(run_dir / "checkpoint.ckpt")]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"yinyang test: accuracy {100 * res['accuracy']:.2f}% on {res['n']} samples, ")
    assert f"no output spike {100 * res['no_output_spike_fraction']:.2f}%" in text


def test_plot_raster_draws_the_requested_sample(run_dir, tmp_path, monkeypatch):
    """plot_run: the raster is of test sample ``sample`` (its title names that sample's label)."""
    pytest.importorskip("matplotlib")
    import torch

    import relpsp.data as D
    from relpsp import plots
    from relpsp.models import layer_outputs
    from relpsp.train import data_options, load_trained

    got = {}
    monkeypatch.setattr(
        plots, "plot_raster", lambda times, names, path, title="": got.update(t=times, title=title) or path
    )
    plots.plot_run(run_dir, sample=5, out_dir=tmp_path)
    model, cfg, _ = load_trained(run_dir / "checkpoint.ckpt")
    x, y = D.load_dataset(cfg.data.dataset, "test", cfg.data.data_dir, **data_options(cfg))
    with torch.no_grad():
        want = [o[0] for o in layer_outputs(model, x[5:6])]
    assert f"test sample 5: label {int(y[5])}" in got["title"]
    assert torch.equal(got["t"][0], want[0]) and torch.equal(got["t"][-1], want[-1])


def test_curves_draw_train_val_and_test_on_both_axes(tmp_path, monkeypatch):
    """plot_curves docstring: loss and accuracy per epoch, with the training objective and the
    validation and test curves."""
    pytest.importorskip("matplotlib")
    from relpsp import plots

    seen = []
    save = plots._save
    monkeypatch.setattr(
        plots,
        "_save",
        lambda fig, path: (
            seen.extend(
                (ax.get_xlabel(), ax.get_ylabel(), [ln.get_label() for ln in ax.get_lines()]) for ax in fig.axes
            ),
            save(fig, path),
        ),
    )
    rows = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "train_accuracy": 0.5,
            "val_loss": 1.1 / e,
            "val_accuracy": 0.4,
            "test_loss": 1.2 / e,
            "test_accuracy": 0.3,
        }
        for e in (1, 2)
    ]
    plots.plot_curves(rows, tmp_path / "c.png")
    assert seen == [
        ("epoch", "cross-entropy of softmax(-t / tau)", ["train (objective)", "val", "test"]),
        ("epoch", "accuracy (%)", ["train", "val", "test"]),
    ]
