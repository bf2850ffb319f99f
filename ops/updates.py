"""Optimizer update kernels: fused and in place, one call per parameter.

These are not graph ops (they have no gradient); the engine's optimizers call them after
the backward pass. Keras' formulation, so learning curves match Keras/PyTorch runs.
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import CUDA_MAX_THREADS, cuda_kernel, jit

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


@jit
def sgd_update_cpu(w, g, lr):
    """w -= lr * g"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    for i in range(wf.size):
        wf[i] -= lr * gf[i]


@cuda_kernel
def _sgd_update(w, g, lr):
    """w -= lr * g"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    for i in range(cuda.grid(1), wf.size, cuda.gridsize(1)):
        wf[i] -= lr * gf[i]


def sgd_update_cuda(w, g, lr):
    """Launch _sgd_update (grid-stride)."""
    _sgd_update[config.grid_1d(w.size)](w, g, lr)


@jit
def sgd_momentum_update_cpu(w, g, v, lr, momentum, nesterov):
    """v = momentum * v - lr * g ; w += v, or w += momentum * v - lr * g (Nesterov)"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    vf = v.reshape(-1)
    for i in range(wf.size):
        step = -lr * gf[i]
        vi = momentum * vf[i] + step
        vf[i] = vi
        if nesterov:
            wf[i] += momentum * vi + step
        else:
            wf[i] += vi


@cuda_kernel
def _sgd_momentum_update(w, g, v, lr, momentum, nesterov):
    """v = momentum * v - lr * g ; w += v, or w += momentum * v - lr * g (Nesterov)"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    vf = v.reshape(-1)
    for i in range(cuda.grid(1), wf.size, cuda.gridsize(1)):
        step = -lr * gf[i]
        vi = momentum * vf[i] + step
        vf[i] = vi
        if nesterov:
            wf[i] += momentum * vi + step
        else:
            wf[i] += vi


def sgd_momentum_update_cuda(w, g, v, lr, momentum, nesterov):
    """Launch _sgd_momentum_update (grid-stride)."""
    _sgd_momentum_update[config.grid_1d(w.size)](w, g, v, lr, momentum, nesterov)


@jit
def adagrad_update_cpu(w, g, acc, lr, epsilon):
    """acc += g^2 ; w -= lr * g / sqrt(acc + epsilon)"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    af = acc.reshape(-1)
    for i in range(wf.size):
        gi = gf[i]
        ai = af[i] + gi * gi
        af[i] = ai
        wf[i] -= lr * gi / np.sqrt(ai + epsilon)


@cuda_kernel
def _adagrad_update(w, g, acc, lr, epsilon):
    """acc += g^2 ; w -= lr * g / sqrt(acc + epsilon)"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    af = acc.reshape(-1)
    for i in range(cuda.grid(1), wf.size, cuda.gridsize(1)):
        gi = gf[i]
        ai = af[i] + gi * gi
        af[i] = ai
        wf[i] -= lr * gi / math.sqrt(ai + epsilon)


def adagrad_update_cuda(w, g, acc, lr, epsilon):
    """Launch _adagrad_update (grid-stride)."""
    _adagrad_update[config.grid_1d(w.size)](w, g, acc, lr, epsilon)


@jit
def rmsprop_update_cpu(w, g, v, lr, rho, epsilon):
    """v = rho * v + (1 - rho) * g^2 ; w -= lr * g / sqrt(v + epsilon)"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    vf = v.reshape(-1)
    for i in range(wf.size):
        gi = gf[i]
        vi = rho * vf[i] + (1.0 - rho) * gi * gi
        vf[i] = vi
        wf[i] -= lr * gi / np.sqrt(vi + epsilon)


@cuda_kernel
def _rmsprop_update(w, g, v, lr, rho, epsilon):
    """v = rho * v + (1 - rho) * g^2 ; w -= lr * g / sqrt(v + epsilon)"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    vf = v.reshape(-1)
    for i in range(cuda.grid(1), wf.size, cuda.gridsize(1)):
        gi = gf[i]
        vi = rho * vf[i] + (1.0 - rho) * gi * gi
        vf[i] = vi
        wf[i] -= lr * gi / math.sqrt(vi + epsilon)


def rmsprop_update_cuda(w, g, v, lr, rho, epsilon):
    """Launch _rmsprop_update (grid-stride)."""
    _rmsprop_update[config.grid_1d(w.size)](w, g, v, lr, rho, epsilon)


@jit
def rmsprop_momentum_update_cpu(w, g, v, m, lr, rho, momentum, epsilon):
    """v = rho v + (1 - rho) g^2 ; m = momentum m + lr g / sqrt(v + epsilon) ; w -= m"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    vf = v.reshape(-1)
    mf = m.reshape(-1)
    for i in range(wf.size):
        gi = gf[i]
        vi = rho * vf[i] + (1.0 - rho) * gi * gi
        vf[i] = vi
        mi = momentum * mf[i] + lr * gi / np.sqrt(vi + epsilon)
        mf[i] = mi
        wf[i] -= mi


