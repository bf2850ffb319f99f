"""Stochastic pooling (Zeiler & Fergus 2013) on NCHW images: stochastic_pool2d (training)
and stochastic_pool2d_inference.

Each window's element ``a_i`` has probability ``p_i = a_i / sum_j a_j``, the paper's
activations being non-negative (after a ReLU); here a negative element counts as 0, so any
input works. Training draws one element of each window by those probabilities (one
counter-based uniform per window, :func:`dlrun.ops.dropout.uniform_hash`, against the
running sum in row-major order) and records its position as an auxiliary output, as
max_pool2d does, so the gradient goes to the picked element; a window with no positive
element gives 0, and no gradient. Inference takes the probability-weighted average
``sum_i p_i a_i = sum a_i^2 / sum a_i`` (0 for a window with no positive element), whose
derivative is ``(2 a_k S1 - S2) / S1^2`` for a positive ``a_k`` (``S1 = sum a``, ``S2 =
sum a^2``), 0 otherwise. Windows follow :mod:`dlrun.ops.pool` (Keras' geometry).
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.conv import tap_source, unravel4, window_span
from dlrun.ops.dropout import uniform_hash, uniform_hash_np
from dlrun.ops.pool import (max_pool2d_bwd_cpu_kernel, max_pool2d_bwd_cuda, pool_geometry,
                            pool_sample, pool_shape, pool_windows, window_map)
from dlrun.ops.registry import Op, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


# -- per window and per pixel, shared by both devices ----------------------------------------
@config.formula(inline=True)
def window_pick(x, n, c, r0, r1, s0, s1, u):
    """(x at the pick, r * width + s of it): an element of x[n, c, r0:r1, s0:s1] drawn with
    probability max(x, 0) / sum max(x, 0), the first whose running sum passes u * total;
    (0, -1) when no element is positive"""
    total = 0.0
    for r in range(r0, r1):
        for s in range(s0, s1):
            if x[n, c, r, s] > 0:
                total += x[n, c, r, s]
    target = u * total
    acc = 0.0
    best = 0.0
    where = -1
    last = -1
    for r in range(r0, r1):
        for s in range(s0, s1):
            v = x[n, c, r, s]
            if v > 0:
                if where < 0:
                    acc += v
                    if acc > target:
                        best = v
                        where = r * x.shape[3] + s
                last = r * x.shape[3] + s
    if where < 0 and last >= 0:   # the two sums rounded apart: the last positive element
        best = x[n, c, last // x.shape[3], last % x.shape[3]]
        where = last
    return best, where


@config.formula(inline=True)
def window_sums(x, n, c, r0, r1, s0, s1):
    """(S1, S2) = (sum max(x, 0), sum max(x, 0)^2) over x[n, c, r0:r1, s0:s1]"""
    lin = 0.0
    sq = 0.0
    for r in range(r0, r1):
        for s in range(s0, s1):
            v = x[n, c, r, s]
            if v > 0:
                lin += v
                sq += v * v
    return lin, sq


@config.formula
def weighted_pixel_grad(dy, x, n, c, r, s, ph, pw, sh, sw, pt, pl):
    """dx[n, c, r, s] of the weighted average: the sum over the windows holding pixel
    (r, s) of dy * (2 a S1 - S2) / S1^2, where a = x[n, c, r, s] > 0 (else 0)"""
    a = x[n, c, r, s]
    acc = 0.0
    if a <= 0:
        return acc
    for i in range(ph):
        p = tap_source(r, pt, i, sh, dy.shape[2])
        if p < 0:
            continue
        r0, r1 = window_span(p, sh, pt, ph, x.shape[2])
        for j in range(pw):
            q = tap_source(s, pl, j, sw, dy.shape[3])
            if q < 0:
                continue
            q0, q1 = window_span(q, sw, pl, pw, x.shape[3])
            t1, t2 = window_sums(x, n, c, r0, r1, q0, q1)
            acc += dy[n, c, p, q] * (2.0 * a * t1 - t2) / (t1 * t1)
    return acc


# -- stochastic_pool2d (training) ------------------------------------------------------------
@jit
def stochastic_pool2d_kernel_cpu(x, ph, pw, sh, sw, pt, pl, seed, y, at):
    """y = the element drawn from each window (u_t, t its output's flat index) ; at = its
    position r * width + s, or -1"""
    t = 0
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for p in range(y.shape[2]):
                r0, r1 = window_span(p, sh, pt, ph, x.shape[2])
                for q in range(y.shape[3]):
                    s0, s1 = window_span(q, sw, pl, pw, x.shape[3])
                    y[n, c, p, q], at[n, c, p, q] = window_pick(x, n, c, r0, r1, s0, s1,
                                                                uniform_hash(seed, t))
                    t += 1


def stochastic_pool2d_fwd_cpu(x, pool, strides, padding, seed, y, at):
    """y = an element of each window drawn by its share of the window's sum"""
    stochastic_pool2d_kernel_cpu(x, *pool_geometry(x, pool, strides, padding), seed, y, at)


@cuda_kernel
def _stochastic_pool2d_fwd(x, ph, pw, sh, sw, pt, pl, seed, y, at):
    """y = the element drawn from each window (u_t, t its output's flat index) ; at = its
    position r * width + s, or -1"""
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, c, p, q = unravel4(t, y)
        r0, r1 = window_span(p, sh, pt, ph, x.shape[2])
        s0, s1 = window_span(q, sw, pl, pw, x.shape[3])
        y[n, c, p, q], at[n, c, p, q] = window_pick(x, n, c, r0, r1, s0, s1,
                                                    uniform_hash(seed, t))


def stochastic_pool2d_fwd_cuda(x, pool, strides, padding, seed, y, at):
    """Launch _stochastic_pool2d_fwd (grid-stride over the outputs)."""
    _stochastic_pool2d_fwd[config.grid_1d(y.size)](x, *pool_geometry(x, pool, strides, padding),
                                                   seed, y, at)


def stochastic_pool2d_bwd_cpu(dy, at, pool, strides, padding, dx):
    """dx = dy sent to the element each window picked (none for an all-zero window)"""
    max_pool2d_bwd_cpu_kernel(dy, at, dx)


def stochastic_pool2d_reference(x, pool=(2, 2), strides=(2, 2), padding="valid", seed=0):
    out = at = u = None
    for oh, ow, p, q, rows, cols in pool_windows(x, pool, strides, padding):
        if out is None:
            out = np.zeros(x.shape[:2] + (oh, ow), x.dtype)
            at = np.full(out.shape, -1, np.int64)
            u = uniform_hash_np(seed, out.size).reshape(out.shape)
        width = cols.stop - cols.start
        for n in range(x.shape[0]):
            for c in range(x.shape[1]):
                w = np.maximum(x[n, c, rows, cols].astype(np.float64).ravel(), 0.0)
                if not w.any():
                    continue
                k = int(np.argmax(np.cumsum(w) > u[n, c, p, q] * w.sum()))
                out[n, c, p, q] = w[k]
                at[n, c, p, q] = (rows.start + k // width) * x.shape[3] + cols.start + \
                    k % width
    return out, at


def _stochastic_sample(rng, dtype):
    """pool_sample's overlapping, padded windows, a third of the values negative and one
    window all negative (no value at 0 exactly: the pick and the average have a kink
    there, where finite differences mean nothing)"""
    (x,), attrs = pool_sample(rng, dtype)
    x = (x - 5.95).astype(x.dtype)
    x[0, 0, :2, :2] = -1.0
    return (x,), attrs


register(Op(
    name="stochastic_pool2d", inputs=("x",), outputs=("y", "at"),
    shape=pool_shape("stochastic_pool2d", positions=True), saves=("at",),
    attrs={"pool": (2, 2), "strides": (2, 2), "padding": "valid"}, rng=True,
    forward=stochastic_pool2d_fwd_cpu, backward=stochastic_pool2d_bwd_cpu,
    cuda_forward=stochastic_pool2d_fwd_cuda, cuda_backward=max_pool2d_bwd_cuda,
    sample=_stochastic_sample, reference=stochastic_pool2d_reference,
))


# -- stochastic_pool2d_inference: the probability-weighted average -------------------------------
@config.formula(inline=True)
def window_weighted(x, n, c, r0, r1, s0, s1):
    """sum max(x, 0)^2 / sum max(x, 0) over the window (0 when nothing is positive)"""
    t1, t2 = window_sums(x, n, c, r0, r1, s0, s1)
    return t2 / t1 if t1 > 0 else 0.0


weighted_pool2d_fwd_cpu, weighted_pool2d_fwd_cuda = window_map("weighted_pool2d_fwd",
                                                               window_weighted)


@jit
def weighted_pool2d_bwd_kernel_cpu(dy, x, ph, pw, sh, sw, pt, pl, dx):
    """dx = weighted_pixel_grad at every pixel"""
    for n in range(dx.shape[0]):
        for c in range(dx.shape[1]):
            for r in range(dx.shape[2]):
                for s in range(dx.shape[3]):
                    dx[n, c, r, s] = weighted_pixel_grad(dy, x, n, c, r, s, ph, pw, sh, sw,
                                                         pt, pl)


def weighted_pool2d_bwd_cpu(dy, x, pool, strides, padding, dx):
    """dx = sum over windows of dy * d(weighted average)/dx"""
    weighted_pool2d_bwd_kernel_cpu(dy, x, *pool_geometry(x, pool, strides, padding), dx)


@cuda_kernel
def _weighted_pool2d_bwd(dy, x, ph, pw, sh, sw, pt, pl, dx):
    """dx = weighted_pixel_grad at every pixel (one thread per input element)"""
    for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, r, s = unravel4(t, dx)
        dx[n, c, r, s] = weighted_pixel_grad(dy, x, n, c, r, s, ph, pw, sh, sw, pt, pl)


def weighted_pool2d_bwd_cuda(dy, x, pool, strides, padding, dx):
    """Launch _weighted_pool2d_bwd (grid-stride over the inputs)."""
    _weighted_pool2d_bwd[config.grid_1d(dx.size)](dy, x, *pool_geometry(x, pool, strides, padding),
                                                  dx)


def stochastic_pool2d_inference_reference(x, pool=(2, 2), strides=(2, 2), padding="valid"):
    out = None
    for oh, ow, p, q, rows, cols in pool_windows(x, pool, strides, padding):
        if out is None:
            out = np.zeros(x.shape[:2] + (oh, ow), x.dtype)
        a = np.maximum(x[:, :, rows, cols].astype(np.float64), 0.0)
        s1, s2 = a.sum(axis=(2, 3)), (a * a).sum(axis=(2, 3))
        out[:, :, p, q] = np.where(s1 > 0, s2 / np.where(s1 > 0, s1, 1.0), 0.0)
    return (out,)


register(Op(
    name="stochastic_pool2d_inference", inputs=("x",), saves=("x",),
    shape=pool_shape("stochastic_pool2d_inference"),
    attrs={"pool": (2, 2), "strides": (2, 2), "padding": "valid"},
    forward=weighted_pool2d_fwd_cpu, backward=weighted_pool2d_bwd_cpu,
    cuda_forward=weighted_pool2d_fwd_cuda, cuda_backward=weighted_pool2d_bwd_cuda,
    sample=_stochastic_sample, reference=stochastic_pool2d_inference_reference,
))
