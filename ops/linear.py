"""Dense-layer primitives: matrix product (BLAS) and bias add."""
from __future__ import annotations

import numpy as np

from dlrun.ops.config import jit
from dlrun.ops.registry import Op, OpError, Spec, check_float, register


# -- matmul ------------------------------------------------------------------------------
def _matmul_shape(a: Spec, b: Spec) -> list:
    check_float("matmul", a=a, b=b)
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[0]:
        raise OpError(f"matmul needs (n, k) @ (k, m); got {a.shape} @ {b.shape}")
    if a.dtype != b.dtype:
        raise OpError(f"matmul inputs differ in dtype: {a.dtype} and {b.dtype}")
    return [Spec((a.shape[0], b.shape[1]), a.dtype)]


def matmul_fwd_cpu(a, b, y):
    """y = a @ b  (BLAS)"""
    np.dot(a, b, out=y)


def matmul_bwd_cpu(dy, a, b, da, db):
    """da = dy @ b.T ; db = a.T @ dy  (BLAS; transposes are views, not copies)"""
    if da is not None:
        np.dot(dy, b.T, out=da)
    if db is not None:
        np.dot(a.T, dy, out=db)


def _matmul_sample(rng, dtype):
    return (rng.standard_normal((3, 4)).astype(dtype),
            rng.standard_normal((4, 5)).astype(dtype)), {}


register(Op(
    name="matmul", inputs=("a", "b"), shape=_matmul_shape, saves=("a", "b"),
    forward=matmul_fwd_cpu, backward=matmul_bwd_cpu,
    sample=_matmul_sample, reference=lambda a, b: (a @ b,),
))


# -- bias_add ----------------------------------------------------------------------------
def _bias_add_shape(x: Spec, b: Spec) -> list:
    check_float("bias_add", x=x, b=b)
    if len(b.shape) != 1 or len(x.shape) < 1 or x.shape[-1] != b.shape[0]:
        raise OpError(f"bias_add needs a bias of shape ({x.shape[-1:]}) for input "
                      f"{x.shape}; got {b.shape}")
    return [Spec(x.shape, x.dtype)]


@jit
def bias_add_fwd_cpu(x, b, y):
    """y[i, j] = x[i, j] + b[j]  (bias along the last axis)"""
    x2 = x.reshape(-1, b.size)
    y2 = y.reshape(-1, b.size)
    for i in range(x2.shape[0]):
        for j in range(b.size):
            y2[i, j] = x2[i, j] + b[j]


@jit
def bias_add_bwd_cpu(dy, dx, db):
    """dx = dy ; db[j] = sum_i dy[i, j]"""
    n = dy.shape[-1]
    dy2 = dy.reshape(-1, n)
    if dx is not None:
        dx2 = dx.reshape(-1, n)
        for i in range(dy2.shape[0]):
            for j in range(n):
                dx2[i, j] = dy2[i, j]
    if db is not None:
        for j in range(n):
            db[j] = 0.0
        for i in range(dy2.shape[0]):
            for j in range(n):
                db[j] += dy2[i, j]


def _bias_add_sample(rng, dtype):
    return (rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal(3).astype(dtype)), {}


register(Op(
    name="bias_add", inputs=("x", "b"), shape=_bias_add_shape,
    forward=bias_add_fwd_cpu, backward=bias_add_bwd_cpu,
    sample=_bias_add_sample, reference=lambda x, b: (x + b,),
))
