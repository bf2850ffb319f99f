"""Ops along axes: the sum, mean and maximum along one axis (``reduce_sum``,
``reduce_mean``, ``reduce_max``), and ``broadcast_to`` a larger shape (numpy's rules).
They are what ``dlrun.backend``'s ``K.sum(x, axis)``, ``K.mean``, ``K.max`` and arithmetic
between tensors of different shapes are made of.

A reduction sees its input as ``(outer, n, inner)``, ``n`` the length of the axis it
reduces: output element ``k = o * inner + i`` reduces the column ``x[o, :, i]``. A CPU loop
iteration and a CUDA thread each own one column (and in the backward, the gradient of one
element), which they sum in float64 in a fixed order: both devices give the same result at
every run. ``broadcast_to``'s backward likewise sums, for each input element, the
gradients of the output elements it was copied to, in one thread.
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


# -- shape rules ---------------------------------------------------------------------------
def _axis_shape(name):
    def shape(x: Spec, axis: int = -1) -> list:
        check_float(name, x=x)
        if len(x.shape) < 2:
            raise OpError(f"{name} reduces one axis of an array of 2 axes or more; got "
                          f"shape {x.shape} (reduce a vector with 'sum' or 'mean')")
        if not -len(x.shape) <= axis < len(x.shape):
            raise OpError(f"{name}: axis {axis} is out of range for shape {x.shape}")
        if x.shape[axis] < 1:
            raise OpError(f"{name}: axis {axis} of shape {x.shape} is empty")
        a = axis % len(x.shape)
        return [Spec(x.shape[:a] + x.shape[a + 1:], x.dtype)]
    return shape


def broadcast_shape(source: tuple, target: tuple) -> tuple | None:
    """``target`` when numpy broadcasts ``source`` to it (each axis of ``source``, aligned at
    the right, is 1 or equal), else None."""
    if len(source) > len(target):
        return None
    tail = target[len(target) - len(source):]
    if any(s not in (1, t) for s, t in zip(source, tail)):
        return None
    return tuple(target)


def _broadcast_shape(x: Spec, shape: tuple = ()) -> list:
    check_float("broadcast_to", x=x)
    shape = tuple(int(d) for d in shape)
    if broadcast_shape(x.shape, shape) is None:
        raise OpError(f"cannot broadcast an array of shape {x.shape} to {shape}: each axis "
                      "(aligned at the right) must be 1 or equal")
    return [Spec(shape, x.dtype)]


# -- the formulas both devices share -------------------------------------------------------
@config.formula
def _split(shape, axis):
    """(n, inner): the length of ``axis`` and the size of the axes after it"""
    a = axis if axis >= 0 else axis + len(shape)
    inner = 1
    for d in range(a + 1, len(shape)):
        inner *= shape[d]
    return shape[a], inner


@config.formula
def _column_start(k, n, inner):
    """the flat index of x[o, 0, i] for output element k = o * inner + i"""
    o = k // inner
    return o * n * inner + (k - o * inner)


@config.formula
def _column_sum(xf, k, n, inner):
    """sum_j x[o, j, i] (float64)"""
    s = _column_start(k, n, inner)
    total = 0.0
    for j in range(n):
        total += xf[s + j * inner]
    return total


@config.formula
def _column_argmax(xf, k, n, inner):
    """the flat index of the first largest x[o, j, i]"""
    s = _column_start(k, n, inner)
    at = s
    for j in range(1, n):
        if xf[s + j * inner] > xf[at]:
            at = s + j * inner
    return at


@config.formula
def _output_of(e, n, inner):
    """the output element k = o * inner + i that x's flat element e = (o, j, i) goes to"""
    o = e // (n * inner)
    return o * inner + e % inner


@config.formula
def _column_max_grad(dyf, xf, dxf, k, n, inner):
    """dx[o, :, i] = dy[k] at the column's first maximum, 0 elsewhere"""
    s = _column_start(k, n, inner)
    at = _column_argmax(xf, k, n, inner)
    for j in range(n):
        dxf[s + j * inner] = dyf[k] if s + j * inner == at else 0.0


# -- reduce_sum, reduce_mean ---------------------------------------------------------------
@jit
def _sum_along_cpu(x, axis, divide, y):
    """y[o, i] = sum_j x[o, j, i] (/ n when ``divide``)"""
    n, inner = _split(x.shape, axis)
    xf, yf = x.reshape(-1), y.reshape(-1)
    for k in range(yf.size):
        total = _column_sum(xf, k, n, inner)
        yf[k] = total / n if divide else total


@cuda_kernel
def _sum_along_cuda(x, axis, divide, y):
    """y[o, i] = sum_j x[o, j, i] (/ n when ``divide``), a thread per output element"""
    n, inner = _split(x.shape, axis)
    xf, yf = x.reshape(-1), y.reshape(-1)
    for k in range(cuda.grid(1), yf.size, cuda.gridsize(1)):
        total = _column_sum(xf, k, n, inner)
        yf[k] = total / n if divide else total


