"""Pooling on NCHW images: max_pool2d, avg_pool2d and global_avg_pool2d.

Windows follow Keras/TensorFlow (:func:`dlrun.ops.conv.window_geometry`); with ``same``
padding, padded positions take no part (a max ignores them, an average divides by the
number of real pixels in the window). max_pool2d records, per output, the position of the
first maximum in its window (row-major order) as an auxiliary output, so ties send the
whole gradient to that one input.
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.conv import (check_window_attrs, tap_source, unravel4, window_geometry,
                            window_span)
from dlrun.ops.elementwise import instantiate
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


def pool_shape(name: str, positions: bool = False):
    """The shape rule of a windowed pooling op: the pooled images, and with ``positions`` an
    int64 array like them (where each window's value came from)."""
    def shape(x: Spec, pool=(2, 2), strides=(2, 2), padding="valid") -> list:
        check_float(name, x=x)
        if len(x.shape) != 4:
            raise OpError(f"{name} needs images (batch, channels, height, width); got "
                          f"{x.shape}")
        check_window_attrs(name, pool, strides, padding)
        oh, _ = window_geometry(x.shape[2], pool[0], strides[0], padding)
        ow, _ = window_geometry(x.shape[3], pool[1], strides[1], padding)
        if oh < 1 or ow < 1:
            raise OpError(f"{name}: a {pool[0]}x{pool[1]} window does not fit images of "
                          f"{x.shape[2]}x{x.shape[3]} with padding 'valid'")
        out = [Spec(x.shape[:2] + (oh, ow), x.dtype)]
        return out + ([Spec(out[0].shape, np.int64)] if positions else [])
    return shape


def pool_geometry(x, pool, strides, padding):
    """(ph, pw, sh, sw, pt, pl) for the kernels."""
    _, pt = window_geometry(x.shape[2], pool[0], strides[0], padding)
    _, pl = window_geometry(x.shape[3], pool[1], strides[1], padding)
    return pool[0], pool[1], strides[0], strides[1], pt, pl


# -- per window, shared by both devices ------------------------------------------------------
@config.formula(inline=True)
def window_max(x, n, c, r0, r1, s0, s1):
    """(max, r * width + s of its first position) over x[n, c, r0:r1, s0:s1]"""
    best = x[n, c, r0, s0]
    where = r0 * x.shape[3] + s0
    for r in range(r0, r1):
        for s in range(s0, s1):
            if x[n, c, r, s] > best:
                best = x[n, c, r, s]
                where = r * x.shape[3] + s
    return best, where


@config.formula(inline=True)
def window_mean(x, n, c, r0, r1, s0, s1):
    """mean of x[n, c, r0:r1, s0:s1]"""
    acc = 0.0
    for r in range(r0, r1):
        for s in range(s0, s1):
            acc += x[n, c, r, s]
    return acc / ((r1 - r0) * (s1 - s0))


@config.formula
def pixel_grad(dy, at, is_max, n, c, r, s, ph, pw, sh, sw, pt, pl, h, wd):
    """dx[n, c, r, s]: the sum over the windows holding pixel (r, s) of their dy, sent
    whole to the pixel that was the window's maximum (``is_max``: ``at`` holds each
    window's), or shared equally among the window's real pixels (``at`` unread)"""
    acc = 0.0
    for i in range(ph):
        p = tap_source(r, pt, i, sh, dy.shape[2])
        if p < 0:
            continue
        r0, r1 = window_span(p, sh, pt, ph, h)
        for j in range(pw):
            q = tap_source(s, pl, j, sw, dy.shape[3])
            if q < 0:
                continue
            if is_max:
                if at[n, c, p, q] == r * wd + s:
                    acc += dy[n, c, p, q]
            else:
                s0, s1 = window_span(q, sw, pl, pw, wd)
                acc += dy[n, c, p, q] / ((r1 - r0) * (s1 - s0))
    return acc


@cuda_kernel
def _pool2d_bwd(dy, at, is_max, ph, pw, sh, sw, pt, pl, dx):
    """dx = pixel_grad at every pixel (one thread per input element: no atomics)"""
    for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, r, s = unravel4(t, dx)
        dx[n, c, r, s] = pixel_grad(dy, at, is_max, n, c, r, s, ph, pw, sh, sw, pt, pl,
                                    dx.shape[2], dx.shape[3])


# -- max_pool2d --------------------------------------------------------------------------
@jit
def max_pool2d_kernel_cpu(x, ph, pw, sh, sw, pt, pl, y, at):
    """y = max over the window ; at = r * width + s of its first maximum"""
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for p in range(y.shape[2]):
                r0, r1 = window_span(p, sh, pt, ph, x.shape[2])
                for q in range(y.shape[3]):
                    s0, s1 = window_span(q, sw, pl, pw, x.shape[3])
                    y[n, c, p, q], at[n, c, p, q] = window_max(x, n, c, r0, r1, s0, s1)


@jit
def max_pool2x2_kernel_cpu(x, sh, sw, y, at):
    """max_pool2d_kernel_cpu for 2x2 windows that all lie inside the image, unrolled (the
    general kernel's two-long inner loops cost 4x more than the comparisons)"""
    wd = x.shape[3]
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for p in range(y.shape[2]):
                r = p * sh
                for q in range(y.shape[3]):
                    s = q * sw
                    best = x[n, c, r, s]
                    where = r * wd + s
                    if x[n, c, r, s + 1] > best:
                        best = x[n, c, r, s + 1]
                        where = r * wd + s + 1
                    if x[n, c, r + 1, s] > best:
                        best = x[n, c, r + 1, s]
                        where = (r + 1) * wd + s
                    if x[n, c, r + 1, s + 1] > best:
                        best = x[n, c, r + 1, s + 1]
                        where = (r + 1) * wd + s + 1
                    y[n, c, p, q] = best
                    at[n, c, p, q] = where


def max_pool2d_fwd_cpu(x, pool, strides, padding, y, at):
    """y = max over each window ; at = flat position (in its image) of the first maximum"""
    ph, pw, sh, sw, pt, pl = pool_geometry(x, pool, strides, padding)
    inside = (pt == pl == 0 and (y.shape[2] - 1) * sh + ph <= x.shape[2]
              and (y.shape[3] - 1) * sw + pw <= x.shape[3])
    if (ph, pw) == (2, 2) and inside:
        max_pool2x2_kernel_cpu(x, sh, sw, y, at)
    else:
        max_pool2d_kernel_cpu(x, ph, pw, sh, sw, pt, pl, y, at)


@cuda_kernel
def _max_pool2d_fwd(x, ph, pw, sh, sw, pt, pl, y, at):
    """y = max over the window ; at = r * width + s of its first maximum"""
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, c, p, q = unravel4(t, y)
        r0, r1 = window_span(p, sh, pt, ph, x.shape[2])
        s0, s1 = window_span(q, sw, pl, pw, x.shape[3])
        y[n, c, p, q], at[n, c, p, q] = window_max(x, n, c, r0, r1, s0, s1)


def max_pool2d_fwd_cuda(x, pool, strides, padding, y, at):
    """Launch _max_pool2d_fwd (grid-stride over the outputs)."""
    _max_pool2d_fwd[config.grid_1d(y.size)](x, *pool_geometry(x, pool, strides, padding), y, at)


@jit
def max_pool2d_bwd_cpu_kernel(dy, at, dx):
    """dx[n, c].flat[at] += dy where at >= 0  (dx zeroed first; overlapping windows add
    up; a window that picked nothing, as stochastic pooling's all-zero ones, is -1)"""
    dxf = dx.reshape(-1)
    for k in range(dxf.size):
        dxf[k] = 0.0
    plane = dx.shape[2] * dx.shape[3]
    dy3 = dy.reshape(dy.shape[0] * dy.shape[1], dy.shape[2] * dy.shape[3])
    at3 = at.reshape(dy3.shape)
    for m in range(dy3.shape[0]):
        for k in range(dy3.shape[1]):
            if at3[m, k] >= 0:
                dxf[m * plane + at3[m, k]] += dy3[m, k]


def max_pool2d_bwd_cpu(dy, at, pool, strides, padding, dx):
    """dx = dy sent to the recorded first maximum of each window"""
    max_pool2d_bwd_cpu_kernel(dy, at, dx)


def max_pool2d_bwd_cuda(dy, at, pool, strides, padding, dx):
    """Launch _pool2d_bwd (one thread per input element: no atomics)."""
    _pool2d_bwd[config.grid_1d(dx.size)](dy, at, True, *pool_geometry(dx, pool, strides, padding),
                                         dx)


def pool_windows(x, pool, strides, padding):
    """(output rows, output cols, rows of window (p, q), cols of window (p, q)) in numpy."""
    oh, pt = window_geometry(x.shape[2], pool[0], strides[0], padding)
    ow, pl = window_geometry(x.shape[3], pool[1], strides[1], padding)
    for p in range(oh):
        r0, r1 = max(p * strides[0] - pt, 0), min(p * strides[0] - pt + pool[0], x.shape[2])
        for q in range(ow):
            s0, s1 = max(q * strides[1] - pl, 0), min(q * strides[1] - pl + pool[1],
                                                      x.shape[3])
            yield oh, ow, p, q, slice(r0, r1), slice(s0, s1)


def max_pool2d_reference(x, pool=(2, 2), strides=(2, 2), padding="valid"):
    out = at = None
    for oh, ow, p, q, rows, cols in pool_windows(x, pool, strides, padding):
        if out is None:
            out = np.zeros(x.shape[:2] + (oh, ow), x.dtype)
            at = np.zeros(out.shape, np.int64)
        win = x[:, :, rows, cols].reshape(x.shape[0], x.shape[1], -1)
        k = win.argmax(axis=2)                    # numpy's argmax: the first maximum
        width = cols.stop - cols.start
        out[:, :, p, q] = win.max(axis=2)
        at[:, :, p, q] = (rows.start + k // width) * x.shape[3] + cols.start + k % width
    return out, at


def pool_sample(rng, dtype):
    # overlapping windows (3 wide, stride 2) and padding; distinct values, so no ties
    x = rng.permutation(2 * 3 * 5 * 6).reshape(2, 3, 5, 6).astype(dtype) / 10.0
    return (x,), {"pool": (3, 2), "strides": (2, 2), "padding": "same"}


register(Op(
    name="max_pool2d", inputs=("x",), outputs=("y", "at"),
    shape=pool_shape("max_pool2d", positions=True), saves=("at",),
    attrs={"pool": (2, 2), "strides": (2, 2), "padding": "valid"},
    forward=max_pool2d_fwd_cpu, backward=max_pool2d_bwd_cpu,
    cuda_forward=max_pool2d_fwd_cuda, cuda_backward=max_pool2d_bwd_cuda,
    sample=pool_sample, reference=max_pool2d_reference,
))


# -- avg_pool2d --------------------------------------------------------------------------
# -- kernels that write one formula of each window: avg_pool2d's forward, and others' -------
# The window formula an instantiated kernel applies (the templates' module holds it as
# None; :func:`window_map` fills it in).
_window = None


def _window_map_cpu(x, ph, pw, sh, sw, pt, pl, y):
    """y[n, c, p, q] = _window over window (p, q) of x[n, c]"""
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for p in range(y.shape[2]):
                r0, r1 = window_span(p, sh, pt, ph, x.shape[2])
                for q in range(y.shape[3]):
                    s0, s1 = window_span(q, sw, pl, pw, x.shape[3])
                    y[n, c, p, q] = _window(x, n, c, r0, r1, s0, s1)


def _window_map_cuda(x, ph, pw, sh, sw, pt, pl, y):
    """y[n, c, p, q] = _window over window (p, q) of x[n, c], grid-stride over y"""
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, c, p, q = unravel4(t, y)
        r0, r1 = window_span(p, sh, pt, ph, x.shape[2])
        s0, s1 = window_span(q, sw, pl, pw, x.shape[3])
        y[n, c, p, q] = _window(x, n, c, r0, r1, s0, s1)


def window_map(name: str, formula) -> tuple:
    """(cpu, cuda) forwards ``f(x, pool, strides, padding, y)`` that write ``formula(x, n,
    c, r0, r1, s0, s1)`` of every window into ``y``: kernels made from the templates above
    (compiled and cached under the formula's own file)."""
    on_cpu = instantiate(_window_map_cpu, f"{name}_kernel_cpu", formula, "cpu",
                         _window=formula)
    on_gpu = instantiate(_window_map_cuda, f"_{name}", formula, "cuda", _window=formula)

    def cpu(x, pool, strides, padding, y):
        on_cpu(x, *pool_geometry(x, pool, strides, padding), y)

    def gpu(x, pool, strides, padding, y):
        on_gpu[config.grid_1d(y.size)](x, *pool_geometry(x, pool, strides, padding), y)

    cpu.__name__, gpu.__name__ = f"{name}_cpu", f"{name}_cuda"
    cpu.__doc__ = gpu.__doc__ = f"y[n, c, p, q] = the {formula.__doc__}, window (p, q)"
    return cpu, gpu


avg_pool2d_fwd_cpu, avg_pool2d_fwd_cuda = window_map("avg_pool2d_fwd", window_mean)


@jit
def avg_pool2d_bwd_kernel_cpu(dy, ph, pw, sh, sw, pt, pl, dx):
    """dx[r, s] = sum over windows holding (r, s) of dy / (pixels in that window)"""
    nb, ch, h, wd = dx.shape
    dxf = dx.reshape(-1)
    for k in range(dxf.size):
        dxf[k] = 0.0
    for n in range(nb):
        for c in range(ch):
            for p in range(dy.shape[2]):
                r0, r1 = window_span(p, sh, pt, ph, h)
                for q in range(dy.shape[3]):
                    s0, s1 = window_span(q, sw, pl, pw, wd)
                    g = dy[n, c, p, q] / ((r1 - r0) * (s1 - s0))
                    for r in range(r0, r1):
                        for s in range(s0, s1):
                            dx[n, c, r, s] += g


def avg_pool2d_bwd_cpu(dy, pool, strides, padding, dx):
    """dx = each window's dy shared equally among its real pixels"""
    avg_pool2d_bwd_kernel_cpu(dy, *pool_geometry(dx, pool, strides, padding), dx)


def avg_pool2d_bwd_cuda(dy, pool, strides, padding, dx):
    """Launch _pool2d_bwd (one thread per input element; no argmax: dy stands in, unread)."""
    _pool2d_bwd[config.grid_1d(dx.size)](dy, dy, False, *pool_geometry(dx, pool, strides, padding),
                                         dx)


def avg_pool2d_reference(x, pool=(2, 2), strides=(2, 2), padding="valid"):
    out = None
    for oh, ow, p, q, rows, cols in pool_windows(x, pool, strides, padding):
        if out is None:
            out = np.zeros(x.shape[:2] + (oh, ow), x.dtype)
        out[:, :, p, q] = x[:, :, rows, cols].mean(axis=(2, 3))
    return (out,)


register(Op(
    name="avg_pool2d", inputs=("x",), shape=pool_shape("avg_pool2d"),
    attrs={"pool": (2, 2), "strides": (2, 2), "padding": "valid"},
    forward=avg_pool2d_fwd_cpu, backward=avg_pool2d_bwd_cpu,
    cuda_forward=avg_pool2d_fwd_cuda, cuda_backward=avg_pool2d_bwd_cuda,
    sample=pool_sample, reference=avg_pool2d_reference,
))


# -- global_avg_pool2d -------------------------------------------------------------------
def _global_pool_shape(x: Spec) -> list:
    check_float("global_avg_pool2d", x=x)
    if len(x.shape) != 4:
        raise OpError(f"global_avg_pool2d needs images (batch, channels, height, width); "
                      f"got {x.shape}")
    return [Spec(x.shape[:2], x.dtype)]


@jit
def global_avg_pool2d_fwd_cpu(x, y):
    """y[n, c] = mean_{r,s} x[n, c, r, s]"""
    plane = x.shape[2] * x.shape[3]
    x2 = x.reshape(x.shape[0] * x.shape[1], plane)
    yf = y.reshape(-1)
    for m in range(x2.shape[0]):
        acc = 0.0
        for k in range(plane):
            acc += x2[m, k]
        yf[m] = acc / plane


@cuda_kernel
def _global_avg_pool2d_fwd(x, y):
    """y[n, c] = mean_{r,s} x[n, c, r, s]  (one thread per (n, c))"""
    plane = x.shape[2] * x.shape[3]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for m in range(cuda.grid(1), yf.size, cuda.gridsize(1)):
        acc = y.dtype.type(0)
        for k in range(plane):
            acc += xf[m * plane + k]
        yf[m] = acc / plane


def global_avg_pool2d_fwd_cuda(x, y):
    """Launch _global_avg_pool2d_fwd (grid-stride over (n, c))."""
    _global_avg_pool2d_fwd[config.grid_1d(y.size)](x, y)


@jit
def global_avg_pool2d_bwd_cpu(dy, dx):
    """dx[n, c, r, s] = dy[n, c] / (height * width)"""
    plane = dx.shape[2] * dx.shape[3]
    dx2 = dx.reshape(dx.shape[0] * dx.shape[1], plane)
    dyf = dy.reshape(-1)
    for m in range(dx2.shape[0]):
        g = dyf[m] / plane
        for k in range(plane):
            dx2[m, k] = g


@cuda_kernel
def _global_avg_pool2d_bwd(dy, dx):
    """dx[n, c, r, s] = dy[n, c] / (height * width)"""
    plane = dx.shape[2] * dx.shape[3]
    dxf = dx.reshape(-1)
    dyf = dy.reshape(-1)
    for i in range(cuda.grid(1), dxf.size, cuda.gridsize(1)):
        dxf[i] = dyf[i // plane] / plane


def global_avg_pool2d_bwd_cuda(dy, dx):
    """Launch _global_avg_pool2d_bwd (grid-stride)."""
    _global_avg_pool2d_bwd[config.grid_1d(dx.size)](dy, dx)


register(Op(
    name="global_avg_pool2d", inputs=("x",), shape=_global_pool_shape,
    forward=global_avg_pool2d_fwd_cpu, backward=global_avg_pool2d_bwd_cpu,
    cuda_forward=global_avg_pool2d_fwd_cuda, cuda_backward=global_avg_pool2d_bwd_cuda,
    sample=lambda rng, dt: ((rng.standard_normal((2, 3, 4, 5)).astype(dt),), {}),
    reference=lambda x: (x.mean(axis=(2, 3)),),
))
