"""Metric counts: correct predictions of a batch, on either device.

Each kernel counts into one slot of a small int64 array, ``kernel(p, target, out, slot)``
on both devices, so a training step on the GPU brings back a few numbers instead of the
whole prediction matrix. Twins ``correct_sparse`` (integer labels), ``correct_onehot``
(one-hot targets: argmax against argmax) and ``correct_binary`` (every element against
0.5). On CUDA one block counts, by strided shares per thread and :func:`block_sum`.
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.reduce import block_sum
from dlrun.ops.registry import Twin, register_twin

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


@config.formula
def argmax_row(a, i):
    """the first j with a[i, j] maximal"""
    best = 0
    for j in range(1, a.shape[1]):
        if a[i, j] > a[i, best]:
            best = j
    return best


@config.formula
def sparse_hit(p, labels, i):
    """1 if row i's prediction is its label"""
    return 1 if argmax_row(p, i) == labels[i] else 0


@config.formula
def onehot_hit(p, target, i):
    """1 if row i's prediction is the target's hot class"""
    return 1 if argmax_row(p, i) == argmax_row(target, i) else 0


@config.formula
def binary_hit(p, target, i):
    """1 if element i is on the target's side of 0.5"""
    return 1 if (p[i] > 0.5) == (target[i] > 0.5) else 0


@jit
def correct_sparse_cpu(p, labels, out, slot):
    """out[slot] = sum_i [argmax p_i == labels_i]"""
    k = 0
    for i in range(p.shape[0]):
        k += sparse_hit(p, labels, i)
    out[slot] = k


@jit
def correct_onehot_cpu(p, target, out, slot):
    """out[slot] = sum_i [argmax p_i == argmax target_i]"""
    k = 0
    for i in range(p.shape[0]):
        k += onehot_hit(p, target, i)
    out[slot] = k


@jit
def correct_binary_cpu(p, target, out, slot):
    """out[slot] = sum [(p > 0.5) == (target > 0.5)] over every element"""
    pf = p.reshape(-1)
    tf = target.reshape(-1)
    k = 0
    for i in range(pf.size):
        k += binary_hit(pf, tf, i)
    out[slot] = k


@cuda_kernel
def _correct_sparse(p, labels, out, slot):
    """out[slot] = sum_i [argmax p_i == labels_i], one block"""
    t = cuda.threadIdx.x
    k = 0
    for i in range(t, p.shape[0], cuda.blockDim.x):
        k += sparse_hit(p, labels, i)
    total = block_sum(k)
    if t == 0:
        out[slot] = int(total)


@cuda_kernel
def _correct_onehot(p, target, out, slot):
    """out[slot] = sum_i [argmax p_i == argmax target_i], one block"""
    t = cuda.threadIdx.x
    k = 0
    for i in range(t, p.shape[0], cuda.blockDim.x):
        k += onehot_hit(p, target, i)
    total = block_sum(k)
    if t == 0:
        out[slot] = int(total)


@cuda_kernel
def _correct_binary(p, target, out, slot):
    """out[slot] = sum [(p > 0.5) == (target > 0.5)] over every element, one block"""
    pf = p.reshape(-1)
    tf = target.reshape(-1)
    t = cuda.threadIdx.x
    k = 0
    for i in range(t, pf.size, cuda.blockDim.x):
        k += binary_hit(pf, tf, i)
    total = block_sum(k)
    if t == 0:
        out[slot] = int(total)


def correct_sparse_cuda(p, labels, out, slot):
    """Launch _correct_sparse (one block); ``out`` is an int64 device array."""
    _correct_sparse[1, config.CUDA_BLOCK](p, labels, out, slot)


def correct_onehot_cuda(p, target, out, slot):
    """Launch _correct_onehot (one block)."""
    _correct_onehot[1, config.CUDA_BLOCK](p, target, out, slot)


def correct_binary_cuda(p, target, out, slot):
    """Launch _correct_binary (one block)."""
    _correct_binary[1, config.CUDA_BLOCK](p, target, out, slot)


def _sample(kind: str):
    """p (37, 5) and its targets, and an int64 out of 3 slots counted into slot 1."""
    def sample(rng, dtype):
        p = rng.random((37, 5)).astype(dtype)
        if kind == "sparse":
            target = rng.integers(0, 5, 37)
        else:
            target = np.eye(5, dtype=dtype)[rng.integers(0, 5, 37)]
        return p, target, np.full(3, -1, np.int64), 1
    return sample


for _kind, _cpu, _cuda in (("sparse", correct_sparse_cpu, correct_sparse_cuda),
                           ("onehot", correct_onehot_cpu, correct_onehot_cuda),
                           ("binary", correct_binary_cpu, correct_binary_cuda)):
    register_twin(Twin(f"correct_{_kind}", _cpu, _cuda, writes=(2,), sample=_sample(_kind)))
