"""Optimizer update kernels: fused and in place, one call per parameter.

These are not graph ops (they have no gradient); the engine's optimizers call them after
the backward pass. Keras' formulation, so learning curves match Keras/PyTorch runs.
"""
from __future__ import annotations

from dlrun.ops.config import jit


@jit
def sgd_update_cpu(w, g, lr):
    """w -= lr * g"""
    wf = w.reshape(-1)
    gf = g.reshape(-1)
    for i in range(wf.size):
        wf[i] -= lr * gf[i]


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
