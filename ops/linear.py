"""Dense-layer primitives: matrix product (BLAS; a tiled kernel on CUDA) and bias add."""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.blas import matmul
from dlrun.ops.config import CUDA_MAX_THREADS, cuda_device, cuda_kernel, jit
from dlrun.ops.reduce import tree_sum
from dlrun.ops.registry import Op, OpError, Spec, Twin, check_float, register, register_twin
from dlrun.ops.shape import copy_cuda

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None

# Side of the square tiles the CUDA matmul stages through shared memory (TILE x TILE threads).
TILE = 16


# -- matmul ------------------------------------------------------------------------------
def _matmul_shape(a: Spec, b: Spec) -> list:
    check_float("matmul", a=a, b=b)
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[0]:
        raise OpError(f"matmul needs (n, k) @ (k, m); got {a.shape} @ {b.shape}")
    if a.dtype != b.dtype:
        raise OpError(f"matmul inputs differ in dtype: {a.dtype} and {b.dtype}")
    return [Spec((a.shape[0], b.shape[1]), a.dtype)]


def matmul_fwd_cpu(a, b, y):
    """y = a @ b  (``ops.blas.matmul``: dlrun's sgemm or OpenBLAS, on --threads threads)"""
    matmul(a, b, y)


@cuda_device
def _load_tile_device(tile, m, transposed, r0, c0):
    """tile = op(m)[r0:r0+TILE, c0:c0+TILE], zero past the edges; op(m) = m.T if transposed"""
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    if transposed:  # op(m)[r, c] = m[c, r]: neighbouring threads still read neighbouring memory
        r = r0 + tx
        c = c0 + ty
        tile[tx, ty] = m[c, r] if c < m.shape[0] and r < m.shape[1] else 0
    else:
        r = r0 + ty
        c = c0 + tx
        tile[ty, tx] = m[r, c] if r < m.shape[0] and c < m.shape[1] else 0


@cuda_kernel
def _matmul_tiled(a, b, y, ta, tb):
    """y = op(a) @ op(b), op = transpose where flagged; TILE x TILE tiles in shared memory"""
    sa = cuda.shared.array((TILE, TILE), a.dtype)
    sb = cuda.shared.array((TILE, TILE), b.dtype)
    row0 = cuda.blockIdx.y * TILE
    col0 = cuda.blockIdx.x * TILE
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    acc = y.dtype.type(0)
    for k0 in range(0, a.shape[0] if ta else a.shape[1], TILE):
        _load_tile_device(sa, a, ta, row0, k0)
        _load_tile_device(sb, b, tb, k0, col0)
        cuda.syncthreads()
        for k in range(TILE):
            acc += sa[ty, k] * sb[k, tx]
        cuda.syncthreads()
    if row0 + ty < y.shape[0] and col0 + tx < y.shape[1]:
        y[row0 + ty, col0 + tx] = acc


