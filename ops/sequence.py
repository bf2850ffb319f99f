"""Ops of sequence models besides the recurrent ones: ``embedding`` (rows of a matrix
picked by integer indices, what the Embedding layer lowers to) and ``repeat`` (each element
repeated, what turns per-sample loss weights into per-step ones).

``embedding``'s backward is a scatter-add: ``dW[k] = sum of dy[n] over the positions n whose
index is k``, so an index met twice in a batch adds twice; the indices themselves have no
gradient. The CPU kernel adds position by position, in order. The CUDA twin gives a thread
to each (position, column) and adds with ``cuda.atomic.add``: that is the gather's own
O(positions x columns) work, where a thread per (row, column) that looks for its row among
the indices (no atomics) costs rows x positions x columns, a thousand times the gather
for a vocabulary of a thousand words. The price of atomics is that additions into one row
land in whatever order the threads reach them, so on the GPU the last bits of a repeated
row's gradient can differ from run to run (the CPU's cannot).

Indices outside [0, rows) are refused on the host before any kernel runs (a model checks
its input samples); a kernel given one anyway reads nothing outside the matrix: the
forward writes NaN for it and the backward leaves it out.
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


# -- embedding -------------------------------------------------------------------------------
def _embedding_shape(x: Spec, w: Spec) -> list:
    check_float("embedding", w=w)
    if x.dtype.kind not in "iu":
        raise OpError(f"embedding needs integer indices, got {x.dtype}")
    if len(x.shape) < 1 or len(w.shape) != 2:
        raise OpError(f"embedding needs indices of shape (batch, ...) and a matrix (rows, "
                      f"columns); got indices {x.shape}, matrix {w.shape}")
    return [Spec((*x.shape, w.shape[1]), w.dtype)]


@jit
def embedding_fwd_cpu(x, w, y):
    """y[..., :] = w[x[...], :]  (NaN for an index outside [0, rows))"""
    xf = x.reshape(-1)
    d = w.shape[1]
    yf = y.reshape(xf.size, d)
    for n in range(xf.size):
        k = xf[n]
        if 0 <= k < w.shape[0]:
            for j in range(d):
                yf[n, j] = w[k, j]
        else:
            for j in range(d):
                yf[n, j] = np.nan


@jit
def embedding_bwd_cpu(dy, x, dw):
    """dw = 0 ; dw[x[n], :] += dy[n, :] for every position n, in order"""
    xf = x.reshape(-1)
    d = dw.shape[1]
    dyf = dy.reshape(xf.size, d)
    dw[:] = 0.0
    for n in range(xf.size):
        k = xf[n]
        if 0 <= k < dw.shape[0]:
            for j in range(d):
                dw[k, j] += dyf[n, j]


@cuda_kernel
def _embedding_fwd(x, w, y):
    """y[..., :] = w[x[...], :]  (a thread per output element; NaN for a bad index)"""
    xf = x.reshape(-1)
    d = w.shape[1]
    yf = y.reshape(xf.size, d)
    for q in range(cuda.grid(1), yf.size, cuda.gridsize(1)):
        n = q // d
        j = q - n * d
        k = xf[n]
        yf[n, j] = w[k, j] if 0 <= k < w.shape[0] else np.nan


@cuda_kernel
def _zero(a):
    """a[:] = 0  (grid-stride)"""
    af = a.reshape(-1)
    for q in range(cuda.grid(1), af.size, cuda.gridsize(1)):
        af[q] = 0


@cuda_kernel
def _embedding_bwd(dy, x, dw):
    """dw[x[n], j] += dy[n, j]  (a thread per (position, column), atomic adds)"""
    xf = x.reshape(-1)
    d = dw.shape[1]
    dyf = dy.reshape(xf.size, d)
    for q in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        n = q // d
        j = q - n * d
        k = xf[n]
        if 0 <= k < dw.shape[0]:
            cuda.atomic.add(dw, (k, j), dyf[n, j])


def embedding_fwd_cuda(x, w, y):
    """Launch _embedding_fwd."""
    _embedding_fwd[config.grid_1d(y.size)](x, w, y)


def embedding_bwd_cuda(dy, x, dw):
    """Launch _zero on dw, then _embedding_bwd (see the module docstring: atomics)."""
    _zero[config.grid_1d(dw.size)](dw)
    _embedding_bwd[config.grid_1d(dy.size)](dy, x, dw)


def _embedding_reference(x, w):
    return (w[x],)


def _embedding_sample(shape: tuple, rows: int, cols: int):
    """int32 indices of ``shape`` in [0, rows), several repeated; a (rows, cols) matrix"""
    def sample(rng, dt):
        x = rng.integers(0, rows, shape).astype(np.int32)
        x.reshape(-1)[:2] = rows - 1             # a repeated index, and the last row
        return (x, rng.standard_normal((rows, cols)).astype(dt)), {}
    return sample


register(Op(
    name="embedding", inputs=("x", "w"), shape=_embedding_shape, saves=("x",),
    diff=("w",), forward=embedding_fwd_cpu, backward=embedding_bwd_cpu,
    cuda_forward=embedding_fwd_cuda, cuda_backward=embedding_bwd_cuda,
    sample=_embedding_sample((2, 3), 5, 4), big_sample=_embedding_sample((6, 7), 9, 5),
    reference=_embedding_reference,
))


# -- repeat ----------------------------------------------------------------------------------
def _repeat_shape(x: Spec, times: int = 1) -> list:
    check_float("repeat", x=x)
    if len(x.shape) != 1 or int(times) < 1:
        raise OpError(f"repeat needs a vector and times >= 1; got {x.shape}, "
                      f"times={times!r}")
    return [Spec((x.shape[0] * int(times),), x.dtype)]


@jit
def repeat_fwd_cpu(x, times, y):
    """y[i * times + t] = x[i]"""
    for i in range(x.size):
        for t in range(times):
            y[i * times + t] = x[i]


@jit
def repeat_bwd_cpu(dy, times, dx):
    """dx[i] = sum_t dy[i * times + t]"""
    for i in range(dx.size):
        s = 0.0
        for t in range(times):
            s += dy[i * times + t]
        dx[i] = s


@cuda_kernel
def _repeat_fwd(x, times, y):
    """y[k] = x[k // times]  (grid-stride over y)"""
    for k in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[k] = x[k // times]


@cuda_kernel
def _repeat_bwd(dy, times, dx):
    """dx[i] = sum_t dy[i * times + t]  (a thread per element of dx)"""
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        s = dx.dtype.type(0)
        for t in range(times):
            s += dy[i * times + t]
        dx[i] = s


def repeat_fwd_cuda(x, times, y):
    """Launch _repeat_fwd."""
    _repeat_fwd[config.grid_1d(y.size)](x, times, y)


def repeat_bwd_cuda(dy, times, dx):
    """Launch _repeat_bwd."""
    _repeat_bwd[config.grid_1d(dx.size)](dy, times, dx)


register(Op(
    name="repeat", inputs=("x",), shape=_repeat_shape, attrs={"times": 1},
    forward=repeat_fwd_cpu, backward=repeat_bwd_cpu,
    cuda_forward=repeat_fwd_cuda, cuda_backward=repeat_bwd_cuda,
    sample=lambda rng, dt: ((rng.standard_normal(4).astype(dt),), {"times": 3}),
    big_sample=lambda rng, dt: ((rng.standard_normal(11).astype(dt),), {"times": 5}),
    reference=lambda x, times: (np.repeat(x, times),),
))
