"""Adaptive pooling on NCHW images: adaptive_max_pool2d and adaptive_avg_pool2d pool any
image size to a fixed ``size = (out_h, out_w)`` (spatial pyramid pooling's levels).

Output row ``p`` covers input rows ``[floor(p H / out_h), ceil((p + 1) H / out_h))``, as
PyTorch's adaptive pooling defines its bins (neighbouring bins may share a row when
``out_h`` does not divide ``H``; with ``out_h > H`` rows repeat); columns likewise.
adaptive_max_pool2d records the first maximum of each bin (row-major), as max_pool2d does,
and sends the gradient there; adaptive_avg_pool2d shares it equally among the bin's pixels.
The backward kernels compute each input pixel's gradient from the few bins that hold it
(one thread per pixel on CUDA: no atomics), on both devices through one formula.
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.conv import unravel4
from dlrun.ops.pool import window_max, window_mean
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


def _adaptive_shape(name: str, positions: bool):
    def shape(x: Spec, size=(1, 1)) -> list:
        check_float(name, x=x)
        if len(x.shape) != 4:
            raise OpError(f"{name} needs images (batch, channels, height, width); got "
                          f"{x.shape}")
        if len(size) != 2 or min(size) < 1:
            raise OpError(f"{name}: size must be two positive integers, got {tuple(size)}")
        out = [Spec(x.shape[:2] + tuple(size), x.dtype)]
        return out + ([Spec(out[0].shape, np.int64)] if positions else [])
    return shape


@config.formula
def bin_span(p, out, size):
    """(lo, hi): bin p of out adaptive bins over [0, size) covers [floor(p size / out),
    ceil((p + 1) size / out))"""
    return (p * size) // out, ((p + 1) * size + out - 1) // out


@config.formula
def adaptive_pixel_grad(dy, at, is_max, n, c, r, s, h, wd):
    """dx[n, c, r, s]: the sum over the bins holding pixel (r, s) of their dy, sent whole to
    the bin's recorded maximum (``is_max``) or shared among its pixels (``at`` unread). The
    first bin holding row r is floor(r out_h / H); later ones start at or before r."""
    acc = 0.0
    oh = dy.shape[2]
    ow = dy.shape[3]
    for p in range(r * oh // h, oh):
        r0, r1 = bin_span(p, oh, h)
        if r0 > r:
            break
        for q in range(s * ow // wd, ow):
            s0, s1 = bin_span(q, ow, wd)
            if s0 > s:
                break
            if is_max:
                if at[n, c, p, q] == r * wd + s:
                    acc += dy[n, c, p, q]
            else:
                acc += dy[n, c, p, q] / ((r1 - r0) * (s1 - s0))
    return acc


@jit
def adaptive_pool2d_bwd_kernel_cpu(dy, at, is_max, dx):
    """dx = adaptive_pixel_grad at every pixel"""
    for n in range(dx.shape[0]):
        for c in range(dx.shape[1]):
            for r in range(dx.shape[2]):
                for s in range(dx.shape[3]):
                    dx[n, c, r, s] = adaptive_pixel_grad(dy, at, is_max, n, c, r, s,
                                                         dx.shape[2], dx.shape[3])


@cuda_kernel
def _adaptive_pool2d_bwd(dy, at, is_max, dx):
    """dx = adaptive_pixel_grad at every pixel (one thread per input element)"""
    for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, r, s = unravel4(t, dx)
        dx[n, c, r, s] = adaptive_pixel_grad(dy, at, is_max, n, c, r, s, dx.shape[2],
                                             dx.shape[3])


@config.formula(inline=True)
def pool_bin(x, is_max, n, c, p, q, y, at):
    """y[n, c, p, q] = the max (and at = r * width + s of its first maximum) or the mean
    of bin (p, q)"""
    r0, r1 = bin_span(p, y.shape[2], x.shape[2])
    s0, s1 = bin_span(q, y.shape[3], x.shape[3])
    if is_max:
        y[n, c, p, q], at[n, c, p, q] = window_max(x, n, c, r0, r1, s0, s1)
    else:
        y[n, c, p, q] = window_mean(x, n, c, r0, r1, s0, s1)


@jit
def adaptive_pool2d_fwd_kernel_cpu(x, is_max, y, at):
    """y = max (at = its position) or mean over each bin"""
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for p in range(y.shape[2]):
                for q in range(y.shape[3]):
                    pool_bin(x, is_max, n, c, p, q, y, at)


@cuda_kernel
def _adaptive_pool2d_fwd(x, is_max, y, at):
    """y = max (at = its position) or mean over each bin"""
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, c, p, q = unravel4(t, y)
        pool_bin(x, is_max, n, c, p, q, y, at)


# -- adaptive_max_pool2d -----------------------------------------------------------------------
def adaptive_max_pool2d_fwd_cpu(x, size, y, at):
    """y = max over each adaptive bin ; at = position of the first maximum in its image"""
    adaptive_pool2d_fwd_kernel_cpu(x, True, y, at)


def adaptive_max_pool2d_fwd_cuda(x, size, y, at):
    """Launch _adaptive_pool2d_fwd (grid-stride over the outputs)."""
    _adaptive_pool2d_fwd[config.grid_1d(y.size)](x, True, y, at)


def adaptive_max_pool2d_bwd_cpu(dy, at, size, dx):
    """dx = each bin's dy sent to its recorded maximum"""
    adaptive_pool2d_bwd_kernel_cpu(dy, at, True, dx)