@cuda_kernel
def _rmsprop_momentum_update(w, g, v, m, lr, rho, momentum, epsilon):
    """v = rho v + (1 - rho) g^2 ; m = momentum m + lr g / sqrt(v + epsilon) ; w -= m"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    vf = v.reshape(-1)
    mf = m.reshape(-1)
    for i in range(cuda.grid(1), wf.size, cuda.gridsize(1)):
        gi = gf[i]
        vi = rho * vf[i] + (1.0 - rho) * gi * gi
        vf[i] = vi
        mi = momentum * mf[i] + lr * gi / math.sqrt(vi + epsilon)
        mf[i] = mi
        wf[i] -= mi


def rmsprop_momentum_update_cuda(w, g, v, m, lr, rho, momentum, epsilon):
    """Launch _rmsprop_momentum_update (grid-stride)."""
    _rmsprop_momentum_update[config.grid_1d(w.size)](w, g, v, m, lr, rho, momentum, epsilon)


@jit
def adam_update_cpu(w, g, m, v, alpha, beta_1, beta_2, epsilon):
    """m += (1 - b1)(g - m) ; v += (1 - b2)(g^2 - v) ; w -= alpha m / (sqrt(v) + epsilon)

    ``alpha = lr sqrt(1 - b2^t) / (1 - b1^t)`` carries Adam's bias correction (Keras 3).
    """
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    mf = m.reshape(-1)
    vf = v.reshape(-1)
    for i in range(wf.size):
        gi = gf[i]
        mi = mf[i] + (gi - mf[i]) * (1.0 - beta_1)
        vi = vf[i] + (gi * gi - vf[i]) * (1.0 - beta_2)
        mf[i] = mi
        vf[i] = vi
        wf[i] -= alpha * mi / (np.sqrt(vi) + epsilon)


@cuda_kernel
def _adam_update(w, g, m, v, alpha, beta_1, beta_2, epsilon):
    """m += (1 - b1)(g - m) ; v += (1 - b2)(g^2 - v) ; w -= alpha m / (sqrt(v) + epsilon)"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    mf = m.reshape(-1)
    vf = v.reshape(-1)
    for i in range(cuda.grid(1), wf.size, cuda.gridsize(1)):
        gi = gf[i]
        mi = mf[i] + (gi - mf[i]) * (1.0 - beta_1)
        vi = vf[i] + (gi * gi - vf[i]) * (1.0 - beta_2)
        mf[i] = mi
        vf[i] = vi
        wf[i] -= alpha * mi / (math.sqrt(vi) + epsilon)


def adam_update_cuda(w, g, m, v, alpha, beta_1, beta_2, epsilon):
    """Launch _adam_update (grid-stride)."""
    _adam_update[config.grid_1d(w.size)](w, g, m, v, alpha, beta_1, beta_2, epsilon)


# -- what every optimizer may do before its update: decoupled weight decay, clipping ------
@jit
def decay_weights_cpu(w, factor):
    """w -= factor * w   (factor = learning_rate * weight_decay)"""
    wf = w.reshape(-1)
    for i in range(wf.size):
        wf[i] -= factor * wf[i]


@cuda_kernel
def _decay_weights(w, factor):
    """w -= factor * w"""
    wf = w.reshape(-1)
    for i in range(cuda.grid(1), wf.size, cuda.gridsize(1)):
        wf[i] -= factor * wf[i]


def decay_weights_cuda(w, factor):
    """Launch _decay_weights (grid-stride)."""
    _decay_weights[config.grid_1d(w.size)](w, factor)


@jit
def sum_squares_cpu(g):
    """sum g^2, accumulated in float64 (for clipnorm and global_clipnorm)"""
    total = 0.0
    for v in g.reshape(-1):
        total += np.float64(v) * v
    return total


@cuda_kernel
def _sum_squares(g, out):
    """out = sum g^2, in one block: strided partial sums, then a tree"""
    buf = cuda.shared.array(CUDA_MAX_THREADS, np.float64)
    gf = g.reshape(-1)
    t = cuda.threadIdx.x
    total = 0.0
    for i in range(t, gf.size, cuda.blockDim.x):
        gi = float(gf[i])              # square in float64, as the CPU kernel does
        total += gi * gi
    buf[t] = total
    n = cuda.blockDim.x
    while n > 1:  # fixed pairs, so the sum is deterministic
        cuda.syncthreads()
        half = (n + 1) // 2
        if t < n - half:
            buf[t] += buf[t + half]
        n = half
    if t == 0:
        out[0] = buf[0]


def sum_squares_cuda(g, out):
    """Launch _sum_squares (one block); ``out`` is a float64 array of one element."""
    _sum_squares[1, config.CUDA_BLOCK](g, out)


@jit
def clip_gradient_cpu(g, scale, clipvalue, out):
    """out = clip(scale * g, -clipvalue, clipvalue)"""
    gf = g.reshape(-1)
    of = out.reshape(-1)
    for i in range(gf.size):
        v = scale * gf[i]
        if v > clipvalue:
            v = clipvalue
        elif v < -clipvalue:
            v = -clipvalue
        of[i] = v


@cuda_kernel
def _clip_gradient(g, scale, clipvalue, out):
    """out = clip(scale * g, -clipvalue, clipvalue)"""
    gf = g.reshape(-1)
    of = out.reshape(-1)
    for i in range(cuda.grid(1), gf.size, cuda.gridsize(1)):
        v = scale * gf[i]
        if v > clipvalue:
            v = clipvalue
        elif v < -clipvalue:
            v = -clipvalue
        of[i] = v


def clip_gradient_cuda(g, scale, clipvalue, out):
    """Launch _clip_gradient (grid-stride)."""
    _clip_gradient[config.grid_1d(g.size)](g, scale, clipvalue, out)
