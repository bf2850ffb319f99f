"""Ops with a counter-based random draw per element: inverted dropout (its rate an
attribute, or an input read at run time for a scheduled rate) and the randomized leaky
ReLU.

The draw comes from a hash of (seed, element index), so it is the same on every device
and thread count, needs no generator state, and the engine makes it new each step by
passing a new seed. What the forward drew (a mask, a slope) is an auxiliary output, which
the backward multiplies the incoming gradient by.
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


# -- dropout with its rate read at run time ----------------------------------------------------
# The rate is a (1,) input, fed before each step (an annealed rate changes every epoch):
# the same kernels then serve every rate, and no plan is made again when it changes.
def _scheduled_dropout_shape(x: Spec, rate: Spec) -> list:
    check_float("scheduled_dropout", x=x, rate=rate)
    if rate.shape != (1,):
        raise OpError(f"scheduled_dropout takes its rate as an array of shape (1,); got "
                      f"{rate.shape}")
    return [Spec(x.shape, x.dtype), Spec(x.shape, x.dtype)]


def times_saved(dy, saved):
    """dx = dy * saved (the mask or slope the forward drew)"""
    return dy * saved


scheduled_dropout_fwd_cpu, scheduled_dropout_fwd_cuda = map_kernels(
    "scheduled_dropout_fwd", dropout, arrays=("x", "rate"), writes=("y", "mask"),
    outputs=("y", "mask"), broadcast=("rate",), index="i")
times_saved_cpu, times_saved_cuda = map_kernels(
    "times_saved", times_saved, arrays=("dy", "saved"), writes=("dx",), outputs=("dx",))


def _scheduled_sample(shape, rate):
    def sample(rng, dt):
        return (rng.standard_normal(shape).astype(dt), np.array([rate], dt)), {}
    return sample


register(Op(
    name="scheduled_dropout", inputs=("x", "rate"), outputs=("y", "mask"),
    shape=_scheduled_dropout_shape, saves=("mask",), diff=("x",), rng=True,
    forward=scheduled_dropout_fwd_cpu, backward=times_saved_cpu,
    cuda_forward=scheduled_dropout_fwd_cuda, cuda_backward=times_saved_cuda,
    sample=_scheduled_sample((6, 5), 0.3), big_sample=_scheduled_sample((9, 11), 0.6),
    reference=lambda x, rate, seed: _dropout_ref(x, float(rate[0]), seed),
))


# -- randomized leaky ReLU (Xu et al. 2015) ------------------------------------------------------
def _rrelu_shape(x: Spec, lower: float = 0.125, upper: float = 1 / 3, seed: int = 0) -> list:
    check_float("rrelu", x=x)
    if not 0.0 <= lower <= upper:
        raise OpError(f"rrelu needs 0 <= lower <= upper; got lower={lower}, upper={upper}")
    return [Spec(x.shape, x.dtype), Spec(x.shape, x.dtype)]


def rrelu(x, lower, upper, seed, i):
    """a = 1 if x > 0 else lower + (upper - lower) u_i ; y = a x"""
    a = 1.0 if x > 0 else lower + (upper - lower) * uniform_hash(seed, i)
    return x * a, a


def rrelu_grad(dy, slope, lower, upper):
    """dx = dy * slope (the one drawn for the element)"""
    return dy * slope


rrelu_fwd_cpu, rrelu_fwd_cuda = map_kernels(
    "rrelu_fwd", rrelu, arrays=("x",), writes=("y", "slope"), outputs=("y", "slope"),
    index="i")
rrelu_bwd_cpu, rrelu_bwd_cuda = map_kernels(
    "rrelu_bwd", rrelu_grad, arrays=("dy", "slope"), writes=("dx",), outputs=("dx",))


def _rrelu_ref(x, lower, upper, seed):
    u = uniform_hash_np(seed, x.size).reshape(x.shape)
    slope = np.where(x > 0, 1.0, lower + (upper - lower) * u)
    return (x * slope).astype(x.dtype), slope.astype(x.dtype)


def _rrelu_sample(shape):
    def sample(rng, dt):
        x = rng.uniform(-2.0, 2.0, shape).astype(dt)
        x[np.abs(x) < 0.05] += 0.1               # away from the kink
        return (x,), {"lower": 0.1, "upper": 0.4}
    return sample


register(Op(
    name="rrelu", inputs=("x",), outputs=("y", "slope"), shape=_rrelu_shape,
    saves=("slope",), attrs={"lower": 0.125, "upper": 1 / 3}, rng=True,
    forward=rrelu_fwd_cpu, backward=rrelu_bwd_cpu,
    cuda_forward=rrelu_fwd_cuda, cuda_backward=rrelu_bwd_cuda,
    sample=_rrelu_sample((6, 5)), big_sample=_rrelu_sample((9, 11)), reference=_rrelu_ref,
))