@jit
def _spread_cpu(dy, axis, divide, dx):
    """dx[o, j, i] = dy[o, i] (/ n when ``divide``)"""
    n, inner = _split(dx.shape, axis)
    dyf, dxf = dy.reshape(-1), dx.reshape(-1)
    for e in range(dxf.size):
        g = dyf[_output_of(e, n, inner)]
        dxf[e] = g / n if divide else g


@cuda_kernel
def _spread_cuda(dy, axis, divide, dx):
    """dx[o, j, i] = dy[o, i] (/ n when ``divide``), grid-stride"""
    n, inner = _split(dx.shape, axis)
    dyf, dxf = dy.reshape(-1), dx.reshape(-1)
    for e in range(cuda.grid(1), dxf.size, cuda.gridsize(1)):
        g = dyf[_output_of(e, n, inner)]
        dxf[e] = g / n if divide else g


def reduce_sum_fwd_cpu(x, axis, y):
    """y = x.sum(axis)"""
    _sum_along_cpu(x, axis, False, y)


def reduce_sum_bwd_cpu(dy, axis, dx):
    """dx = dy repeated along axis"""
    _spread_cpu(dy, axis, False, dx)


def reduce_mean_fwd_cpu(x, axis, y):
    """y = x.mean(axis)"""
    _sum_along_cpu(x, axis, True, y)


def reduce_mean_bwd_cpu(dy, axis, dx):
    """dx = dy / n repeated along axis"""
    _spread_cpu(dy, axis, True, dx)


def reduce_sum_fwd_cuda(x, axis, y):
    """Launch _sum_along_cuda (a thread per output element)."""
    _sum_along_cuda[config.grid_1d(y.size)](x, axis, False, y)


def reduce_sum_bwd_cuda(dy, axis, dx):
    """Launch _spread_cuda (grid-stride over dx)."""
    _spread_cuda[config.grid_1d(dx.size)](dy, axis, False, dx)


def reduce_mean_fwd_cuda(x, axis, y):
    """Launch _sum_along_cuda (a thread per output element)."""
    _sum_along_cuda[config.grid_1d(y.size)](x, axis, True, y)


def reduce_mean_bwd_cuda(dy, axis, dx):
    """Launch _spread_cuda (grid-stride over dx)."""
    _spread_cuda[config.grid_1d(dx.size)](dy, axis, True, dx)


# -- reduce_max -----------------------------------------------------------------------------
@jit
def reduce_max_fwd_cpu(x, axis, y):
    """y[o, i] = max_j x[o, j, i]"""
    n, inner = _split(x.shape, axis)
    xf, yf = x.reshape(-1), y.reshape(-1)
    for k in range(yf.size):
        yf[k] = xf[_column_argmax(xf, k, n, inner)]


@cuda_kernel
def _reduce_max_fwd(x, axis, y):
    """y[o, i] = max_j x[o, j, i], a thread per output element"""
    n, inner = _split(x.shape, axis)
    xf, yf = x.reshape(-1), y.reshape(-1)
    for k in range(cuda.grid(1), yf.size, cuda.gridsize(1)):
        yf[k] = xf[_column_argmax(xf, k, n, inner)]


def reduce_max_fwd_cuda(x, axis, y):
    """Launch _reduce_max_fwd (a thread per output element)."""
    _reduce_max_fwd[config.grid_1d(y.size)](x, axis, y)


@jit
def reduce_max_bwd_cpu(dy, x, axis, dx):
    """dx = dy at each column's first maximum, 0 elsewhere"""
    n, inner = _split(x.shape, axis)
    dyf, xf, dxf = dy.reshape(-1), x.reshape(-1), dx.reshape(-1)
    for k in range(dyf.size):
        _column_max_grad(dyf, xf, dxf, k, n, inner)


@cuda_kernel
def _reduce_max_bwd(dy, x, axis, dx):
    """dx = dy at each column's first maximum, 0 elsewhere; a thread per column"""
    n, inner = _split(x.shape, axis)
    dyf, xf, dxf = dy.reshape(-1), x.reshape(-1), dx.reshape(-1)
    for k in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        _column_max_grad(dyf, xf, dxf, k, n, inner)


def reduce_max_bwd_cuda(dy, x, axis, dx):
    """Launch _reduce_max_bwd (a thread per column)."""
    _reduce_max_bwd[config.grid_1d(dy.size)](dy, x, axis, dx)


def _normal(shape, axis):
    return lambda rng, dt: ((rng.standard_normal(shape).astype(dt),), {"axis": axis})


