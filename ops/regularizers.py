"""Weight penalties: ``l1_l2_penalty(w) = l1 * sum |w| + l2 * sum w^2``, a scalar added to
the loss, whose gradient ``dw = dy * (l1 * sign(w) + 2 * l2 * w)`` joins the weight's
gradient (the lectures' ``w := w - lr * dL/dw - 2 * lr * lambda * w`` for L2)."""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.reduce import block_sum
from dlrun.ops.registry import Op, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


def _scalar(w: Spec, **_) -> list:
    check_float("l1_l2_penalty", w=w)
    return [Spec((), w.dtype)]


@jit
def l1_l2_penalty_fwd_cpu(w, l1, l2, y):
    """y = l1 * sum |w| + l2 * sum w^2"""
    s1 = 0.0
    s2 = 0.0
    for v in w.reshape(-1):
        s1 += abs(v)
        s2 += np.float64(v) * v
    y[()] = l1 * s1 + l2 * s2


@cuda_kernel
def _l1_l2_penalty_fwd(w, l1, l2, y):
    """y = l1 * sum |w| + l2 * sum w^2, in one block"""
    wf = w.reshape(-1)
    t = cuda.threadIdx.x
    total = 0.0
    for i in range(t, wf.size, cuda.blockDim.x):
        v = float(wf[i])
        total += l1 * abs(v) + l2 * v * v
    total = block_sum(total)
    if t == 0:
        y[()] = total


def l1_l2_penalty_fwd_cuda(w, l1, l2, y):
    """Launch _l1_l2_penalty_fwd (one block)."""
    _l1_l2_penalty_fwd[1, config.CUDA_BLOCK](w, l1, l2, y)


@config.formula
def penalty_grad(v, l1, l2):
    """d/dw (l1 |w| + l2 w^2) = l1 sign(w) + 2 l2 w"""
    sign = 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)
    return l1 * sign + 2.0 * l2 * v


@jit
def l1_l2_penalty_bwd_cpu(dy, w, l1, l2, dw):
    """dw = dy * (l1 * sign(w) + 2 * l2 * w)"""
    wf = w.reshape(-1)
    dwf = dw.reshape(-1)
    g = dy[()]
    for i in range(wf.size):
        dwf[i] = g * penalty_grad(wf[i], l1, l2)


@cuda_kernel
def _l1_l2_penalty_bwd(dy, w, l1, l2, dw):
    """dw = dy * (l1 * sign(w) + 2 * l2 * w)"""
    wf = w.reshape(-1)
    dwf = dw.reshape(-1)
    g = dy[()]
    for i in range(cuda.grid(1), wf.size, cuda.gridsize(1)):
        dwf[i] = g * penalty_grad(wf[i], l1, l2)


def l1_l2_penalty_bwd_cuda(dy, w, l1, l2, dw):
    """Launch _l1_l2_penalty_bwd (grid-stride over w)."""
    _l1_l2_penalty_bwd[config.grid_1d(w.size)](dy, w, l1, l2, dw)


def _sample(rng, dtype):
    w = rng.uniform(-2.0, 2.0, (4, 3)).astype(dtype)
    w[np.abs(w) < 0.05] += 0.1            # away from |w|'s kink
    return (w,), {"l1": 0.03, "l2": 0.2}


def _reference(w, l1, l2):
    w64 = w.astype(np.float64)
    return (np.asarray(l1 * np.abs(w64).sum() + l2 * (w64 * w64).sum(), w.dtype),)


register(Op(name="l1_l2_penalty", inputs=("w",), shape=_scalar, saves=("w",),
            attrs={"l1": 0.0, "l2": 0.0},
            forward=l1_l2_penalty_fwd_cpu, backward=l1_l2_penalty_bwd_cpu,
            cuda_forward=l1_l2_penalty_fwd_cuda, cuda_backward=l1_l2_penalty_bwd_cuda,
            sample=_sample, reference=_reference))