def adaptive_max_pool2d_bwd_cuda(dy, at, size, dx):
    """Launch _adaptive_pool2d_bwd (one thread per input element)."""
    _adaptive_pool2d_bwd[config.grid_1d(dx.size)](dy, at, True, dx)


def _bins(x, size):
    """(p, q, rows, cols) of every bin, in numpy (the references)."""
    h, w = x.shape[2:]
    for p in range(size[0]):
        rows = slice(p * h // size[0], -(-(p + 1) * h // size[0]))
        for q in range(size[1]):
            yield p, q, rows, slice(q * w // size[1], -(-(q + 1) * w // size[1]))


def adaptive_max_pool2d_reference(x, size=(1, 1)):
    y = np.zeros(x.shape[:2] + tuple(size), x.dtype)
    at = np.zeros(y.shape, np.int64)
    for p, q, rows, cols in _bins(x, size):
        win = x[:, :, rows, cols].reshape(x.shape[0], x.shape[1], -1)
        k = win.argmax(axis=2)                    # numpy's argmax: the first maximum
        width = cols.stop - cols.start
        y[:, :, p, q] = win.max(axis=2)
        at[:, :, p, q] = (rows.start + k // width) * x.shape[3] + cols.start + k % width
    return y, at


def _adaptive_sample(size):
    def sample(rng, dtype):
        # 5x7 into bins that share rows and columns; distinct values, so no ties
        x = rng.permutation(2 * 3 * 5 * 7).reshape(2, 3, 5, 7).astype(dtype) / 10.0
        return (x,), {"size": size}
    return sample


register(Op(
    name="adaptive_max_pool2d", inputs=("x",), outputs=("y", "at"),
    shape=_adaptive_shape("adaptive_max_pool2d", True), saves=("at",),
    attrs={"size": (1, 1)},
    forward=adaptive_max_pool2d_fwd_cpu, backward=adaptive_max_pool2d_bwd_cpu,
    cuda_forward=adaptive_max_pool2d_fwd_cuda, cuda_backward=adaptive_max_pool2d_bwd_cuda,
    sample=_adaptive_sample((3, 4)), big_sample=_adaptive_sample((6, 9)),
    reference=adaptive_max_pool2d_reference,
))


# -- adaptive_avg_pool2d -----------------------------------------------------------------------
def adaptive_avg_pool2d_fwd_cpu(x, size, y):
    """y = mean over each adaptive bin"""
    adaptive_pool2d_fwd_kernel_cpu(x, False, y, y)   # y stands in for the unwritten at


def adaptive_avg_pool2d_fwd_cuda(x, size, y):
    """Launch _adaptive_pool2d_fwd (grid-stride over the outputs; y stands in for at)."""
    _adaptive_pool2d_fwd[config.grid_1d(y.size)](x, False, y, y)


def adaptive_avg_pool2d_bwd_cpu(dy, size, dx):
    """dx = each bin's dy shared equally among its pixels"""
    adaptive_pool2d_bwd_kernel_cpu(dy, dy, False, dx)


def adaptive_avg_pool2d_bwd_cuda(dy, size, dx):
    """Launch _adaptive_pool2d_bwd (one thread per input element; dy stands in for the
    unread positions)."""
    _adaptive_pool2d_bwd[config.grid_1d(dx.size)](dy, dy, False, dx)


def adaptive_avg_pool2d_reference(x, size=(1, 1)):
    y = np.zeros(x.shape[:2] + tuple(size), x.dtype)
    for p, q, rows, cols in _bins(x, size):
        y[:, :, p, q] = x[:, :, rows, cols].mean(axis=(2, 3))
    return (y,)


register(Op(
    name="adaptive_avg_pool2d", inputs=("x",),
    shape=_adaptive_shape("adaptive_avg_pool2d", False), attrs={"size": (1, 1)},
    forward=adaptive_avg_pool2d_fwd_cpu, backward=adaptive_avg_pool2d_bwd_cpu,
    cuda_forward=adaptive_avg_pool2d_fwd_cuda, cuda_backward=adaptive_avg_pool2d_bwd_cuda,
    sample=_adaptive_sample((3, 4)), big_sample=_adaptive_sample((6, 9)),
    reference=adaptive_avg_pool2d_reference,
))
