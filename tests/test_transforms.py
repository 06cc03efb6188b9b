"""Difference-of-Gaussians ON/OFF maps (relpsp.data.transforms) and their loader and config options."""

from __future__ import annotations

import json
import math

import pytest
import torch

from relpsp.commands.simulate import checkpoint_data_options
from relpsp.config import config_from_dict, config_to_dict
from relpsp.data import dataset_info, load_dataset
from relpsp.data.transforms import dog_kernel, dog_on_off
from relpsp.train import data_options
from tests.test_data import make_image_folder


def test_dog_kernel_is_a_zero_sum_centre_surround_filter():
    k = dog_kernel(1.0, 2.0, 7)
    assert k.shape == (7, 7) and k.dtype == torch.float64
    assert abs(float(k.sum())) < 1e-12
    assert torch.equal(k, k.flip(0)) and torch.equal(k, k.t())
    assert float(k[3, 3]) > 0 and float(k[3, 3]) == float(k.max())  # excitatory centre
    assert float(k[0, 3]) < 0  # inhibitory surround
    # The centre value from the formula: exp(0) / sum of each Gaussian over the window.
    r = torch.arange(7, dtype=torch.float64) - 3
    r2 = r[:, None] ** 2 + r[None, :] ** 2
    expect = 1 / torch.exp(-r2 / 2).sum() - 1 / torch.exp(-r2 / 8).sum()
    assert math.isclose(float(k[3, 3]), float(expect), rel_tol=1e-12)


@pytest.mark.parametrize(
    ("args", "match"),
    [((2.0, 1.0, 7), "centre < surround"), ((0.0, 2.0, 7), "centre < surround"), ((1.0, 2.0, 6), "odd int")],
)
def test_dog_kernel_refuses_bad_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        dog_kernel(*args)


def test_uniform_image_gives_no_contrast_and_a_spot_gives_on_then_off():
    flat = torch.full((1, 1, 12, 12), 0.7)
    assert torch.count_nonzero(dog_on_off(flat)) == 0  # replicated borders: no edge at the frame
    spot = torch.zeros(2, 1, 15, 15)
    spot[0, 0, 7, 7] = 1.0  # a bright dot on black
    spot[1] = 1.0 - spot[0]  # a dark dot on white
    out = dog_on_off(spot)
    assert out.shape == (2, 2, 15, 15)
    on, off = out[:, 0], out[:, 1]
    assert float(on[0, 7, 7]) == 1.0 and float(off[0, 7, 7]) == 0.0  # ON centre, scaled to 1
    assert float(off[1, 7, 7]) == 1.0 and float(on[1, 7, 7]) == 0.0  # OFF centre for the dark dot
    assert float(off[0, 7, 10]) > 0 and float(on[0, 7, 10]) == 0.0  # the bright dot's dark surround
    assert torch.allclose(out[0], out[1].flip(0))  # inverting the image swaps ON and OFF
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_dog_channels_scaling_threshold_and_batch_independence():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 10, 9)
    out = dog_on_off(x)
    assert out.shape == (3, 4, 10, 9)
    assert torch.allclose(out.amax(dim=(1, 2, 3)), torch.ones(3))  # each image's peak is 1
    # Channel c's maps are 2c (ON) and 2c + 1 (OFF), the same as filtering that channel alone
    # (up to the per-image scale, which is shared by all maps of the image).
    alone = dog_on_off(x[:, 1:2])
    scale = out[:, 2:4].amax(dim=(1, 2, 3))
    assert torch.allclose(out[:, 2:4], alone * scale[:, None, None, None], atol=1e-6)
    assert torch.allclose(dog_on_off(x[1:2]), out[1:2])  # an image does not depend on its batch
    cut = dog_on_off(x, threshold=0.3)
    assert torch.equal(cut, torch.where(out < 0.3, torch.zeros_like(out), out))
    assert torch.count_nonzero(dog_on_off(torch.zeros(1, 1, 8, 8))) == 0  # blank image: no NaN, no spikes
    with pytest.raises(ValueError, match="threshold"):
        dog_on_off(x, threshold=1.0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        dog_on_off(torch.rand(4, 9))


def test_loader_dog_option_doubles_channels_after_inversion(tmp_path):
    make_image_folder(tmp_path / "caltech-face-motorbike")
    opts = {"data_dir": tmp_path, "image_size": (16, 20)}
    plain, y = load_dataset("caltech", "train", **opts)
    x, y2 = load_dataset("caltech", "train", dog=True, **opts)
    assert torch.equal(y, y2) and x.shape == (6, 2, 16, 20)
    assert torch.equal(x, dog_on_off(plain))
    xi, _ = load_dataset("caltech", "train", dog=True, invert=True, dog_sigmas=(1.0, 3.0), dog_threshold=0.2, **opts)
    assert torch.equal(xi, dog_on_off(1.0 - plain, 1.0, 3.0, threshold=0.2))
    assert dataset_info("caltech", image_size=(16, 20), dog=True).input_shape == (2, 16, 20)
    assert dataset_info("mnist", dog=True).input_shape == (2, 28, 28)
    assert dataset_info("mnist", dog=False).input_shape == (1, 28, 28)


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"dog": "yes"}, "dog must be true or false"),
        ({"dog": True, "dog_sigmas": (3.0, 1.0)}, "centre < surround"),
        ({"dog": True, "dog_sigmas": (1.0,)}, "two numbers"),
        ({"dog": True, "dog_sigmas": 2.0}, "two numbers"),
        ({"dog": True, "dog_threshold": 1.5}, r"dog_threshold must be a number in \[0, 1\)"),
    ],
)
def test_loader_refuses_bad_dog_options_before_reading_files(tmp_path, opts, match):
    with pytest.raises(ValueError, match=match):  # tmp_path is empty: a file read would fail differently
        load_dataset("caltech", "train", data_dir=tmp_path, **opts)


