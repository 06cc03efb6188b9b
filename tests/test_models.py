"""Architecture strings (``relpsp.arch``) and ``relpsp.models.build_model``: layer shapes, a forward and
backward pass through the paper's two MNIST networks, and parse errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from relpsp.arch import ConvSpec, DenseSpec, EncodeSpec, FlattenSpec, PoolSpec, parse_arch, weight_layers
from relpsp.functional import (
    latency_encode,
    min_time_pool2d,
    relpsp_conv2d_ref,
    relpsp_linear_ref,
    spike_time_cross_entropy,
)
from relpsp.models import build_model, layer_outputs
from relpsp.nn import LatencyEncode, MinTimePool2d, SpikingConv2d, SpikingLinear
from tests.helpers import assert_close


def _check_outputs(outs, shapes):
    assert [tuple(o.shape) for o in outs] == shapes
    for o in outs:
        assert not torch.isnan(o).any() and not (o == -float("inf")).any()


def test_mlp_784_800_10():
    torch.manual_seed(0)
    model = build_model("784-800-10")
    assert isinstance(model, nn.Sequential)
    assert [type(m) for m in model] == [LatencyEncode, SpikingLinear, SpikingLinear]
    assert model[1].weight.shape == (800, 784) and model[2].weight.shape == (10, 800)
    x = torch.rand(3, 784)
    outs = layer_outputs(model, x)
    _check_outputs(outs, [(3, 784), (3, 800), (3, 10)])
    assert torch.equal(model(x), outs[-1])
    assert torch.isfinite(outs[-1]).any()  # the default init makes the network fire


def test_mlp_with_image_input_flattens():
    torch.manual_seed(1)
    model = build_model("784-800-10", (1, 28, 28))
    assert [type(m) for m in model] == [LatencyEncode, nn.Flatten, SpikingLinear, SpikingLinear]
    _check_outputs(layer_outputs(model, torch.rand(2, 1, 28, 28)), [(2, 1, 28, 28), (2, 784), (2, 800), (2, 10)])


def test_conv_net_shapes_and_gradients():
    torch.manual_seed(2)
    model = build_model("16C5-P2-32C5-P2-800-128-10", (1, 28, 28))
    types = [type(m) for m in model]
    assert types == [
        LatencyEncode,
        SpikingConv2d,
        MinTimePool2d,
        SpikingConv2d,
        MinTimePool2d,
        nn.Flatten,
        SpikingLinear,
        SpikingLinear,
        SpikingLinear,
    ]
    assert model[1].weight.shape == (16, 1, 5, 5) and model[3].weight.shape == (32, 16, 5, 5)
    assert model[6].weight.shape == (800, 512)
    x = torch.rand(2, 1, 28, 28)
    outs = layer_outputs(model, x)
    _check_outputs(
        outs,
        [
            (2, 1, 28, 28),
            (2, 16, 24, 24),
            (2, 16, 12, 12),
            (2, 32, 8, 8),
            (2, 32, 4, 4),
            (2, 512),
            (2, 800),
            (2, 128),
            (2, 10),
        ],
    )
    assert torch.isfinite(outs[-1]).any()
    loss = spike_time_cross_entropy(outs[-1], torch.tensor([3, 7]))
    loss.backward()
    for k in weight_layers(parse_arch("16C5-P2-32C5-P2-800-128-10", (1, 28, 28))):
        g = model[k].weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, f"layer {k}"


def test_parse_arch_specs():
    torch.manual_seed(4)
    specs = parse_arch("8C3s2p1-P2-10", (2, 9, 9))
    assert specs == [
        EncodeSpec((2, 9, 9)),
        ConvSpec(2, 8, 3, 2, 1, (9, 9), (5, 5)),
        PoolSpec(8, 2, (5, 5), (2, 2)),
        FlattenSpec(32),
        DenseSpec(32, 10),
    ]
    assert weight_layers(specs) == [1, 4]
    model = build_model("8C3s2p1-P2-10", (2, 9, 9))
    assert model[1].stride == 2 and model[1].padding == 1
    assert model(torch.rand(1, 2, 9, 9)).shape == (1, 10)


@pytest.mark.parametrize(
    "arch,shape,match",
    [
        pytest.param("", None, r"non-empty", id="empty"),
        pytest.param("784-abc-10", None, r"token 'abc'", id="bad_token"),
        pytest.param("784-800-10", (1, 28, 29), r"declares 784 inputs", id="input_mismatch"),
        pytest.param("784", None, r"no layer after", id="input_only"),
        pytest.param("16C5-10", None, r"input_shape must be \(C, H, W\)", id="conv_without_shape"),
        pytest.param("16C5-P2", (1, 28, 28), r"must end with a dense", id="ends_with_pool"),
        pytest.param("16C30-10", (1, 28, 28), r"larger than its input", id="kernel_too_large"),
        pytest.param("P30-10", (1, 28, 28), r"does not fit", id="pool_too_large"),
        pytest.param("16C5-100-8C3-10", (1, 28, 28), r"after a dense layer", id="conv_after_dense"),
        pytest.param("16C0-10", (1, 28, 28), r"positive", id="kernel_zero"),
        pytest.param("784-0-10", None, r"at least one neuron", id="zero_neurons"),
    ],
)
def test_parse_errors(arch, shape, match):
    torch.manual_seed(5)
    with pytest.raises(ValueError, match=match):
        parse_arch(arch, shape)
    with pytest.raises(ValueError, match=match):
        build_model(arch, shape)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_model_gradients_match_ref_composition(backend):
    # The whole chain encode -> conv -> pool -> conv -> flatten -> dense -> dense, with the custom
    # backward of every layer, against the same network written with the autograd reference twins.
    torch.manual_seed(3)
    arch, shape = "4C3p1-P2-6C3-24-5", (2, 8, 8)
    model = build_model(arch, shape, backend=backend, t_max=4.0).double()
    x = torch.rand(3, *shape, dtype=torch.float64)
    x[0, :, :4, :4] = 0.0  # dark pixels never spike
    target = torch.tensor([0, 4, 2])

    def reference(x):
        t = latency_encode(x)
        t = relpsp_conv2d_ref(t, model[1].weight, padding=1, t_max=4.0)
        t = min_time_pool2d(t, 2)
        t = relpsp_conv2d_ref(t, model[3].weight, t_max=4.0)
        t = t.flatten(1)
        t = relpsp_linear_ref(t, model[5].weight, t_max=4.0)
        return relpsp_linear_ref(t, model[6].weight, t_max=4.0)

    grads = {}
    for name, fn in (("model", model), ("ref", reference)):
        model.zero_grad()
        out = fn(x)
        spike_time_cross_entropy(out, target).backward()
        grads[name] = (out.detach(), [p.grad.clone() for p in model.parameters()])
    (out, g), (ref, g_ref) = grads["model"], grads["ref"]
    assert torch.isfinite(out).sum() >= 5
    assert_close("t_out", out, ref, torch.float64)
    for k, (a, e) in enumerate(zip(g, g_ref)):
        assert e.abs().sum() > 0, f"parameter {k} got no gradient"
        assert_close(f"grad of parameter {k}", a, e, torch.float64, kind="grad")


# --- arch.parse_arch: conv output sizes are those of the convolution the model runs
@pytest.mark.parametrize(
    ("hw", "k", "s", "p"), [((8, 8), 3, 2, 0), ((9, 7), 3, 2, 1), ((6, 11), 4, 3, 2), ((5, 5), 5, 1, 0)]
)
def test_conv_output_sizes_match_torch_for_any_stride_padding_and_non_square_input(hw, k, s, p):
    tok = f"2C{k}" + (f"s{s}" if s != 1 else "") + (f"p{p}" if p else "")
    specs = parse_arch(f"{tok}-3", (1, *hw))
    conv = specs[1]
    assert isinstance(conv, ConvSpec)
    ref = torch.nn.functional.conv2d(torch.zeros(1, 1, *hw), torch.zeros(2, 1, k, k), stride=s, padding=p)
    assert conv.out_hw == tuple(ref.shape[2:])
    assert specs[2].n == 2 * ref.shape[2] * ref.shape[3]  # the FlattenSpec before the dense layer


def test_count_weights_equals_the_models_parameter_count():
    """count_weights ('Number of weights of a parsed architecture (dense and conv layers)') guards
    MAX_WEIGHTS; it must count C_out * C_in * k * k per convolution. The existing limit tests use dense
    layers only. Kills: conv counted as C_out * C_in * k."""
    from relpsp.arch import parse_arch
    from relpsp.models import build_model, count_weights

    for arch, shape in [("16C5-P2-32C5-P2-800-128-10", (1, 28, 28)), ("4C3s2p1-10", (3, 9, 9)), ("784-800-10", None)]:
        model = build_model(arch, shape, init_mean=5.0)
        assert count_weights(parse_arch(arch, shape)) == sum(p.numel() for p in model.parameters())


def test_pooling_of_a_non_square_map_keeps_both_sides():
    specs = parse_arch("2C1-P2-3", (1, 4, 6))
    assert specs[2] == PoolSpec(2, 2, (4, 6), (2, 3))
    assert specs[3] == FlattenSpec(12)


def test_padding_counts_when_checking_the_kernel_size():
    specs = parse_arch("4C7p1-10", (1, 5, 5))  # 5 + 2 = 7: one output pixel
    assert specs[1] == ConvSpec(1, 4, 7, 1, 1, (5, 5), (1, 1))


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ("4C3s0-10", r"'4C3s0' needs positive channels, kernel and stride"),
        ("P0-10", r"pooling 'P0' does not fit"),
        ("P3s2-10", r"cannot parse token 'P3s2'"),
        ("4C3q-10", r"cannot parse token '4C3q'"),
        ("4C3p1s2-10", r"cannot parse token '4C3p1s2'"),
    ],
    ids=["stride-zero", "pool-zero", "pool-with-stride", "conv-trailing-junk", "padding-before-stride"],
)
def test_more_bad_tokens_are_refused_with_value_errors(arch, match):
    with pytest.raises(ValueError, match=match):
        parse_arch(arch, (1, 9, 9))


def test_w_sum_min_reaches_every_relpsp_layer_from_the_config_and_only_there():
    from relpsp.config import ModelConfig, config_from_dict
    from relpsp.core.dense import W_SUM_MIN
    from relpsp.models import model_from_config

    assert ModelConfig().w_sum_min == W_SUM_MIN  # the config's default is the kernels' own
    cfg = config_from_dict({"model": {"arch": "8C3-P2-6-2", "input_shape": [1, 8, 8], "w_sum_min": 0.05}})
    model = model_from_config(cfg.model)
    guarded = [m for m in model if isinstance(m, (SpikingConv2d, SpikingLinear))]
    assert len(guarded) == 3 and all(m.w_sum_min == 0.05 for m in guarded)
    assert all(m.w_sum_min == W_SUM_MIN for m in build_model("4-3-2") if isinstance(m, SpikingLinear))
    for kernel in ("alpha", "window"):
        with pytest.raises(ValueError, match=r"w_sum_min .* kernel 'relpsp' only"):
            build_model("4-3-2", kernel=kernel, w_sum_min=0.05)
    with pytest.raises(ValueError, match="w_sum_min"):
        build_model("4-3-2", w_sum_min=0.0)
