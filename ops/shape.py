"""Shape ops: reshape (what Flatten and Reshape lower to) and concat (Concatenate)."""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.elementwise import map_twin
from dlrun.ops.registry import Op, OpError, Spec, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


def _reshape_shape(x: Spec, shape: tuple = (-1,)) -> list:
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(x.shape))
    known = int(np.prod([d for d in shape if d != -1]))
    if shape.count(-1) > 1 or (known and size % known) or (-1 not in shape and known != size):
        raise OpError(f"cannot reshape an array of shape {x.shape} into {shape}")
    out = tuple(size // known if d == -1 else d for d in shape) if known else shape
    return [Spec(out, x.dtype)]


def copy(x):
    """y.flat = x.flat"""
    return x


def _copy_sample(rng, dt):
    x = rng.standard_normal((9, 11)).astype(dt)
    return x, np.empty_like(x)


COPY = map_twin("copy", copy, ("x",), ("y",), _copy_sample, outputs=("y",))
copy_cpu, copy_cuda = COPY.cpu, COPY.cuda


def reshape_fwd_cpu(x, shape, y):
    """y = x.reshape(shape) (a copy into the engine's buffer)"""
    copy_cpu(x, y)


def reshape_fwd_cuda(x, shape, y):
    """y = x.reshape(shape), by copy_cuda"""
    copy_cuda(x, y)


def reshape_bwd_cpu(dy, shape, dx):
    """dx = dy.reshape(x.shape)"""
    copy_cpu(dy, dx)


def reshape_bwd_cuda(dy, shape, dx):
    """dx = dy.reshape(x.shape), by copy_cuda"""
    copy_cuda(dy, dx)


register(Op(
    name="reshape", inputs=("x",), shape=_reshape_shape, attrs={"shape": (-1,)},
    forward=reshape_fwd_cpu, backward=reshape_bwd_cpu,
    cuda_forward=reshape_fwd_cuda, cuda_backward=reshape_bwd_cuda,
    sample=lambda rng, dt: ((rng.standard_normal((2, 3, 4)).astype(dt),), {"shape": (2, -1)}),
    big_sample=lambda rng, dt: ((rng.standard_normal((9, 11)).astype(dt),), {"shape": (-1,)}),
    reference=lambda x, shape: (x.reshape(shape),),
))


# -- concat ------------------------------------------------------------------------------
# Two arrays joined along ``axis``. Seen as (outer, width) matrices, where ``outer`` is the
# product of the axes before ``axis`` and a width is the rest of the sizes multiplied out,
# row i of y is row i of a followed by row i of b. Concatenate layers of more inputs chain
# it.
def _concat_shape(a: Spec, b: Spec, axis: int = -1) -> list:
    if a.dtype != b.dtype:
        raise OpError(f"op 'concat' takes two arrays of one dtype, got {a.dtype} and "
                      f"{b.dtype}")
    nd = len(a.shape)
    k = axis + nd if axis < 0 else axis
    if len(b.shape) != nd or not 0 <= k < nd:
        raise OpError(f"op 'concat' cannot join arrays of shapes {a.shape} and {b.shape} "
                      f"along axis {axis}")
    if a.shape[:k] != b.shape[:k] or a.shape[k + 1:] != b.shape[k + 1:]:
        raise OpError(f"op 'concat' along axis {axis} needs every other axis to match; got "
                      f"shapes {a.shape} and {b.shape}")
    return [Spec(a.shape[:k] + (a.shape[k] + b.shape[k],) + a.shape[k + 1:], a.dtype)]


def _rows(x, axis: int):
    """``x`` seen as a matrix: one row per index of the axes before ``axis``."""
    k = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:k], dtype=np.int64)), -1)


@jit
def _join_cpu(a, b, y):
    """y[i, :wa] = a[i] ; y[i, wa:] = b[i]"""
    wa = a.shape[1]
    for i in range(y.shape[0]):
        for j in range(wa):
            y[i, j] = a[i, j]
        for j in range(b.shape[1]):
            y[i, wa + j] = b[i, j]


@jit
def _columns_cpu(dy, start, part):
    """part[i, j] = dy[i, start + j]"""
    for i in range(part.shape[0]):
        for j in range(part.shape[1]):
            part[i, j] = dy[i, start + j]


def concat_fwd_cpu(a, b, axis, y):
    """y = [a, b] along ``axis``: row i of y is row i of a then row i of b"""
    _join_cpu(_rows(a, axis), _rows(b, axis), _rows(y, axis))


def concat_bwd_cpu(dy, axis, da, db):
    """da = dy[..., :wa, ...] ; db = dy[..., wa:, ...]  (along ``axis``)"""
    d2 = _rows(dy, axis)
    if da is not None:
        _columns_cpu(d2, 0, _rows(da, axis))
    if db is not None:
        b2 = _rows(db, axis)
        _columns_cpu(d2, d2.shape[1] - b2.shape[1], b2)


@cuda_kernel
def _concat_fwd(a, b, wa, wb, y):
    """y[i, j] = a[i, j] if j < wa else b[i, j - wa]  (grid-stride over y)"""
    af = a.reshape(-1)
    bf = b.reshape(-1)
    yf = y.reshape(-1)
    w = wa + wb
    for k in range(cuda.grid(1), yf.size, cuda.gridsize(1)):
        i = k // w
        j = k - i * w
        if j < wa:
            yf[k] = af[i * wa + j]
        else:
            yf[k] = bf[i * wb + j - wa]


def concat_fwd_cuda(a, b, axis, y):
    """Launch _concat_fwd (grid-stride)."""
    wa, wb = _row_width(a.shape, axis), _row_width(b.shape, axis)
    _concat_fwd[config.grid_1d(y.size)](a, b, wa, wb, y)


@cuda_kernel
def _columns(dy, start, width, part):
    """part[i, j] = dy[i, start + j], rows of dy ``width`` long (grid-stride over part)"""
    df = dy.reshape(-1)
    pf = part.reshape(-1)
    n = pf.size // (df.size // width)
    for k in range(cuda.grid(1), pf.size, cuda.gridsize(1)):
        i = k // n
        pf[k] = df[i * width + start + k - i * n]


def concat_bwd_cuda(dy, axis, da, db):
    """da, db: the column ranges of dy, each by _columns (grid-stride)."""
    width = _row_width(dy.shape, axis)
    if da is not None:
        _columns[config.grid_1d(da.size)](dy, 0, width, da)
    if db is not None:
        _columns[config.grid_1d(db.size)](dy, width - _row_width(db.shape, axis), width, db)


def _row_width(shape, axis: int) -> int:
    """The size of ``axis`` times the sizes after it."""
    k = axis + len(shape) if axis < 0 else axis
    return int(np.prod(shape[k:], dtype=np.int64))


def _concat_sample(rng, dt):
    return (rng.standard_normal((2, 3, 4)).astype(dt),
            rng.standard_normal((2, 5, 4)).astype(dt)), {"axis": 1}


def _concat_big_sample(rng, dt):
    return (rng.standard_normal((7, 3, 5)).astype(dt),
            rng.standard_normal((7, 2, 5)).astype(dt)), {"axis": -2}


register(Op(
    name="concat", inputs=("a", "b"), shape=_concat_shape, attrs={"axis": -1},
    forward=concat_fwd_cpu, backward=concat_bwd_cpu,
    cuda_forward=concat_fwd_cuda, cuda_backward=concat_bwd_cuda,
    sample=_concat_sample, big_sample=_concat_big_sample,
    reference=lambda a, b, axis: (np.concatenate([a, b], axis),),
))
