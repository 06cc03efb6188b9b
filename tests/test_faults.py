"""Faults: training processes killed at random moments (some in the middle of a file write) resume to the
weights of an uninterrupted run; damaged, truncated, foreign or malicious checkpoint files are refused.

The kill tests run ``python -m relpsp.cli train`` on Yin-Yang (generated, no files needed) with a
checkpoint after every step, send SIGKILL, and resume with ``--resume`` until the run finishes. Kills in
the middle of a write use the fault hook of ``relpsp.checkpoint`` (``RELPSP_FAULT_WRITE_PAUSE="N:S"``:
after N writes, each write stops half-way for S seconds), so they land exactly there.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from relpsp.checkpoint import FAULT_PAUSE_ENV, CheckpointError, load_checkpoint, read_checkpoint_meta, save_checkpoint
from relpsp.cli import main
from relpsp.train import CHECKPOINT_NAME

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "train",
    "--dataset",
    "yinyang",
    "--arch",
    "4-64-64-3",
    "--epochs",
    "4",
    "--batch-size",
    "250",
    "--lr",
    "0.01",
    "--seed",
    "2",
    "--threads",
    "1",
    "--no-progress",
    "--resume",
    "--set",
    "train.checkpoint_every=1",
]
WRITTEN = (CHECKPOINT_NAME, "metrics.jsonl", "results.json")


def _weights(path: Path) -> dict[str, np.ndarray]:
    arrays, _ = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith("model.")}


def _progress(path: Path) -> tuple[int, int]:
    p = load_checkpoint(path)[1]["progress"]  # raises if the kill left a bad checkpoint
    return p["epoch"], p["step"]


def _temp_files(out: Path) -> list[Path]:
    return [p for name in WRITTEN for p in out.glob(f".{name}.*.tmp")]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # a temporary file renamed away meanwhile
        return 0


def _identity(path: Path) -> tuple[int, int] | None:
    """Changes whenever an atomic write replaces ``path`` (a new inode, a new modification time)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _after_writes(path: Path, n: int):
    """A ``ready()`` that turns true once ``path`` has been replaced ``n`` times since now (polled, so a
    missed replacement only makes the kill later)."""
    state = {"seen": _identity(path), "count": 0}

    def ready() -> bool:
        now = _identity(path)
        if now != state["seen"]:
            state["seen"], state["count"] = now, state["count"] + 1
        return state["count"] >= n

    return ready