def _reduction(name, fn, forward, backward, cuda_forward, cuda_backward, saves=()):
    register(Op(
        name=name, inputs=("x",), shape=_axis_shape(name), attrs={"axis": -1}, saves=saves,
        forward=forward, backward=backward, cuda_forward=cuda_forward,
        cuda_backward=cuda_backward, sample=_normal((2, 3, 4), 1),
        big_sample=_normal((5, 7, 11), -1),
        reference=lambda x, axis: (np.asarray(fn(x, axis=axis), x.dtype),)))


_reduction("reduce_sum", np.sum, reduce_sum_fwd_cpu, reduce_sum_bwd_cpu,
           reduce_sum_fwd_cuda, reduce_sum_bwd_cuda)
_reduction("reduce_mean", np.mean, reduce_mean_fwd_cpu, reduce_mean_bwd_cpu,
           reduce_mean_fwd_cuda, reduce_mean_bwd_cuda)
_reduction("reduce_max", np.max, reduce_max_fwd_cpu, reduce_max_bwd_cpu,
           reduce_max_fwd_cuda, reduce_max_bwd_cuda, saves=("x",))


# -- broadcast_to ----------------------------------------------------------------------------
@config.formula
def _source_index(k, xshape, yshape):
    """the flat index in x of y's flat element k (x broadcast to y's shape)"""
    off = len(yshape) - len(xshape)
    idx = 0
    stride = 1
    for d in range(len(yshape) - 1, off - 1, -1):
        c = k % yshape[d]
        k //= yshape[d]
        xd = xshape[d - off]
        if xd != 1:
            idx += c * stride
        stride *= xd
    return idx


@config.formula
def _target_index(j, r, xshape, yshape):
    """the flat index in y of the r-th copy of x's flat element j: the coordinates of
    x's axes come from j, those of the axes x is broadcast along from r"""
    off = len(yshape) - len(xshape)
    idx = 0
    stride = 1
    for d in range(len(yshape) - 1, -1, -1):
        yd = yshape[d]
        xd = xshape[d - off] if d >= off else 1
        if xd == yd:
            c = j % xd
            j //= xd
        else:
            c = r % yd
            r //= yd
        idx += c * stride
        stride *= yd
    return idx


@jit
def broadcast_to_fwd_cpu(x, shape, y):
    """y[k] = x[source(k)]"""
    xf, yf = x.reshape(-1), y.reshape(-1)
    for k in range(yf.size):
        yf[k] = xf[_source_index(k, x.shape, y.shape)]


@cuda_kernel
def _broadcast_to_fwd(x, y):
    """y[k] = x[source(k)] (grid-stride)"""
    xf, yf = x.reshape(-1), y.reshape(-1)
    for k in range(cuda.grid(1), yf.size, cuda.gridsize(1)):
        yf[k] = xf[_source_index(k, x.shape, y.shape)]


def broadcast_to_fwd_cuda(x, shape, y):
    """Launch _broadcast_to_fwd (grid-stride over y)."""
    _broadcast_to_fwd[config.grid_1d(y.size)](x, y)


@jit
def broadcast_to_bwd_cpu(dy, shape, dx):
    """dx[j] = sum of dy over the copies of x[j]"""
    dyf, dxf = dy.reshape(-1), dx.reshape(-1)
    copies = dyf.size // dxf.size
    for j in range(dxf.size):
        total = 0.0
        for r in range(copies):
            total += dyf[_target_index(j, r, dx.shape, dy.shape)]
        dxf[j] = total


@cuda_kernel
def _broadcast_to_bwd(dy, dx):
    """dx[j] = sum of dy over the copies of x[j], a thread per element of dx"""
    dyf, dxf = dy.reshape(-1), dx.reshape(-1)
    copies = dyf.size // dxf.size
    for j in range(cuda.grid(1), dxf.size, cuda.gridsize(1)):
        total = 0.0
        for r in range(copies):
            total += dyf[_target_index(j, r, dx.shape, dy.shape)]
        dxf[j] = total


def broadcast_to_bwd_cuda(dy, shape, dx):
    """Launch _broadcast_to_bwd (grid-stride over dx)."""
    _broadcast_to_bwd[config.grid_1d(dx.size)](dy, dx)


def _broadcast_sample(source, target):
    return lambda rng, dt: ((rng.standard_normal(source).astype(dt),), {"shape": target})


register(Op(
    name="broadcast_to", inputs=("x",), shape=_broadcast_shape, attrs={"shape": ()},
    forward=broadcast_to_fwd_cpu, backward=broadcast_to_bwd_cpu,
    cuda_forward=broadcast_to_fwd_cuda, cuda_backward=broadcast_to_bwd_cuda,
    sample=_broadcast_sample((3, 1), (2, 3, 4)), big_sample=_broadcast_sample((11,), (9, 11)),
    reference=lambda x, shape: (np.broadcast_to(x, shape).copy(),)))
