"""Inverted dropout with a counter-based random mask.

The mask comes from a hash of (seed, element index), so it is the same on every device
and thread count, needs no generator state, and the engine makes it new each step by
passing a new seed.
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.elementwise import map_kernels
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@config.formula
def uniform_hash(seed, i):
    """u in [0, 1): splitmix64(seed + i * golden) >> 40, scaled by 2^-24 (the same stream
    on either device)"""
    z = np.uint64(seed) + np.uint64(i) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(40)) * (1.0 / 16777216.0)


def uniform_hash_np(seed: int, n: int) -> np.ndarray:
    """The same stream in plain numpy (the tests' reference)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(n, dtype=np.uint64) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / 16777216.0


def _dropout_shape(x: Spec, rate: float = 0.5, seed: int = 0) -> list:
    check_float("dropout", x=x)
    if not 0.0 <= rate < 1.0:
        raise OpError(f"dropout rate must be in [0, 1); got {rate}")
    return [Spec(x.shape, x.dtype), Spec(x.shape, x.dtype)]


def dropout(x, rate, seed, i):
    """mask = (u_i >= rate) / (1 - rate) ; y = x * mask"""
    m = 1.0 / (1.0 - rate) if uniform_hash(seed, i) >= rate else 0.0
    return x * m, m


def dropout_grad(dy, mask, rate):
    """dx = dy * mask"""
    return dy * mask


dropout_fwd_cpu, dropout_fwd_cuda = map_kernels(
    "dropout_fwd", dropout, arrays=("x",), writes=("y", "mask"), outputs=("y", "mask"),
    index="i")
dropout_bwd_cpu, dropout_bwd_cuda = map_kernels(
    "dropout_bwd", dropout_grad, arrays=("dy", "mask"), writes=("dx",), outputs=("dx",))


def _dropout_ref(x, rate, seed):
    keep = uniform_hash_np(seed, x.size).reshape(x.shape) >= rate
    mask = (keep / (1.0 - rate)).astype(x.dtype)
    return x * mask, mask


register(Op(
    name="dropout", inputs=("x",), outputs=("y", "mask"), shape=_dropout_shape,
    saves=("mask",), attrs={"rate": 0.5}, rng=True,
    forward=dropout_fwd_cpu, backward=dropout_bwd_cpu,
    cuda_forward=dropout_fwd_cuda, cuda_backward=dropout_bwd_cuda,
    sample=lambda rng, dt: ((rng.standard_normal((6, 5)).astype(dt),), {"rate": 0.3}),
    big_sample=lambda rng, dt: ((rng.standard_normal((9, 11)).astype(dt),), {"rate": 0.4}),
    reference=_dropout_ref,
))