def _matmul_cuda(a, b, y, ta, tb):
    blocks = ((y.shape[1] + TILE - 1) // TILE, (y.shape[0] + TILE - 1) // TILE)
    _matmul_tiled[blocks, (TILE, TILE)](a, b, y, ta, tb)


def matmul_fwd_cuda(a, b, y):
    """Launch _matmul_tiled: y = a @ b."""
    _matmul_cuda(a, b, y, False, False)


def matmul_bwd_cpu(dy, a, b, da, db):
    """da = dy @ b.T ; db = a.T @ dy  (``ops.blas.matmul``; transposes are flags, not copies)"""
    if da is not None:
        matmul(dy, b, da, trans_b=True)
    if db is not None:
        matmul(a, dy, db, trans_a=True)


def matmul_bwd_sgd_cpu(dy, a, b, lr, da):
    """da = dy @ b.T ; then b -= lr[0] * a.T @ dy in place: plain SGD fused into the weight
    gradient's product (one BLAS call with beta = 1, no gradient array written or read)"""
    if da is not None:
        matmul(dy, b, da, trans_b=True)     # before b changes
    matmul(a, dy, b, -lr[0], 1.0, True, False)


def _sgd_product_sample(rng, dtype):
    dy, a, b = (rng.standard_normal(s).astype(dtype) for s in ((5, 3), (5, 4), (4, 3)))
    return dy, a, b, np.array([0.1], dtype), np.empty_like(a)


register_twin(Twin(
    "matmul_bwd_sgd", matmul_bwd_sgd_cpu, None, writes=(2, 4), outputs=(4,),
    sample=_sgd_product_sample,
    no_cuda="a CPU rewrite (engine.core.rewrites): on CUDA the weight gradient is its own "
            "product and the SGD update its own kernel, each launched once per step anyway"))


def matmul_bwd_cuda(dy, a, b, da, db):
    """Launch _matmul_tiled: da = dy @ b.T ; db = a.T @ dy (transposes are flags, not copies)."""
    if da is not None:
        _matmul_cuda(dy, b, da, False, True)
    if db is not None:
        _matmul_cuda(a, dy, db, True, False)


def _matmul_sample(n, k, m):
    def sample(rng, dtype):
        return (rng.standard_normal((n, k)).astype(dtype),
                rng.standard_normal((k, m)).astype(dtype)), {}
    return sample


register(Op(
    name="matmul", inputs=("a", "b"), shape=_matmul_shape, saves=("a", "b"),
    forward=matmul_fwd_cpu, backward=matmul_bwd_cpu,
    cuda_forward=matmul_fwd_cuda, cuda_backward=matmul_bwd_cuda,
    sample=_matmul_sample(3, 4, 5), big_sample=_matmul_sample(17, 19, 5),
    reference=lambda a, b: (a @ b,),
))


# -- bias_add ----------------------------------------------------------------------------
def _bias_add_shape(x: Spec, b: Spec) -> list:
    check_float("bias_add", x=x, b=b)
    if len(b.shape) != 1 or len(x.shape) < 1 or x.shape[-1] != b.shape[0]:
        raise OpError(f"bias_add needs a bias of shape ({x.shape[-1:]}) for input "
                      f"{x.shape}; got {b.shape}")
    return [Spec(x.shape, x.dtype)]


@jit
def bias_add_fwd_cpu(x, b, y):
    """y[i, j] = x[i, j] + b[j]  (bias along the last axis)"""
    x2 = x.reshape(-1, b.size)
    y2 = y.reshape(-1, b.size)
    for i in range(x2.shape[0]):
        for j in range(b.size):
            y2[i, j] = x2[i, j] + b[j]


@cuda_kernel
def _bias_add_fwd(x, b, y):
    """y[i, j] = x[i, j] + b[j]  (bias along the last axis; grid-stride over the elements)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        yf[i] = xf[i] + b[i % b.size]


def bias_add_fwd_cuda(x, b, y):
    """Launch _bias_add_fwd (grid-stride)."""
    _bias_add_fwd[config.grid_1d(x.size)](x, b, y)


@jit
def bias_add_bwd_cpu(dy, dx, db):
    """dx = dy ; db[j] = sum_i dy[i, j]"""
    n = dy.shape[-1]
    dy2 = dy.reshape(-1, n)
    if dx is not None:
        dx2 = dx.reshape(-1, n)
        for i in range(dy2.shape[0]):
            for j in range(n):
                dx2[i, j] = dy2[i, j]
    if db is not None:
        for j in range(n):
            db[j] = 0.0
        for i in range(dy2.shape[0]):
            for j in range(n):
                db[j] += dy2[i, j]


@cuda_kernel
def _column_sums(dy, db):
    """db[j] = sum_i dy[i, j]: threads.x take columns, threads.y split rows, a tree over y"""
    buf = cuda.shared.array(CUDA_MAX_THREADS, dy.dtype)
    dy2 = dy.reshape(-1, db.size)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    bx = cuda.blockDim.x
    for j0 in range(cuda.blockIdx.x * bx, db.size, cuda.gridDim.x * bx):
        j = j0 + tx
        s = dy.dtype.type(0)
        if j < db.size:
            for i in range(ty, dy2.shape[0], cuda.blockDim.y):
                s += dy2[i, j]
        buf[ty * bx + tx] = s
        tree_sum(buf, ty, cuda.blockDim.y, tx, bx)    # column tx: every bx-th element
        if ty == 0 and j < db.size:
            db[j] = buf[tx]
        cuda.syncthreads()  # before the next columns overwrite buf


def bias_add_bwd_cuda(dy, dx, db):
    """dx = dy by copy_cuda ; db by _column_sums, a warp's width of columns per block."""
    if dx is not None:
        copy_cuda(dy, dx)
    if db is not None:
        # up to 32 neighbouring columns per block so row reads coalesce; the other
        # threads of the block split the rows
        cols = max(1, min(32, config.CUDA_BLOCK // 4))
        rows = config.CUDA_BLOCK // cols
        blocks = min(config.CUDA_MAX_BLOCKS, (db.size + cols - 1) // cols)
        _column_sums[blocks, (cols, rows)](dy, db)


def _bias_add_sample(n, m):
    def sample(rng, dtype):
        return (rng.standard_normal((n, m)).astype(dtype),
                rng.standard_normal(m).astype(dtype)), {}
    return sample


register(Op(
    name="bias_add", inputs=("x", "b"), shape=_bias_add_shape,
    forward=bias_add_fwd_cpu, backward=bias_add_bwd_cpu,
    cuda_forward=bias_add_fwd_cuda, cuda_backward=bias_add_bwd_cuda,
    sample=_bias_add_sample(4, 3), big_sample=_bias_add_sample(37, 13),
    reference=lambda x, b: (x + b,),
))