def test_yinyang_takes_no_dog_option():
    with pytest.raises(ValueError, match=r"takes no option.*dog"):
        load_dataset("yinyang", "train", dog=True)


def test_config_dog_fields_reach_the_loader():
    cfg = config_from_dict({"data": {"dataset": "caltech", "dog": True, "dog_sigmas": [1, 2.5], "dog_threshold": 0.1}})
    assert cfg.data.dog_sigmas == (1.0, 2.5) and all(isinstance(s, float) for s in cfg.data.dog_sigmas)
    assert data_options(cfg) == {"dog": True, "dog_sigmas": (1.0, 2.5), "dog_threshold": 0.1}
    # relpsp simulate / cost read a checkpoint's stored config the same way (through JSON and back).
    stored = json.loads(json.dumps(config_to_dict(cfg)))
    assert checkpoint_data_options(stored["data"], "caltech-face-motorbike") == data_options(cfg)
    assert data_options(config_from_dict({"data": {"dataset": "mnist"}})) == {}
    with pytest.raises(ValueError, match=r"DataConfig\.dog_sigmas must be a list of numbers"):
        config_from_dict({"data": {"dog_sigmas": ["a", 2]}})


def test_dog_on_off_matches_its_definition():
    """dog_on_off docstring: borders replicated; channel 2c = max(0, r), 2c+1 = max(0, -r); each image
    divided by its largest response over ALL its maps; intensities below threshold (not at it) set to 0."""
    import torch.nn.functional as F

    torch.manual_seed(1)
    x = torch.rand(2, 2, 11, 10)
    x[:, 1] *= 0.3  # channel 1 has weaker contrast than channel 0
    k = dog_kernel(1.0, 2.0, 7)
    r = F.conv2d(F.pad(x.double().reshape(4, 1, 11, 10), (3, 3, 3, 3), mode="replicate"), k[None, None])
    r = r.reshape(2, 2, 11, 10)
    maps = torch.stack((r.clamp(min=0), (-r).clamp(min=0)), dim=2).reshape(2, 4, 11, 10)
    want = (maps / maps.amax(dim=(1, 2, 3), keepdim=True)).float()
    out = dog_on_off(x)
    assert torch.allclose(out, want, atol=1e-6)
    assert float(out[:, 2:].amax()) < 0.9  # the weak channel is not rescaled to 1 on its own
    # a contrast exactly at the threshold is kept ("below threshold" is zeroed)
    spots = torch.zeros(1, 1, 9, 17)
    spots[0, 0, 4, 4], spots[0, 0, 4, 12] = 1.0, 0.5
    cut = dog_on_off(spots, threshold=0.5)
    assert float(cut[0, 0, 4, 4]) == 1.0 and float(cut[0, 0, 4, 12]) == 0.5
