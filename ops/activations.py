"""Activation functions: relu, sigmoid, tanh, leaky_relu, elu (elementwise) and softmax.

Each forward and its derivative sit a few lines apart. Elementwise kernels work on the
flattened arrays; the engine hands them contiguous buffers.
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops.config import jit
from dlrun.ops.registry import Op, OpError, Spec, check_float, register


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


def _unary(name, fwd, bwd, saves, reference, attrs=None, sample=None):
    return register(Op(
        name=name, inputs=("x",), shape=_float_like, saves=saves,
        forward=fwd, backward=bwd, attrs=attrs or {},
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


@jit
def relu_bwd_cpu(dy, y, dx):
    """dx = dy * (y > 0)"""
    dyf = dy.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = dyf[i] if yf[i] > 0 else 0.0


_unary("relu", relu_fwd_cpu, relu_bwd_cpu, ("y",), lambda x: (np.maximum(x, 0),))


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


@jit
def sigmoid_bwd_cpu(dy, y, dx):
    """dx = dy * y * (1 - y)"""
    dyf = dy.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = dyf[i] * yf[i] * (1.0 - yf[i])


_unary("sigmoid", sigmoid_fwd_cpu, sigmoid_bwd_cpu, ("y",),
       lambda x: (1.0 / (1.0 + np.exp(-x)),))


# -- tanh --------------------------------------------------------------------------------
@jit
def tanh_fwd_cpu(x, y):
    """y = tanh(x)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.size):
        yf[i] = math.tanh(xf[i])


@jit
def tanh_bwd_cpu(dy, y, dx):
    """dx = dy * (1 - y^2)"""
    dyf = dy.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = dyf[i] * (1.0 - yf[i] * yf[i])


_unary("tanh", tanh_fwd_cpu, tanh_bwd_cpu, ("y",), lambda x: (np.tanh(x),))


# -- leaky_relu --------------------------------------------------------------------------
@jit
def leaky_relu_fwd_cpu(x, alpha, y):
    """y = x if x > 0 else alpha * x"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.size):
        yf[i] = xf[i] if xf[i] > 0 else alpha * xf[i]


@jit
def leaky_relu_bwd_cpu(dy, x, alpha, dx):
    """dx = dy if x > 0 else alpha * dy"""
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = dyf[i] if xf[i] > 0 else alpha * dyf[i]


_unary("leaky_relu", leaky_relu_fwd_cpu, leaky_relu_bwd_cpu, ("x",),
       lambda x, alpha: (np.where(x > 0, x, alpha * x),), attrs={"alpha": 0.3})


# -- elu ---------------------------------------------------------------------------------
@jit
def elu_fwd_cpu(x, alpha, y):
    """y = x if x > 0 else alpha * (exp(x) - 1)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.size):
        yf[i] = xf[i] if xf[i] > 0 else alpha * math.expm1(xf[i])


@jit
def elu_bwd_cpu(dy, x, y, alpha, dx):
    """dx = dy if x > 0 else dy * (y + alpha)"""
    dyf = dy.reshape(-1)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    dxf = dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = dyf[i] if xf[i] > 0 else dyf[i] * (yf[i] + alpha)


_unary("elu", elu_fwd_cpu, elu_bwd_cpu, ("x", "y"),
       lambda x, alpha: (np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),),
       attrs={"alpha": 1.0})


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


def _softmax_ref(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True),)


register(Op(
    name="softmax", inputs=("x",), shape=_softmax_shape, saves=("y",),
    forward=softmax_fwd_cpu, backward=softmax_bwd_cpu,
    sample=_sample(-3.0, 3.0), reference=_softmax_ref,
))
