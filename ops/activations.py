"""Activation functions: relu, sigmoid, tanh, leaky_relu, elu and prelu (learned slope),
elementwise; maxout (the max over groups of units) and softmax.

Each forward and its derivative sit a few lines apart. Elementwise kernels work on the
flattened arrays; the engine hands them contiguous buffers.
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops import config, mathfn
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.elementwise import elementwise, map_kernels, uniform_sample
from dlrun.ops.mathfn import exp, expm1, one
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


# -- the elementwise ones: a formula and its derivative each ------------------------------
# Kernels, op records and the planner's fused bias + activation come from these formulas
# (:mod:`dlrun.ops.elementwise`); the recurrent ops call sigmoid and tanh too.
@elementwise("relu", reference=lambda x: (np.maximum(x, 0),), check=False)
def relu(x):
    """y = max(x, 0)"""
    return x if x > 0 else 0.0


@relu.derivative
def relu_grad(y):
    """dy/dx = 1 if y > 0 else 0"""
    return 1.0 if y > 0 else 0.0


@elementwise("sigmoid", reference=lambda x: (1.0 / (1.0 + np.exp(-x)),), check=False,
             big_sample=uniform_sample((9, 11), -6.0, 6.0))
def sigmoid(x):
    """y = 1 / (1 + exp(-x)); exp(-x) = inf for x << 0 gives 0, not NaN"""
    return one(x) / (one(x) + exp(-x))


@sigmoid.derivative
def sigmoid_grad(y):
    """dy/dx = y (1 - y)"""
    return y * (one(y) - y)


@elementwise("tanh", reference=lambda x: (np.tanh(x),), check=False)
def tanh(x):
    """y = tanh(x)"""
    return mathfn.tanh(x)


@tanh.derivative
def tanh_grad(y):
    """dy/dx = 1 - y^2"""
    return one(y) - y * y


@elementwise("leaky_relu", reference=lambda x, alpha: (np.where(x > 0, x, alpha * x),),
             check=False, big_sample=uniform_sample((9, 11), alpha=0.2))
def leaky_relu(x, alpha=0.3):
    """y = x if x > 0 else alpha * x"""
    return x if x > 0 else alpha * x


@leaky_relu.derivative
def leaky_relu_grad(x, alpha):
    """dy/dx = 1 if x > 0 else alpha"""
    return 1.0 if x > 0 else alpha


def _elu_reference(x, alpha):
    return (np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),)


@elementwise("elu", reference=_elu_reference, check=False,
             big_sample=uniform_sample((9, 11), alpha=0.7))
def elu(x, alpha=1.0):
    """y = x if x > 0 else alpha * (exp(x) - 1)"""
    return x if x > 0 else alpha * expm1(x)


@elu.derivative
def elu_grad(x, y, alpha):
    """dy/dx = 1 if x > 0 else y + alpha"""
    return 1.0 if x > 0 else y + alpha


# -- softmax (last axis) -----------------------------------------------------------------
def _softmax_shape(x: Spec) -> list:
    check_float("softmax", x=x)
    if len(x.shape) < 1 or x.shape[-1] < 1:
        raise OpError(f"softmax needs at least one class on the last axis; got {x.shape}")
    return [Spec(x.shape, x.dtype)]


@config.formula
def softmax_row(x, y, i):
    """y[i] = exp(x[i] - max x[i]) / sum exp(x[i] - max x[i]) for 2-D x, y; returns the
    row's log-sum-exp, log sum_j exp(x[i, j]) (the cross-entropy losses use it too)"""
    c = x.shape[1]
    m = x[i, 0]
    for j in range(1, c):
        if x[i, j] > m:  # noqa: PLR1730  (max() fails to compile for CUDA, numba 0.66+)
            m = x[i, j]
    s = 0.0
    for j in range(c):
        e = math.exp(x[i, j] - m)
        y[i, j] = e
        s += e
    for j in range(c):
        y[i, j] /= s
    return math.log(s) + m


@config.formula
def softmax_row_grad(dy, y, dx, i):
    """dx[i] = y[i] * (dy[i] - sum_j dy[i, j] y[i, j]) for 2-D arrays"""
    s = 0.0
    for j in range(y.shape[1]):
        s += dy[i, j] * y[i, j]
    for j in range(y.shape[1]):
        dx[i, j] = y[i, j] * (dy[i, j] - s)


@jit
def softmax_fwd_cpu(x, y):
    """y = softmax(x) along the last axis"""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    y2 = y.reshape(-1, n)
    for i in range(x2.shape[0]):
        softmax_row(x2, y2, i)


