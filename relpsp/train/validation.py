"""The checks ``fit`` runs on a config before anything is built or loaded: each refused setting raises a
``ValueError`` naming it, including data settings that would silently do nothing for the dataset."""

from __future__ import annotations

import math

import torch

from relpsp.config import Config, DataConfig

__all__ = ["MAX_SCALE", "validate_config"]

#: the largest magnitude of a time, threshold, initial-weight or loss-scale setting: far above any use,
#: far below float32's overflow (3.4e38) once multiplied by the weights and times it meets
MAX_SCALE = 1e6
#: the settings that MAX_SCALE bounds, by config section
_SCALED = {
    "train": ("weight_decay", "grad_clip", "silent_margin", "tau", "silent_penalty", "target_penalty"),
    "model": ("theta", "t_in", "init_mean", "init_std", "kernel_tau", "window"),
}


def validate_config(cfg: Config) -> None:
    from relpsp.config import config_from_dict, config_to_dict

    # a Config built in Python skips the type checks of a TOML file's values (an epochs of 2.5 would fail
    # only once --overwrite had deleted the old run): the same checks, through the file format
    config_from_dict(config_to_dict(cfg))
    t = cfg.train
    for name, v in (("epochs", t.epochs), ("batch_size", t.batch_size), ("eval_batch_size", t.eval_batch_size)):
        if v < 1:
            raise ValueError(f"train.{name} must be >= 1, got {v}")
    if not (math.isfinite(t.lr) and 0 < t.lr < 10):
        raise ValueError(f"train.lr must be in (0, 10), got {t.lr}")
    if t.batch_size > 1_000_000 or t.epochs > 100_000:
        raise ValueError("train.batch_size or train.epochs is absurdly large")
    if t.checkpoint_every < 0 or t.threads < 0:
        raise ValueError("train.checkpoint_every and train.threads must be >= 0")
    if t.threads > 4096 or t.eval_batch_size > 1_000_000:
        raise ValueError("train.threads or train.eval_batch_size is absurdly large")
    if t.init_from is not None and not str(t.init_from).strip():
        raise ValueError("train.init_from must name a checkpoint or a run folder (leave it unset for random weights)")
    if not 0 <= t.seed < 2**32:
        raise ValueError(f"train.seed must be in [0, 2^32), got {t.seed}")
    if not (math.isfinite(t.ema_decay) and 0 <= t.ema_decay < 1):
        raise ValueError(f"train.ema_decay must be in [0, 1) (0 = no weight averaging), got {t.ema_decay}")
    for name in (
        "weight_decay",
        "grad_clip",
        "silent_margin",
        "silent_penalty",
        "target_penalty",
        "tau",
        "spike_jitter",
    ):
        v = getattr(t, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"train.{name} must be a finite number >= 0, got {v}")
    # float32 settings far beyond any use overflow only at the first step, after --overwrite has deleted the
    # old run (a weight decay of 1e39, a theta of 1e38): refused here, by name
    for section, names in _SCALED.items():
        for name in names:
            v = getattr(getattr(cfg, section), name)
            if math.isfinite(v) and abs(v) > MAX_SCALE:
                raise ValueError(f"{section}.{name} = {v:g} is absurdly large (at most {MAX_SCALE:g})")
    if t.tau == 0:
        raise ValueError("train.tau must be > 0")
    for name in ("label_smoothing", "spike_dropout", "spike_dropout_conv"):
        v = getattr(t, name)
        if not (math.isfinite(v) and 0 <= v < 1):
            raise ValueError(f"train.{name} must be in [0, 1) (0 = off), got {v}")
    for name in ("spike_dropout", "spike_dropout_conv"):
        if getattr(t, name) > 0 and cfg.model.kernel not in ("relpsp", "window"):
            raise ValueError(
                f"train.{name} is defined for the ReL-PSP and windowed kernels only (model.kernel 'relpsp' or 'window')"
            )
    if t.spike_jitter > 0 and cfg.model.kernel != "relpsp":
        raise ValueError("train.spike_jitter is defined for the ReL-PSP kernel only (model.kernel 'relpsp')")
    for name in ("spike_dropout", "spike_dropout_conv", "spike_jitter"):
        if getattr(t, name) > 0 and (t.silent_penalty > 0 or t.target_penalty > 0):
            raise ValueError(f"train.{name} cannot be combined with train.silent_penalty or train.target_penalty")
    from relpsp.arch import ConvSpec, DenseSpec, parse_arch

    specs = parse_arch(cfg.model.arch, cfg.model.input_shape)  # here, before --overwrite deletes anything
    if t.spike_dropout > 0 or t.spike_dropout_conv > 0:
        if t.spike_dropout > 0 and not any(isinstance(s, DenseSpec) for s in specs):
            raise ValueError("train.spike_dropout needs a network with a spiking dense layer")
        if t.spike_dropout_conv > 0 and not any(isinstance(s, ConvSpec) for s in specs):
            raise ValueError("train.spike_dropout_conv needs a network with a spiking convolution layer")
    if t.optimizer not in ("adam", "adamw", "sgd"):
        raise ValueError(f"train.optimizer must be 'adam', 'adamw' or 'sgd', got {t.optimizer!r}")
    if t.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"train.lr_schedule must be 'cosine' or 'constant', got {t.lr_schedule!r}")
    from relpsp.autograd import BACKENDS

    if t.backend not in BACKENDS:
        raise ValueError(f"train.backend must be one of {BACKENDS}, got {t.backend!r}")
    if t.device != "cpu" and not t.device.startswith("cuda"):
        raise ValueError(f"train.device must be 'cpu' or 'cuda[:N]', got {t.device!r}")
    if t.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but torch sees no CUDA device")
    _validate_backend(cfg)
    if cfg.data.val_size < 0 or cfg.data.train_size < 0:
        raise ValueError("data.val_size and data.train_size must be >= 0")
    if not 0 <= cfg.data.max_shift <= 64:
        raise ValueError(f"data.max_shift must be in [0, 64], got {cfg.data.max_shift}")
    if not 0 <= cfg.data.max_rotation <= 180:
        raise ValueError(f"data.max_rotation is an angle in degrees in [0, 180], got {cfg.data.max_rotation}")
    if not 0 <= cfg.data.max_scale < 1:
        raise ValueError(f"data.max_scale is a fraction in [0, 1) (factors 1 - s to 1 + s), got {cfg.data.max_scale}")
    if not 0 <= cfg.data.elastic_alpha <= 1000 or not 0 < cfg.data.elastic_sigma <= 100:
        raise ValueError(
            "data.elastic_alpha must be in [0, 1000] and data.elastic_sigma in (0, 100] (pixels), got "
            f"{cfg.data.elastic_alpha} and {cfg.data.elastic_sigma}"
        )
    _validate_data_settings(cfg)
    if cfg.model.kernel == "window" and t.silent_penalty > 0:
        raise ValueError(
            "train.silent_penalty does not apply to kernel window: every windowed neuron fires (train.target_penalty"
            " does: it acts on a correct output held at its window's end)"
        )
    if cfg.model.kernel == "alpha":
        if t.silent_penalty > 0 or t.target_penalty > 0:
            raise ValueError(
                "train.silent_penalty and train.target_penalty are defined for the ReL-PSP kernel only;"
                " set them to 0 with kernel alpha"
            )
        if t.device != "cpu":
            raise ValueError("the alpha-kernel baseline runs on the CPU only (train.device = 'cpu')")


