"""Batch normalisation, per feature of (batch, features) input and per channel of NCHW
input: ``batch_norm`` (training: batch statistics) and ``batch_norm_inference`` (the
moving statistics).

``batch_norm`` is the one op that writes into some of its inputs: its forward updates
``moving_mean`` and ``moving_var`` in place (``moving = momentum * moving + (1 -
momentum) * batch statistic``, the biased batch variance, as Keras does). They are
non-trainable weights, read by no other op of the training step, so the update is
invisible to the rest of the graph; it happens once per training step, like an
optimizer update. The normalised output does not depend on them, so gradients and
gradient checks are unaffected.
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


def _bn_shape(name):
    def shape(x: Spec, gamma: Spec, beta: Spec, moving_mean: Spec, moving_var: Spec,
              **_) -> list:
        check_float(name, x=x, gamma=gamma, beta=beta, moving_mean=moving_mean,
                    moving_var=moving_var)
        c = x.shape[1] if len(x.shape) >= 2 else None
        if c is None or any(s.shape != (c,) for s in (gamma, beta, moving_mean, moving_var)):
            raise OpError(f"{name} needs x (batch, channels, ...) and gamma, beta, "
                          f"moving_mean, moving_var of shape (channels,); got x {x.shape}, "
                          f"gamma {gamma.shape}, beta {beta.shape}, moving_mean "
                          f"{moving_mean.shape}, moving_var {moving_var.shape}")
        out = [Spec(x.shape, x.dtype)]
        return out + ([Spec((c,), x.dtype)] * 2 if name == "batch_norm" else [])
    return shape


def _as3(x):
    """(batch, channels, everything else)"""
    return x.reshape(x.shape[0], x.shape[1], -1)


# -- per channel, shared by both devices (arrays seen as (batch, channels, the rest)) -------
@config.formula
def channel_stats(x3, c, momentum, epsilon, moving_mean, moving_var, mean, invstd):
    """mean[c], invstd[c] = the batch's mean and 1 / sqrt(var + epsilon) over (batch, the
    rest) of channel c; moving statistics updated: moving = momentum moving + (1 -
    momentum) statistic, with the biased variance (as Keras)"""
    nb, _, sp = x3.shape
    s = 0.0
    for n in range(nb):
        for k in range(sp):
            s += x3[n, c, k]
    mu = s / (nb * sp)
    v = 0.0
    for n in range(nb):
        for k in range(sp):
            d = x3[n, c, k] - mu
            v += d * d
    var = v / (nb * sp)
    mean[c] = mu
    invstd[c] = 1.0 / math.sqrt(var + epsilon)
    moving_mean[c] = momentum * moving_mean[c] + (1.0 - momentum) * mu
    moving_var[c] = momentum * moving_var[c] + (1.0 - momentum) * var


@config.formula
def channel_sums(dy3, x3, c, mean_c, inv_c):
    """(sum dy, sum dy * (x - mean_c) * inv_c) over channel c: dbeta and dgamma"""
    sb = 0.0
    sg = 0.0
    for n in range(x3.shape[0]):
        for k in range(x3.shape[2]):
            sb += dy3[n, c, k]
            sg += dy3[n, c, k] * (x3[n, c, k] - mean_c) * inv_c
    return sb, sg


# -- batch_norm (training) ---------------------------------------------------------------
@jit
def _bn_train_fwd(x3, gamma, beta, moving_mean, moving_var, momentum, epsilon, y3, mean,
                  invstd):
    """mean, var over (batch, spatial) per channel; y = gamma * (x - mean) * invstd + beta"""
    nb, ch, sp = x3.shape
    for c in range(ch):
        channel_stats(x3, c, momentum, epsilon, moving_mean, moving_var, mean, invstd)
        mu = mean[c]
        inv = invstd[c]
        for n in range(nb):
            for k in range(sp):
                y3[n, c, k] = gamma[c] * (x3[n, c, k] - mu) * inv + beta[c]


def batch_norm_fwd_cpu(x, gamma, beta, moving_mean, moving_var, momentum, epsilon, y, mean,
                       invstd):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta ; moving statistics updated in place"""
    _bn_train_fwd(_as3(x), gamma, beta, moving_mean, moving_var, momentum, epsilon, _as3(y),
                  mean, invstd)


