"""Metric counts on the GPU: the CUDA twins of :mod:`dlrun.engine.metrics`' kernels.

Each counts correct predictions of a batch into one slot of a small integer array, so a
training step brings back a few numbers instead of the whole prediction matrix. One block
per launch: strided counts per thread, then a shared-memory tree (the simulator has no
warp shuffles).
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import CUDA_MAX_THREADS, cuda_device, cuda_kernel

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


@cuda_device
def _block_total(buf, t, n):
    """buf[0] = sum buf[:n] over the block's n threads (fixed pairs: deterministic)"""
    while n > 1:
        cuda.syncthreads()
        half = (n + 1) // 2
        if t < n - half:
            buf[t] += buf[t + half]
        n = half
    cuda.syncthreads()


@cuda_kernel
def _correct_sparse(p, labels, out, slot):
    """out[slot] = sum_i [argmax p_i == labels_i]"""
    buf = cuda.shared.array(CUDA_MAX_THREADS, np.int64)
    t = cuda.threadIdx.x
    k = 0
    for i in range(t, p.shape[0], cuda.blockDim.x):
        best = 0
        for j in range(1, p.shape[1]):
            if p[i, j] > p[i, best]:
                best = j
        if best == labels[i]:
            k += 1
    buf[t] = k
    _block_total(buf, t, cuda.blockDim.x)
    if t == 0:
        out[slot] = buf[0]


@cuda_kernel
def _correct_onehot(p, target, out, slot):
    """out[slot] = sum_i [argmax p_i == argmax target_i]"""
    buf = cuda.shared.array(CUDA_MAX_THREADS, np.int64)
    t = cuda.threadIdx.x
    k = 0
    for i in range(t, p.shape[0], cuda.blockDim.x):
        bp = 0
        bt = 0
        for j in range(1, p.shape[1]):
            if p[i, j] > p[i, bp]:
                bp = j
            if target[i, j] > target[i, bt]:
                bt = j
        if bp == bt:
            k += 1
    buf[t] = k
    _block_total(buf, t, cuda.blockDim.x)
    if t == 0:
        out[slot] = buf[0]


@cuda_kernel
def _correct_binary(p, target, out, slot):
    """out[slot] = sum [(p > 0.5) == (target > 0.5)] over every element"""
    buf = cuda.shared.array(CUDA_MAX_THREADS, np.int64)
    pf = p.reshape(-1)
    tf = target.reshape(-1)
    t = cuda.threadIdx.x
    k = 0
    for i in range(t, pf.size, cuda.blockDim.x):
        if (pf[i] > 0.5) == (tf[i] > 0.5):
            k += 1
    buf[t] = k
    _block_total(buf, t, cuda.blockDim.x)
    if t == 0:
        out[slot] = buf[0]


def correct_sparse_cuda(p, labels, out, slot):
    """Launch _correct_sparse (one block); ``out`` is an int64 device array."""
    _correct_sparse[1, config.CUDA_BLOCK](p, labels, out, slot)


def correct_onehot_cuda(p, target, out, slot):
    """Launch _correct_onehot (one block)."""
    _correct_onehot[1, config.CUDA_BLOCK](p, target, out, slot)


def correct_binary_cuda(p, target, out, slot):
    """Launch _correct_binary (one block)."""
    _correct_binary[1, config.CUDA_BLOCK](p, target, out, slot)