def _validate_backend(cfg: Config) -> None:
    """Refuse a backend that cannot run on the device or that the kernel does not use, before the run
    folder is touched (``--overwrite`` would otherwise delete the old run and then fail on the first step).
    Whether it runs is ``resolve_backend``'s answer for an empty tensor on the device, the same check the
    layers make at their first call."""
    from relpsp.autograd import resolve_backend

    t = cfg.train
    if t.backend == "auto":
        return
    if cfg.model.kernel != "relpsp":
        raise ValueError(
            f"train.backend chooses among the ReL-PSP kernels; model.kernel {cfg.model.kernel!r} has one"
            " implementation: leave train.backend at 'auto'"
        )
    try:
        resolve_backend(t.backend, torch.empty(0, device=t.device))
    except (ValueError, RuntimeError) as e:  # RuntimeError: the backend's package is not installed
        raise ValueError(f"train.backend {t.backend!r} cannot run on {t.device!r}: {e}") from None


def _validate_data_settings(cfg: Config) -> None:
    """Refuse data settings that would do nothing for this dataset, instead of ignoring them."""
    from relpsp.data import DATASETS, canonical_name, is_npz_name

    d = cfg.data
    try:
        name = canonical_name(d.dataset)
    except ValueError:  # a set given as tensors to fit(splits=...) under a name of its own
        name = d.dataset
    if d.flip and not d.augment:
        raise ValueError("data.flip mirrors images as part of the augmentation: it needs data.augment = true")
    if (d.max_rotation > 0 or d.max_scale > 0 or d.elastic_alpha > 0) and not d.augment:
        raise ValueError(
            "data.max_rotation, data.max_scale and data.elastic_alpha are part of the augmentation: they need"
            " data.augment = true"
        )
    default = DataConfig()
    for key, switch, on in (
        ("max_shift", "augment = true", d.augment),
        ("elastic_sigma", "elastic_alpha > 0", d.elastic_alpha > 0),
        ("dog_sigmas", "dog = true", d.dog),
        ("dog_threshold", "dog = true", d.dog),
    ):
        if not on and getattr(d, key) != getattr(default, key):
            raise ValueError(
                f"data.{key} = {getattr(d, key)!r} does nothing without data.{switch}; set that, or leave"
                f" data.{key} at {getattr(default, key)!r}"
            )
    if not (d.bias_input < 0 or 0 <= d.bias_input <= 1) or math.isinf(d.bias_input):
        raise ValueError(
            f"data.bias_input is the intensity of a constant extra input, in [0, 1], or a finite negative"
            f" number for none; got {d.bias_input}"
        )
    if d.bias_input >= 0 and name != "yinyang":
        raise ValueError(f"data.bias_input applies to the Yin-Yang feature set only, not {name!r}; leave it at -1")
    if d.val_size and is_npz_name(name):
        from relpsp.data import dataset_info

        own_val = "val" in dataset_info(name).split_sizes
    else:
        own_val = name in DATASETS and "val" in DATASETS[name].split_sizes
    if d.val_size and own_val:
        raise ValueError(
            f"data.val_size holds images out of the training set, but {name!r} has a validation split of its own;"
            " leave it at 0"
        )
    if d.image_size and name != "caltech-face-motorbike":
        raise ValueError(
            f"data.image_size applies to image-folder sets (caltech-face-motorbike) only, not {name!r}; leave it empty"
        )
