"""Shared pieces of the benchmark programs: environment report, realistic inputs, timing, JSON output."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from relpsp._fileio import check_output_file, json_text
from relpsp.config import ModelConfig
from relpsp.train import device_name
from relpsp.train.runtime import cpu_code_targets, git_source_state, library_versions

__all__ = [
    "add_threads_argument",
    "device_parser",
    "environment",
    "load_cpu_kernels",
    "mnist_like_batch",
    "peak_rss_mib",
    "refuse_bad_output_file",
    "reset_peak_rss",
    "thread_counts",
    "time_it",
    "window_model_config",
    "write_json",
]

#: ``--kernel window``: the neuron settings (``[model]`` section) of this shipped experiment file
WINDOW_CONFIG = "mnist_cnn_window"


#: the checkout these benchmarks are in: its commit is recorded, whatever the current folder
REPO = Path(__file__).resolve().parents[1]


def device_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every model-level benchmark takes: ``--batch``, ``--device``, ``--backend``, ``--out``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", help="JSON file for the results")
    return ap


def refuse_bad_output_file(ap: argparse.ArgumentParser, out: str | None, *inputs: str | os.PathLike) -> None:
    """``--out`` checked before any measurement, not after all of them: a folder, or one of the files
    ``inputs`` being measured, is refused by ``ap.error``."""
    if out:
        try:
            check_output_file(out, *inputs)
        except ValueError as e:
            ap.error(str(e))


def thread_counts() -> dict:
    """``torch_threads`` and (where numba is installed) ``numba_threads`` as set now."""
    counts = {"torch_threads": torch.get_num_threads()}
    try:
        import numba

        counts["numba_threads"] = numba.get_num_threads()
    except ImportError:
        pass
    return counts


def environment(device: str = "cpu") -> dict:
    """Device, versions, threads and commit: printed and stored with every benchmark result."""
    env: dict = {"device": device_name(device), "cpu_count": os.cpu_count()}
    env.update(library_versions())
    env.update(thread_counts())
    env.update(cpu_code_targets())  # the instruction sets the CPU arithmetic was built for
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    # whether the package, its configs (relpsp/configs is a link to configs/, which git does not follow;
    # --kernel window reads them) or the benchmarks differ from that commit, new files included; no git, or
    # not a checkout: commit null and the state unknown
    state = git_source_state(REPO, ("relpsp", "configs", "benchmarks"), untracked=True)
    env["commit"], env["source_modified"] = state if state is not None else (None, "unknown")
    return env


def mnist_like_batch(batch: int, seed: int = 0, data_dir: str | None = None) -> tuple[torch.Tensor, str]:
    """Intensities ``[B, 1, 28, 28]``: real MNIST test images when available, else synthetic digits-like
    images with the MNIST fraction of lit pixels (about 19%) and its intensity histogram (most lit pixels
    near full brightness). Returns the batch and a description of its source."""
    try:
        from relpsp.data import load_dataset

        x, _ = load_dataset("mnist", "test", data_dir)
        g = torch.Generator().manual_seed(seed)
        if batch > len(x):  # more than the test set holds: a full batch all the same, images repeated
            return x[torch.randint(len(x), (batch,), generator=g)], "MNIST test images (drawn with replacement)"
        return x[torch.randperm(len(x), generator=g)[:batch]], "MNIST test images"
    except (FileNotFoundError, ValueError, ImportError):
        g = torch.Generator().manual_seed(seed)
        lit = torch.rand(batch, 1, 28, 28, generator=g) < 0.19
        level = torch.where(
            torch.rand(batch, 1, 28, 28, generator=g) < 0.55, 1.0, torch.rand(batch, 1, 28, 28, generator=g)
        )
        return torch.where(lit, level, 0.0), "synthetic (19% lit pixels; MNIST not found)"


def time_it(
    fn: Callable[[], None], *, warmup: int = 2, repeat: int = 7, sync: Callable[[], None] | None = None
) -> dict:
    """Median and spread of wall-clock seconds over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeat": repeat}


def load_cpu_kernels() -> None:
    """Import the compiled CPU backend (numba) if it is installed, before a memory baseline. The compiled
    functions themselves load at their first call: the benchmarks run their case once on a single row
    (``layers``) or sample (``train_step``) before reading the baseline, which loads them too."""
    try:
        import relpsp.kernels.cpu_numba  # noqa: F401
    except ImportError:
        pass


def _proc_status_mib(field: str) -> float | None:
    """``VmRSS`` or ``VmHWM`` of /proc/self/status in MiB; None where there is none (not Linux)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) / 1024 if m else None


def add_threads_argument(ap: argparse.ArgumentParser) -> None:
    """``--threads``, given to the kernels as ``relpsp train`` gives them (``relpsp.train.set_threads``)."""
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (0: all cores), given as relpsp train gives them: to numba, torch on one, for the "
        "ReL-PSP kernels; to torch for plain torch layers (the windowed neuron, the torch and ref paths)",
    )


def peak_rss_mib() -> float:
    """High-water mark of this process's resident memory, in MiB (since ``reset_peak_rss``, where it
    could reset it)."""
    hwm = _proc_status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> float:
    """The baseline of a peak-memory measurement, in MiB: the resident memory now, with Linux's high-water
    mark reset to it (``/proc/self/clear_refs``), so that ``peak_rss_mib() - baseline`` is the growth from
    here even when the process was larger before (loading a data set, say, then freeing most of it: an
    earlier high-water mark hid a smaller step's growth entirely). Where the mark cannot be reset, the
    mark itself is the baseline, and only growth beyond it shows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return peak_rss_mib()
    rss = _proc_status_mib("VmRSS")
    return rss if rss is not None else peak_rss_mib()


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """``obj`` as strict JSON (non-finite numbers become null), written atomically."""
    from relpsp.checkpoint import atomic_write_bytes  # creates the folder too

    text = json_text(obj)
    atomic_write_bytes(path, (text + "\n").encode())


def window_model_config(arch: str, shape: tuple[int, ...]) -> ModelConfig:
    """The ``[model]`` settings of the windowed neuron in ``WINDOW_CONFIG`` (window, initialisation,
    standardised weights) with ``arch`` and ``input_shape`` replaced."""
    from relpsp.config import config_from_dict, find_config, load_toml

    model = config_from_dict(load_toml(find_config(WINDOW_CONFIG))).model
    return dataclasses.replace(model, arch=arch, input_shape=tuple(shape))
