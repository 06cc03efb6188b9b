"""The wheel holds what an installed relpsp needs: every module, the shipped experiments, the licence and
the command, and nothing of the repository's tests or benchmarks."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates license-files (>= 77 builds the wheel)")
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("relpsp-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "relpsp = relpsp.cli:main" in z.read(entry_points).decode()
    return names


def test_the_wheel_holds_every_module_and_experiment_and_the_licence(wheel_names):
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "relpsp").rglob("*.py")}
    assert modules <= set(wheel_names)
    configs = {f"relpsp/configs/{p.name}" for p in (ROOT / "configs").glob("*.toml")}
    assert configs and configs <= set(wheel_names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names)
    assert not [n for n in wheel_names if n.startswith(("tests/", "benchmarks/", "scripts/", "examples/", "docs/"))]
