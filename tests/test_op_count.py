"""benchmarks.op_count: the work model behind the GPU floor in docs/PERFORMANCE.md, on hand-counted nets."""

from __future__ import annotations

import pytest

from benchmarks.op_count import count


def test_dense_counts_by_hand():
    r = count("4-3", (4,), batch=2, active=0.5)
    assert r["synapses_per_sample"] == 12
    assert r["flop_per_sample"] == pytest.approx(12 * (3 * 0.5 + 4))  # first layer: no input gradient
    assert r["weights"] == 12 and r["adam_bytes_per_step"] == 7 * 4 * 12
    assert r["largest_patch_buffer_bytes"] == 2 * 4 * 4


def test_conv_then_dense_counts_by_hand():
    # 2C3 on 1x4x4: 2x2 positions x 2 channels x 9 inputs = 72 synapses; then 8 -> 5 dense = 40.
    r = count("2C3-5", (1, 4, 4), batch=3, active=1.0)
    assert [x["synapses_per_sample"] for x in r["layers"]] == [72, 40]
    assert r["flop_per_sample"] == pytest.approx(72 * (3 + 4) + 40 * (3 + 4 + 3))
    assert r["layers"][0]["patch_bytes_at_batch"] == 3 * 4 * 9 * 4


def test_an_architecture_without_a_target_is_written_as_null_with_the_environment(tmp_path, capsys):
    import json

    from benchmarks.op_count import main

    out = tmp_path / "oc.json"
    assert main(["--archs", "784-30-10", "--out", str(out)]) == 0
    assert "no target" in capsys.readouterr().out
    text = out.read_text()
    assert "NaN" not in text  # strict JSON
    payload = json.loads(text)
    assert payload["archs"][0]["tflops_needed_at_target"] is None
    assert {"device", "torch", "commit"} <= set(payload["environment"])
