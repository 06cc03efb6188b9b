"""What a run ran on: the thread split between torch and the compiled kernels, the code versions and
the device's name (recorded in every ``results.json``)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from relpsp import __version__
from relpsp.kernels import set_cpu_kernel_threads

__all__ = [
    "CPU_TARGET_KEYS",
    "PACKAGE_DIR",
    "code_versions",
    "cpu_code_targets",
    "device_name",
    "git_source_state",
    "library_versions",
    "set_threads",
    "threads_restored",
]


def set_threads(threads: int, torch_heavy: bool = False) -> None:
    """Give the cores to the compiled kernels. torch and numba each bring their own OpenMP pool; when both
    run several threads they fight for the cores (we measured training 5x slower), so torch, which only does
    small elementwise work here, gets one thread and numba gets ``threads`` (0: all cores). With
    ``torch_heavy`` (networks whose layers are torch matrix products, such as the windowed neuron) torch gets
    them instead."""
    n = threads or os.cpu_count() or 1
    if set_cpu_kernel_threads(1 if torch_heavy else n) and not torch_heavy:
        torch.set_num_threads(1)
    else:
        torch.set_num_threads(n)


@contextlib.contextmanager
def threads_restored() -> Iterator[None]:
    """Put torch's and numba's thread counts back as they were on entry (``fit`` changes them for its
    kernels; a caller's later work should not run on one thread because of it). numba, if first loaded
    inside, gets its default back."""
    torch_threads = torch.get_num_threads()
    numba_threads = sys.modules["numba"].get_num_threads() if "numba" in sys.modules else None
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        numba = sys.modules.get("numba")
        if numba is not None:
            numba.set_num_threads(numba_threads or int(numba.config.NUMBA_NUM_THREADS))


#: the relpsp package's folder: the files whose git state ``code_versions`` records
PACKAGE_DIR = Path(__file__).resolve().parents[1]


#: the keys of ``cpu_code_targets`` (and of ``code_versions``) that name the host's CPU code targets
CPU_TARGET_KEYS = ("torch_cpu", "numba_cpu")


def cpu_code_targets() -> dict[str, str]:
    """The instruction sets the CPU arithmetic was built for on this host: torch's kernel level
    (``torch_cpu``, e.g. ``AVX512``; ``ATEN_CPU_CAPABILITY`` lowers it) and the CPU numba compiles the
    kernels for (``numba_cpu``, e.g. ``znver4``; ``NUMBA_CPU_NAME`` sets it). Two hosts that differ here
    may round differently, so a run's numbers are bit for bit repeatable only where these agree."""
    targets = {"torch_cpu": torch.backends.cpu.get_cpu_capability()}
    try:
        import numba
        from llvmlite import binding

        targets["numba_cpu"] = getattr(numba.config, "CPU_NAME", None) or binding.get_host_cpu_name()
    except ImportError:
        pass
    return targets


def library_versions() -> dict[str, str | None]:
    """The versions of Python, torch, numpy and numba (``None`` where numba is not installed)."""
    v: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    try:
        import numba

        v["numba"] = numba.__version__
    except ImportError:
        v["numba"] = None
    return v


def git_source_state(folder: Path, paths: Sequence[str] = (".",), untracked: bool = False) -> tuple[str, str] | None:
    """The short commit of the git checkout that holds ``folder``, and whether the files under ``paths``
    (relative to ``folder``; new files too with ``untracked``) differ from it: ``"yes"`` or ``"no"``.
    ``None`` without git or outside a checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=folder
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", f"--untracked-files={'all' if untracked else 'no'}", "--", *paths],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=folder,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    if head.returncode != 0 or status.returncode != 0 or not commit:
        return None
    return commit, "yes" if status.stdout.strip() else "no"


def code_versions(package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """The versions of relpsp and of ``library_versions`` (numba where installed), the host's CPU code
    targets (``cpu_code_targets``); where ``package_dir`` is in a git checkout, its commit and whether the
    package's tracked files differ from it (``source_modified``: the run used code the commit lacks)."""
    v = {"relpsp": __version__}
    v.update({name: version for name, version in library_versions().items() if version is not None})
    v.update(cpu_code_targets())
    state = git_source_state(package_dir)
    if state is not None:
        v["commit"], v["source_modified"] = state
    return v


def device_name(device: str = "cpu") -> str:
    """The CUDA device's name, or the CPU model (from /proc/cpuinfo where available) and core count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name} ({os.cpu_count()} cores)"
