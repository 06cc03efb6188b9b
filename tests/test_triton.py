"""The Triton backend (relpsp.kernels.gpu_triton) against the float64 autograd reference.

On a machine with CUDA these run the compiled kernels on the GPU. Without CUDA they run the same kernel
source in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set here before the kernels are
imported): the interpreter executes the program logic (masks, loops, tie groups, row splits), not the
GPU's code generation, so ``pytest -m gpu`` on a GPU remains the check of the compiled kernels.
"""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

CUDA = torch.cuda.is_available()
if not CUDA:  # before the first import of triton, which reads it
    os.environ.setdefault("TRITON_INTERPRET", "1")

from relpsp.autograd import resolve_backend  # noqa: E402
from relpsp.functional import relpsp_conv2d, relpsp_conv2d_ref, relpsp_linear, relpsp_linear_ref  # noqa: E402
from relpsp.kernels import gpu_triton, load_gpu_kernels  # noqa: E402
from tests.helpers import (  # noqa: E402
    DTYPES,
    ROUNDS_ONTO_INPUT,
    assert_close,
    assert_weight_sum_is_causal_mask,
    crossings_just_after_an_input,
    crossings_just_before_the_next_input,
)

DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter evaluates both where-branches


def _times(shape, seed, silent=0.3, ties=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    if ties and len(shape) == 2:
        t[:, 1] = t[:, 0]
        t[:, 2] = t[:, 0]
    return torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < silent, math.inf, t)


def _check(fn_ref, fn_tri, t, w, dtype, seed=5):
    tr, wr = t.clone().requires_grad_(), w.clone().requires_grad_()
    ref = fn_ref(tr, wr)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.where(torch.isfinite(ref), ref * g, 0).sum().backward()
    tc = t.to(DEVICE, dtype).requires_grad_()
    wc = w.to(DEVICE, dtype).requires_grad_()
    out = fn_tri(tc, wc)
    assert out.dtype == dtype and out.device.type == DEVICE
    torch.where(torch.isfinite(out), out * g.to(DEVICE, dtype), 0).sum().backward()
    fin = torch.isfinite(ref)
    assert fin.any() and (~fin).any(), "the case must have firing and silent neurons"
    assert_close("t_out", out.detach().cpu(), ref.detach(), dtype)
    assert_close("grad_t_in", tc.grad.cpu(), tr.grad, dtype, kind="grad")
    assert_close("grad_weight", wc.grad.cpu(), wr.grad, dtype, kind="grad")


@pytest.fixture(params=["chunked", "loop"])
def fwd_variant(request, monkeypatch):
    """Both forward kernels, whatever the row length: the chunked one and the one-input loop."""
    monkeypatch.setattr(gpu_triton, "FWD_VARIANT", request.param)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t_max", [math.inf, 0.8], ids=["no-cutoff", "cutoff"])
