"""relpsp.data.caltech and ``relpsp data prepare``: the Face/Motorbike split built from a Caltech-101 copy
(colour JPEGs in ``101_ObjectCategories/<category>/``, written here), its layout, checksums, determinism,
and its refusals, which leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import relpsp.data as D
from relpsp.cli import main
from relpsp.data._files import sha256_bytes
from relpsp.data.caltech import prepare_caltech
from relpsp.data.images import read_sha256sums


def make_caltech101(root: Path, faces: int = 7, motorbikes: int = 9) -> Path:
    """``root/101_ObjectCategories/{Faces,Motorbikes,airplanes}`` of small colour JPEGs (faces bright,
    motorbikes dark), plus a stray non-image file; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(1)
    cats = root / "101_ObjectCategories"
    for name, n, base in (("Faces", faces, 200), ("Motorbikes", motorbikes, 50), ("airplanes", 3, 120)):
        (cats / name).mkdir(parents=True)
        for i in range(n):
            h, w = rng.integers(12, 30, size=2)
            pix = np.clip(base + rng.integers(-20, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pix, mode="RGB").save(cats / name / f"image_{i + 1:04d}.jpg", quality=90)
    (cats / "Faces" / "Thumbs.db").write_bytes(b"not an image")
    return root


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_split_layout_checksums_and_loading(tmp_path):
    src = make_caltech101(tmp_path / "src")
    dest = prepare_caltech(src, tmp_path / "out" / "caltech", seed=3, train_per_class=3, test_per_class=2)
    assert dest == tmp_path / "out" / "caltech"
    assert leftovers(tmp_path / "out") == ["caltech"]  # no temporary folder left
    sums = read_sha256sums(dest / "SHA256SUMS")
    meta = json.loads((dest / "SPLIT.json").read_text())
    assert sorted(sums) == sorted(meta["files"]) and len(sums) == 10
    for split, n in (("train", 3), ("test", 2)):
        for cls, cat in (("face", "Faces"), ("motorbike", "Motorbikes")):
            names = sorted(p.name for p in (dest / split / cls).iterdir())
            assert len(names) == n
            for name in names:
                rel = f"{split}/{cls}/{name}"
                copied = (dest / rel).read_bytes()
                assert meta["files"][rel] == f"{cat}/{name}"
                assert copied == (src / "101_ObjectCategories" / cat / name).read_bytes()  # bytes unchanged
                assert sums[rel] == sha256_bytes(copied)
    for cls in ("face", "motorbike"):  # no image in both splits
        train = {p.name for p in (dest / "train" / cls).iterdir()}
        assert train.isdisjoint(p.name for p in (dest / "test" / cls).iterdir())
    assert meta["seed"] == 3 and meta["train_per_class"] == 3 and meta["test_per_class"] == 2
    assert meta["source"] == str((src / "101_ObjectCategories").resolve())

    x, y = D.load_dataset("caltech", "train", root=dest, image_size=(8, 10))  # verified against SHA256SUMS
    assert x.shape == (6, 1, 8, 10) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert float(x[:3].mean()) > 0.6 > 0.3 > float(x[3:].mean())  # colour JPEGs read as grayscale
    assert D.load_dataset("caltech", "test", root=dest, image_size=8)[0].shape == (4, 1, 8, 8)


def test_split_is_set_by_the_seed_and_the_categories_folder_may_be_given_directly(tmp_path):
    src = make_caltech101(tmp_path / "src", faces=12, motorbikes=12)

    def split(dest: Path) -> dict[str, str]:
        return json.loads((dest / "SPLIT.json").read_text())["files"]

    a = split(prepare_caltech(src, tmp_path / "a", seed=0, train_per_class=4, test_per_class=4))
    b = split(
        prepare_caltech(src / "101_ObjectCategories", tmp_path / "b", seed=0, train_per_class=4, test_per_class=4)
    )
    c = split(prepare_caltech(src, tmp_path / "c", seed=1, train_per_class=4, test_per_class=4))
    assert a == b
    assert a != c


def test_defaults_take_200_and_198_per_class(tmp_path, monkeypatch):
    import relpsp.data.caltech as caltech

    monkeypatch.setattr(caltech, "decode_image", lambda data, size, name: None)  # counts only: skip decoding
    for cat, n in (("Faces", 398), ("Motorbikes", 400)):
        folder = tmp_path / "src" / cat
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"image_{i:04d}.jpg").write_bytes(f"{cat} {i}".encode())
    dest = prepare_caltech(tmp_path / "src", tmp_path / "out")
    counts = {f"{s}/{c}": len(list((dest / s / c).iterdir())) for s in ("train", "test") for c in ("face", "motorbike")}
    assert counts == {"train/face": 200, "train/motorbike": 200, "test/face": 198, "test/motorbike": 198}
    assert len(read_sha256sums(dest / "SHA256SUMS")) == 796


