"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def test_readme_python_example_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    torch.manual_seed(0)
    scope: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), scope)
    assert scope["t_out"].shape == (8, 10)
    assert scope["pred"].shape == (8,)
    assert all(p.grad is not None for p in scope["model"].parameters())
