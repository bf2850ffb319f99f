"""Optimizer update kernels: fused and in place, one call per parameter.

These are not graph ops (they have no gradient); the engine's optimizers call them after
the backward pass. Keras' formulation, so learning curves match Keras/PyTorch runs.
"""
from __future__ import annotations

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


@jit
def sgd_update_cpu(w, g, lr):
    """w -= lr * g"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    for i in range(wf.size):
        wf[i] -= lr * gf[i]


@cuda_kernel
def _sgd_update(w, g, lr):
    """w -= lr * g"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    for i in range(cuda.grid(1), wf.size, cuda.gridsize(1)):
        wf[i] -= lr * gf[i]


def sgd_update_cuda(w, g, lr):
    """Launch _sgd_update (grid-stride)."""
    _sgd_update[config.grid_1d(w.size)](w, g, lr)


@jit
def sgd_momentum_update_cpu(w, g, v, lr, momentum, nesterov):
    """v = momentum * v - lr * g ; w += v, or w += momentum * v - lr * g (Nesterov)"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    vf = v.reshape(-1)
    for i in range(wf.size):
        step = -lr * gf[i]
        vi = momentum * vf[i] + step
        vf[i] = vi
        if nesterov:
            wf[i] += momentum * vi + step
        else:
            wf[i] += vi


@cuda_kernel
def _sgd_momentum_update(w, g, v, lr, momentum, nesterov):
    """v = momentum * v - lr * g ; w += v, or w += momentum * v - lr * g (Nesterov)"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    vf = v.reshape(-1)
    for i in range(cuda.grid(1), wf.size, cuda.gridsize(1)):
        step = -lr * gf[i]
        vi = momentum * vf[i] + step
        vf[i] = vi
        if nesterov:
            wf[i] += momentum * vi + step
        else:
            wf[i] += vi


def sgd_momentum_update_cuda(w, g, v, lr, momentum, nesterov):
    """Launch _sgd_momentum_update (grid-stride)."""
    _sgd_momentum_update[config.grid_1d(w.size)](w, g, v, lr, momentum, nesterov)