@jit
def _bn_train_bwd(dy3, x3, gamma, mean, invstd, dx3, dgamma, dbeta):
    """xh = (x - mean) * invstd ; dbeta = sum dy ; dgamma = sum dy * xh ;
    dx = gamma * invstd * (dy - dbeta / m - xh * dgamma / m)"""
    nb, ch, sp = x3.shape
    m = nb * sp
    for c in range(ch):
        sb, sg = channel_sums(dy3, x3, c, mean[c], invstd[c])
        if dbeta.size:
            dbeta[c] = sb
        if dgamma.size:
            dgamma[c] = sg
        if dx3.size:
            g = gamma[c] * invstd[c]
            for n in range(nb):
                for k in range(sp):
                    xh = (x3[n, c, k] - mean[c]) * invstd[c]
                    dx3[n, c, k] = g * (dy3[n, c, k] - sb / m - xh * sg / m)


def _or_empty(a, like):
    """The gradient buffer, or an empty stand-in when it is not wanted."""
    return a if a is not None else np.empty(0, like.dtype)


def batch_norm_bwd_cpu(dy, x, gamma, mean, invstd, momentum, epsilon, dx, dgamma, dbeta):
    """dx, dgamma, dbeta of y = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta"""
    dx3 = _as3(dx) if dx is not None else np.empty((0, 0, 0), x.dtype)
    _bn_train_bwd(_as3(dy), _as3(x), gamma, mean, invstd, dx3, _or_empty(dgamma, x),
                  _or_empty(dbeta, x))


