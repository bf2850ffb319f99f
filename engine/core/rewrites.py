"""Plan rewrites for the CPU that change no result but save passes over memory.

Plain SGD fused into the weight gradient: for a Dense kernel ``W`` whose gradient is
``a.T @ dy`` alone, the update ``W -= lr * a.T @ dy`` is one BLAS call with ``beta = 1``
(:func:`dlrun.ops.linear.matmul_bwd_sgd_cpu`) made in the backward itself, so the gradient
array is never written, read back or passed to the optimizer. On the reference MLP that is
two passes over 648k weights a step fewer. Only when nothing else needs the gradient: plain
SGD (no momentum, clipping or weight decay), a weight read by that one product only, no
regulariser, no second contribution to its gradient.
"""
from __future__ import annotations

import numpy as np

from dlrun.ops.linear import matmul_bwd_sgd_cpu


def sgd_fusable(optimizer) -> bool:
    """Whether ``optimizer``'s update is plain ``w -= lr * g`` (so it may be fused)."""
    from dlrun.engine.optimizers import SGD

    return (type(optimizer) is SGD and not optimizer.momentum and not optimizer.weight_decay
            and optimizer.clipnorm is None and optimizer.clipvalue is None
            and optimizer.global_clipnorm is None)


def fuse_sgd(plan, updates: list) -> tuple[list, np.ndarray | None]:
    """Rewrite ``plan``'s matmul backward steps to update their weight in place.

    Returns the updates left for the optimizer and the one-element learning-rate array the
    fused steps read (the caller sets it before each run), or ``None`` if nothing fused.
    """
    readers = {}                                  # id(tensor) -> steps that read or write it
    for s in plan.steps:
        for t in s.reads + s.writes:
            if t is not None:
                readers.setdefault(id(t), []).append(s)
    lr = np.zeros(1)
    fused = set()
    for p, _ in updates:
        if p.regularizer is not None:
            continue
        grad = plan.grads[p.id]
        touch = readers.get(id(p), [])
        writers = [s for s in readers.get(id(grad), []) if grad in s.writes]
        if len(writers) != 1 or len(readers.get(id(grad), [])) != 1:
            continue                              # accumulated, or read by someone else
        step = writers[0]
        fwd = [s for s in touch if s is not step]
        if (step.label != "matmul.backward" or step.writes[1] is not grad
                or len(fwd) != 1 or fwd[0].label != "matmul"):
            continue                              # W is read by more than its one product
        dy, a, w, da = step.args[0], step.args[1], step.args[2], step.args[3]
        step.fn, step.args = matmul_bwd_sgd_cpu, [dy, a, w, lr, da]
        step.label = "matmul.backward+sgd"
        fused.add(p.id)
    if not fused:
        return updates, None
    return [(p, g) for p, g in updates if p.id not in fused], lr
