"""Neuron maths in plain torch: exact causal-set search, closed form, STDBP backward, reference twins."""

from relpsp.core.dense import W_SUM_MIN, relpsp_linear_bwd_torch, relpsp_linear_fwd_torch, relpsp_linear_ref

__all__ = ["W_SUM_MIN", "relpsp_linear_bwd_torch", "relpsp_linear_fwd_torch", "relpsp_linear_ref"]
