"""Activation functions: relu, sigmoid, tanh, leaky_relu, elu and prelu (learned slope),
elementwise; maxout (the max over groups of units) and softmax.

Each forward and its derivative sit a few lines apart. Elementwise kernels work on the
flattened arrays; the engine hands them contiguous buffers.
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


def _float_like(x: Spec, **_) -> list:
    check_float("activation", x=x)
    return [Spec(x.shape, x.dtype)]


def _sample(lo=-2.0, hi=2.0, **attrs):
    def sample(rng, dtype):
        x = rng.uniform(lo, hi, size=(4, 5)).astype(dtype)
        # keep clear of kinks, where finite differences are meaningless
        x[np.abs(x) < 0.05] += 0.1
        return (x,), dict(attrs)
    return sample


def _unary(name, fwd, bwd, saves, reference, attrs=None, sample=None, cuda_twins=(None, None)):
    return register(Op(
        name=name, inputs=("x",), shape=_float_like, saves=saves,
        forward=fwd, backward=bwd, cuda_forward=cuda_twins[0], cuda_backward=cuda_twins[1],
        attrs=attrs or {},
        sample=sample or _sample(**(attrs or {})), reference=reference,
    ))


# -- relu --------------------------------------------------------------------------------
@jit
def relu_fwd_cpu(x, y):
    """y = max(x, 0)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.size):
        yf[i] = xf[i] if xf[i] > 0 else 0.0


@cuda_kernel
def _relu_fwd(x, y):
    """y = max(x, 0)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        yf[i] = xf[i] if xf[i] > 0 else 0.0


def relu_fwd_cuda(x, y):
    """Launch _relu_fwd (grid-stride)."""
    _relu_fwd[config.grid_1d(x.size)](x, y)


@jit
def relu_bwd_cpu(dy, y, dx):
    """dx = dy * (y > 0)"""
    dyf = dy.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = dyf[i] if yf[i] > 0 else 0.0


@cuda_kernel
def _relu_bwd(dy, y, dx):
    """dx = dy * (y > 0)"""
    dyf = dy.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        dxf[i] = dyf[i] if yf[i] > 0 else 0.0


def relu_bwd_cuda(dy, y, dx):
    """Launch _relu_bwd (grid-stride)."""
    _relu_bwd[config.grid_1d(dy.size)](dy, y, dx)


_unary("relu", relu_fwd_cpu, relu_bwd_cpu, ("y",), lambda x: (np.maximum(x, 0),),
       cuda_twins=(relu_fwd_cuda, relu_bwd_cuda))


# -- sigmoid -----------------------------------------------------------------------------
@jit
def sigmoid_fwd_cpu(x, y):
    """y = 1 / (1 + exp(-x)), evaluated without overflow for either sign"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.size):
        v = xf[i]
        if v >= 0:
            yf[i] = 1.0 / (1.0 + math.exp(-v))
        else:
            e = math.exp(v)
            yf[i] = e / (1.0 + e)


@cuda_kernel
def _sigmoid_fwd(x, y):
    """y = 1 / (1 + exp(-x)), evaluated without overflow for either sign"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        v = xf[i]
        if v >= 0:
            yf[i] = 1.0 / (1.0 + math.exp(-v))
        else:
            e = math.exp(v)
            yf[i] = e / (1.0 + e)


def sigmoid_fwd_cuda(x, y):
    """Launch _sigmoid_fwd (grid-stride)."""
    _sigmoid_fwd[config.grid_1d(x.size)](x, y)


@jit
def sigmoid_bwd_cpu(dy, y, dx):
    """dx = dy * y * (1 - y)"""
    dyf = dy.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = dyf[i] * yf[i] * (1.0 - yf[i])


@cuda_kernel
def _sigmoid_bwd(dy, y, dx):
    """dx = dy * y * (1 - y)"""
    dyf = dy.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        dxf[i] = dyf[i] * yf[i] * (1.0 - yf[i])


def sigmoid_bwd_cuda(dy, y, dx):
    """Launch _sigmoid_bwd (grid-stride)."""
    _sigmoid_bwd[config.grid_1d(dy.size)](dy, y, dx)


_unary("sigmoid", sigmoid_fwd_cpu, sigmoid_bwd_cpu, ("y",),
       lambda x: (1.0 / (1.0 + np.exp(-x)),), cuda_twins=(sigmoid_fwd_cuda, sigmoid_bwd_cuda))


# -- tanh --------------------------------------------------------------------------------
@jit
def tanh_fwd_cpu(x, y):
    """y = tanh(x)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.size):
        yf[i] = math.tanh(xf[i])


