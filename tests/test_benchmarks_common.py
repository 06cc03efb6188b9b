"""The benchmarks' shared helpers: strict JSON output and honest provenance."""

from __future__ import annotations

import json
import math

import numpy as np

from benchmarks.common import environment, write_json


def test_write_json_is_strict_json_with_non_finite_numbers_as_null(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": math.inf, "b": [math.nan, 1.5, np.float32(2.0)], "c": np.int64(3), "d": (True, None)})
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.5, 2.0], "c": 3, "d": [True, None]}


def test_environment_outside_a_git_checkout_says_unknown(tmp_path, monkeypatch):
    """Without git history (a copied tree) the commit is null and the source state unknown, not "clean"."""
    monkeypatch.chdir(tmp_path)
    env = environment("cpu")
    assert env["commit"] is None and env["source_modified"] == "unknown"
    assert env["torch"] and env["device"]
