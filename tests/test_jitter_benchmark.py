"""``benchmarks.jitter``: accuracy under timing noise over noise seeds, beside the noiseless margins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import jitter
from relpsp import cli
from relpsp.functional import decision_margin
from relpsp.sim import SimOptions, load_inputs, network_from_checkpoint, simulate
from tests.test_npz_dataset import write_archive


def test_sweep_matches_the_simulator_and_reports_the_margins(tmp_path, capsys):
    archive = tmp_path / "mine.npz"
    write_archive(archive)
    run = tmp_path / "run"
    argv = ["train", "--dataset", str(archive), "--arch", "4C3-P2-3", "--epochs", "1", "--threads", "1"]
    assert cli.main([*argv, "--no-progress", "--out", str(run)]) == 0
    out = tmp_path / "j.json"
    assert jitter.main([str(run), "--sigmas", "0,0.05,1", "--seeds", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| checkpoint | τ | median margin | σ 0 | σ 0.05 | σ 1 |" in text
    res = json.loads(out.read_text())
    assert res["benchmark"] == "jitter" and res["sigmas"] == [0, 0.05, 1] and res["environment"]["device"]
    (row,) = res["rows"]
    net, _ = network_from_checkpoint(run / "checkpoint.ckpt")
    x, y = load_inputs(str(archive), "test")
    assert row["n_images"] == len(y) == 30
    clean = simulate(net, x)
    assert row["accuracy"]["0"] == {"mean": clean.accuracy(y), "sd": 0.0, "per_seed": [clean.accuracy(y)]}
    noisy = [simulate(net, x, SimOptions(jitter=1.0, jitter_seed=s)).accuracy(y) for s in (0, 1)]
    assert row["accuracy"]["1"]["per_seed"] == noisy
    assert row["accuracy"]["1"]["mean"] == pytest.approx(np.mean(noisy))
    m = decision_margin(torch.from_numpy(clean.t_out), torch.from_numpy(np.asarray(y)))
    finite = m[torch.isfinite(m)]
    assert row["margins"]["n_both_fired"] == finite.numel()
    if finite.numel():
        assert row["margins"]["quantiles"]["50%"] == pytest.approx(finite.quantile(0.5).item())


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--sigmas", "0,-1"], "finite numbers >= 0"),
        (["--sigmas", "a"], "numbers separated by commas"),
        (["--seeds", "0"], "at least 1"),
        (["--plot", "p.pdf"], "ending in .png"),
    ],
)
def test_bad_arguments_are_refused_before_any_run(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as e:
        jitter.main([str(tmp_path / "missing.ckpt"), *args])
    assert e.value.code == 2 and needle in capsys.readouterr().err
