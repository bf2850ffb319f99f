"""Inverted dropout with a counter-based random mask.

The mask comes from a hash of (seed, element index), so it is the same on every device
and thread count, needs no generator state, and the engine makes it new each step by
passing a new seed.
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_device, cuda_kernel, jit
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@jit
def uniform_hash(seed, i):
    """u in [0, 1): splitmix64(seed + i * golden) >> 40, scaled by 2^-24"""
    z = np.uint64(seed) + np.uint64(i) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(40)) * (1.0 / 16777216.0)


# The same source compiled for the GPU, so a seed gives the same mask on either device.
uniform_hash_device = cuda_device(uniform_hash.py_func)


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


@jit
def dropout_fwd_cpu(x, rate, seed, y, mask):
    """mask = (u >= rate) / (1 - rate) ; y = x * mask"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    mf = mask.reshape(-1)
    scale = 1.0 / (1.0 - rate)
    for i in range(xf.size):
        m = scale if uniform_hash(seed, i) >= rate else 0.0
        mf[i] = m
        yf[i] = xf[i] * m


@cuda_kernel
def _dropout_fwd(x, rate, seed, y, mask):
    """mask = (u >= rate) / (1 - rate) ; y = x * mask"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    mf = mask.reshape(-1)
    scale = 1.0 / (1.0 - rate)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        m = scale if uniform_hash_device(seed, i) >= rate else 0.0
        mf[i] = m
        yf[i] = xf[i] * m


def dropout_fwd_cuda(x, rate, seed, y, mask):
    """Launch _dropout_fwd (grid-stride)."""
    _dropout_fwd[config.grid_1d(x.size)](x, rate, seed, y, mask)


@jit
def dropout_bwd_cpu(dy, mask, rate, dx):
    """dx = dy * mask"""
    dyf = dy.reshape(-1)
    mf = mask.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = dyf[i] * mf[i]


@cuda_kernel
def _dropout_bwd(dy, mask, rate, dx):
    """dx = dy * mask"""
    dyf = dy.reshape(-1)
    mf = mask.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        dxf[i] = dyf[i] * mf[i]


def dropout_bwd_cuda(dy, mask, rate, dx):
    """Launch _dropout_bwd (grid-stride)."""
    _dropout_bwd[config.grid_1d(dy.size)](dy, mask, rate, dx)


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
