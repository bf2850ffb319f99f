"""Reductions to a scalar: sum and mean over every element."""
from __future__ import annotations

import numpy as np

from dlrun.ops.config import jit
from dlrun.ops.registry import Op, Spec, check_float, register


def _scalar(x: Spec) -> list:
    check_float("reduction", x=x)
    return [Spec((), x.dtype)]


@jit
def sum_fwd_cpu(x, y):
    """y = sum x"""
    total = 0.0
    for v in x.reshape(-1):
        total += v
    y[()] = total


@jit
def fill_cpu(dx, value):
    """dx[:] = value"""
    dxf = dx.reshape(-1)
    for i in range(dxf.size):
        dxf[i] = value


def sum_bwd_cpu(dy, dx):
    """dx = dy (broadcast)"""
    fill_cpu(dx, dy[()])


@jit
def mean_fwd_cpu(x, y):
    """y = sum x / N"""
    total = 0.0
    for v in x.reshape(-1):
        total += v
    y[()] = total / x.size


def mean_bwd_cpu(dy, dx):
    """dx = dy / N (broadcast)"""
    fill_cpu(dx, dy[()] / dx.size)


def _sample(rng, dt):
    return (rng.standard_normal((3, 4)).astype(dt),), {}


register(Op(name="sum", inputs=("x",), shape=_scalar, forward=sum_fwd_cpu,
            backward=sum_bwd_cpu, sample=_sample,
            reference=lambda x: (np.asarray(x.sum(), x.dtype),)))
register(Op(name="mean", inputs=("x",), shape=_scalar, forward=mean_fwd_cpu,
            backward=mean_bwd_cpu, sample=_sample,
            reference=lambda x: (np.asarray(x.mean(), x.dtype),)))