@cuda_kernel
def _softmax_fwd(x, y):
    """y = softmax(x) along the last axis, a thread per row"""
    n = x.shape[x.ndim - 1]  # not shape[-1]: the simulator refuses negative indices
    x2 = x.reshape(-1, n)
    y2 = y.reshape(-1, n)
    for i in range(cuda.grid(1), x2.shape[0], cuda.gridsize(1)):
        softmax_row(x2, y2, i)


def softmax_fwd_cuda(x, y):
    """Launch _softmax_fwd (grid-stride over rows)."""
    _softmax_fwd[config.grid_1d(x.size // x.shape[x.ndim - 1])](x, y)


@jit
def softmax_bwd_cpu(dy, y, dx):
    """dx = y * (dy - sum(dy * y))  along the last axis"""
    n = y.shape[-1]
    dy2 = dy.reshape(-1, n)
    y2 = y.reshape(-1, n)
    dx2 = dx.reshape(-1, n)
    for i in range(y2.shape[0]):
        softmax_row_grad(dy2, y2, dx2, i)


@cuda_kernel
def _softmax_bwd(dy, y, dx):
    """dx = y * (dy - sum(dy * y)) along the last axis, a thread per row"""
    n = y.shape[y.ndim - 1]
    dy2 = dy.reshape(-1, n)
    y2 = y.reshape(-1, n)
    dx2 = dx.reshape(-1, n)
    for i in range(cuda.grid(1), y2.shape[0], cuda.gridsize(1)):
        softmax_row_grad(dy2, y2, dx2, i)


def softmax_bwd_cuda(dy, y, dx):
    """Launch _softmax_bwd (grid-stride over rows)."""
    _softmax_bwd[config.grid_1d(y.size // y.shape[y.ndim - 1])](dy, y, dx)


def _softmax_ref(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True),)


register(Op(
    name="softmax", inputs=("x",), shape=_softmax_shape, saves=("y",),
    forward=softmax_fwd_cpu, backward=softmax_bwd_cpu,
    cuda_forward=softmax_fwd_cuda, cuda_backward=softmax_bwd_cuda,
    sample=uniform_sample(lo=-3.0, hi=3.0), reference=_softmax_ref,
    big_sample=uniform_sample((37, 6), -3.0, 3.0),
))


# -- prelu (learned slope) ---------------------------------------------------------------
def _prelu_shape(x: Spec, alpha: Spec) -> list:
    check_float("prelu", x=x, alpha=alpha)
    if tuple(x.shape[1:]) != tuple(alpha.shape):
        raise OpError(f"prelu needs one slope per element of a sample: alpha of shape "
                      f"{x.shape[1:]} for input {x.shape}; got {alpha.shape}")
    return [Spec(x.shape, x.dtype)]


# leaky_relu's formula, with alpha repeating along the batch
prelu_fwd_cpu, prelu_fwd_cuda = map_kernels(
    "prelu_fwd", leaky_relu.formula, arrays=("x", "alpha"), writes=("y",), outputs=("y",),
    broadcast=("alpha",))


def prelu_dx(dy, x, alpha):
    """dx = dy * leaky_relu'(x, alpha)"""
    return dy * leaky_relu_grad(x, alpha)


_prelu_dx_cpu, _prelu_dx_cuda = map_kernels(
    "prelu_dx", prelu_dx, arrays=("dy", "x", "alpha"), writes=("dx",), outputs=("dx",),
    broadcast=("alpha",))


@jit
def _prelu_dalpha_cpu(dy, x, dalpha):
    """dalpha[k] = sum_n dy[n, k] * x[n, k] * (x[n, k] <= 0)"""
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    daf = dalpha.reshape(-1)
    for k in range(daf.size):
        daf[k] = 0.0
    for i in range(dyf.size):
        if xf[i] <= 0:
            daf[i % daf.size] += dyf[i] * xf[i]


@cuda_kernel
def _prelu_dalpha(dy, x, dalpha):
    """dalpha[k] = sum_n dy[n, k] * x[n, k] * (x[n, k] <= 0)  (one thread per slope)"""
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    daf = dalpha.reshape(-1)
    for k in range(cuda.grid(1), daf.size, cuda.gridsize(1)):
        s = dy.dtype.type(0)
        for i in range(k, dyf.size, daf.size):
            if xf[i] <= 0:
                s += dyf[i] * xf[i]
        daf[k] = s


def prelu_bwd_cpu(dy, x, alpha, dx, dalpha):
    """dx = dy if x > 0 else alpha * dy ; dalpha = sum over the batch of dy * x * (x <= 0)"""
    if dx is not None:
        _prelu_dx_cpu(dy, x, alpha, dx)
    if dalpha is not None:
        _prelu_dalpha_cpu(dy, x, dalpha)


def prelu_bwd_cuda(dy, x, alpha, dx, dalpha):
    """_prelu_dx_cuda (grid-stride) and _prelu_dalpha (a thread per slope)."""
    if dx is not None:
        _prelu_dx_cuda(dy, x, alpha, dx)
    if dalpha is not None:
        _prelu_dalpha[config.grid_1d(dalpha.size)](dy, x, dalpha)


def _prelu_sample(rng, dtype):
    (x,), _ = uniform_sample()(rng, dtype)
    return (x, rng.uniform(0.05, 0.5, x.shape[1:]).astype(dtype)), {}


register(Op(
    name="prelu", inputs=("x", "alpha"), shape=_prelu_shape, saves=("x", "alpha"),
    forward=prelu_fwd_cpu, backward=prelu_bwd_cpu,
    cuda_forward=prelu_fwd_cuda, cuda_backward=prelu_bwd_cuda,
    sample=_prelu_sample, reference=lambda x, alpha: (np.where(x > 0, x, alpha * x),),
))


# -- maxout ------------------------------------------------------------------------------
def _maxout_shape(x: Spec, pieces: int = 2) -> list:
    check_float("maxout", x=x)
    if len(x.shape) != 2 or pieces < 1 or x.shape[1] % pieces:
        raise OpError(f"maxout needs (batch, units * pieces) inputs; got {x.shape} with "
                      f"pieces={pieces}")
    return [Spec((x.shape[0], x.shape[1] // pieces), x.dtype)]


@jit
def maxout_fwd_cpu(x, pieces, y):
    """y[n, u] = max_k x[n, u * pieces + k]"""
    for n in range(y.shape[0]):
        for u in range(y.shape[1]):
            m = x[n, u * pieces]
            for k in range(1, pieces):
                if x[n, u * pieces + k] > m:
                    m = x[n, u * pieces + k]
            y[n, u] = m


@cuda_kernel
def _maxout_fwd(x, pieces, y):
    """y[n, u] = max_k x[n, u * pieces + k]"""
    yf = y.reshape(-1)
    xf = x.reshape(-1)
    for i in range(cuda.grid(1), yf.size, cuda.gridsize(1)):
        m = xf[i * pieces]
        for k in range(1, pieces):
            if xf[i * pieces + k] > m:
                m = xf[i * pieces + k]
        yf[i] = m


def maxout_fwd_cuda(x, pieces, y):
    """Launch _maxout_fwd (grid-stride over the outputs)."""
    _maxout_fwd[config.grid_1d(y.size)](x, pieces, y)


@jit
def maxout_bwd_cpu(dy, x, pieces, dx):
    """dx[n, u * pieces + k] = dy[n, u] for the first maximal piece k, else 0"""
    for n in range(dy.shape[0]):
        for u in range(dy.shape[1]):
            best = 0
            for k in range(pieces):
                dx[n, u * pieces + k] = 0.0
                if x[n, u * pieces + k] > x[n, u * pieces + best]:
                    best = k
            dx[n, u * pieces + best] = dy[n, u]


@cuda_kernel
def _maxout_bwd(dy, x, pieces, dx):
    """dx[n, u * pieces + k] = dy[n, u] for the first maximal piece k, else 0"""
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        best = 0
        for k in range(pieces):
            dxf[i * pieces + k] = 0.0
            if xf[i * pieces + k] > xf[i * pieces + best]:
                best = k
        dxf[i * pieces + best] = dyf[i]


def maxout_bwd_cuda(dy, x, pieces, dx):
    """Launch _maxout_bwd (grid-stride over the outputs)."""
    _maxout_bwd[config.grid_1d(dy.size)](dy, x, pieces, dx)


def _maxout_sample(rng, dtype):
    x = rng.permutation(4 * 6).reshape(4, 6).astype(dtype) / 4.0   # distinct: no ties
    return (x,), {"pieces": 3}


register(Op(
    name="maxout", inputs=("x",), shape=_maxout_shape, saves=("x",), attrs={"pieces": 2},
    forward=maxout_fwd_cpu, backward=maxout_bwd_cpu,
    cuda_forward=maxout_fwd_cuda, cuda_backward=maxout_bwd_cuda,
    sample=_maxout_sample,
    reference=lambda x, pieces: (x.reshape(x.shape[0], -1, pieces).max(axis=2),),
))
