"""The alpha-kernel baseline neuron (relpsp.alpha): exact forward against an independent root search,
implicit-function gradients against finite differences, guards, and its place in models and training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from relpsp.alpha import alpha_linear, alpha_potential
from relpsp.config import Config, DataConfig, ModelConfig, TrainConfig
from relpsp.kernels.alpha_numba import lambertw0
from relpsp.models import build_model, model_from_config
from relpsp.nn import AlphaSpikingLinear
from relpsp.train import CHECKPOINT_NAME, fit, load_splits, load_trained


def _v(t: float, t_in: np.ndarray, w: np.ndarray, tau: float) -> float:
    s = t - t_in
    ok = np.isfinite(s) & (s > 0)
    return float(np.sum(w[ok] * (s[ok] / tau) * np.exp(1.0 - s[ok] / tau)))


def oracle(t_in: np.ndarray, w: np.ndarray, theta: float, tau: float, t_max: float) -> np.ndarray:
    """First crossing by a fine scan for a sign change of V - theta, then bisection (no Lambert W, no
    event walk): independent of the implementation."""
    out = np.full((t_in.shape[0], w.shape[0]), np.inf)
    for b in range(t_in.shape[0]):
        fin = t_in[b][np.isfinite(t_in[b])]
        if not len(fin):
            continue
        hi = min(t_max, fin.max() + 40 * tau)
        grid = np.union1d(np.linspace(fin.min(), hi, 20001), fin[fin <= hi])
        s = grid[:, None] - t_in[b][None, :]
        ok = np.isfinite(s) & (s > 0)
        k = np.where(ok, (np.where(ok, s, 0) / tau) * np.exp(1.0 - np.where(ok, s, 0) / tau), 0.0)
        v = k @ w.T  # [grid, M]
        for j in range(w.shape[0]):
            above = np.nonzero(v[:, j] >= theta)[0]
            if not len(above):
                continue
            i = above[0]
            lo, up = grid[max(i - 1, 0)], grid[i]
            for _ in range(200):
                mid = 0.5 * (lo + up)
                if _v(mid, t_in[b], w[j], tau) >= theta:
                    up = mid
                else:
                    lo = mid
            if up < t_max:
                out[b, j] = up
    return out


def _case(seed: int, b: int = 6, n: int = 14, m: int = 10, silent: float = 0.2, ties: bool = True):
    g = torch.Generator().manual_seed(seed)
    t_in = torch.rand(b, n, generator=g, dtype=torch.float64) * 2
    if ties:
        t_in[:, 1] = t_in[:, 0]
    t_in[torch.rand(b, n, generator=g) < silent] = math.inf
    w = torch.randn(m, n, generator=g, dtype=torch.float64) * 0.5 + 0.12  # negative weights, some silent
    return t_in, w


def test_lambertw0_inverts_w_exp_w():
    xs = np.concatenate([-np.exp(-1) + np.logspace(-14, -1, 40), np.linspace(-0.36, -1e-12, 200)])
    for x in xs:
        w = lambertw0(x)
        assert -1.0 <= w <= 0.0
        assert abs(w * math.exp(w) - x) <= 1e-15 + 1e-14 * abs(x), x
    assert lambertw0(-math.exp(-1)) == -1.0 and lambertw0(0.0) == 0.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("t_max", [math.inf, 1.6])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_forward_matches_independent_root_search(seed, t_max, tau):
    t_in, w = _case(seed)
    theta = 0.8
    got = alpha_linear(t_in, w, theta=theta, tau=tau, t_max=t_max).numpy()
    want = oracle(t_in.numpy(), w.numpy(), theta, tau, t_max)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    assert fin.sum() >= 10 and (~fin).sum() >= 1  # the case has both firing and silent neurons
    np.testing.assert_allclose(got[fin], want[fin], rtol=0, atol=1e-9)


def test_crossing_potential_is_theta_and_float32_agrees():
    t_in, w = _case(7, b=16, n=40, m=30)
    t64, slope = alpha_linear(t_in, w, theta=1.0, return_slope=True)
    fired = torch.isfinite(t64)
    v = alpha_potential(torch.where(fired, t64, torch.zeros_like(t64)), t_in, w)
    assert torch.allclose(v[fired], torch.ones_like(v[fired]), atol=1e-12)
    assert (slope[fired] >= 0).all() and (slope[~fired] == 0).all()
    t32 = alpha_linear(t_in.float(), w.float(), theta=1.0)
    assert t32.dtype == torch.float32
    assert torch.equal(torch.isfinite(t32), fired)
    assert torch.allclose(t32[fired].double(), t64[fired], rtol=1e-5, atol=1e-6)


def test_a_potential_that_dips_and_recovers_fires_at_the_later_crossing():
    # A positive input, a strong negative one, then a late positive burst: V stays below theta early.
    t_in = torch.tensor([[0.0, 0.5, 3.0, 3.0]], dtype=torch.float64)
    w = torch.tensor([[0.9, -2.0, 0.8, 0.8]], dtype=torch.float64)
    t = alpha_linear(t_in, w).item()
    assert 3.0 < t < 4.0
    want = oracle(t_in.numpy(), w.numpy(), 1.0, 1.0, math.inf)[0, 0]
    assert t == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("tau", [1.0, 0.4, 3.0])  # tau != 1 guards each factor 1/tau of the chain rule
@pytest.mark.parametrize("seed", range(3))
def test_gradients_match_finite_differences(seed, tau):
    t_in, w = _case(seed + 10, b=4, n=8, m=6, silent=0.15, ties=False)
    t_in.requires_grad_(True)
    w.requires_grad_(True)

    def f(a, b):
        return alpha_linear(a, b, theta=0.8, tau=tau).nan_to_num(posinf=0.0)

    assert torch.isfinite(f(t_in, w)).sum() >= 5
    assert torch.autograd.gradcheck(f, (t_in, w), eps=1e-7, atol=1e-5, rtol=1e-4)


def test_silent_neurons_and_non_causal_inputs_get_exactly_zero():
    t_in = torch.tensor([[0.0, 5.0, math.inf]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.5, 1.0, 1.0], [0.1, 0.1, 0.1]], dtype=torch.float64, requires_grad=True)
    t = alpha_linear(t_in, w)
    assert math.isfinite(t[0, 0].item()) and t[0, 0].item() < 5.0 and math.isinf(t[0, 1].item())
    t[:, :1].sum().backward()
    assert w.grad is not None and t_in.grad is not None
    assert torch.isfinite(w.grad).all() and torch.isfinite(t_in.grad).all()
    assert (w.grad[0, 1:] == 0).all() and (w.grad[1] == 0).all()  # late and silent inputs; silent neuron
    assert (t_in.grad[0, 1:] == 0).all() and t_in.grad[0, 0] != 0


def test_crossing_that_rounds_onto_the_last_input_moves_just_above_it():
    """Input 1 alone peaks at V(1) = 1 - 2^-53 < theta (K peaks at s = tau = 1); input 2 arrives at 1 with
    slope e, so V crosses about 4e-17 after 1, less than half a rounding step: the crossing rounds onto 1.
    The kernel returns the next float above 1, and input 2 keeps its gradient dt/dt_2 = w_2 K'(0) / V' = 1
    (V' = w_1 K'(1) + w_2 K'(0) = 0 + e)."""
    t_in = torch.tensor([[0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.0 - 2.0**-53, 1.0]], dtype=torch.float64, requires_grad=True)
    t = alpha_linear(t_in, w, tau=1.0)
    assert t.item() == np.nextafter(1.0, math.inf)
    t.sum().backward()
    assert t_in.grad is not None
    np.testing.assert_allclose(t_in.grad.numpy(), [[0.0, 1.0]], atol=1e-6)


@pytest.mark.parametrize(
    "t0, t1, w0",
    [
        (0.0013106546686698084, 0.6630388661990297, 1.0774838726198583),
        (0.009548560664909583, 0.3329363590343892, 1.5719090877943245),
        (0.009823685909553168, 0.24343167139717206, 1.989172711926007),
    ],
)
def test_crossing_that_rounds_past_the_next_input_is_capped_at_it(t0, t1, w0):
    """Input 0 alone reaches theta at the end of its span ``[t0, t1]`` (``w0 K(t1 - t0)`` rounds to >= 1,
    found by a search over random pairs), but ``t0 + (t1 - t0)`` rounds one step past ``t1``. The kernel
    returns ``t1`` itself: input 1, at ``t_out``, is then outside the causal set ``t_i < t_out`` of the
    backward as of the forward, so the slope is input 0's alone and input 1 gets no gradient."""
    assert t0 + (t1 - t0) > t1  # the rounding this case is built on
    t_in = torch.tensor([[t0, t1]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[w0, 1.5]], dtype=torch.float64, requires_grad=True)
    t, slope = alpha_linear(t_in, w, tau=1.0, return_slope=True)
    assert t.item() == t1
    s = t1 - t0
    slope_0 = w0 * math.exp(1.0 - s) * (1.0 - s)  # w0 K'(s), tau = 1
    assert slope.item() == pytest.approx(slope_0, rel=1e-9)
    t.sum().backward()
    assert t_in.grad is not None and w.grad is not None
    assert t_in.grad[0, 1].item() == 0.0 and w.grad[0, 1].item() == 0.0
    assert w.grad[0, 0].item() == pytest.approx(-(s * math.exp(1.0 - s)) / slope_0, rel=1e-9)


def test_slope_guard_bounds_the_gradient_near_the_peak():
    # Weight just above threshold: the crossing sits at the PSP peak, where V' -> 0.
    t_in = torch.tensor([[0.0]], dtype=torch.float64)
    for w0, bound in ((1.0 + 1e-12, 1e3), (1.0 + 1e-12, 10.0)):
        w = torch.tensor([[w0]], dtype=torch.float64, requires_grad=True)
        t, slope = alpha_linear(t_in, w, slope_min=1.0 / bound, return_slope=True)
        assert slope.item() < 1e-3
        t.sum().backward()
        assert w.grad is not None
        # |dt/dw| = K(t) / max(V', slope_min) with K(t) = 1/w at the crossing
        assert w.grad.abs().item() == pytest.approx(bound / w0, rel=1e-9)


def test_validation_errors():
    t_in, w = _case(0)
    with pytest.raises(ValueError, match="tau"):
        alpha_linear(t_in, w, tau=0.0)
    with pytest.raises(ValueError, match="weight has"):
        alpha_linear(t_in, w[:, :3])
    with pytest.raises(ValueError, match="kernel must be"):
        build_model("4-3", kernel="lif")
    with pytest.raises(ValueError, match="dense layers only"):
        build_model("4C3-10", (1, 8, 8), kernel="alpha")


def test_models_and_training_with_the_alpha_kernel(tmp_path):
    m = build_model("16-12-3", kernel="alpha", kernel_tau=0.5)
    assert [type(x).__name__ for x in m][1:] == ["AlphaSpikingLinear", "AlphaSpikingLinear"]
    assert isinstance(m[1], AlphaSpikingLinear) and m[1].tau == 0.5
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (96,), generator=g)
    x = 0.3 * torch.rand(96, 1, 4, 4, generator=g)
    x[torch.arange(96), 0, y, :] = 0.9
    splits = {"train": (x[:64], y[:64]), "test": (x[64:], y[64:])}
    cfg = Config(
        model=ModelConfig(arch="16-12-3", input_shape=(1, 4, 4), kernel="alpha", init_mean=8.0),
        data=DataConfig(dataset="tiny"),
        train=TrainConfig(epochs=2, batch_size=16, lr=3e-3, seed=1, threads=1),
    )
    fit(cfg, tmp_path, progress=False, splits=splits, log=lambda s: None)
    model, back, _ = load_trained(tmp_path / CHECKPOINT_NAME)
    assert back.model.kernel == "alpha" and isinstance(model[2], AlphaSpikingLinear)
    torch.manual_seed(1)
    fresh = model_from_config(cfg.model)
    assert not torch.equal(fresh[2].weight, model[2].weight)  # training moved the weights
    with pytest.raises(ValueError, match="silent_penalty"):
        fit(
            Config(model=cfg.model, data=cfg.data, train=TrainConfig(silent_penalty=1.0)), tmp_path / "x", splits=splits
        )