@cuda_kernel
def _bn_stats(x, momentum, epsilon, moving_mean, moving_var, mean, invstd):
    """mean, invstd per channel; moving statistics updated (one thread per channel)"""
    x3 = x.reshape(x.shape[0], x.shape[1], x.size // (x.shape[0] * x.shape[1]))
    for c in range(cuda.grid(1), x.shape[1], cuda.gridsize(1)):
        channel_stats(x3, c, momentum, epsilon, moving_mean, moving_var, mean, invstd)


@cuda_kernel
def _bn_normalise(x, gamma, beta, mean, invstd, y):
    """y = gamma * (x - mean) * invstd + beta  (grid-stride over the elements)"""
    ch = x.shape[1]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    sp = xf.size // (x.shape[0] * ch)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        c = (i // sp) % ch
        yf[i] = gamma[c] * (xf[i] - mean[c]) * invstd[c] + beta[c]


def batch_norm_fwd_cuda(x, gamma, beta, moving_mean, moving_var, momentum, epsilon, y, mean,
                        invstd):
    """Launch _bn_stats (per channel), then _bn_normalise (per element)."""
    _bn_stats[config.grid_1d(gamma.size)](x, momentum, epsilon, moving_mean, moving_var,
                                          mean, invstd)
    _bn_normalise[config.grid_1d(x.size)](x, gamma, beta, mean, invstd, y)


@cuda_kernel
def _bn_param_grads(dy, x, mean, invstd, dgamma, dbeta):
    """dbeta = sum dy ; dgamma = sum dy * (x - mean) * invstd  (one thread per channel)"""
    shape3 = (x.shape[0], x.shape[1], x.size // (x.shape[0] * x.shape[1]))
    for c in range(cuda.grid(1), x.shape[1], cuda.gridsize(1)):
        dbeta[c], dgamma[c] = channel_sums(dy.reshape(shape3), x.reshape(shape3), c,
                                           mean[c], invstd[c])


@cuda_kernel
def _bn_train_dx(dy, x, gamma, mean, invstd, dgamma, dbeta, dx):
    """dx = gamma * invstd * (dy - dbeta / m - xh * dgamma / m)  (grid-stride)"""
    ch = x.shape[1]
    xf = x.reshape(-1)
    dyf = dy.reshape(-1)
    dxf = dx.reshape(-1)
    sp = xf.size // (x.shape[0] * ch)
    m = x.shape[0] * sp
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        c = (i // sp) % ch
        xh = (xf[i] - mean[c]) * invstd[c]
        dxf[i] = gamma[c] * invstd[c] * (dyf[i] - dbeta[c] / m - xh * dgamma[c] / m)


def batch_norm_bwd_cuda(dy, x, gamma, mean, invstd, momentum, epsilon, dx, dgamma, dbeta):
    """Launch _bn_param_grads (per channel), then _bn_train_dx (per element)."""
    sums_g = dgamma if dgamma is not None else cuda.device_array(gamma.shape, gamma.dtype)
    sums_b = dbeta if dbeta is not None else cuda.device_array(gamma.shape, gamma.dtype)
    _bn_param_grads[config.grid_1d(gamma.size)](dy, x, mean, invstd, sums_g, sums_b)
    if dx is not None:
        _bn_train_dx[config.grid_1d(x.size)](dy, x, gamma, mean, invstd, sums_g, sums_b, dx)


def batch_norm_reference(x, gamma, beta, moving_mean, moving_var, momentum=0.99,
                         epsilon=1e-3):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    invstd = 1.0 / np.sqrt(var + epsilon)
    y = gamma.reshape(shape) * (x - mean.reshape(shape)) * invstd.reshape(shape) + \
        beta.reshape(shape)
    return y, mean, invstd


def _bn_sample(rng, dtype):
    x = rng.standard_normal((4, 3, 2, 2)).astype(dtype) * 2.0 + 0.5
    gamma = rng.uniform(0.5, 1.5, 3).astype(dtype)
    beta = rng.standard_normal(3).astype(dtype)
    moving_mean = rng.standard_normal(3).astype(dtype)
    moving_var = rng.uniform(0.5, 2.0, 3).astype(dtype)
    return (x, gamma, beta, moving_mean, moving_var), {"momentum": 0.9, "epsilon": 1e-3}


register(Op(
    name="batch_norm", inputs=("x", "gamma", "beta", "moving_mean", "moving_var"),
    outputs=("y", "mean", "invstd"), diff=("x", "gamma", "beta"),
    shape=_bn_shape("batch_norm"), saves=("x", "gamma", "mean", "invstd"),
    attrs={"momentum": 0.99, "epsilon": 1e-3},
    forward=batch_norm_fwd_cpu, backward=batch_norm_bwd_cpu,
    cuda_forward=batch_norm_fwd_cuda, cuda_backward=batch_norm_bwd_cuda,
    sample=_bn_sample, reference=batch_norm_reference,
))


# -- batch_norm_inference ----------------------------------------------------------------
@jit
def _bn_infer_fwd(x3, gamma, beta, moving_mean, moving_var, epsilon, y3):
    """y = gamma * (x - moving_mean) / sqrt(moving_var + eps) + beta"""
    nb, ch, sp = x3.shape
    for c in range(ch):
        g = gamma[c] / math.sqrt(moving_var[c] + epsilon)
        for n in range(nb):
            for k in range(sp):
                y3[n, c, k] = g * (x3[n, c, k] - moving_mean[c]) + beta[c]


def batch_norm_inference_fwd_cpu(x, gamma, beta, moving_mean, moving_var, epsilon, y):
    """y = gamma * (x - moving_mean) / sqrt(moving_var + eps) + beta"""
    _bn_infer_fwd(_as3(x), gamma, beta, moving_mean, moving_var, epsilon, _as3(y))


@jit
def _bn_infer_bwd(dy3, x3, gamma, moving_mean, moving_var, epsilon, dx3, dgamma, dbeta):
    """inv = 1 / sqrt(moving_var + eps) ; dx = dy * gamma * inv ;
    dgamma = sum dy * (x - moving_mean) * inv ; dbeta = sum dy"""
    nb, ch, sp = dy3.shape
    for c in range(ch):
        inv = 1.0 / math.sqrt(moving_var[c] + epsilon)
        sb = 0.0
        sg = 0.0
        for n in range(nb):     # channel_sums, with dx in the same pass
            for k in range(sp):
                sb += dy3[n, c, k]
                sg += dy3[n, c, k] * (x3[n, c, k] - moving_mean[c]) * inv
                if dx3.size:
                    dx3[n, c, k] = dy3[n, c, k] * gamma[c] * inv
        if dgamma.size:
            dgamma[c] = sg
        if dbeta.size:
            dbeta[c] = sb


def batch_norm_inference_bwd_cpu(dy, x, gamma, moving_mean, moving_var, epsilon, dx, dgamma,
                                 dbeta):
    """dx, dgamma, dbeta of y = gamma * (x - moving_mean) / sqrt(moving_var + eps) + beta"""
    dx3 = _as3(dx) if dx is not None else np.empty((0, 0, 0), x.dtype)
    _bn_infer_bwd(_as3(dy), _as3(x), gamma, moving_mean, moving_var, epsilon, dx3,
                  _or_empty(dgamma, x), _or_empty(dbeta, x))


@cuda_kernel
def _bn_infer(x, gamma, beta, moving_mean, moving_var, epsilon, y):
    """y = gamma * (x - moving_mean) / sqrt(moving_var + eps) + beta  (grid-stride)"""
    ch = x.shape[1]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    sp = xf.size // (x.shape[0] * ch)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        c = (i // sp) % ch
        yf[i] = gamma[c] * (xf[i] - moving_mean[c]) / math.sqrt(moving_var[c] + epsilon) + \
            beta[c]


def batch_norm_inference_fwd_cuda(x, gamma, beta, moving_mean, moving_var, epsilon, y):
    """Launch _bn_infer (grid-stride)."""
    _bn_infer[config.grid_1d(x.size)](x, gamma, beta, moving_mean, moving_var, epsilon, y)


@cuda_kernel
def _bn_infer_dx(dy, gamma, moving_var, epsilon, dx):
    """dx = dy * gamma / sqrt(moving_var + eps)  (grid-stride)"""
    ch = dy.shape[1]
    dyf = dy.reshape(-1)
    dxf = dx.reshape(-1)
    sp = dyf.size // (dy.shape[0] * ch)
    for i in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        c = (i // sp) % ch
        dxf[i] = dyf[i] * gamma[c] / math.sqrt(moving_var[c] + epsilon)


@cuda_kernel
def _bn_infer_param_grads(dy, x, moving_mean, moving_var, epsilon, dgamma, dbeta):
    """dbeta = sum dy ; dgamma = sum dy * (x - moving_mean) / sqrt(moving_var + eps)"""
    shape3 = (x.shape[0], x.shape[1], x.size // (x.shape[0] * x.shape[1]))
    for c in range(cuda.grid(1), x.shape[1], cuda.gridsize(1)):
        inv = 1.0 / math.sqrt(moving_var[c] + epsilon)
        dbeta[c], dgamma[c] = channel_sums(dy.reshape(shape3), x.reshape(shape3), c,
                                           moving_mean[c], inv)


def batch_norm_inference_bwd_cuda(dy, x, gamma, moving_mean, moving_var, epsilon, dx,
                                  dgamma, dbeta):
    """Launch _bn_infer_dx (grid-stride) and _bn_infer_param_grads (per channel)."""
    if dx is not None:
        _bn_infer_dx[config.grid_1d(dx.size)](dy, gamma, moving_var, epsilon, dx)
    if dgamma is not None or dbeta is not None:   # a stand-in for the one not wanted
        dg = dgamma if dgamma is not None else cuda.device_array(gamma.shape, gamma.dtype)
        db = dbeta if dbeta is not None else cuda.device_array(gamma.shape, gamma.dtype)
        _bn_infer_param_grads[config.grid_1d(gamma.size)](dy, x, moving_mean, moving_var,
                                                          epsilon, dg, db)


def batch_norm_inference_reference(x, gamma, beta, moving_mean, moving_var, epsilon=1e-3):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (gamma.reshape(shape) * (x - moving_mean.reshape(shape)) /
            np.sqrt(moving_var.reshape(shape) + epsilon) + beta.reshape(shape),)


def _bn_inference_sample(rng, dtype):
    inputs, _ = _bn_sample(rng, dtype)
    return (inputs[0][:, :, 0, 0].copy(),) + inputs[1:], {"epsilon": 1e-3}   # 2-D input


register(Op(
    name="batch_norm_inference", inputs=("x", "gamma", "beta", "moving_mean", "moving_var"),
    diff=("x", "gamma", "beta"), shape=_bn_shape("batch_norm_inference"),
    saves=("x", "gamma", "moving_mean", "moving_var"), attrs={"epsilon": 1e-3},
    forward=batch_norm_inference_fwd_cpu, backward=batch_norm_inference_bwd_cpu,
    cuda_forward=batch_norm_inference_fwd_cuda, cuda_backward=batch_norm_inference_bwd_cuda,
    sample=_bn_inference_sample, reference=batch_norm_inference_reference,
))