@cuda_kernel
def _tanh_fwd(x, y):
    """y = tanh(x)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        yf[i] = math.tanh(xf[i])


def tanh_fwd_cuda(x, y):
    """Launch _tanh_fwd (grid-stride)."""
    _tanh_fwd[config.grid_1d(x.size)](x, y)


@jit
def tanh_bwd_cpu(dy, y, dx):
    """dx = dy * (1 - y^2)"""
    dyf = dy.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = dyf[i] * (1.0 - yf[i] * yf[i])


@cuda_kernel
def _tanh_bwd(dy, y, dx):
    """dx = dy * (1 - y^2)"""
    dyf = dy.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        dxf[i] = dyf[i] * (1.0 - yf[i] * yf[i])


def tanh_bwd_cuda(dy, y, dx):
    """Launch _tanh_bwd (grid-stride)."""
    _tanh_bwd[config.grid_1d(dy.size)](dy, y, dx)


_unary("tanh", tanh_fwd_cpu, tanh_bwd_cpu, ("y",), lambda x: (np.tanh(x),),
       cuda_twins=(tanh_fwd_cuda, tanh_bwd_cuda))


# -- leaky_relu --------------------------------------------------------------------------
@jit
def leaky_relu_fwd_cpu(x, alpha, y):
    """y = x if x > 0 else alpha * x"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.size):
        yf[i] = xf[i] if xf[i] > 0 else alpha * xf[i]


@cuda_kernel
def _leaky_relu_fwd(x, alpha, y):
    """y = x if x > 0 else alpha * x"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        yf[i] = xf[i] if xf[i] > 0 else alpha * xf[i]


def leaky_relu_fwd_cuda(x, alpha, y):
    """Launch _leaky_relu_fwd (grid-stride)."""
    _leaky_relu_fwd[config.grid_1d(x.size)](x, alpha, y)


@jit
def leaky_relu_bwd_cpu(dy, x, alpha, dx):
    """dx = dy if x > 0 else alpha * dy"""
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = dyf[i] if xf[i] > 0 else alpha * dyf[i]


@cuda_kernel
def _leaky_relu_bwd(dy, x, alpha, dx):
    """dx = dy if x > 0 else alpha * dy"""
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        dxf[i] = dyf[i] if xf[i] > 0 else alpha * dyf[i]


def leaky_relu_bwd_cuda(dy, x, alpha, dx):
    """Launch _leaky_relu_bwd (grid-stride)."""
    _leaky_relu_bwd[config.grid_1d(dy.size)](dy, x, alpha, dx)


_unary("leaky_relu", leaky_relu_fwd_cpu, leaky_relu_bwd_cpu, ("x",),
       lambda x, alpha: (np.where(x > 0, x, alpha * x),), attrs={"alpha": 0.3},
       cuda_twins=(leaky_relu_fwd_cuda, leaky_relu_bwd_cuda))


# -- elu ---------------------------------------------------------------------------------
@jit
def elu_fwd_cpu(x, alpha, y):
    """y = x if x > 0 else alpha * (exp(x) - 1)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.size):
        yf[i] = xf[i] if xf[i] > 0 else alpha * math.expm1(xf[i])