def test_simulator_refuses_alpha_networks():
    from relpsp.sim import network_from_arrays

    arrays = {"model.1.weight": np.zeros((3, 4), np.float32)}
    with pytest.raises(ValueError, match="ReL-PSP and windowed networks only"):
        network_from_arrays(arrays, {"arch": "4-3", "kernel": "alpha"})


def test_train_size_draws_a_seeded_subset():
    cfg = Config(data=DataConfig(dataset="yinyang", train_size=100), model=ModelConfig(arch="4-8-3", input_shape=(4,)))
    a = load_splits(cfg)["train"]
    b = load_splits(cfg)["train"]
    assert len(a[1]) == 100 and torch.equal(a[0], b[0])
    full = load_splits(Config(data=DataConfig(dataset="yinyang"), model=cfg.model))["train"]
    assert len(full[1]) > 100
    too_big = Config(data=DataConfig(dataset="yinyang", train_size=10**7), model=cfg.model)
    with pytest.raises(ValueError, match="train_size"):
        load_splits(too_big)


def test_float32_spike_just_after_its_trigger_keeps_the_triggers_gradient():
    """With w1 the largest float32 weight for which input 1 alone stays below theta at t = 0.5, input 2
    (t = 0.5, w = 5) makes the neuron fire a hair after 0.5: in float32 the spike rounds onto 0.5, and
    the backward used to read that rounded time and drop input 2 (its gradient 0; the shift invariance
    sum_i dt/dt_i = 1 failed, 0.07). The backward now uses the float64 time."""
    v_at = 0.5 * math.exp(0.5)  # the alpha kernel of input 1 (t = 0) at t = 0.5, tau = 1
    w1 = np.float32(1.0 / v_at)
    while float(w1) * v_at >= 1.0:  # largest float32 strictly below threshold at 0.5
        w1 = np.nextafter(w1, np.float32(0))
    for dtype in (torch.float32, torch.float64):
        t_in = torch.tensor([[0.0, 0.5]], dtype=dtype, requires_grad=True)
        w = torch.tensor([[float(w1), 5.0]], dtype=dtype, requires_grad=True)
        t_out = alpha_linear(t_in, w)
        assert 0.5 <= float(t_out.detach()) < 0.5 + 1e-6
        t_out.sum().backward()
        assert t_in.grad is not None and w.grad is not None
        assert float(t_in.grad.sum()) == pytest.approx(1.0, rel=1e-4), dtype
        assert float(t_in.grad[0, 1]) > 0.9 and float(w.grad[0, 1]) < 0


