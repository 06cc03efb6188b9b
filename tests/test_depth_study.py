"""scripts/depth_study.py: the per-layer measurements behind docs/DEPTH.md, on networks built to order."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("numba")

from relpsp.models import build_model
from tests.helpers import load_script

depth_study = load_script("depth_study")


@pytest.mark.parametrize("kernel", ["relpsp", "alpha"])
def test_diagnose_reports_dead_layers_and_their_zero_gradients(kernel):
    torch.manual_seed(0)
    model = build_model("16-12-8-3", kernel=kernel, init_mean=10.0)
    with torch.no_grad():
        model[2].weight.fill_(-0.1)  # the second hidden layer can never fire
    x = torch.rand(32, 16)
    y = torch.randint(0, 3, (32,))
    d = depth_study.diagnose(model, x, y, 0.1)
    first, dead, out = d["layers"]
    assert first["silent_fraction"] < 0.5 and first["dead_fraction"] == 0.0
    assert dead["silent_fraction"] == 1.0 and dead["dead_fraction"] == 1.0
    assert math.isnan(dead["slope_median"])
    assert out["silent_fraction"] == 1.0  # nothing reaches the output
    assert all(layer["mean_abs_weight_grad"] == 0.0 for layer in d["layers"])  # no output spike: no gradient
    assert d["accuracy"] == 0.0


def test_diagnose_slopes_are_the_causal_weight_sums_for_relpsp():
    torch.manual_seed(1)
    model = build_model("6-4", init_mean=5.0)
    x = torch.rand(5, 6)
    d = depth_study.diagnose(model, x, torch.zeros(5, dtype=torch.long), 0.1)
    t_in = model[0](x)
    t_out = model[1](t_in).detach()
    causal = (t_in.unsqueeze(1) < t_out.unsqueeze(2)).float()
    w_j = (causal * model[1].weight.detach().unsqueeze(0)).sum(-1)
    assert d["layers"][0]["slope_median"] == pytest.approx(float(w_j[torch.isfinite(t_out)].median()))
    assert d["layers"][0]["mean_abs_weight_grad"] > 0


def test_series_labels_name_each_study():
    run = {"kernel": "alpha", "depth": 1, "test_accuracy": 0.5}
    payloads = [
        {"settings": {}, "runs": [dict(run, kernel="relpsp"), run]},
        {"settings": {"alpha_init_mean": 10.0, "kernel_tau": 3.0}, "runs": [run]},
    ]
    labels = [label for label, _ in depth_study.series_of(payloads)]
    assert labels == ["ReL-PSP", "alpha kernel, same settings", "alpha kernel, init 10, tau 3"]


def test_table_has_a_row_per_series_and_a_column_per_depth():
    runs = [{"kernel": "relpsp", "depth": d, "test_accuracy": a} for d, a in ((1, 0.9512), (3, 0.5))]
    text = depth_study.table([{"settings": {}, "runs": runs}])
    lines = text.splitlines()
    assert lines[0] == "| network | 1 hidden | 3 hidden |"
    assert lines[2] == "| ReL-PSP | 95.12 | 50.00 |"


def test_plot_labels_come_from_the_settings_and_mixed_studies_are_refused(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes
    import matplotlib.figure

    texts: list[str] = []
    for cls, name in (
        (matplotlib.axes.Axes, "set_xlabel"),
        (matplotlib.axes.Axes, "set_title"),
        (matplotlib.figure.Figure, "suptitle"),
    ):
        real = getattr(cls, name)

        def record(self, text, *a, _real=real, **k):
            texts.append(str(text))
            return _real(self, text, *a, **k)

        monkeypatch.setattr(cls, name, record)
    layer = {"dead_fraction": 0.1, "mean_abs_weight_grad": 1e-3, "small_slope_fraction": 0.0}
    run = {
        "kernel": "relpsp",
        "depth": 4,
        "test_accuracy": 0.9,
        "init": {"layers": [layer] * 5},
        "trained": {"layers": [layer] * 5},
    }
    settings = {"width": 50, "dataset": "fashion-mnist", "train_size": 5000, "epochs": 3}
    paths = depth_study.plot([{"settings": settings, "runs": [run]}], tmp_path)
    assert [p.name for p in paths] == ["depth_accuracy.png", "depth_layers_d4.png"]
    assert "hidden layers (50 neurons each)" in texts and "fashion-mnist (5k training images, 3 epochs)" in texts
    assert "Per layer, 4 hidden layers of 50 neurons" in texts
    other = {"settings": dict(settings, width=100), "runs": [dict(run, kernel="alpha")]}
    with pytest.raises(ValueError, match="differ in width"):
        depth_study.plot([{"settings": settings, "runs": [run]}, other], tmp_path)


def test_plot_of_a_study_file_with_null_measurements(tmp_path):
    """A layer with nothing to measure (no crossing, say) is NaN in the study and null in its strict JSON
    file; the figures drawn from the file leave that point out instead of failing on None."""
    pytest.importorskip("matplotlib")
    empty = {"dead_fraction": 1.0, "mean_abs_weight_grad": None, "small_slope_fraction": None}
    layer = {"dead_fraction": 0.1, "mean_abs_weight_grad": 1e-3, "small_slope_fraction": 0.0}
    run = {
        "kernel": "alpha",
        "depth": 4,
        "test_accuracy": 0.1,
        "init": {"layers": [layer] * 5},
        "trained": {"layers": [layer, empty, empty, empty, empty]},
    }
    settings = {"width": 50, "dataset": "mnist", "train_size": 5000, "epochs": 3}
    paths = depth_study.plot([{"settings": settings, "runs": [run]}], tmp_path)
    assert [p.name for p in paths] == ["depth_accuracy.png", "depth_layers_d4.png"]
    assert all(p.stat().st_size > 0 for p in paths)
