"""Strict JSON output (``relpsp._fileio.json_text``) and the readers of the files written with it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from relpsp._fileio import json_text


def _strict_loads(text: str):
    def refuse(name: str):
        raise AssertionError(f"non-standard JSON constant {name} in the output")

    return json.loads(text, parse_constant=refuse)


def test_json_text_is_strict_and_turns_array_and_scalar_types_into_plain_values():
    value = {
        "inf": math.inf,
        "ninf": -math.inf,
        "nan": [math.nan, 1.5, np.float32(2.0), np.float64(np.nan)],
        "int": np.int64(3),
        "bool": np.bool_(True),
        "tuple": (True, None, "a"),
        "array": np.array([[1.0, np.inf], [0.5, -2.0]]),
        "scalar_array": np.array(0.25),
        "tensor": torch.tensor([1.0, float("nan")]),
        "tensor_scalar": torch.tensor(7),
        "path": Path("runs") / "a",
        3: "int key",
    }
    assert _strict_loads(json_text(value)) == {
        "inf": None,
        "ninf": None,
        "nan": [None, 1.5, 2.0, None],
        "int": 3,
        "bool": True,
        "tuple": [True, None, "a"],
        "array": [[1.0, None], [0.5, -2.0]],
        "scalar_array": 0.25,
        "tensor": [1.0, None],
        "tensor_scalar": 7,
        "path": str(Path("runs") / "a"),
        "3": "int key",
    }


def test_json_text_layout_options():
    assert json_text({"b": 1, "a": [1, 2]}, indent=None, sort_keys=True) == '{"a": [1, 2], "b": 1}'
    assert "\n" in json_text({"a": 1})  # indented by default


def test_metrics_with_a_non_finite_number_are_strict_json_and_read_back_as_nan(tmp_path):
    """A metric that is NaN or infinite in a run (a loss over silent outputs, say) is written as null, so
    every line is standard JSON; ``relpsp plot``'s reader turns it back into NaN. A null epoch is refused."""
    from relpsp.train.run_folder import read_metrics, write_metrics

    rows = [
        {"epoch": 1, "train_loss": math.nan, "train_accuracy": 0.5, "test_loss": math.inf},
        {"epoch": 2, "train_loss": 0.25, "train_accuracy": 0.75, "test_loss": 0.5},
    ]
    write_metrics(tmp_path, rows)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [_strict_loads(line)["train_loss"] for line in lines] == [None, 0.25]
    back = read_metrics(tmp_path / "metrics.jsonl")
    assert math.isnan(back[0]["train_loss"]) and math.isnan(back[0]["test_loss"]) and back[1] == rows[1]

    (tmp_path / "metrics.jsonl").write_text('{"epoch": null, "train_loss": 0.1, "train_accuracy": 0.5}\n')
    with pytest.raises(ValueError, match="line 1: missing or non-numeric epoch"):
        read_metrics(tmp_path / "metrics.jsonl")
    # an epoch that is no epoch count: `relpsp summary` used to end in an OverflowError traceback for 1e400
    for epoch in ("1e400", "NaN", "0", "1.5", "-2"):
        (tmp_path / "metrics.jsonl").write_text(f'{{"epoch": {epoch}, "train_loss": 0.1, "train_accuracy": 0.5}}\n')
        with pytest.raises(ValueError, match="line 1: epoch must be a whole number >= 1"):
            read_metrics(tmp_path / "metrics.jsonl")


def test_results_json_is_strict(tmp_path):
    from relpsp.train.run_folder import write_json

    write_json(tmp_path / "results.json", {"test_loss": math.inf, "rates": np.array([0.5, np.nan])})
    assert _strict_loads((tmp_path / "results.json").read_text()) == {"rates": [0.5, None], "test_loss": None}


# --- _fileio.atomic_write_with: "The file is fsynced before the rename"
def test_atomic_write_fsyncs_the_new_file_before_renaming_it(tmp_path, monkeypatch):
    import relpsp._fileio as fileio

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", (st.st_dev, st.st_ino)))
        return real_fsync(fd)

    def replace(src, dst):
        st = os.stat(src)
        events.append(("replace", (st.st_dev, st.st_ino)))
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    target = tmp_path / "f.bin"
    fileio.atomic_write_with(target, lambda tmp: tmp.write_bytes(b"data"))
    assert target.read_bytes() == b"data"
    st = target.stat()
    new_file = (st.st_dev, st.st_ino)
    kinds = [e for e in events if e[1] == new_file]
    assert kinds and kinds[0] == ("fsync", new_file), events  # the new file's data is durable first
    assert ("replace", new_file) in kinds[1:], events