def test_refusals_write_nothing(tmp_path):
    src = make_caltech101(tmp_path / "src", faces=9, motorbikes=9)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FileNotFoundError, match=r"Faces has 9 image\(s\); 5 \+ 5 are needed"):
        prepare_caltech(src, out / "c", train_per_class=5, test_per_class=5)
    assert leftovers(out) == []
    victim = src / "101_ObjectCategories" / "Motorbikes" / "image_0004.jpg"
    victim.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(D.DatasetCorruptError, match=r"image_0004.jpg: cannot decode image"):
        prepare_caltech(src, out / "c", train_per_class=4, test_per_class=5)  # every motorbike is used
    assert leftovers(out) == []
    (out / "c").mkdir()
    (out / "c" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        prepare_caltech(src, out / "c", train_per_class=1, test_per_class=1)
    assert leftovers(out) == ["c"] and leftovers(out / "c") == ["mine.txt"]
    with pytest.raises(FileNotFoundError, match="holds neither Faces and Motorbikes"):
        prepare_caltech(src / "101_ObjectCategories" / "airplanes", out / "d")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        prepare_caltech(tmp_path / "nowhere", out / "d")
    for kwargs, match in (
        ({"train_per_class": 0}, "train_per_class must be a positive whole number"),
        ({"test_per_class": 2.5}, "test_per_class must be a positive whole number"),
        ({"seed": -1}, "seed must be a non-negative whole number"),
        ({"seed": True}, "seed must be a non-negative whole number"),
    ):
        with pytest.raises(ValueError, match=match):
            prepare_caltech(src, out / "d", **kwargs)
    assert leftovers(out) == ["c"]


def test_cli_prepare_then_verify_and_train_reads_it(tmp_path, capsys):
    src = make_caltech101(tmp_path / "src")
    data = tmp_path / "data"
    args = ["data", "prepare", "caltech", "--from", str(src), "--data-dir", str(data)]
    assert main([*args, "--train-per-class", "3", "--test-per-class", "2", "--seed", "5"]) == 0
    assert "caltech-face-motorbike: ready in" in capsys.readouterr().out
    assert main(["data", "verify", "caltech", "--data-dir", str(data)]) == 0
    assert "all 2 folder(s) ok" in capsys.readouterr().out  # train and test, each image checked
    assert D.load_dataset("caltech", "train", data_dir=data, image_size=8)[0].shape == (6, 1, 8, 8)
    assert main(["data", "info", "caltech", "--data-dir", str(data)]) == 0
    info = capsys.readouterr().out
    assert "seed 5, 3 train / 2 test per class" in info
    assert "splits:      train 400, test 396 (the standard split's; this folder's own is below)" in info

    assert main([*args, "--train-per-class", "3", "--test-per-class", "2"]) == 2  # the folder training reads
    err = capsys.readouterr().err
    assert "already exists" in err and "--out DIR" in err and "nothing was written" in err

    other = tmp_path / "other"  # built elsewhere, then linked as the one training reads
    assert main([*args, "--out", str(other), "--train-per-class", "2", "--test-per-class", "1"]) == 0
    assert f"--source {other}" in capsys.readouterr().out
    assert main(["data", "fetch", "caltech", "--source", str(other), "--data-dir", str(tmp_path / "d2")]) == 0
    assert D.load_dataset("caltech", "test", data_dir=tmp_path / "d2", image_size=8)[0].shape == (2, 1, 8, 8)

    assert main(["data", "prepare", "mnist", "--from", str(src), "--data-dir", str(data)]) == 2
    assert "prepare builds caltech-face-motorbike only" in capsys.readouterr().err
    assert main(["data", "prepare", "caltech", "--from", str(src), "--out", str(tmp_path / "x"), "--seed", "-2"]) == 2
    assert "seed must be a non-negative whole number" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_split_follows_the_documented_rule(tmp_path):
    """docs/DATA.md / caltech.py docstring: per class the files sorted by name are shuffled by
    numpy.random.default_rng(seed) (faces first, then motorbikes, one generator); the first
    train_per_class go to train/, the next test_per_class to test/."""
    src = make_caltech101(tmp_path / "src", faces=7, motorbikes=9)
    dest = prepare_caltech(src, tmp_path / "out", seed=4, train_per_class=3, test_per_class=2)
    files = json.loads((dest / "SPLIT.json").read_text())["files"]
    rng = np.random.default_rng(4)
    want = {}
    for cls, cat in (("face", "Faces"), ("motorbike", "Motorbikes")):
        names = sorted(p.name for p in (src / "101_ObjectCategories" / cat).iterdir() if p.suffix == ".jpg")
        order = rng.permutation(len(names))
        want.update({f"train/{cls}/{names[i]}": f"{cat}/{names[i]}" for i in order[:3]})
        want.update({f"test/{cls}/{names[i]}": f"{cat}/{names[i]}" for i in order[3:5]})
    assert files == want
