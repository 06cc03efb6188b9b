"""The Yin-Yang dataset (Kriener, Göltz & Petrovici, "The Yin-Yang dataset", NICE 2022, arXiv:2102.08211).

Points (x, y) uniform in the unit square, kept inside the big circle of radius R = 0.5 centred at (R, R).
With the dots centred at L = (R/2, R) and Rt = (3R/2, R), radius r (default 0.1), and d_L, d_R the
distances to them, the published definition labels a point

- 2 ("dot")  if d_R < r or d_L < r,
- 1          if d_R <= r or (r < d_L <= R/2) or (y > R and d_R > R/2)   (the generator's ``is_yin``),
- 0          otherwise.

(The published code lists class names ``["yin", "yang", "dot"]`` but returns 1 for its ``is_yin`` region;
we keep its numbers, which is what reported accuracies refer to.) Classes are exactly balanced: sample i has class
i mod 3, drawn by rejection from uniform points (a deliberate difference: the original draws each sample's
class at random, so its classes are balanced only on average). Features are (x, y, 1 - x, 1 - y),
all in [0, 1], optionally followed by a constant bias feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["YINYANG_CLASSES", "make_yinyang", "yinyang_class"]

#: class index -> name, by the published generator's numbers (see the module docstring)
YINYANG_CLASSES = ("yang", "yin", "dot")
_R_BIG = 0.5


def yinyang_class(x: np.ndarray, y: np.ndarray, r_small: float = 0.1) -> np.ndarray:
    """Labels (int64) of points ``x``, ``y`` (any equal shapes) inside the big circle; see the module docstring."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    d_right = np.hypot(x - 1.5 * _R_BIG, y - _R_BIG)
    d_left = np.hypot(x - 0.5 * _R_BIG, y - _R_BIG)
    is_yin = (
        (d_right <= r_small)
        | ((d_left > r_small) & (d_left <= 0.5 * _R_BIG))
        | ((y > _R_BIG) & (d_right > 0.5 * _R_BIG))
    )
    is_dot = (d_right < r_small) | (d_left < r_small)
    return np.where(is_dot, 2, is_yin.astype(np.int64)).astype(np.int64)


def make_yinyang(
    size: int, seed: int | Sequence[int] = 0, *, r_small: float = 0.1, bias: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``size`` points -> (x ``[size, 4]`` or ``[size, 5]`` float32, y ``[size]`` int64).

    Deterministic in ``seed`` (an int or ints for ``numpy.random.default_rng``). ``bias`` appends that constant as a fifth feature.
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if not 0.0 < r_small < 0.5 * _R_BIG:
        raise ValueError(f"r_small must be in (0, 0.25), got {r_small}")
    if bias is not None and not 0.0 <= bias <= 1.0:  # an intensity, like the other four features
        raise ValueError(f"bias must be in [0, 1], got {bias}")
    rng = np.random.default_rng(seed)
    targets = np.arange(size) % 3
    need = np.bincount(targets, minlength=3)
    pools: list[list[np.ndarray]] = [[], [], []]
    have = np.zeros(3, dtype=np.int64)
    while (have < need).any():
        # Rejection in vectorised rounds: uniform points, keep those inside the big circle, file them by class.
        pts = rng.random((max(4096, 16 * int(need.max())), 2))
        inside = np.hypot(pts[:, 0] - _R_BIG, pts[:, 1] - _R_BIG) <= _R_BIG
        pts = pts[inside]
        cls = yinyang_class(pts[:, 0], pts[:, 1], r_small)
        for c in range(3):
            if have[c] < need[c]:
                take = pts[cls == c][: need[c] - have[c]]
                pools[c].append(take)
                have[c] += len(take)
    xy = np.empty((size, 2), dtype=np.float64)
    for c in range(3):
        if need[c]:
            xy[targets == c] = np.concatenate(pools[c])
    feats = [xy[:, 0], xy[:, 1], 1.0 - xy[:, 0], 1.0 - xy[:, 1]]
    if bias is not None:
        feats.append(np.full(size, float(bias)))
    x = torch.from_numpy(np.stack(feats, axis=1).astype(np.float32))
    return x, torch.from_numpy(targets.astype(np.int64))