@cuda_kernel
def _elu_fwd(x, alpha, y):
    """y = x if x > 0 else alpha * (exp(x) - 1)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        yf[i] = xf[i] if xf[i] > 0 else alpha * math.expm1(xf[i])


def elu_fwd_cuda(x, alpha, y):
    """Launch _elu_fwd (grid-stride)."""
    _elu_fwd[config.grid_1d(x.size)](x, alpha, y)


@jit
def elu_bwd_cpu(dy, x, y, alpha, dx):
    """dx = dy if x > 0 else dy * (y + alpha)"""
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = dyf[i] if xf[i] > 0 else dyf[i] * (yf[i] + alpha)


@cuda_kernel
def _elu_bwd(dy, x, y, alpha, dx):
    """dx = dy if x > 0 else dy * (y + alpha)"""
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        dxf[i] = dyf[i] if xf[i] > 0 else dyf[i] * (yf[i] + alpha)


def elu_bwd_cuda(dy, x, y, alpha, dx):
    """Launch _elu_bwd (grid-stride)."""
    _elu_bwd[config.grid_1d(dy.size)](dy, x, y, alpha, dx)


_unary("elu", elu_fwd_cpu, elu_bwd_cpu, ("x", "y"),
       lambda x, alpha: (np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),),
       attrs={"alpha": 1.0}, cuda_twins=(elu_fwd_cuda, elu_bwd_cuda))


# -- softmax (last axis) -----------------------------------------------------------------
def _softmax_shape(x: Spec) -> list:
    check_float("softmax", x=x)
    if len(x.shape) < 1 or x.shape[-1] < 1:
        raise OpError(f"softmax needs at least one class on the last axis; got {x.shape}")
    return [Spec(x.shape, x.dtype)]


@jit
def softmax_rows(x2, y2):
    """y[i] = exp(x[i] - max x[i]) / sum exp(x[i] - max x[i]), row by row"""
    for i in range(x2.shape[0]):
        m = x2[i, 0]
        for j in range(1, x2.shape[1]):
            m = max(m, x2[i, j])
        s = 0.0
        for j in range(x2.shape[1]):
            e = math.exp(x2[i, j] - m)
            y2[i, j] = e
            s += e
        inv = 1.0 / s
        for j in range(x2.shape[1]):
            y2[i, j] *= inv


@jit
def softmax_fwd_cpu(x, y):
    """y = softmax(x) along the last axis"""
    n = x.shape[-1]
    softmax_rows(x.reshape(-1, n), y.reshape(-1, n))


@cuda_kernel
def _softmax_fwd(x, y):
    """y = softmax(x) along the last axis, one thread per row"""
    n = x.shape[x.ndim - 1]  # not shape[-1]: the simulator refuses negative indices
    x2 = x.reshape(-1, n)
    y2 = y.reshape(-1, n)
    for i in range(cuda.grid(1), x2.shape[0], cuda.gridsize(1)):
        m = x2[i, 0]
        for j in range(1, n):
            if x2[i, j] > m:  # noqa: PLR1730  (max() fails to compile for CUDA, numba 0.66+)
                m = x2[i, j]
        s = 0.0
        for j in range(n):
            e = math.exp(x2[i, j] - m)
            y2[i, j] = e
            s += e
        inv = 1.0 / s
        for j in range(n):
            y2[i, j] *= inv


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
        s = 0.0
        for j in range(n):
            s += dy2[i, j] * y2[i, j]
        for j in range(n):
            dx2[i, j] = y2[i, j] * (dy2[i, j] - s)


@cuda_kernel
def _softmax_bwd(dy, y, dx):
    """dx = y * (dy - sum(dy * y))  along the last axis, one thread per row"""
    n = y.shape[y.ndim - 1]
    dy2 = dy.reshape(-1, n)
    y2 = y.reshape(-1, n)
    dx2 = dx.reshape(-1, n)
    for i in range(cuda.grid(1), y2.shape[0], cuda.gridsize(1)):
        s = 0.0
        for j in range(n):
            s += dy2[i, j] * y2[i, j]
        for j in range(n):
            dx2[i, j] = y2[i, j] * (dy2[i, j] - s)


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
    sample=_sample(-3.0, 3.0), reference=_softmax_ref,
))


# -- prelu (learned slope) ---------------------------------------------------------------
def _prelu_shape(x: Spec, alpha: Spec) -> list:
    check_float("prelu", x=x, alpha=alpha)
    if tuple(x.shape[1:]) != tuple(alpha.shape):
        raise OpError(f"prelu needs one slope per element of a sample: alpha of shape "
                      f"{x.shape[1:]} for input {x.shape}; got {alpha.shape}")
    return [Spec(x.shape, x.dtype)]


@jit
def prelu_fwd_cpu(x, alpha, y):
    """y = x if x > 0 else alpha * x  (alpha: one slope per element of a sample)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    af = alpha.reshape(-1)
    for i in range(xf.size):
        yf[i] = xf[i] if xf[i] > 0 else af[i % af.size] * xf[i]


@cuda_kernel
def _prelu_fwd(x, alpha, y):
    """y = x if x > 0 else alpha * x"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    af = alpha.reshape(-1)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        yf[i] = xf[i] if xf[i] > 0 else af[i % af.size] * xf[i]


def prelu_fwd_cuda(x, alpha, y):
    """Launch _prelu_fwd (grid-stride)."""
    _prelu_fwd[config.grid_1d(x.size)](x, alpha, y)


@jit
def prelu_bwd_cpu(dy, x, alpha, dx, dalpha):
    """dx = dy if x > 0 else alpha * dy ; dalpha = sum over the batch of dy * x * (x <= 0)"""
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    af = alpha.reshape(-1)
    if dx is not None:
        dxf = dx.reshape(-1)
        for i in range(dyf.size):
            dxf[i] = dyf[i] if xf[i] > 0 else af[i % af.size] * dyf[i]
    if dalpha is not None:
        daf = dalpha.reshape(-1)
        for k in range(daf.size):
            daf[k] = 0.0
        for i in range(dyf.size):
            if xf[i] <= 0:
                daf[i % daf.size] += dyf[i] * xf[i]


@cuda_kernel
def _prelu_bwd_x(dy, x, alpha, dx):
    """dx = dy if x > 0 else alpha * dy"""
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    af = alpha.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        dxf[i] = dyf[i] if xf[i] > 0 else af[i % af.size] * dyf[i]


@cuda_kernel
def _prelu_bwd_alpha(dy, x, dalpha):
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


def prelu_bwd_cuda(dy, x, alpha, dx, dalpha):
    """Launch _prelu_bwd_x (grid-stride) and _prelu_bwd_alpha (per slope)."""
    if dx is not None:
        _prelu_bwd_x[config.grid_1d(dy.size)](dy, x, alpha, dx)
    if dalpha is not None:
        _prelu_bwd_alpha[config.grid_1d(dalpha.size)](dy, x, dalpha)


def _prelu_sample(rng, dtype):
    (x,), _ = _sample()(rng, dtype)
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
