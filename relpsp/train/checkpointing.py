"""Training checkpoints: weights (and, with weight averaging, the weights being trained), the optimizer's
state as arrays, and the progress that a resume continues from; which settings a resume may change.
The file format is ``relpsp.checkpoint``'s (no pickle, atomic writes)."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from relpsp import __version__
from relpsp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from relpsp.config import Config, config_from_dict, config_to_dict
from relpsp.models import load_model_arrays, model_arrays, model_from_config
from relpsp.train.regularisers import WeightAverage

__all__ = [
    "CHECKPOINT_NAME",
    "RESUME_MAY_CHANGE",
    "TRAINING_PREFIX",
    "config_changes",
    "load_initial_weights",
    "load_optimizer_state",
    "load_trained",
    "resume_key",
    "save_training_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.ckpt"


def _optimizer_arrays(opt: torch.optim.Optimizer) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    sd = opt.state_dict()
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, dict[str, float]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                arrays[f"optim.{pid}.{k}"] = v.detach().cpu().numpy()
            else:
                scalars.setdefault(str(pid), {})[k] = float(v)
    return arrays, {"scalars": scalars, "param_groups": sd["param_groups"]}


# the per-parameter state each optimizer of ``make_optimizer`` keeps once it has stepped
_STATE_KEYS = {
    "Adam": {"step", "exp_avg", "exp_avg_sq"},
    "AdamW": {"step", "exp_avg", "exp_avg_sq"},
    "SGD": {"momentum_buffer"},
}


def _checked_param_groups(saved: Any, current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checkpoint's ``param_groups`` checked against this optimizer's groups: the same groups, no key it
    does not have, values of the same kinds (finite numbers where it has numbers), so that a crafted
    ``betas = 5`` or ``lr = NaN`` fails here and not in a later step. A key the checkpoint lacks (one
    written by an older torch) takes this optimizer's value."""
    if not isinstance(saved, list) or len(saved) != len(current):
        raise ValueError(f"param_groups must be a list of {len(current)} group(s)")
    groups = []
    for got, want in zip(saved, current):
        if not isinstance(got, dict) or not set(got) <= set(want) or not {"params", "lr"} <= set(got):
            raise ValueError(f"a param group must have keys among {sorted(want)}, with params and lr")
        got = {**want, **got}
        groups.append(got)
        for key, ref in want.items():
            value = got[key]
            if key == "params":
                if value != ref:
                    raise ValueError("param_groups name other parameters than this model has")
            elif isinstance(ref, bool) or ref is None or isinstance(ref, str):
                if type(value) is not type(ref):
                    raise ValueError(f"param group {key!r} must be like {ref!r}, got {value!r}")
            elif isinstance(ref, (int, float)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"param group {key!r} must be a finite number, got {value!r}")
            elif isinstance(ref, (list, tuple)):
                ok = isinstance(value, (list, tuple)) and len(value) == len(ref)
                if not ok or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
                    raise ValueError(f"param group {key!r} must be {len(ref)} finite numbers, got {value!r}")
    return groups