def _start(out: Path, pause: str | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_PAUSE_ENV, None)
    if pause:
        env[FAULT_PAUSE_ENV] = pause
    cmd = [sys.executable, "-m", "relpsp.cli", *ARGS, "--out", str(out)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_then_kill(proc: subprocess.Popen, ready, delay_s: float, timeout_s: float = 120.0) -> bool:
    """Wait until ``ready()``, sleep ``delay_s``, SIGKILL; return False if the process ended first."""
    t_end = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < t_end, "the training process made no progress"
        time.sleep(0.005)
    time.sleep(delay_s)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _kill_and_resume(tmp_path: Path, seed: int, kills: list[str]) -> list[str]:
    """Run the reference, then the killed chain; return what happened at each kill."""
    assert main([*ARGS, "--out", str(tmp_path / "ref")]) == 0  # uninterrupted, in this process
    out = tmp_path / "cut"
    ckpt = out / CHECKPOINT_NAME
    rng = np.random.default_rng(seed)
    events, last = [], (0, 0)
    for kind in [*kills, "finish"]:
        before = _identity(ckpt)
        if kind == "mid-write":  # stop half-way in one of the next writes (checkpoint, metrics or results)
            stale = set(_temp_files(out))  # left by an earlier kill; the new process removes them
            proc = _start(out, f"{int(rng.integers(1, 16))}:60")
            killed = _wait_then_kill(proc, lambda s=stale: any(p not in s and _size(p) for p in _temp_files(out)), 0.0)
        elif kind == "random":  # a random moment after this process has written a random number of checkpoints
            proc = _start(out, None)
            killed = _wait_then_kill(proc, _after_writes(ckpt, int(rng.integers(1, 9))), float(rng.uniform(0.0, 0.03)))
        else:
            proc = _start(out, None)
            proc.wait(timeout=300)
            killed = False
        stdout, stderr = proc.communicate()
        assert "Traceback" not in stderr and "error" not in stderr, stderr[-2000:]
        if before is not None:  # every resume loaded the checkpoint it found
            assert re.search(r"resumed from .* at epoch \d+, step \d+", stdout), stdout
        if killed:
            assert proc.returncode == -signal.SIGKILL
            now = _progress(ckpt) if ckpt.exists() else (0, 0)
            assert now >= last, f"progress went back from {last} to {now}"
            last = now
            events.append(f"{kind}: killed at epoch {now[0]}, step {now[1]}, {len(_temp_files(out))} temp file(s) left")
        else:
            assert proc.returncode == 0, stderr[-2000:]
            events.append(f"{kind}: finished")
            break
    assert events[-1].endswith("finished")

    ref, cut = _weights(tmp_path / "ref" / CHECKPOINT_NAME), _weights(ckpt)
    assert ref.keys() == cut.keys()
    for k in ref:
        np.testing.assert_array_equal(cut[k], ref[k], err_msg=k)
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ref_hist = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    for key in ("epoch", "train_loss", "train_accuracy", "test_accuracy", "val_accuracy"):
        assert [r[key] for r in hist] == [r[key] for r in ref_hist], key
    res, ref_res = (json.loads((d / "results.json").read_text()) for d in (out, tmp_path / "ref"))
    assert res["test_accuracy"] == ref_res["test_accuracy"]
    assert _temp_files(out) == []  # the resumes removed what the kills left
    return events


def test_killed_training_resumes_to_identical_weights(tmp_path):
    events = _kill_and_resume(tmp_path, seed=0, kills=["random", "mid-write"])
    assert any(e.startswith("mid-write: killed") for e in events), events


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_many_kills_resume_to_identical_weights(tmp_path, seed):
    kills = ["random", "mid-write"] * 4
    events = _kill_and_resume(tmp_path, seed=seed, kills=kills)
    assert sum(e.startswith(("random: killed", "mid-write: killed")) for e in events) >= 6, events
    print("\n".join(events))


# ----------------------------------------------------------------------------------------- damaged files


def _good_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    rng = np.random.default_rng(0)
    arrays = {"model.1.weight": rng.normal(size=(5, 7)).astype(np.float32), "optim.0.exp_avg": np.zeros(3)}
    meta = {"config": {"model": {"arch": "7-5"}}, "note": "x" * 50}
    save_checkpoint(path, arrays, meta)
    return arrays, meta


def _same_or_refused(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> str:
    """A damaged file must be refused with CheckpointError, or load to exactly the saved content (damage
    in bytes that carry nothing, such as a zip timestamp)."""
    try:
        got_arrays, got_meta = load_checkpoint(path)
    except CheckpointError:
        return "refused"
    assert got_arrays.keys() == arrays.keys()
    for k in arrays:
        np.testing.assert_array_equal(got_arrays[k], arrays[k])
    assert {k: got_meta[k] for k in meta} == meta
    return "unchanged"


def test_every_truncation_is_refused(tmp_path):
    path = tmp_path / "c.ckpt"
    arrays, meta = _good_checkpoint(path)
    data = path.read_bytes()
    for n in range(0, len(data), max(1, len(data) // 150)):
        path.write_bytes(data[:n])
        assert _same_or_refused(path, arrays, meta) == "refused", n


def test_flipped_bytes_are_refused_or_harmless(tmp_path):
    path = tmp_path / "c.ckpt"
    arrays, meta = _good_checkpoint(path)
    data = path.read_bytes()
    payload = set()  # offsets of the bytes of meta.json and the .npy files inside the zip
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            h = info.header_offset
            start = (
                h
                + 30
                + int.from_bytes(data[h + 26 : h + 28], "little")
                + int.from_bytes(data[h + 28 : h + 30], "little")
            )
            payload.update(range(start, start + info.compress_size))
    rng = np.random.default_rng(1)
    positions = rng.choice(len(data), size=min(len(data), 300), replace=False)
    outcomes = {}
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(damaged))
        outcomes[int(pos)] = _same_or_refused(path, arrays, meta)
    in_payload = [o for pos, o in outcomes.items() if pos in payload]
    assert len(in_payload) > 50 and set(in_payload) == {"refused"}


def _zip(
    entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED, flag_bits: int = 0, repeat: str = ""
) -> bytes:
    """A zip archive of ``entries``; ``flag_bits`` set on every entry, ``repeat`` written a second time."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of a repeated name
        for name, data in [*entries.items(), *([(repeat, entries[repeat])] if repeat else [])]:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    out = bytearray(buf.getvalue())
    if flag_bits:  # zipfile sets its own flags when writing: patched into every central-directory record
        at = out.find(b"PK\x01\x02")
        while at >= 0:
            out[at + 8] |= flag_bits
            at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _npy(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def _npy_claiming(shape: tuple[int, ...]) -> bytes:
    """An ``.npy`` header for float64 data of ``shape``, without the data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _foreign_files(marker: Path) -> dict[str, tuple[bytes, str]]:
    meta = {"format": "relpsp-checkpoint/1", "sha256": {"w": "0" * 64}}
    evil = np.empty(1, dtype=object)
    evil[0] = _Evil(marker)
    return {
        "empty": (b"", r"truncated|corrupted|not a relpsp"),
        "png": (b"\x89PNG\r\n\x1a\n" + bytes(100), r"truncated|corrupted|not a relpsp"),
        "torch-pickle": (pickle.dumps({"state": _Evil(marker)}), r"truncated|corrupted|not a relpsp"),
        "other-zip": (_zip({"hello.txt": b"hi"}), r"not a relpsp checkpoint"),
        "other-format": (_zip({"meta.json": json.dumps({"format": "x/2"}).encode()}), r"format 'x/2'"),
        "bad-json": (_zip({"meta.json": b"{not json"}), r"truncated|corrupted"),
        "bad-table": (_zip({"meta.json": json.dumps({**meta, "sha256": [1]}).encode()}), r"malformed"),
        "missing-array": (_zip({"meta.json": json.dumps(meta).encode()}), r"missing array 'w'"),
        "wrong-digest": (
            _zip({"meta.json": json.dumps(meta).encode(), "arrays/w.npy": _npy(np.zeros(3))}),
            r"SHA-256",
        ),
        "pickled-array": (
            _zip({"meta.json": json.dumps(meta).encode(), "arrays/w.npy": _npy(evil, allow_pickle=True)}),
            r"has dtype object",
        ),
        # numpy allocates what a header claims before reading: 8 bytes claiming 10**15 float64 values
        "huge-header": (
            _zip({"meta.json": json.dumps(meta).encode(), "arrays/w.npy": _npy_claiming((10**15,)) + bytes(8)}),
            r"claims shape \(1000000000000000,\) of float64 but holds 8 bytes",
        ),
        "float128": (
            _zip({"meta.json": json.dumps(meta).encode(), "arrays/w.npy": _npy(np.zeros(2, dtype=np.longdouble))}),
            r"at most 64 bits",
        ),
        "deflated": (
            _zip({"meta.json": json.dumps(meta).encode()}, zipfile.ZIP_DEFLATED),
            r"compressed or encrypted entries",
        ),
        # found in review (4 December 2026): each used to escape as a traceback or fill memory
        "encrypted-flag": (_zip({"meta.json": json.dumps(meta).encode()}, flag_bits=0x1), r"encrypted entries"),
        "zero-by-huge": (
            _zip({"meta.json": json.dumps(meta).encode(), "arrays/w.npy": _npy_claiming((0, 2**64))}),
            r"claims shape \(0, 18446744073709551616\)",
        ),
        "boolean-shape": (
            _zip({"meta.json": json.dumps(meta).encode(), "arrays/w.npy": _npy_claiming((True,)) + bytes(8)}),
            r"claims shape \(True,\)",
        ),
        "repeated-entry": (
            _zip({"meta.json": json.dumps(meta).encode()}, repeat="meta.json"),
            r"repeated or overlapping entries",
        ),
    }


#: foreign files whose fault lies in the array table or the arrays, which read_checkpoint_meta does not read
_ARRAY_FAULTS = {
    "bad-table",
    "missing-array",
    "wrong-digest",
    "pickled-array",
    "huge-header",
    "float128",
    "zero-by-huge",
    "boolean-shape",
}


@pytest.mark.parametrize("kind", list(_foreign_files(Path("x"))))
def test_foreign_files_are_refused_without_running_code(tmp_path, kind):
    marker = tmp_path / "pwned"
    data, match = _foreign_files(marker)[kind]
    path = tmp_path / "c.ckpt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    if kind not in _ARRAY_FAULTS:  # the others are refused by their meta.json or the archive itself
        with pytest.raises(CheckpointError, match=match):
            read_checkpoint_meta(path)
    assert not marker.exists()


def test_read_checkpoint_meta_is_load_checkpoints_meta_without_the_arrays(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"w": np.arange(3.0)}, {"config": {"train": {"epochs": 4}}})
    assert read_checkpoint_meta(path) == load_checkpoint(path)[1]
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint_meta(tmp_path / "missing.ckpt")


def test_entries_claiming_more_bytes_than_the_file_are_refused(tmp_path):
    """Stored entries that overlap (each spanning the next) read more bytes than the file holds; the sum of
    the entries' sizes against the file's size refuses them before anything is read. Here one entry's
    size in the central directory is raised past the file's size."""
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"w": np.zeros(3)}, {})
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    data[at + 24 : at + 28] = (len(data) + 1).to_bytes(4, "little")  # uncompressed size of the first entry
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="repeated or overlapping entries"):
        load_checkpoint(path)


