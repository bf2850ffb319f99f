"""Reductions to a scalar: sum and mean over every element; and the CUDA block reduction
every kernel that sums over threads uses (:func:`block_sum`, :func:`tree_sum`).

On CUDA a scalar result is one block's work: each thread sums its share (float64, as the
CPU kernels accumulate), then the block adds the partial sums in shared memory by a tree
of fixed pairs, so the result is the same at every run and for any block size (the
simulator has no warp shuffles, so no shuffles here either).
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import CUDA_MAX_THREADS, cuda_device, cuda_kernel, jit
from dlrun.ops.registry import Op, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


@cuda_device
def tree_sum(buf, k, n, base, stride):
    """buf[base] = sum_{j < n} buf[base + j * stride], thread k of the n adding fixed pairs
    (any n, not only powers of 2); every thread of the block calls it, and all are past
    their last write when it returns"""
    while n > 1:
        cuda.syncthreads()
        half = (n + 1) // 2
        if k < n - half:
            buf[base + k * stride] += buf[base + (k + half) * stride]
        n = half
    cuda.syncthreads()


@cuda_device
def block_sum(partial):
    """The sum of ``partial`` over the threads of a 1-D block, in float64, returned to
    every thread"""
    buf = cuda.shared.array(CUDA_MAX_THREADS, np.float64)
    t = cuda.threadIdx.x
    buf[t] = partial
    tree_sum(buf, t, cuda.blockDim.x, 0, 1)
    total = buf[0]
    cuda.syncthreads()  # every thread has read the total before a next call writes buf
    return total


def _scalar(x: Spec) -> list:
    check_float("reduction", x=x)
    return [Spec((), x.dtype)]


@jit
def sum_fwd_cpu(x, y):
    """y = sum x"""
    total = 0.0
    for v in x.reshape(-1):
        total += v
    y[()] = total


@cuda_kernel
def _sum_scaled(x, divisor, y):
    """y = sum x / divisor, in one block"""
    xf = x.reshape(-1)
    t = cuda.threadIdx.x
    total = 0.0
    for i in range(t, xf.size, cuda.blockDim.x):
        total += xf[i]
    total = block_sum(total)
    if t == 0:
        y[()] = total / divisor


def sum_fwd_cuda(x, y):
    """Launch _sum_scaled (one block)."""
    _sum_scaled[1, config.CUDA_BLOCK](x, 1, y)


@jit
def fill_cpu(dx, value):
    """dx[:] = value"""
    dxf = dx.reshape(-1)
    for i in range(dxf.size):
        dxf[i] = value


def sum_bwd_cpu(dy, dx):
    """dx = dy (broadcast)"""
    fill_cpu(dx, dy[()])


@cuda_kernel
def _fill_scaled(dy, divisor, dx):
    """dx[:] = dy / divisor (grid-stride)"""
    dxf = dx.reshape(-1)
    value = dy[()] / divisor
    for i in range(cuda.grid(1), dxf.size, cuda.gridsize(1)):
        dxf[i] = value


def sum_bwd_cuda(dy, dx):
    """Launch _fill_scaled (grid-stride over dx)."""
    _fill_scaled[config.grid_1d(dx.size)](dy, 1, dx)


@jit
def mean_fwd_cpu(x, y):
    """y = sum x / N"""
    total = 0.0
    for v in x.reshape(-1):
        total += v
    y[()] = total / x.size


def mean_fwd_cuda(x, y):
    """Launch _sum_scaled (one block)."""
    _sum_scaled[1, config.CUDA_BLOCK](x, x.size, y)


def mean_bwd_cpu(dy, dx):
    """dx = dy / N (broadcast)"""
    fill_cpu(dx, dy[()] / dx.size)


def mean_bwd_cuda(dy, dx):
    """Launch _fill_scaled (grid-stride over dx)."""
    _fill_scaled[config.grid_1d(dx.size)](dy, dx.size, dx)


def _normal(shape):
    return lambda rng, dt: ((rng.standard_normal(shape).astype(dt),), {})


register(Op(name="sum", inputs=("x",), shape=_scalar, forward=sum_fwd_cpu,
            backward=sum_bwd_cpu, cuda_forward=sum_fwd_cuda, cuda_backward=sum_bwd_cuda,
            sample=_normal((3, 4)), big_sample=_normal((9, 11)),
            reference=lambda x: (np.asarray(x.sum(), x.dtype),)))
register(Op(name="mean", inputs=("x",), shape=_scalar, forward=mean_fwd_cpu,
            backward=mean_bwd_cpu, cuda_forward=mean_fwd_cuda, cuda_backward=mean_bwd_cuda,
            sample=_normal((3, 4)), big_sample=_normal((9, 11)),
            reference=lambda x: (np.asarray(x.mean(), x.dtype),)))
