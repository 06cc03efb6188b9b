"""Bad input at every public boundary raises ValueError saying what is wrong; the CLI prints one line.

One test per row group of docs/ROBUSTNESS.md: the functional ops, the modules, architectures and models,
configs, ``fit``, resumable checkpoints and the command line. Empty batches are valid for the layers
(an empty batch in, an empty batch out) and refused where a mean over them would be undefined.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch

from relpsp.arch import parse_arch
from relpsp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from relpsp.cli import main
from relpsp.config import Config, DataConfig, ModelConfig, TrainConfig, config_from_dict
from relpsp.functional import (
    first_spike_decode,
    latency_encode,
    min_time_pool2d,
    relpsp_conv2d,
    relpsp_linear,
    relpsp_linear_ref,
    silent_neuron_penalty,
    spike_time_cross_entropy,
)
from relpsp.models import build_model, load_model_arrays
from relpsp.nn import LatencyEncode, MinTimePool2d, SpikingConv2d, SpikingLinear
from relpsp.train import CHECKPOINT_NAME, evaluate, fit

INF = math.inf


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


T_IN = _t([[0.1, 0.5, INF, 0.2], [0.3, 0.0, 0.7, INF]])
W = torch.full((3, 4), 0.8)
T_CONV = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(0))
W_CONV = torch.full((2, 1, 3, 3), 0.3)


def _with(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] = value
    return t


# ------------------------------------------------------------------------------------------- functional

BAD_LINEAR = {
    "nan-time": (lambda: relpsp_linear(_with(T_IN, math.nan), W), r"t_in holds 1 NaN"),
    "negative-time": (lambda: relpsp_linear(_with(T_IN, -0.5), W), r"t_in holds 1 negative"),
    "minus-inf-time": (lambda: relpsp_linear(_with(T_IN, -INF), W), r"t_in holds 1 negative"),
    "rank-3-input": (lambda: relpsp_linear(T_IN[None], W), r"t_in must have 2 dimensions, got shape \(1, 2, 4\)"),
    "rank-1-weight": (lambda: relpsp_linear(T_IN, W[0]), r"weight must have 2 dimensions"),
    "weight-inputs-mismatch": (lambda: relpsp_linear(T_IN, W[:, :3]), r"weight has 3 inputs .* t_in has 4"),
    "nan-weight": (lambda: relpsp_linear(T_IN, _with(W, math.nan)), r"weight holds NaN or infinite"),
    "inf-weight": (lambda: relpsp_linear(T_IN, _with(W, INF)), r"weight holds NaN or infinite"),
    "dtype-mismatch": (lambda: relpsp_linear(T_IN.double(), W), r"must share dtype and device"),
    "int-input": (lambda: relpsp_linear(T_IN.nan_to_num().long(), W), r"t_in must be a floating-point"),
    "list-input": (lambda: relpsp_linear([[0.1, 0.2, 0.3, 0.4]], W), r"t_in must be a torch.Tensor"),
    "theta-zero": (lambda: relpsp_linear(T_IN, W, theta=0.0), r"theta must be a finite positive"),
    "theta-nan": (lambda: relpsp_linear(T_IN, W, theta=math.nan), r"theta must be a finite positive"),
    "theta-string": (lambda: relpsp_linear(T_IN, W, theta="1"), r"theta must be a number"),
    "t-max-negative": (lambda: relpsp_linear(T_IN, W, t_max=-1.0), r"t_max must be > 0"),
    "t-max-nan": (lambda: relpsp_linear(T_IN, W, t_max=math.nan), r"t_max must be > 0"),
    "w-sum-min-zero": (lambda: relpsp_linear(T_IN, W, w_sum_min=0.0), r"w_sum_min"),
    "unknown-backend": (lambda: relpsp_linear(T_IN, W, backend="cuda"), r"backend must be one of"),
    "ref-nan-time": (lambda: relpsp_linear_ref(_with(T_IN, math.nan), W), r"t_in holds 1 NaN"),
}


@pytest.mark.parametrize("case", list(BAD_LINEAR))
def test_linear_refuses(case):
    call, match = BAD_LINEAR[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_valid_layer_inputs_are_read_back_once_and_bad_ones_still_named(monkeypatch):
    """The finite-weight and spike-time tests of a layer are read back from the device in one ``bool``
    (each read waits for a GPU); a bad weight is still named before a bad time, as before."""
    reads = []
    original = torch.Tensor.__bool__

    def counting_bool(self):
        reads.append(tuple(self.shape))
        return original(self)

    monkeypatch.setattr(torch.Tensor, "__bool__", counting_bool)
    relpsp_linear(T_IN, W, backend="torch")
    n_linear = len(reads)
    reads.clear()
    relpsp_linear(T_IN, W, backend="numba")
    assert n_linear >= 1 and len(reads) == 1  # numba: no other read; the one read is the joint test
    with pytest.raises(ValueError, match=r"weight holds NaN"):
        relpsp_linear(_with(T_IN, math.nan), _with(W, math.nan), backend="numba")


BAD_CONV_POOL = {
    "conv-nan-time": (lambda: relpsp_conv2d(_with(T_CONV, math.nan), W_CONV), r"t_in holds 1 NaN"),
    "conv-rank-2": (lambda: relpsp_conv2d(T_IN, W_CONV), r"t_in must have 4 dimensions"),
    "conv-channels": (lambda: relpsp_conv2d(T_CONV, W_CONV.repeat(1, 2, 1, 1)), r"weight expects 2 input channels"),
    "conv-kernel-too-big": (lambda: relpsp_conv2d(T_CONV, torch.ones(2, 1, 6, 6)), r"larger than the \(padded\) input"),
    "conv-stride-zero": (lambda: relpsp_conv2d(T_CONV, W_CONV, stride=0), r"stride must be an int >= 1"),
    "conv-padding-negative": (lambda: relpsp_conv2d(T_CONV, W_CONV, padding=-1), r"padding must be an int >= 0"),
    "conv-stride-float": (lambda: relpsp_conv2d(T_CONV, W_CONV, stride=1.5), r"stride must be an int >= 1"),
    "conv-stride-none": (lambda: relpsp_conv2d(T_CONV, W_CONV, stride=None), r"stride must be an int >= 1"),
    "conv-empty-kernel": (lambda: relpsp_conv2d(T_CONV, torch.ones(2, 1, 0, 0)), r"empty \(0, 0\) kernel"),
    "pool-kernel-float": (lambda: min_time_pool2d(T_CONV, 2.0), r"kernel_size must be an int >= 1"),
    "pool-nan-time": (lambda: min_time_pool2d(_with(T_CONV, math.nan), 2), r"t holds 1 NaN"),
    "pool-negative-time": (lambda: min_time_pool2d(_with(T_CONV, -1.0), 2), r"t holds 1 negative"),
    "pool-kernel-zero": (lambda: min_time_pool2d(T_CONV, 0), r"kernel_size must be an int >= 1"),
    "pool-kernel-too-big": (lambda: min_time_pool2d(T_CONV, 6), r"larger than the input"),
    "encode-out-of-range": (lambda: latency_encode(torch.tensor([0.5, 1.5])), r"intensities in \[0, 1\]"),
    "encode-nan": (lambda: latency_encode(torch.tensor([0.5, math.nan])), r"intensities in \[0, 1\]"),
    "encode-t-max-inf": (lambda: latency_encode(torch.tensor([0.5]), t_max=INF), r"t_max must be a finite"),
}


@pytest.mark.parametrize("case", list(BAD_CONV_POOL))
def test_conv_pool_encode_refuse(case):
    call, match = BAD_CONV_POOL[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_numpy_integers_are_valid_sizes():
    """A NumPy integer is an integer: ``stride=np.int64(2)`` gives what ``stride=2`` gives."""
    assert torch.equal(relpsp_conv2d(T_CONV, W_CONV, stride=np.int64(2)), relpsp_conv2d(T_CONV, W_CONV, stride=2))
    assert torch.equal(min_time_pool2d(T_CONV, np.int32(2)), min_time_pool2d(T_CONV, 2))


T_OUT = _t([[0.5, INF, 0.2], [INF, INF, INF]])
TARGET = torch.tensor([0, 2])

BAD_LOSS_DECODE = {
    "loss-nan": (lambda: spike_time_cross_entropy(_with(T_OUT, math.nan), TARGET), r"t_out holds 1 NaN"),
    "loss-negative": (lambda: spike_time_cross_entropy(_with(T_OUT, -1.0), TARGET), r"t_out holds 1 negative"),
    "loss-no-classes": (lambda: spike_time_cross_entropy(T_OUT[:, :0], TARGET), r"no output neurons"),
    "loss-label": (lambda: spike_time_cross_entropy(T_OUT, torch.tensor([0, 3])), r"labels outside \[0, 2\]"),
    "loss-target-shape": (lambda: spike_time_cross_entropy(T_OUT, TARGET[:1]), r"target shape \(1,\) must be"),
    "loss-empty-mean": (
        lambda: spike_time_cross_entropy(T_OUT[:0], TARGET[:0]),
        r"mean loss of an empty batch \(B = 0\) is undefined",
    ),
    "loss-tau-zero": (lambda: spike_time_cross_entropy(T_OUT, TARGET, tau=0.0), r"tau must be a finite positive"),
    "decode-nan": (lambda: first_spike_decode(_with(T_OUT, math.nan)), r"t_out holds 1 NaN"),
    "decode-no-classes": (lambda: first_spike_decode(T_OUT[:, :0]), r"no output neurons"),
    "penalty-weight-mismatch": (
        lambda: silent_neuron_penalty(T_IN, W[:, :3], torch.full((2, 3), INF), t_end=1.0),
        r"weight has 3 inputs",
    ),
    "penalty-t-out-shape": (
        lambda: silent_neuron_penalty(T_IN, W, torch.full((2, 5), INF), t_end=1.0),
        r"t_out has shape \(2, 5\); .* \(2, 3\)",
    ),
    "penalty-t-end-nan": (
        lambda: silent_neuron_penalty(T_IN, W, torch.full((2, 3), INF), t_end=math.nan),
        r"t_end must be a finite positive",
    ),
}


@pytest.mark.parametrize("case", list(BAD_LOSS_DECODE))
def test_loss_decode_penalty_refuse(case):
    call, match = BAD_LOSS_DECODE[case]
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_empty_batch_gives_empty_output_and_zero_gradient(backend):
    """B = 0 is a valid batch for every layer and model; a mean loss over it is refused (above)."""
    w = W.clone().requires_grad_()
    out = relpsp_linear(torch.zeros(0, 4), w, backend=backend)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))
    wc = W_CONV.clone().requires_grad_()
    tc = torch.zeros(0, 1, 5, 5, requires_grad=True)
    out = relpsp_conv2d(tc, wc, backend=backend)
    assert out.shape == (0, 2, 3, 3)
    out.sum().backward()
    assert torch.equal(wc.grad, torch.zeros_like(wc))
    assert tc.grad is not None and tc.grad.shape == (0, 1, 5, 5)
    model = build_model("2C3-P3-3", (1, 5, 5), backend=backend)
    assert model(torch.zeros(0, 1, 5, 5)).shape == (0, 3)
    assert float(spike_time_cross_entropy(torch.zeros(0, 3), TARGET[:0], reduction="sum")) == 0.0
    pred, fired = first_spike_decode(torch.zeros(0, 3))
    assert pred.shape == fired.shape == (0,)


# -------------------------------------------------------------------------------------- modules, models

BAD_MODULES = {
    "linear-zero-features": (lambda: SpikingLinear(0, 3), r"in_features must be a positive integer, got 0"),
    "linear-float-features": (lambda: SpikingLinear(4, 2.5), r"out_features must be a positive integer"),
    "linear-bool-features": (lambda: SpikingLinear(True, 3), r"in_features must be a positive integer"),
    "linear-theta": (lambda: SpikingLinear(4, 3, theta=-1.0), r"theta must be a finite positive"),
    "linear-t-max": (lambda: SpikingLinear(4, 3, t_max=0.0), r"t_max must be > 0"),
    "linear-backend": (lambda: SpikingLinear(4, 3, backend="gpu"), r"backend must be one of"),
    "linear-init-mean-nan": (lambda: SpikingLinear(4, 3, init_mean=math.nan), r"init_mean must be a finite"),
    "linear-init-std-negative": (lambda: SpikingLinear(4, 3, init_std=-1.0), r"init_std must be a finite number >= 0"),
    "conv-kernel-zero": (lambda: SpikingConv2d(1, 2, 0), r"kernel_size must be a positive integer"),
    "conv-padding-negative": (lambda: SpikingConv2d(1, 2, 3, padding=-1), r"padding must be an integer >= 0"),
    "conv-stride-zero": (lambda: SpikingConv2d(1, 2, 3, stride=0), r"stride must be a positive integer"),
    "pool-kernel-zero": (lambda: MinTimePool2d(0), r"kernel_size must be a positive integer"),
    "encode-t-max-zero": (lambda: LatencyEncode(0.0), r"t_max must be a finite positive"),
}


@pytest.mark.parametrize("case", list(BAD_MODULES))
def test_modules_refuse(case):
    call, match = BAD_MODULES[case]
    with pytest.raises(ValueError, match=match):
        call()


BAD_ARCH = {
    "empty": ("", None, r"arch must be a non-empty string"),
    "bad-token": ("784-x-10", None, r"cannot parse token 'x'"),
    "zero-layer": ("784-0-10", None, r"at least one neuron"),
    "only-inputs": ("784", None, r"no layer after the input size"),
    "ends-with-conv": ("4C3", (1, 5, 5), r"must end with a dense output layer"),
    "conv-without-shape": ("4C3-10", None, r"input_shape must be \(C, H, W\)"),
    "input-size-mismatch": ("784-10", (1, 28, 27), r"declares 784 inputs but the input shape"),
    "kernel-too-big": ("4C7-10", (1, 5, 5), r"kernel of '4C7' is larger than its input"),
    "float-shape": ("4-3", (4.5,), r"input_shape must be a tuple of integers"),
    "rank-2-shape": ("4C3-10", (5, 5), r"input_shape must be \(N,\) or \(C, H, W\)"),
    "negative-shape": ("4C3-10", (1, -5, 5), r"input_shape must be positive"),
}


@pytest.mark.parametrize("case", list(BAD_ARCH))
def test_arch_refused(case):
    arch, shape, match = BAD_ARCH[case]
    with pytest.raises(ValueError, match=match):
        parse_arch(arch, shape)
    with pytest.raises(ValueError, match=match):
        build_model(arch, shape)


def test_absurd_model_and_bad_weights_refused():
    with pytest.raises(ValueError, match=r"784-100000000-10' has 79,400,000,000 weights, more than the limit"):
        build_model("784-100000000-10")
    model = build_model("4-3")
    with pytest.raises(ValueError, match=r"t_in has 5"):
        model(torch.rand(2, 5))
    with pytest.raises(ValueError, match=r"intensities in \[0, 1\]"):
        model(torch.full((2, 4), 2.0))
    good = {"model.1.weight": np.ones((3, 4), np.float32)}
    for arrays, match in [
        ({}, r"no array 'model.1.weight'"),
        ({"model.1.weight": np.ones((4, 3), np.float32)}, r"has shape \(4, 3\), the model needs \(3, 4\)"),
        ({"model.1.weight": np.full((3, 4), np.nan, np.float32)}, r"NaN or infinite weights"),
        ({"model.1.weight": np.ones((3, 4), bool)}, r"dtype bool"),
        ({"model.1.weight": np.ones((3, 4), np.longdouble)}, r"64 bits at most"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_model_arrays(model, arrays)
    load_model_arrays(model, good)
    assert torch.equal(model[1].weight, torch.ones(3, 4))
    swapped = np.arange(12, dtype=">f4").reshape(3, 4)  # big-endian, as another machine may write it
    load_model_arrays(model, {"model.1.weight": swapped})
    assert torch.equal(model[1].weight, torch.arange(12.0).reshape(3, 4))


# ---------------------------------------------------------------------------------------------- config

BAD_CONFIG = {
    "unknown-key": ({"train": {"epoch": 3}}, r"unknown key\(s\) in \[train\]: \['epoch'\]"),
    "unknown-section": ({"optim": {}}, r"unknown section\(s\) \['optim'\]"),
    "section-not-table": ({"train": 3}, r"\[train\] must be a table"),
    "string-for-int": ({"train": {"epochs": "3"}}, r"TrainConfig.epochs must be an integer"),
    "bool-for-int": ({"train": {"batch_size": True}}, r"TrainConfig.batch_size must be an integer"),
    "string-for-float": ({"train": {"lr": "fast"}}, r"TrainConfig.lr must be a number"),
    "float-shape": ({"model": {"input_shape": [1, 28.5, 28]}}, r"ModelConfig.input_shape must be a list of integers"),
    "int-for-bool": ({"data": {"augment": 1}}, r"DataConfig.augment must be true or false"),
    "not-a-dict": ([1, 2], r"a config must be a table/dict of sections"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIG))
def test_config_refused(case):
    d, match = BAD_CONFIG[case]
    with pytest.raises(ValueError, match=match):
        config_from_dict(d)


def _splits(n_train: int = 24, n_test: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n_train + n_test,), generator=g)
    x = torch.rand(n_train + n_test, 1, 2, 2, generator=g)
    return {"train": (x[:n_train], y[:n_train]), "test": (x[n_train:], y[n_train:])}


def _cfg(model: dict | None = None, **train) -> Config:
    return Config(
        model=ModelConfig(**{"arch": "4-5-3", "input_shape": (1, 2, 2), **(model or {})}),
        data=DataConfig(dataset="tiny"),
        train=TrainConfig(**{"epochs": 1, "batch_size": 8, "threads": 1, **train}),
    )


def _with_data(**data) -> Config:
    cfg = _cfg()
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data))


BAD_FIT = {
    "epochs-zero": (_cfg(epochs=0), r"train.epochs must be >= 1, got 0"),
    "batch-zero": (_cfg(batch_size=0), r"train.batch_size must be >= 1"),
    "batch-absurd": (_cfg(batch_size=10**9), r"absurdly large"),
    "lr-zero": (_cfg(lr=0.0), r"train.lr must be in \(0, 10\)"),
    "lr-nan": (_cfg(lr=math.nan), r"TrainConfig.lr must be a number, got nan"),  # the TOML type check
    "lr-huge": (_cfg(lr=1e3), r"train.lr must be in \(0, 10\)"),
    "seed-negative": (_cfg(seed=-1), r"train.seed must be in \[0, 2\^32\)"),
    "threads-negative": (_cfg(threads=-1), r"train.threads must be >= 0"),
    "weight-decay-nan": (_cfg(weight_decay=math.nan), r"TrainConfig.weight_decay must be a number, got nan"),
    "weight-decay-inf": (_cfg(weight_decay=math.inf), r"train.weight_decay must be a finite number >= 0"),
    "silent-margin-negative": (_cfg(silent_margin=-1.0), r"train.silent_margin must be a finite number >= 0"),
    "tau-zero": (_cfg(tau=0.0), r"train.tau must be > 0"),
    "optimizer": (_cfg(optimizer="rmsprop"), r"train.optimizer must be 'adam', 'adamw' or 'sgd'"),
    "schedule": (_cfg(lr_schedule="step"), r"train.lr_schedule must be 'cosine' or 'constant'"),
    "backend": (_cfg(backend="gpu"), r"train.backend must be one of"),
    "device": (_cfg(device="tpu"), r"train.device must be 'cpu' or 'cuda\[:N\]'"),
    "model-theta": (_cfg({"theta": -1.0}), r"theta must be a finite positive"),
    "model-t-in-nan": (_cfg({"t_in": math.nan}), r"ModelConfig.t_in must be a number, got nan"),
    "model-t-in-inf": (_cfg({"t_in": math.inf}), r"t_in must be a finite positive"),
    "model-arch": (_cfg({"arch": "4-0-3"}), r"at least one neuron"),
    # beyond float32 at the first step, after --overwrite had deleted the old run
    "weight-decay-huge": (_cfg(weight_decay=1e39), r"train.weight_decay = 1e\+39 is absurdly large"),
    "penalty-huge": (_cfg(target_penalty=3.5e38), r"train.target_penalty = 3.5e\+38 is absurdly large"),
    "model-theta-huge": (_cfg({"theta": 1e38}), r"model.theta = 1e\+38 is absurdly large"),
    "model-init-mean-huge": (_cfg({"init_mean": -1e39}), r"model.init_mean = -1e\+39 is absurdly large"),
    "model-init-std-huge": (_cfg({"init_std": 1e39}), r"model.init_std = 1e\+39 is absurdly large"),
    "threads-absurd": (_cfg(threads=5000), r"train.threads or train.eval_batch_size is absurdly large"),
    "val-size-negative": (_with_data(val_size=-1), r"data.val_size and data.train_size must be >= 0"),
    "train-size-negative": (_with_data(train_size=-5), r"data.val_size and data.train_size must be >= 0"),
    "max-shift": (_with_data(max_shift=65), r"data.max_shift must be in \[0, 64\], got 65"),
    **(
        {}
        if torch.cuda.is_available()
        else {"cuda-missing": (_cfg(device="cuda"), r"train.device is cuda but torch sees no CUDA device")}
    ),
}


@pytest.mark.parametrize("case", list(BAD_FIT))
def test_fit_refuses_settings_before_writing(tmp_path, case):
    cfg, match = BAD_FIT[case]
    with pytest.raises(ValueError, match=match):
        fit(cfg, tmp_path / "run", progress=False, splits=_splits(), log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_fit_refuses_bad_data(tmp_path):
    x, y = _splits()["train"]
    cases = [
        ({"train": (x[:0], y[:0]), "test": (x, y)}, r"train split has 0 inputs and 0 labels"),
        ({"train": (x, y[:-1]), "test": (x, y)}, r"train split has 24 inputs and 23 labels"),
        ({"train": (x[:, :, :1], y), "test": (x, y)}, r"inputs of shape \(1, 1, 2\) but model.input_shape"),
        # no test split: every epoch used to train, then a KeyError, with no results.json
        ({"train": (x, y), "val": (x, y)}, r"splits must hold 'train' and 'test'.*missing \['test'\]"),
    ]
    for splits, match in cases:
        with pytest.raises(ValueError, match=match):
            fit(_cfg(), tmp_path, progress=False, splits=splits, log=lambda s: None)
        assert not (tmp_path / CHECKPOINT_NAME).exists()  # refused before any training
    model = build_model("4-5-3", (1, 2, 2))
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer"):
        evaluate(model, x, y, batch_size=0)
    with pytest.raises(ValueError, match=r"x has 24 samples but y has 23"):
        evaluate(model, x, y[:-1])


def test_resume_refuses_checkpoints_without_usable_state(tmp_path):
    quiet = {"progress": False, "splits": _splits(), "log": lambda s: None}
    fit(_cfg(), tmp_path, **quiet)
    path = tmp_path / CHECKPOINT_NAME
    arrays, meta = load_checkpoint(path)
    broken = {
        "no-progress": (
            arrays,
            {k: v for k, v in meta.items() if k != "progress"},
            CheckpointError,
            r"no usable training state",
        ),
        "bad-progress": (
            arrays,
            {**meta, "progress": {**meta["progress"], "step": 99}},
            CheckpointError,
            r"does not fit this run",
        ),
        "history-of-numbers": (  # a hand-edited meta.json: used to rewrite metrics.jsonl, then crash
            arrays,
            {**meta, "progress": {**meta["progress"], "history": list(range(len(meta["progress"]["history"])))}},
            CheckpointError,
            r"no usable training state .*history must hold one object per epoch",
        ),
        "running-of-text": (
            arrays,
            {**meta, "progress": {**meta["progress"], "step": 1, "running": {"seen": "x"}}},
            CheckpointError,
            r"no usable training state .*running must hold numbers",
        ),
        "optimizer-betas": (  # accepted at load and failed at the first step (TypeError)
            arrays,
            {
                **meta,
                "optimizer": {
                    **meta["optimizer"],
                    "param_groups": [{**meta["optimizer"]["param_groups"][0], "betas": 5}],
                },
            },
            CheckpointError,
            r"optimizer state .* does not fit .*betas",
        ),
        "optimizer-step-nan": (  # made every weight NaN after one step
            arrays,
            {
                **meta,
                "optimizer": {
                    **meta["optimizer"],
                    "scalars": {k: {**v, "step": float("nan")} for k, v in meta["optimizer"]["scalars"].items()},
                },
            },
            CheckpointError,
            r"optimizer state .* does not fit .*finite numbers",
        ),
        "optimizer-state-missing": (
            {k: v for k, v in arrays.items() if k != "optim.0.exp_avg"},
            meta,
            CheckpointError,
            r"optimizer state .* does not fit .*state of parameter 0",
        ),
        "nan-weights": (
            {**arrays, "model.2.weight": np.full_like(arrays["model.2.weight"], np.nan)},
            meta,
            ValueError,
            r"NaN or infinite weights",
        ),
        "optimizer-shape": (
            {**arrays, "optim.0.exp_avg": np.zeros((2, 2), np.float32)},
            meta,
            CheckpointError,
            r"optimizer state in the checkpoint does not fit",
        ),
    }
    for name, (a, m, error, match) in broken.items():
        bad = tmp_path / name
        bad.mkdir()
        save_checkpoint(bad / CHECKPOINT_NAME, a, {k: v for k, v in m.items() if k not in ("format", "sha256")})
        (bad / "metrics.jsonl").write_text("kept\n")
        with pytest.raises(error, match=match):
            fit(_cfg(), bad, resume=True, **quiet)
        assert (bad / "metrics.jsonl").read_text() == "kept\n"


def _stepped_adam() -> tuple[torch.optim.Optimizer, dict, dict]:
    """An Adam optimizer of a 4-5-3 network after one step, and its state as a checkpoint stores it."""
    from relpsp.train.checkpointing import _optimizer_arrays

    model = build_model("4-5-3", (4,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(8, 4)).sum().backward()
    opt.step()
    arrays, meta = _optimizer_arrays(opt)
    return opt, arrays, meta


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda a, m: m.update(param_groups={}), r"param_groups must be a list of 1 group\(s\)"),
        (lambda a, m: m["param_groups"][0].pop("lr"), "a param group must have keys among .*, with params and lr"),
        (lambda a, m: m["param_groups"][0].update(surprise=1), "a param group must have keys among"),
        (lambda a, m: m["param_groups"][0].update(params=[0, 7]), "param_groups name other parameters"),
        (lambda a, m: m["param_groups"][0].update(amsgrad="yes"), "param group 'amsgrad' must be like False"),
        (lambda a, m: m["param_groups"][0].update(lr=math.inf), "param group 'lr' must be a finite number, got inf"),
        (lambda a, m: m["param_groups"][0].update(eps=True), "param group 'eps' must be a finite number, got True"),
        (lambda a, m: m["param_groups"][0].update(betas=[0.9]), "param group 'betas' must be 2 finite numbers"),
        (lambda a, m: a.update({"optim.0.exp_avg": a["optim.0.exp_avg"].astype(np.int64)}), "not finite floating"),
        (lambda a, m: a.update({"optim.9.exp_avg": np.zeros(1, np.float32)}), "'optim.9.exp_avg' .* fits no parameter"),
        (lambda a, m: m["scalars"].update({"9": {"step": 1.0}}), "state for parameters this model does not have"),
        (lambda a, m: m["scalars"]["0"].update(step=-1.0), "must be finite numbers >= 0"),
    ],
)
def test_a_checkpoints_optimizer_state_is_checked_before_it_is_loaded(edit, match):
    """What a resumed run takes from the file for its optimizer, edited one field at a time: refused with a
    CheckpointError naming the field, and the optimizer keeps its own state."""
    from relpsp.train.checkpointing import load_optimizer_state

    opt, arrays, meta = _stepped_adam()
    load_optimizer_state(opt, dict(arrays), {**meta, "param_groups": [dict(g) for g in meta["param_groups"]]})
    before = {k: v.clone() for k, v in opt.state[opt.param_groups[0]["params"][0]].items()}
    meta = {
        "scalars": {k: dict(v) for k, v in meta["scalars"].items()},
        "param_groups": [dict(meta["param_groups"][0])],
    }
    arrays = dict(arrays)
    edit(arrays, meta)
    with pytest.raises(CheckpointError, match="optimizer state in the checkpoint does not fit this model .*" + match):
        load_optimizer_state(opt, arrays, meta)
    after = opt.state[opt.param_groups[0]["params"][0]]
    assert all(torch.equal(before[k], after[k]) for k in before) and opt.param_groups[0]["lr"] == 1e-3


# ------------------------------------------------------------------------------------------------- CLI


def _cli_error(capsys, argv: list[str]) -> str:
    """Run the command line; assert exit code 2 and exactly one line on stderr, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relpsp: error: "), err
    return lines[0]