def test_checkpoint_meta_is_strict_json(tmp_path):
    """A non-finite metric in the saved history is written as null, as in metrics.jsonl, never as NaN."""
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"w": np.zeros(2)}, {"history": [{"loss": float("nan"), "val": float("inf")}]})
    with zipfile.ZipFile(path) as zf:
        text = zf.read("meta.json").decode()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["history"] == [{"loss": None, "val": None}]
    assert load_checkpoint(path)[1]["history"] == [{"loss": None, "val": None}]


def test_save_refuses_arrays_a_checkpoint_cannot_hold(tmp_path):
    for bad in (np.zeros(2, dtype=np.longdouble), np.zeros(2, dtype=np.complex64), np.array(["a"])):
        with pytest.raises(ValueError, match="at most 64 bits can be saved"):
            save_checkpoint(tmp_path / "c.ckpt", {"w": bad}, {})
    assert not (tmp_path / "c.ckpt").exists()


def test_package_never_unpickles_or_evaluates():
    """Loading paths use zip + .npy (allow_pickle=False), JSON, TOML and the restricted unpickler only."""
    pattern = re.compile(
        r"torch\.load\(|pickle\.loads?\(|allow_pickle=True|(?<![\w.])eval\(|(?<![\w.])exec\(|marshal\.|shelve\."
    )
    sources = sorted((ROOT / "relpsp").rglob("*.py"))
    assert len(sources) > 20  # the package is where this test looks
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in sources
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith(("#", '"', "``"))
    ]
    assert hits == []


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    """mkstemp creates owner-only files; the renamed result gets what open(path, "w") would give under
    the process's umask, so results on a shared filesystem stay readable by the group."""
    from relpsp.checkpoint import atomic_write_bytes

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = tmp_path / "atomic.txt"
    atomic_write_bytes(atomic, b"x")
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


# --- checkpoint._read_npy: "Only plain numeric arrays whose data fills the entry exactly are read."
def test_an_array_entry_with_trailing_bytes_is_refused(tmp_path):
    good = tmp_path / "good.ckpt"
    save_checkpoint(good, {"w": np.arange(6, dtype=np.float32)}, {"x": 1})
    bad = tmp_path / "bad.ckpt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data + b"\0" * 8 if info.filename == "arrays/w.npy" else data)
    assert load_checkpoint(good)[0]["w"].tolist() == list(range(6))
    with pytest.raises(CheckpointError, match="holds 32 bytes: the file is damaged"):
        load_checkpoint(bad)
