"""Your own data as an ``.npz`` archive of splits (``relpsp.data.npz``): read, checked, and used by every
command that reads a dataset (train, eval, simulate, cost, data info / verify)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from relpsp import cli
from relpsp.data import DatasetCorruptError, DatasetNotFoundError, dataset_info, load_dataset, verify_dataset


def _images(n: int, seed: int, hw: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose class (0, 1, 2) is which third of the frame is bright: learnable in one epoch."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 40, (n, hw, hw), dtype=np.uint8)
    for i, c in enumerate(y):
        x[i, :, c * hw // 3 : (c + 1) * hw // 3] += 200
    return x, y


def write_archive(path, *, val: bool = False, names: bool = True, **extra) -> None:
    x, y = _images(90, 0)
    arrays = {"x_train": x[:60], "y_train": y[:60], "x_test": x[60:], "y_test": y[60:]}
    if val:
        xv, yv = _images(12, 1)
        arrays.update(x_val=xv, y_val=yv)
    if names:
        arrays["class_names"] = np.array(["left", "middle", "right"])
    arrays.update(extra)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})


def test_an_archive_is_a_dataset_named_by_its_path(tmp_path):
    path = tmp_path / "mine.npz"
    write_archive(path, val=True)
    info = dataset_info(str(path))
    assert info.input_shape == (1, 8, 8)  # [N, H, W] images take one channel
    assert (info.num_classes, info.class_names) == (3, ("left", "middle", "right"))
    assert dict(info.split_sizes) == {"train": 60, "val": 12, "test": 30}
    x, y = load_dataset(str(path), "test")
    raw, labels = _images(90, 0)
    assert x.dtype == torch.float32 and x.shape == (30, 1, 8, 8) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], torch.from_numpy(raw[60:].astype(np.float32) / 255))  # uint8 0..255 -> [0, 1]
    assert torch.equal(y, torch.from_numpy(labels[60:]))
    assert load_dataset(str(path), "val")[0].shape == (12, 1, 8, 8)
    assert torch.equal(load_dataset(str(path), "test", invert=True)[0], 1 - x)
    assert dataset_info(str(path), dog=True).input_shape == (2, 8, 8)
    assert [c.status for c in verify_dataset(str(path))] == ["ok"]


def test_features_bool_and_float_inputs_and_default_class_names(tmp_path):
    rng = np.random.default_rng(0)
    f = rng.random((20, 5))
    path = tmp_path / "features.npz"
    y = np.array([0, 4] * 10)
    np.savez(path, x_train=f, y_train=y, x_test=f[:4] > 0.5, y_test=y[:4])  # float64 train, bool test
    info = dataset_info(str(path))
    assert info.input_shape == (5,) and info.class_names == ("0", "1", "2", "3", "4")
    assert torch.allclose(load_dataset(str(path), "train")[0], torch.from_numpy(f).float())
    assert torch.equal(load_dataset(str(path), "test")[0], torch.from_numpy((f[:4] > 0.5).astype(np.float32)))
    with pytest.raises(ValueError, match="dog makes contrast maps of images"):
        load_dataset(str(path), "test", dog=True)
    with pytest.raises(ValueError, match=r"has the splits train, test, not 'val' \(hold out"):
        load_dataset(str(path), "val")


X, Y = _images(10, 0)


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"x_train": X, "y_train": Y, "x_test": X}, r"missing \['y_test'\]"),
        ({"x_train": X, "y_train": Y, "x_test": X, "y_test": Y, "x_val": X}, r"missing \['y_val'\]"),
        (
            {"X_train": X, "y_train": Y, "x_test": X, "y_test": Y},
            r"unknown arrays \['X_train'\]; missing \['x_train'\]",
        ),
        ({"x_train": X, "y_train": Y[:9], "x_test": X, "y_test": Y}, r"y_train must be 10 integer labels"),
        ({"x_train": X, "y_train": Y * 0.5, "x_test": X, "y_test": Y}, r"y_train must be 10 integer labels"),
        ({"x_train": X, "y_train": Y - 1, "x_test": X, "y_test": Y}, r"y_train holds a negative label \(-1\)"),
        ({"x_train": X, "y_train": Y, "x_test": X[:, :4], "y_test": Y}, "the splits' samples differ in shape"),
        ({"x_train": X[:0], "y_train": Y[:0], "x_test": X, "y_test": Y}, r"x_train has shape \(0, 8, 8\)"),
        ({"x_train": X[..., None, None], "y_train": Y, "x_test": X, "y_test": Y}, "x_train has shape"),
        (
            {"x_train": X, "y_train": Y, "x_test": X, "y_test": Y, "class_names": np.array(["a", "b"])},
            "a label is 2, but class_names names only 2 classes",
        ),
        (
            {"x_train": X, "y_train": Y, "x_test": X, "y_test": Y, "class_names": np.arange(3)},
            "class_names must be a 1-D array of strings",
        ),
        (
            {"x_train": X, "y_train": Y, "x_test": X, "y_test": Y, "class_names": np.array([{"a": 1}], dtype=object)},
            "array 'class_names' cannot be read",  # pickled: refused, never unpickled
        ),
    ],
    ids=[
        "no-y-test",
        "x-val-alone",
        "misspelt",
        "label-count",
        "float-labels",
        "negative-label",
        "shapes-differ",
        "empty",
        "five-axes",
        "too-few-names",
        "numeric-names",
        "object-array",
    ],
)
def test_a_malformed_archive_is_refused_naming_the_fault(tmp_path, arrays, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetCorruptError, match=needle):
        dataset_info(str(path))
    assert verify_dataset(str(path))[0].status == "corrupt"


@pytest.mark.parametrize(
    ("x", "needle"),
    [
        (np.full((10, 8, 8), 1.5), r"holds 1\.5; float inputs are intensities in \[0, 1\]"),
        (np.full((10, 8, 8), np.nan), "holds nan"),
        (X.astype(np.int64), "has dtype int64; give uint8"),
    ],
    ids=["above-one", "nan", "int64"],
)
def test_inputs_out_of_range_are_refused_when_read(tmp_path, x, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=X, y_train=Y, x_test=x, y_test=Y)
    with pytest.raises(DatasetCorruptError, match=needle):
        load_dataset(str(path), "test")


def test_missing_and_non_archive_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"does not exist; an \.npz dataset holds x_train"):
        dataset_info(str(tmp_path / "absent.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DatasetCorruptError, match=r"is not a readable \.npz archive"):
        dataset_info(str(tmp_path / "text.npz"))
    with open(tmp_path / "single.npz", "wb") as fh:
        np.save(fh, X)
    with pytest.raises(DatasetCorruptError, match="holds a single array"):
        dataset_info(str(tmp_path / "single.npz"))


def test_train_eval_simulate_and_data_commands_on_an_archive(tmp_path, monkeypatch, capsys):
    from relpsp.sim import is_split_archive

    write_archive(tmp_path / "mine.npz", val=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "../mine.npz", "--arch", "8C3-P2-3", "--epochs", "1", "--lr", "0.01"]
    assert cli.main([*argv, "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["config"]["data"]["dataset"] == str(tmp_path / "mine.npz")  # stored absolute: found from anywhere
    assert res["config"]["model"]["input_shape"] == [1, 8, 8]
    assert res["test_accuracy"] > 0.6  # three bright bands: learnable in one epoch
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--per-class", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "val: accuracy" in out and "0 left" in out and "2 right" in out
    assert is_split_archive(tmp_path / "mine.npz")
    assert cli.main(["simulate", str(run / "checkpoint.ckpt"), "--compare"]) == 0
    out, err = capsys.readouterr()
    assert "decisions agree on 1.0000" in out and "warning" not in err  # the archive's preprocessing is applied
    assert cli.main(["simulate", str(run / "checkpoint.ckpt"), "--split", "val"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert cli.main(["data", "info", "mine.npz"]) == 0
    out = capsys.readouterr().out
    assert "classes:     3 (left, middle, right)" in out and "train 60, val 12, test 30" in out and "ok" in out
    assert cli.main(["data", "fetch", "mine.npz"]) == 2
    assert "nothing to fetch" in capsys.readouterr().err
    # without --out the run folder is named after the archive's file name, under ./runs
    assert cli.main(["train", "--dataset", "mine.npz", "--arch", "8C3-P2-3", "--epochs", "1", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "mine-8C3-P2-3-seed0" / "results.json").is_file()
    # the archive has a validation split of its own, so holding one out of train is refused
    assert cli.main(["train", "--dataset", "mine.npz", "--arch", "8C3-P2-3", "--set", "data.val_size=5"]) == 2
    assert "has a validation split of its own" in capsys.readouterr().err


def _png_folders(root, classes=("cat", "dog"), splits=("train", "test"), per_class=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for k, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                rgb[..., k % 3] = 255  # each class has one saturated channel
                Image.fromarray(rgb).save(root / split / cls / f"{i}.png")
    return root


def test_pack_writes_image_folders_into_an_archive_training_reads(tmp_path, capsys):
    from relpsp.data import load_image_folder

    root = _png_folders(tmp_path / "imgs")
    out = tmp_path / "packed.npz"
    assert cli.main(["data", "pack", str(root), str(out), "--image-size", "8", "6"]) == 0
    assert "wrote" in capsys.readouterr().out
    info = dataset_info(str(out))
    assert (info.input_shape, info.class_names, dict(info.split_sizes)) == (
        (1, 8, 6),
        ("cat", "dog"),
        {"train": 6, "test": 6},
    )
    # the same images as the grayscale folder reader gives, label by sorted class folder
    x, y = load_dataset(str(out), "test")
    x_ref, y_ref = load_image_folder(root / "test", ["cat", "dog"], size=(8, 6))
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    # colour keeps three channels; an existing archive is refused unless --overwrite
    assert cli.main(["data", "pack", str(root), str(out), "--image-size", "8", "6", "--color"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["data", "pack", str(root), str(out), "--image-size", "8", "6", "--color", "--overwrite"]) == 0
    x, _ = load_dataset(str(out), "train")
    assert x.shape == (6, 3, 8, 6)
    assert float(x[:3, 0].min()) == 1.0 and float(x[3:, 1].min()) == 1.0  # cat: red saturated, dog: green


def test_pack_refuses_uneven_class_folders_and_bad_names(tmp_path, capsys):
    root = _png_folders(tmp_path / "imgs")
    (root / "test" / "bird").mkdir()
    assert cli.main(["data", "pack", str(root), str(tmp_path / "a.npz"), "--image-size", "4", "4"]) == 2
    assert "has the class folders ['bird', 'cat', 'dog'], but" in capsys.readouterr().err
    assert (
        cli.main(["data", "pack", str(tmp_path / "imgs" / "train"), str(tmp_path / "a.npz"), "--image-size", "4", "4"])
        == 2
    )
    assert "must hold train/ and test/" in capsys.readouterr().err
    assert cli.main(["data", "pack", str(root), str(tmp_path / "a.zip"), "--image-size", "4", "4"]) == 2
    assert "must end in .npz" in capsys.readouterr().err
    assert not (tmp_path / "a.npz").exists()


def test_simulate_applies_the_training_preprocessing_to_an_archive(tmp_path, capsys):
    """A network trained on an archive with data.invert sees inverted images in simulate's test split too
    (it saw them as they were stored, and agreed with a torch model fed the same wrong inputs)."""
    import re

    write_archive(tmp_path / "mine.npz")
    run = tmp_path / "run"
    argv = ["train", "--dataset", str(tmp_path / "mine.npz"), "--arch", "8C3-P2-3", "--epochs", "1", "--lr", "0.01"]
    assert cli.main([*argv, "--set", "data.invert=true", "--threads", "1", "--no-progress", "--out", str(run)]) == 0
    trained = json.loads((run / "results.json").read_text())["test_accuracy"]
    capsys.readouterr()
    assert cli.main(["simulate", str(run), "--compare"]) == 0
    out, err = capsys.readouterr()
    simulated = float(re.search(r"\(test\): accuracy ([0-9.]+)", out)[1])
    torch_accuracy = float(re.search(r"torch accuracy ([0-9.]+)", out)[1])
    assert simulated == pytest.approx(trained, abs=1e-9) and torch_accuracy == pytest.approx(trained, abs=1e-9)
    assert "warning" not in err