def load_optimizer_state(opt: torch.optim.Optimizer, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Restore the optimizer state; raise ``ValueError`` when it does not fit this model and optimizer."""
    sd = opt.state_dict()
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    try:
        for pid_s, sc in meta["scalars"].items():
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in sc.values()):
                raise ValueError(f"the scalar state {sc!r} must be finite numbers >= 0")
            state[int(pid_s)] = {k: torch.tensor(float(v), dtype=torch.float32) for k, v in sc.items()}
        for name, a in arrays.items():
            if name.startswith("optim."):
                _, pid_s, k = name.split(".", 2)
                pid = int(pid_s)
                if not 0 <= pid < len(params) or tuple(a.shape) != tuple(params[pid].shape):
                    raise ValueError(f"array {name!r} of shape {a.shape} fits no parameter")
                if a.dtype.kind != "f" or not np.isfinite(a).all():
                    raise ValueError(f"array {name!r} is not finite floating-point data")
                state.setdefault(pid, {})[k] = torch.from_numpy(np.array(a))
        if set(state) - set(range(len(params))):
            raise ValueError("state for parameters this model does not have")
        keys = _STATE_KEYS.get(type(opt).__name__)
        for pid, st in state.items():
            if keys is not None and set(st) != keys:
                raise ValueError(f"the state of parameter {pid} has {sorted(st)}, not {sorted(keys)}")
        sd["param_groups"] = _checked_param_groups(meta["param_groups"], sd["param_groups"])
        sd["state"] = state
        opt.load_state_dict(sd)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"the optimizer state in the checkpoint does not fit this model ({e})") from e


def load_initial_weights(model: nn.Sequential, cfg: Config) -> str:
    """Copy the network of ``cfg.train.init_from`` (a checkpoint, or a run folder holding one) into ``model``
    and return the file's SHA-256. Its architecture, input shape, kernel and weight form must be this
    config's; with weight averaging it is the averaged network, the one that run evaluated and reported.
    Raises ``ValueError`` (``CheckpointError`` for a file that is not a checkpoint) before any weight of
    ``model`` changes."""
    from relpsp.data._files import sha256_file

    source = Path(str(cfg.train.init_from)).expanduser()
    if source.is_dir():
        source = source / CHECKPOINT_NAME
    arrays, meta = load_checkpoint(source)
    stored = meta.get("config")
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        raise ValueError(f"train.init_from: {source} has no model config: not a relpsp training checkpoint")
    theirs = config_from_dict({"model": stored["model"]}).model
    for key in ("arch", "input_shape", "kernel", "weight_norm"):
        if getattr(theirs, key) != getattr(cfg.model, key):
            raise ValueError(
                f"train.init_from: {source} holds a network with model.{key} = {getattr(theirs, key)!r}, "
                f"this run's is {getattr(cfg.model, key)!r}"
            )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        load_model_arrays(model, arrays)
    except ValueError:
        model.load_state_dict(before)  # a refused array leaves the weights as they were
        raise
    return sha256_file(source)


TRAINING_PREFIX = "training."  # with weight averaging: the weights being trained (``model.*`` is the average)


def save_training_checkpoint(
    path: Path, model, opt, cfg: Config, progress: dict[str, Any], averaged: WeightAverage | None = None
) -> None:
    if averaged is None:
        arrays = model_arrays(model)
    else:
        arrays = model_arrays(averaged.model)
        arrays.update(model_arrays(model, prefix=TRAINING_PREFIX + "model."))
    o_arrays, o_meta = _optimizer_arrays(opt)
    arrays.update(o_arrays)
    meta = {
        "config": config_to_dict(cfg),
        "version": __version__,
        "optimizer": o_meta,
        "progress": progress,
    }
    save_checkpoint(path, arrays, meta)


def load_trained(path: str | os.PathLike, backend: str = "auto") -> tuple[nn.Sequential, Config, dict[str, Any]]:
    """Model (eval mode), resolved config and metadata from a checkpoint file."""
    arrays, meta = load_checkpoint(path)
    if "config" not in meta:
        raise ValueError(f"{path} has no config: not a relpsp training checkpoint")
    cfg = config_from_dict(meta["config"])
    model = model_from_config(cfg.model, backend=backend)
    load_model_arrays(model, arrays)
    model.eval()
    return model, cfg, meta


#: training settings that a resumed run may change: they do not alter the trained network's arithmetic
#: beyond float rounding (devices, kernels and thread counts round differently) or where the data lies
RESUME_MAY_CHANGE = (
    "train.epochs",
    "train.device",
    "train.backend",
    "train.threads",
    "train.eval_batch_size",
    "train.checkpoint_every",
    "data.data_dir",
)


def resume_key(cfg: Config) -> Config:
    """``cfg`` with the settings of ``RESUME_MAY_CHANGE`` at their defaults and a registry dataset under its
    canonical name ("yin-yang" is "yinyang"): equal keys may resume each other."""
    from relpsp.data import canonical_name

    default = Config()
    sections = {}
    for name in ("train", "data"):
        keys = [k.split(".")[1] for k in RESUME_MAY_CHANGE if k.startswith(name + ".")]
        sections[name] = replace(getattr(cfg, name), **{k: getattr(getattr(default, name), k) for k in keys})
    try:
        sections["data"] = replace(sections["data"], dataset=canonical_name(cfg.data.dataset))
    except ValueError:  # a name for splits given to fit(), not one of the registry's
        pass
    return replace(cfg, **sections)


def config_changes(a: Config, b: Config) -> str:
    """The fields that differ between two configs, as ``section.key a -> b`` (for error messages)."""
    da, db = config_to_dict(a), config_to_dict(b)
    diffs = [
        f"{sec}.{k} {da[sec].get(k)!r} -> {db[sec].get(k)!r}"
        for sec in da
        for k in sorted(set(da[sec]) | set(db[sec]))
        if da[sec].get(k) != db[sec].get(k)
    ]
    return ", ".join(diffs) or "no field differs"