@pytest.mark.parametrize("shape", [(9, 30, 20), (5, 70, 130)], ids=["small", "two-neuron-blocks"])
def test_linear_matches_reference(dtype, t_max, shape, fwd_variant):
    rows, n_in, n_out = shape
    t = _times((rows, n_in), 0)
    w = torch.randn(n_out, n_in, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.2 + 0.04
    _check(
        lambda a, b: relpsp_linear_ref(a, b, t_max=t_max),
        lambda a, b: relpsp_linear(a, b, t_max=t_max, backend="triton"),
        t,
        w,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_matches_reference(dtype, fwd_variant):
    t = _times((3, 3, 9, 9), 3)
    w = torch.randn(5, 3, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.3 + 0.08
    _check(
        lambda a, b: relpsp_conv2d_ref(a, b, stride=2, padding=1),
        lambda a, b: relpsp_conv2d(a, b, stride=2, padding=1, backend="triton"),
        t,
        w,
        dtype,
    )


def test_row_splits_and_int32_chunks_give_the_same_result(monkeypatch):
    # More rows than one weight-gradient split, and (with a tiny offset limit) several row chunks.
    t = _times((200, 12), 8, ties=False).to(DEVICE)
    w = (torch.randn(7, 12, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 0.3 + 0.1).to(DEVICE)
    g = torch.randn(200, 7, generator=torch.Generator().manual_seed(10), dtype=torch.float64).to(DEVICE)
    k = load_gpu_kernels()
    out, ws = k.linear_fwd(t, w, 1.0, math.inf)
    gi, gw = k.linear_bwd(g, t, w, out, ws, 1e-3)
    monkeypatch.setattr(gpu_triton, "_MAX_ELEMS", 12 * 80)
    assert len(gpu_triton._row_chunks(200, 12)) > 1 and gpu_triton._row_splits(200, 7, 12)[1] > 1
    out2, ws2 = k.linear_fwd(t, w, 1.0, math.inf)
    gi2, gw2 = k.linear_bwd(g, t, w, out2, ws2, 1e-3)
    assert torch.equal(out, out2) and torch.equal(ws, ws2) and torch.equal(gi, gi2)
    assert torch.allclose(gw, gw2, rtol=1e-12, atol=1e-12)  # partial sums are added in another grouping
    tr, wr = t.cpu().requires_grad_(), w.cpu().requires_grad_()
    ref = relpsp_linear_ref(tr, wr)
    torch.where(torch.isfinite(ref), ref * g.cpu(), 0).sum().backward()
    assert_close("grad_weight", gw.cpu(), wr.grad, torch.float64, kind="grad")


def test_weights_beyond_int32_offsets_are_refused_and_row_splits_keep_their_buffer_addressable(monkeypatch):
    """The kernels address the weight with int32 offsets: a 65537 x 32768 layer read outside its buffer
    (in the interpreter, a segmentation fault). It is refused before any kernel runs (an expanded view, so
    nothing is allocated), and the dL/dw kernel's [splits, N_out, N_in] buffer stays addressable."""
    k = load_gpu_kernels()
    big = torch.zeros(1, 1, dtype=torch.float64, device=DEVICE).expand(65537, 32768)
    t = torch.zeros(1, 32768, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match=r"65537 x 32768 = 2,147,516,416 weights is more than 2,147,483,647"):
        k.linear_fwd(t, big, 1.0, math.inf)
    g = torch.zeros(1, 65537, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="use backend 'torch' for this layer"):
        k.linear_bwd(g, t, big, g, g, 1e-3)
    monkeypatch.setattr(gpu_triton, "_MAX_ELEMS", 7 * 12 * 3)
    per, splits = gpu_triton._row_splits(10_000, 7, 12)
    assert splits <= 3 and per * splits >= 10_000


def test_silent_rows_and_weight_only_gradients(fwd_variant):
    t = _times((6, 10), 11)
    t[2] = math.inf  # a row with no input spike: nothing fires, every gradient is 0
    w = (torch.randn(4, 10, generator=torch.Generator().manual_seed(12), dtype=torch.float64) * 0.3 + 0.2).to(DEVICE)
    w.requires_grad_(True)
    out = relpsp_linear(t.to(DEVICE), w, backend="triton")
    assert torch.isinf(out[2]).all()
    torch.where(torch.isfinite(out), out, 0).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    wr = w.detach().cpu().requires_grad_()
    ref = relpsp_linear_ref(t, wr)
    torch.where(torch.isfinite(ref), ref, 0).sum().backward()
    assert_close("grad_weight", w.grad.cpu(), wr.grad, torch.float64, kind="grad")


@pytest.mark.parametrize(("dtype", "w_first"), ROUNDS_ONTO_INPUT)
def test_spike_that_rounds_onto_its_last_causal_input_moves_just_above_it(dtype, w_first, fwd_variant):
    """As tests/test_dense.py: neuron 0's exact spike lies less than half a rounding step after the input at
    1, so it rounds onto it; the kernel returns the next representable time above it, and the backward
    keeps that input. Neurons 1 and 2 fire at ordinary times (1.5 and 1/0.3), untouched."""
    t = torch.tensor([[0.0, 1.0, 2.0]], dtype=dtype, device=DEVICE, requires_grad=True)
    w = torch.tensor([[w_first, 1.0, 0.0], [0.5, 0.5, 0.0], [0.3, 0.0, 0.0]], dtype=dtype, device=DEVICE)
    w.requires_grad_(True)
    out = relpsp_linear(t, w, backend="triton")
    above = torch.nextafter(torch.ones((), dtype=dtype), torch.tensor(math.inf, dtype=dtype))
    assert out[0, 0].item() == above.item()
    assert out[0, 1].item() == 1.5 and out[0, 2].item() == pytest.approx(1 / 0.3, rel=1e-6)
    out[0, 0].backward()
    w_sum = w_first + 1.0
    torch.testing.assert_close(
        t.grad.cpu(), torch.tensor([[w_first / w_sum, 1.0 / w_sum, 0.0]], dtype=dtype), rtol=1e-6, atol=0
    )
    cut = relpsp_linear(t.detach(), w.detach(), t_max=1.0, backend="triton")  # moved above t_max: dropped
    assert cut[0, 0].item() == math.inf


def test_forward_weight_sum_is_the_backward_causal_set_near_input_times(fwd_variant):
    """As tests/test_dense.py: on layers built to cross within a rounding step after an input (float32)
    or just before the next input (float64, where the kernels' float64 sums meet the case), W_j is the
    weight of the inputs with t_i < t_out, and the constructions do hit the rule's two ends."""
    k = load_gpu_kernels()
    t, w, s = crossings_just_after_an_input(150, seed=3)
    t_out, w_sum = k.linear_fwd(t.to(DEVICE), w.to(DEVICE), 1.0, math.inf)
    assert_weight_sum_is_causal_mask(t, w, t_out, w_sum)
    above = torch.from_numpy(np.nextafter(s, np.float32(np.inf))).double()
    assert int((t_out.diagonal().cpu().double() == above).sum()) > 100
    t, w, t_next = crossings_just_before_the_next_input(150, seed=4, dtype=torch.float64)
    t_out, w_sum = k.linear_fwd(t.to(DEVICE), w.to(DEVICE), 1.0, math.inf)
    assert_weight_sum_is_causal_mask(t, w, t_out, w_sum)
    assert int((t_out.diagonal().cpu() == torch.from_numpy(t_next)).sum()) > 5


def test_forward_blocks_follow_the_layer_width(monkeypatch):
    """The forward's neuron block is the smallest power of two from 16 to 128 covering the layer, with one
    warp per 512 tile elements; RELPSP_TRITON_FWD_BLOCK_J fixes it and refuses other values."""
    monkeypatch.delenv("RELPSP_TRITON_FWD_BLOCK_J", raising=False)
    got = {n: gpu_triton.fwd_blocks(n) for n in (1, 10, 16, 20, 32, 33, 64, 100, 128, 800)}
    assert got == {
        1: (16, 1), 10: (16, 1), 16: (16, 1), 20: (32, 1), 32: (32, 1), 33: (64, 2),
        64: (64, 2), 100: (128, 4), 128: (128, 4), 800: (128, 4),
    }  # fmt: skip
    monkeypatch.setenv("RELPSP_TRITON_FWD_BLOCK_J", "128")
    assert gpu_triton.fwd_blocks(16) == (128, 4)
    for bad in ("8", "256", "sixteen"):
        monkeypatch.setenv("RELPSP_TRITON_FWD_BLOCK_J", bad)
        with pytest.raises(ValueError, match="RELPSP_TRITON_FWD_BLOCK_J"):
            gpu_triton.fwd_blocks(16)


@pytest.mark.parametrize("block_j", ["16", "128"])
def test_linear_matches_reference_with_a_fixed_neuron_block(block_j, fwd_variant, monkeypatch):
    """20 neurons as two blocks of 16 (the second partly masked) or one of 128 (mostly masked)."""
    monkeypatch.setenv("RELPSP_TRITON_FWD_BLOCK_J", block_j)
    t = _times((7, 40), 8)
    w = torch.randn(20, 40, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 0.2 + 0.04
    _check(relpsp_linear_ref, lambda a, b: relpsp_linear(a, b, backend="triton"), t, w, torch.float64)


def test_auto_forward_variant_is_chunked_for_short_rows_only(monkeypatch):
    monkeypatch.setattr(gpu_triton, "FWD_VARIANT", "auto")
    assert [gpu_triton.fwd_variant(n) for n in (1, 25, 32, 33, 400, 784)] == ["chunked"] * 3 + ["loop"] * 3
    for fixed in ("chunked", "loop"):
        monkeypatch.setattr(gpu_triton, "FWD_VARIANT", fixed)
        assert {gpu_triton.fwd_variant(n) for n in (1, 784)} == {fixed}


def test_unknown_forward_variant_is_refused(monkeypatch):
    monkeypatch.setattr(gpu_triton, "FWD_VARIANT", "fast")
    with pytest.raises(ValueError, match="RELPSP_TRITON_FWD"):
        gpu_triton.linear_fwd(torch.zeros(2, 3, device=DEVICE), torch.zeros(4, 3, device=DEVICE), 1.0, math.inf)


def test_backend_choice(monkeypatch):
    cpu = torch.zeros(2, 3)
    assert resolve_backend("auto", cpu) in ("numba", "torch")  # never triton for CPU tensors
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend 'triton' runs"):
        resolve_backend("triton", cpu)
    with pytest.raises(ValueError, match="backend 'triton' runs"):
        resolve_backend("triton", torch.zeros(2, 3, dtype=torch.float16, device=DEVICE))
    if CUDA:
        assert resolve_backend("auto", torch.zeros(2, 3, device="cuda")) == "triton"
