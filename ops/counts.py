"""Metric counts: correct predictions of a batch, on either device.

Each kernel counts into one slot of a small int64 array, ``kernel(p, target, out, slot)``
on both devices, so a training step on the GPU brings back a few numbers instead of the
whole prediction matrix. Twins ``correct_sparse`` (integer labels), ``correct_onehot``
(one-hot targets: argmax against argmax), ``correct_binary`` (every element against
0.5) and ``correct_top5`` / ``correct_sparse_top5`` (the target class among the 5 scored
highest: Keras' ``top_k_categorical_accuracy`` at its default k, where a class tied at
the boundary counts as in). On CUDA one block counts, by strided shares per thread and
:func:`block_sum`.
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.elementwise import instantiate
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
def ranked_above(p, i, c):
    """how many classes of row i score above class c"""
    n = 0
    for j in range(p.shape[1]):
        if p[i, j] > p[i, c]:
            n += 1
    return n


@config.formula
def sparse_top5_hit(p, labels, i):
    """1 if row i's label is among its 5 highest scores"""
    return 1 if ranked_above(p, i, labels[i]) < 5 else 0


@config.formula
def onehot_top5_hit(p, target, i):
    """1 if row i's hot class is among its 5 highest scores"""
    return 1 if ranked_above(p, i, argmax_row(target, i)) < 5 else 0


@config.formula
def binary_hit(p, target, i):
    """1 if element i is on the target's side of 0.5"""
    return 1 if (p[i] > 0.5) == (target[i] > 0.5) else 0


# Kernel templates, instantiated per count with a formula above as _hit, and _flat true
# when the items counted are the elements (else the rows): a constant, so Numba compiles
# only the branch taken.
_hit = _flat = None


def _count_cpu(p, target, out, slot):
    """out[slot] = the number of items i with _hit(p, target, i)"""
    pv = p.reshape(-1) if _flat else p
    tv = target.reshape(-1) if _flat else target
    k = 0
    for i in range(pv.shape[0]):
        k += _hit(pv, tv, i)
    out[slot] = k


def _count_cuda(p, target, out, slot):
    """out[slot] = the number of items i with _hit(p, target, i), one block"""
    pv = p.reshape(-1) if _flat else p
    tv = target.reshape(-1) if _flat else target
    t = cuda.threadIdx.x
    k = 0
    for i in range(t, pv.shape[0], cuda.blockDim.x):
        k += _hit(pv, tv, i)
    total = block_sum(k)
    if t == 0:
        out[slot] = int(total)


def _sample(kind: str):
    """p (37, 8) and its targets, and an int64 out of 3 slots counted into slot 1 (8
    classes, so that a top-5 count can miss)."""
    def sample(rng, dtype):
        p = rng.random((37, 8)).astype(dtype)
        if kind.startswith("sparse"):
            target = rng.integers(0, 8, 37)
        else:
            target = np.eye(8, dtype=dtype)[rng.integers(0, 8, 37)]
        return p, target, np.full(3, -1, np.int64), 1
    return sample


def _count_twin(kind: str, hit, flat: bool) -> Twin:
    """The twin ``correct_<kind>``: ``kernel(p, target, out, slot)`` on both devices."""
    kernel = instantiate(_count_cuda, f"_correct_{kind}", hit, "cuda", _hit=hit, _flat=flat)

    def launch(p, target, out, slot):
        kernel[1, config.CUDA_BLOCK](p, target, out, slot)

    launch.__name__ = f"correct_{kind}_cuda"
    launch.__doc__ = f"Launch _correct_{kind} (one block); ``out`` is an int64 device array."
    cpu = instantiate(_count_cpu, f"correct_{kind}_cpu", hit, "cpu", _hit=hit, _flat=flat)
    return register_twin(Twin(f"correct_{kind}", cpu, launch, writes=(2,),
                              sample=_sample(kind)))


SPARSE = _count_twin("sparse", sparse_hit, False)
ONEHOT = _count_twin("onehot", onehot_hit, False)
BINARY = _count_twin("binary", binary_hit, True)
TOP5 = _count_twin("top5", onehot_top5_hit, False)
SPARSE_TOP5 = _count_twin("sparse_top5", sparse_top5_hit, False)
