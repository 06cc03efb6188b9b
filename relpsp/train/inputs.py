"""The data a run trains on: the train / (val) / test splits, the loader options a config implies, the
digest that ties a checkpoint to its training data, and the seeded sample order and image shifts of
every epoch and step (so a resumed run replays exactly)."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from relpsp._validate import check_intensities
from relpsp.config import Config

__all__ = [
    "affine_warp",
    "augment",
    "augment_batch",
    "check_splits",
    "data_digest",
    "data_options",
    "epoch_order",
    "load_splits",
    "run_split",
    "step_key",
]


def load_splits(cfg: Config, source: dict[str, tuple[str, Tensor]] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """Train / (val) / test tensors; the validation set is held out of the training set by a seeded draw.

    ``source``, if given, is filled with where each split's samples come from: ``(dataset split, indices
    into it)``, e.g. ``("train", [...])`` for a held-out validation set."""
    from relpsp.data import dataset_info, load_dataset

    opts = data_options(cfg)
    x_tr, y_tr = load_dataset(cfg.data.dataset, "train", cfg.data.data_dir, **opts)
    x_te, y_te = load_dataset(cfg.data.dataset, "test", cfg.data.data_dir, **opts)
    splits = {"train": (x_tr, y_tr), "test": (x_te, y_te)}
    where = {"train": ("train", torch.arange(len(y_tr))), "test": ("test", torch.arange(len(y_te)))}
    if "val" in dataset_info(cfg.data.dataset, **opts).split_sizes:
        splits["val"] = load_dataset(cfg.data.dataset, "val", cfg.data.data_dir, **opts)
        where["val"] = ("val", torch.arange(len(splits["val"][1])))
    elif cfg.data.val_size:
        if cfg.data.val_size >= len(y_tr):
            raise ValueError(f"data.val_size {cfg.data.val_size} must be smaller than the training set ({len(y_tr)})")
        g = torch.Generator().manual_seed(cfg.train.seed + 7919)
        perm = torch.randperm(len(y_tr), generator=g)
        val, tr = perm[: cfg.data.val_size], perm[cfg.data.val_size :]
        splits["val"] = (x_tr[val], y_tr[val])
        splits["train"] = (x_tr[tr], y_tr[tr])
        where["val"], where["train"] = ("train", val), ("train", tr)
    if cfg.data.train_size:
        x_tr, y_tr = splits["train"]
        if cfg.data.train_size > len(y_tr):
            raise ValueError(f"data.train_size {cfg.data.train_size} is larger than the training set ({len(y_tr)})")
        g = torch.Generator().manual_seed(cfg.train.seed + 104729)
        keep = torch.randperm(len(y_tr), generator=g)[: cfg.data.train_size]
        splits["train"] = (x_tr[keep], y_tr[keep])
        where["train"] = ("train", where["train"][1][keep])
    if source is not None:
        source.update(where)
    return splits


def run_split(cfg: Config, split: str, data_dir: str | None = None) -> tuple[Tensor, Tensor, tuple[str, Tensor]]:
    """``(x, y, (dataset split, indices into it))`` of the run's own ``split`` of its dataset, as
    ``load_splits`` makes it (its held-out ``val``, its ``train`` subset, ``test``), read from ``data_dir``
    (default: the config's); a split the run does not have is a ``ValueError`` naming those it has."""
    from dataclasses import replace

    source: dict[str, tuple[str, Tensor]] = {}
    splits = load_splits(replace(cfg, data=replace(cfg.data, data_dir=data_dir or cfg.data.data_dir)), source)
    if split not in splits:
        raise ValueError(
            f"this run has the splits {', '.join(sorted(splits))}, not {split!r}"
            + (" (it was trained without data.val_size)" if split == "val" else "")
        )
    x, y = splits[split]
    return x, y, source[split]


def check_splits(cfg: Config, splits: dict[str, tuple[Tensor, Tensor]], num_classes: int | None = None) -> None:
    """Refuse splits the run could not train on, before it deletes or writes anything: missing splits,
    augmentation that cannot apply, inputs that do not fit ``model.input_shape`` or are not float32
    intensities in [0, 1], and labels that are not integers in [0, outputs of ``model.arch``).
    ``num_classes`` (the dataset's, where it is known) must equal the number of outputs."""
    from relpsp.arch import parse_arch

    n_out = getattr(parse_arch(cfg.model.arch, tuple(cfg.model.input_shape))[-1], "n_out", None)
    if num_classes is not None and n_out is not None and n_out != num_classes:
        raise ValueError(
            f"model.arch {cfg.model.arch!r} ends in {n_out} outputs but {cfg.data.dataset!r} has {num_classes} "
            f"classes; end the network in {num_classes}"
        )
    missing = [name for name in ("train", "test") if name not in splits]
    if missing:
        raise ValueError(f"splits must hold 'train' and 'test' (and may hold 'val'); missing {missing}")
    if cfg.data.augment:
        if splits["train"][0].dim() != 4:
            raise ValueError(
                f"data.augment shifts images, but {cfg.data.dataset!r} has inputs of shape "
                f"{tuple(splits['train'][0].shape[1:])}; set data.augment = false"
            )
        h, w = splits["train"][0].shape[2:]
        if cfg.data.max_shift >= min(h, w):
            raise ValueError(
                f"data.max_shift {cfg.data.max_shift} would shift {h}x{w} images out of the frame; it must be "
                f"smaller than {min(h, w)}"
            )
        d = cfg.data
        if d.max_shift == 0 and not d.flip and d.max_rotation == 0 and d.max_scale == 0 and d.elastic_alpha == 0:
            raise ValueError(
                "data.augment with data.max_shift = 0, no data.flip, no data.max_rotation, no data.max_scale and"
                " no data.elastic_alpha changes nothing; set augment false"
            )
    for name, (x, y) in splits.items():
        if len(x) != len(y) or len(y) == 0:
            raise ValueError(f"{name} split has {len(x)} inputs and {len(y)} labels; need as many, and at least one")
        if tuple(x.shape[1:]) != tuple(cfg.model.input_shape):
            raise ValueError(
                f"dataset {cfg.data.dataset!r} has inputs of shape {tuple(x.shape[1:])} but model.input_shape is "
                f"{tuple(cfg.model.input_shape)}; set model.input_shape (e.g. --set model.input_shape=[1,28,28])"
            )
        if x.dtype != torch.float32:
            raise ValueError(f"{name} split's inputs must be float32 intensities (the model's dtype), got {x.dtype}")
        check_intensities(x, f"{name} split's inputs must be intensities")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise ValueError(f"{name} split's labels must be integers, got {y.dtype}")
        if n_out is not None and (int(y.min()) < 0 or int(y.max()) >= n_out):
            raise ValueError(
                f"{name} split has labels {int(y.min())}..{int(y.max())}, but model.arch {cfg.model.arch!r} ends "
                f"in {n_out} outputs (classes 0..{n_out - 1})"
            )


def data_options(cfg: Config, dataset: str | None = None) -> dict[str, Any]:
    """Loader options implied by the data config (see ``relpsp.data.load_dataset``) for ``dataset``
    (default: the config's own): the inversion of intensities and the difference-of-Gaussians maps
    (``data.dog``) for any image set, Caltech's image size and Yin-Yang's bias input where ``dataset`` is
    of that kind."""
    from relpsp.data import canonical_name

    name = canonical_name(dataset or cfg.data.dataset)
    opts: dict[str, Any] = {}
    if name == "yinyang" and cfg.data.bias_input >= 0:
        opts["bias"] = cfg.data.bias_input
    if name == "caltech-face-motorbike" and cfg.data.image_size:
        opts["image_size"] = tuple(cfg.data.image_size)
    if cfg.data.invert:
        opts["invert"] = True  # refused by load_dataset for feature sets (Yin-Yang)
    if cfg.data.dog:  # likewise
        opts.update(dog=True, dog_sigmas=tuple(cfg.data.dog_sigmas), dog_threshold=cfg.data.dog_threshold)
    return opts


def data_digest(x: Tensor, y: Tensor) -> str:
    """SHA-256 of the training split as trained on (inputs and labels, in order), kept in checkpoints so
    that a resume on other data is refused."""
    h = hashlib.sha256()
    for t in (x, y):
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def step_key(stream: str, legacy: int, in_range: bool, *parts: int) -> int:
    """Generator key for one training step's random draws. Within the range where the original packed
    formula ``legacy`` is one-to-one (``in_range``) and below 2**63, it is kept, so runs made with it
    replay unchanged; elsewhere (very many steps per epoch, or a seed so large that the packed number
    would not fit torch's 64-bit seed) the key is a SHA-256 hash of (stream, parts) with the top bit set,
    which no packed key reaches."""
    if in_range and 0 <= legacy < 2**63:
        return legacy
    digest = hashlib.sha256(":".join([stream, *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") | (1 << 63)


def augment(
    x: Tensor,
    seed: int,
    epoch: int,
    step: int,
    max_shift: int = 2,
    flip: bool = False,
    max_rotation: float = 0.0,
    max_scale: float = 0.0,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
) -> Tensor:
    """Shift every image by its own random offset of up to ``max_shift`` pixels in each direction (zero
    fill); with ``flip``, first mirror it left-right with probability 1/2; with ``max_rotation`` (degrees)
    or ``max_scale``, then rotate it by a uniform angle in [-max_rotation, max_rotation] and scale it by a
    uniform factor in [1 - max_scale, 1 + max_scale] about its centre (``affine_warp``); with
    ``elastic_alpha``, then distort it elastically (``elastic_field``, ``elastic_warp``); all before the
    shift. Drawn from a generator seeded by (seed, epoch, step), so resumed runs see the same
    transformations; each kind is drawn after the ones before it, so runs without the later kinds replay
    unchanged."""
    if x.dim() != 4:
        return x
    legacy = (seed * 1_000_003 + epoch) * 100_003 + step
    in_range = step < 100_003 and epoch < 1_000_003
    g = torch.Generator().manual_seed(step_key("augment", legacy, in_range, seed, epoch, step))
    shifts = torch.randint(-max_shift, max_shift + 1, (len(x), 2), generator=g)
    if flip:
        mirror = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    if max_rotation > 0 or max_scale > 0:
        angles = (2 * torch.rand(len(x), generator=g, dtype=torch.float64) - 1) * max_rotation
        scales = 1 + (2 * torch.rand(len(x), generator=g, dtype=torch.float64) - 1) * max_scale
        x = affine_warp(x, angles, scales)
    if elastic_alpha > 0:
        x = elastic_warp(x, elastic_field(len(x), x.shape[2], x.shape[3], elastic_alpha, elastic_sigma, g))
    out = torch.zeros_like(x)
    h, w = x.shape[2], x.shape[3]
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            sel = torch.nonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).squeeze(1)
            if len(sel):
                out[sel, :, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
                    sel, :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
                ]
    return out


def augment_batch(x: Tensor, cfg: Config, epoch: int, step: int) -> Tensor:
    """``augment`` with the settings of ``cfg.data`` and the run's seed: the training batch of step
    ``step`` of epoch ``epoch`` as the run sees it (unchanged when ``data.augment`` is off)."""
    d = cfg.data
    if not d.augment:
        return x
    return augment(
        x,
        cfg.train.seed,
        epoch,
        step,
        max_shift=d.max_shift,
        flip=d.flip,
        max_rotation=d.max_rotation,
        max_scale=d.max_scale,
        elastic_alpha=d.elastic_alpha,
        elastic_sigma=d.elastic_sigma,
    )


def affine_warp(x: Tensor, angles: Tensor, scales: Tensor) -> Tensor:
    """Rotate each image of ``x`` (N, C, H, W) by ``angles[n]`` degrees (counter-clockwise as displayed,
    row 0 at the top) and scale it by ``scales[n]`` about its centre, by bilinear interpolation with zero
    fill. The output pixel at offset p from the centre takes the input at R(-angle) p / scale, in pixel
    units, so non-square images are rotated without shear."""
    if len(angles) != len(x) or len(scales) != len(x):
        raise ValueError(f"need one angle and one scale per image: {len(x)} images, {len(angles)}, {len(scales)}")
    if not bool((scales > 0).all()):
        raise ValueError("scales must be positive")
    h, w = x.shape[2], x.shape[3]
    a = torch.deg2rad(angles.to(torch.float64))
    cos, sin, s = torch.cos(a), torch.sin(a), scales.to(torch.float64)
    # affine_grid maps output (u, v) in [-1, 1] (u along the width) to input coordinates in [-1, 1]. In
    # pixels, with y down, a counter-clockwise turn on screen sends output (px, py) to the input point
    # (cos px - sin py, sin px + cos py) / s; normalising by the half-sizes gives the matrix below.
    theta = torch.zeros(len(x), 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cos / s
    theta[:, 0, 1] = -sin * (h / w) / s
    theta[:, 1, 0] = sin * (w / h) / s
    theta[:, 1, 1] = cos / s
    grid = torch.nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def elastic_field(n: int, h: int, w: int, alpha: float, sigma: float, generator: torch.Generator) -> Tensor:
    """Random smooth displacement fields ``[n, 2, h, w]`` in pixels (channel 0 along the width, 1 along the
    height), after Simard et al. (ICDAR 2003): uniform noise in [-1, 1] per pixel and direction, smoothed
    by a normalised Gaussian of ``sigma`` pixels (zero beyond the image) and multiplied by ``alpha``. Each
    component then has a standard deviation of about ``alpha / (sqrt(12 pi) sigma)`` pixels away from the
    borders (alpha 34, sigma 4: about 1.4 px)."""
    if not (math.isfinite(alpha) and alpha > 0 and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"elastic distortion needs alpha > 0 and sigma > 0, got {alpha!r} and {sigma!r}")
    noise = 2 * torch.rand(n * 2, 1, h, w, generator=generator, dtype=torch.float64) - 1
    r = math.ceil(3 * sigma)
    k = torch.exp(-((torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2) / 2)
    k = k / k.sum()
    smooth = F.conv2d(F.conv2d(noise, k.view(1, 1, 1, -1), padding=(0, r)), k.view(1, 1, -1, 1), padding=(r, 0))
    return alpha * smooth.view(n, 2, h, w)


def elastic_warp(x: Tensor, field: Tensor) -> Tensor:
    """Images ``x [N, C, H, W]`` resampled at their own pixel positions plus ``field [N, 2, H, W]`` (pixels;
    channel 0 along the width, 1 along the height): output pixel p takes the input at p + field[p], by
    bilinear interpolation with zero fill. A zero field returns ``x``; a constant field (d, 0) moves the
    content d pixels towards smaller column indices."""
    n, _, h, w = x.shape
    if tuple(field.shape) != (n, 2, h, w):
        raise ValueError(
            f"need a field of shape {(n, 2, h, w)} for images of shape {tuple(x.shape)}, got {tuple(field.shape)}"
        )
    ys = (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1  # pixel centres, align_corners=False
    xs = (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1
    gx = xs.view(1, 1, w) + field[:, 0].to(torch.float64) * (2 / w)
    gy = ys.view(1, h, 1) + field[:, 1].to(torch.float64) * (2 / h)
    grid = torch.stack((gx, gy), dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
