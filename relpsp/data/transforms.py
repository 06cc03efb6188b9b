"""Image transforms applied when loading, before the latency code: difference-of-Gaussians ON/OFF maps.

A difference-of-Gaussians (DoG) filter is a model of the retina's centre-surround cells: it answers to
local contrast (edges, spots) and not to uniform brightness. Split into an ON map (centre brighter than
its surround) and an OFF map (centre darker), it is the input stage of the spiking Caltech
Face/Motorbike networks since Kheradpisheh et al. 2018 (σ = 1 and 2 px, 7×7 window) and of S4NN
(Kheradpisheh & Masquelier 2020). Under the latency code t = 1 − x the strongest contrasts fire first
and flat regions never fire.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["check_dog_threshold", "dog_kernel", "dog_on_off"]

_RESPONSE_FLOOR = 1e-9  # |DoG response| below this (intensities in [0, 1]) is taken as no contrast


def check_dog_threshold(threshold: object) -> float:
    """``threshold`` as a float if it is a number in [0, 1) (the fraction of an image's strongest contrast
    below which a contrast never fires), else ValueError."""
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 <= threshold < 1.0:
        raise ValueError(f"dog_threshold must be a number in [0, 1), got {threshold!r}")
    return float(threshold)


def dog_kernel(sigma_center: float = 1.0, sigma_surround: float = 2.0, size: int = 7) -> torch.Tensor:
    """``size`` × ``size`` float64 kernel G(σ_c) − G(σ_s), each Gaussian normalised to sum 1 over the
    window, so the kernel sums to 0: a uniform patch gives no response. The window does not grow with
    the sigmas: with the default 7 × 7, a surround σ much above 2 px is cut off by the window."""
    if not (math.isfinite(sigma_center) and math.isfinite(sigma_surround)) or not 0 < sigma_center < sigma_surround:
        raise ValueError(
            f"DoG sigmas must satisfy 0 < centre < surround, got centre {sigma_center}, surround {sigma_surround}"
        )
    if size < 3 or size % 2 == 0:
        raise ValueError(f"DoG window size must be an odd int >= 3, got {size}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    r2 = r[:, None] ** 2 + r[None, :] ** 2

    def gauss(s: float) -> torch.Tensor:
        g = torch.exp(-r2 / (2 * s * s))
        return g / g.sum()

    return gauss(sigma_center) - gauss(sigma_surround)


def dog_on_off(
    x: torch.Tensor,
    sigma_center: float = 1.0,
    sigma_surround: float = 2.0,
    size: int = 7,
    threshold: float = 0.0,
) -> torch.Tensor:
    """Images ``[N, C, H, W]`` -> ON/OFF contrast maps ``[N, 2C, H, W]`` in [0, 1].

    Each channel c is filtered with :func:`dog_kernel` (borders replicated, so an image edge is not a
    contrast); channel 2c holds max(0, response) (ON) and 2c + 1 holds max(0, −response) (OFF). Each
    image is divided by its largest response over all its maps, so its strongest contrast has
    intensity 1 (fires first); a blank or uniform image stays 0. Intensities below ``threshold`` (in
    [0, 1)) are set to 0: weak contrasts never fire, which saves events. Computed in float64, returned
    float32.
    """
    if x.dim() != 4:
        raise ValueError(f"DoG filtering needs images [N, C, H, W], got shape {tuple(x.shape)}")
    threshold = check_dog_threshold(threshold)
    n, c, h, w = x.shape
    k = dog_kernel(sigma_center, sigma_surround, size)
    pad = size // 2
    flat = F.pad(x.to(torch.float64).reshape(n * c, 1, h, w), (pad, pad, pad, pad), mode="replicate")
    resp = F.conv2d(flat, k[None, None]).reshape(n, c, h, w)
    # Rounding leaves |response| ~ 1e-16 on flat patches; scaled by the image's peak it would become a
    # spike. Real contrasts of images in [0, 1] (8-bit: steps of 1/255) answer far above this floor.
    resp = torch.where(resp.abs() < _RESPONSE_FLOOR, torch.zeros_like(resp), resp)
    maps = torch.stack((resp.clamp(min=0), (-resp).clamp(min=0)), dim=2).reshape(n, 2 * c, h, w)
    # Every nonzero response is >= the floor, so the clamp only turns a blank image's 0 / 0 into 0 / floor.
    maps = maps / maps.amax(dim=(1, 2, 3), keepdim=True).clamp(min=_RESPONSE_FLOOR)
    if threshold > 0:
        maps = torch.where(maps < threshold, torch.zeros_like(maps), maps)
    return maps.clamp(0.0, 1.0).to(torch.float32)