def test_alpha_module_applies_its_threshold_and_cut_off():
    """AlphaSpikingLinear(..., theta=..., t_max=...) and build_model's 't_max: cut-off of every spiking layer'
    (also for kernel 'alpha'): the layer fires at theta and drops spikes later than t_max. No test builds an
    alpha layer with theta != 1 or a finite t_max and runs it. Kills: AlphaSpikingLinear.forward calling
    alpha_linear without t_max, or without theta."""
    from relpsp.alpha import alpha_linear
    from relpsp.models import build_model

    theta = 1.3
    t = torch.rand(8, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    probe = build_model("16-12-3", kernel="alpha", kernel_tau=0.5, theta=theta)[1]
    with torch.no_grad():
        full = alpha_linear(t, probe.weight, theta=theta, tau=0.5)
    t_max = float(full[torch.isfinite(full)].median())  # half the spikes are later than the cut-off
    torch.manual_seed(0)
    lin = build_model("16-12-3", kernel="alpha", kernel_tau=0.5, theta=theta, t_max=t_max)[1]
    assert torch.equal(lin.weight, probe.weight) and lin.t_max == t_max and lin.theta == theta
    with torch.no_grad():
        out = lin(t)
        assert torch.equal(out, alpha_linear(t, lin.weight, theta=theta, tau=0.5, t_max=t_max))
    assert torch.isfinite(out).any() and not (out[torch.isfinite(out)] > t_max).any()
    assert torch.isinf(out).sum() > torch.isinf(full).sum()