def _train(tmp_path, *extra: str) -> list[str]:
    return ["train", "--dataset", "yinyang", "--arch", "4-5-3", "--out", str(tmp_path / "run"), *extra]


def test_cli_bad_settings_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "bad.toml"
    toml.write_text("[train]\nepochs = \n")
    cases = [
        (_train(tmp_path, "--epochs", "0"), r"train.epochs must be >= 1"),
        (_train(tmp_path, "--lr", "nan"), r"TrainConfig.lr must be a number, got nan"),  # refused as it is read
        (_train(tmp_path, "--lr", "20"), r"train.lr must be in \(0, 10\)"),
        (_train(tmp_path, "--set", "model.theta=-1"), r"theta must be a finite positive"),
        (_train(tmp_path, "--set", "train.epochs=many"), r"TrainConfig.epochs must be an integer"),
        (_train(tmp_path, "--set", "nonsense"), r"--set expects SECTION.KEY=VALUE"),
        (_train(tmp_path, "--arch", "4-100000000-100000000-3"), r"more than the limit"),
        (_train(tmp_path, "--arch", "4-x-3"), r"cannot parse token 'x'"),
        (["train", str(toml), "--out", str(tmp_path / "run")], r"is not valid TOML"),
        (["train", str(tmp_path / "missing.toml")], r"config file .*missing.toml does not exist"),
        (["train", "--dataset", "no-such-set", "--out", str(tmp_path / "run")], r"no-such-set"),
    ]
    for argv, match in cases:
        line = _cli_error(capsys, argv)
        assert re.search(match, line), (argv, line)
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_cli_bad_files_one_line(tmp_path, capsys):
    foreign = tmp_path / "foreign.ckpt"
    foreign.write_bytes(b"PK\x03\x04" + bytes(64))
    assert "truncated, corrupted or not a relpsp checkpoint" in _cli_error(capsys, ["eval", str(foreign)])
    assert "does not exist" in _cli_error(capsys, ["eval", str(tmp_path / "none.ckpt")])
    # Datasets: missing files, and files that fail their sha256 (here: random bytes under MNIST's names).
    mnist = ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    assert "relpsp data fetch mnist" in _cli_error(capsys, mnist)
    from relpsp.data import registry

    (tmp_path / "data" / "mnist").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in registry.MNIST_FILES:
        (tmp_path / "data" / "mnist" / f.name).write_bytes(rng.integers(0, 256, 100, dtype=np.uint8).tobytes())
    line = _cli_error(capsys, mnist)
    assert "sha256" in line and "relpsp data fetch mnist" in line


def test_public_api_gaps_found_in_review_are_closed():
    """A negative spike time into the windowed neuron (silently clamped before), a misspelt backend for
    the alpha and window kernels (ignored before), zero_fires given as text (bool("false") is True) and
    a NumPy integer padding (refused before, though stride and kernel_size took it)."""
    import numpy as np

    from relpsp.models import build_model
    from relpsp.nn import LatencyEncode, SpikingConv2d
    from relpsp.window import window_linear

    with pytest.raises(ValueError, match="t_in holds 1 negative value"):
        window_linear(torch.tensor([[-5.0, 0.5]]), torch.ones(1, 2), t_start=1.0, t_end=2.0)
    assert window_linear(torch.tensor([[0.0, 0.5]]), torch.ones(1, 2), t_start=1.0, t_end=2.0).shape == (1, 1)
    for kernel in ("relpsp", "alpha", "window"):
        with pytest.raises(ValueError, match="backend must be one of"):
            build_model("784-10", kernel=kernel, backend="bogus")
    with pytest.raises(ValueError, match="zero_fires must be True or False"):
        LatencyEncode(zero_fires="false")
    assert SpikingConv2d(1, 2, 3, padding=np.int64(1)).padding == 1
