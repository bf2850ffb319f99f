"""Plan rewrites: the one place where a plan's list of kernel calls is changed.

Each rewrite takes a plan whose steps are built but not yet bound to buffers, and the
plan's ``options``; it changes ``plan.steps`` (and ``plan.grads`` when a gradient is no
longer needed) and returns whether it changed anything. Rewrites match steps by op name
and kind (``step.is_("bias_add")``), never by labels. A backend lists the rewrites its
device benefits from (``backend.rewrites``); the plan applies them in that order, before
buffers are bound, so a buffer a rewrite makes unnecessary is never allocated.

- :func:`fuse_sgd` (CPU): plain SGD fused into a weight's gradient product, so the
  gradient array is never written, read back or passed to the optimizer.
- :func:`fuse_bias_activation` (GPU, where a launch costs more than a small layer's work):
  ``bias_add`` then an activation run as one kernel.
- :func:`alias_bias_grad` (GPU): the backward of ``bias_add`` writes no copy of its
  incoming gradient.
"""
from __future__ import annotations

from collections import defaultdict

def _readers(steps) -> dict:
    """id(tensor or grad slot) -> indices of the steps that read it."""
    readers = defaultdict(list)
    for i, s in enumerate(steps):
        for t in s.reads:
            if t is not None:
                readers[id(t)].append(i)
    return readers


def fuse_sgd(plan, options: dict) -> bool:
    """``W -= lr * a.T @ dy`` made by the backward of ``W``'s one product (one BLAS call with
    ``beta = 1``, :func:`dlrun.ops.linear.matmul_bwd_sgd_cpu`) instead of a gradient array
    and an update. Only where nothing else needs the gradient: the optimizer is plain SGD
    (the caller then gives ``options["sgd_lr"]``, the placeholder of the learning rate), the
    weight is read by that one product only, it has no regulariser, and its gradient has
    no second contribution. The fused weights leave ``plan.grads``."""
    from dlrun.engine.core.plan import Step
    from dlrun.ops.linear import matmul_bwd_sgd_cpu

    lr = options.get("sgd_lr")
    if lr is None:
        return False
    touch = defaultdict(list)                  # id(tensor or slot) -> steps using it
    for s in plan.steps:
        for t in s.reads + s.writes:
            if t is not None:
                touch[id(t)].append(s)
    fused = []
    for p in plan.params:
        grad = plan.grads.get(p.id)
        if grad is None or p.regularizer is not None or len(touch[id(grad)]) != 1:
            continue                           # accumulated, or read by someone else
        step = touch[id(grad)][0]
        others = [s for s in touch[id(p)] if s is not step]
        if (not step.is_("matmul", "backward") or step.writes[1] is not grad
                or len(others) != 1 or not others[0].is_("matmul")):
            continue                           # W is read by more than its one product
        dy, a, w = step.reads
        plan.steps[plan.steps.index(step)] = Step(matmul_bwd_sgd_cpu, step.op,
                                                  "backward+sgd", [dy, a, w, lr], [],
                                                  [step.writes[0]])
        fused.append(p.id)
    for pid in fused:
        del plan.grads[pid]
    if fused:
        plan.extra_feeds.append(lr)
    return bool(fused)


def fuse_bias_activation(plan, options: dict) -> bool:
    """``bias_add`` then a one-input elementwise op of its result (an activation, a user's
    formula) -> one launch of the op's fused ``bias_add+<op>`` kernel
    (:func:`dlrun.ops.elementwise.fused_bias_forward`). The sum ``z`` is still written
    when anything else reads it (leaky_relu's and elu's backward do, relu's does not)."""
    from dlrun.engine.core.plan import Step
    from dlrun.ops.elementwise import fused_bias_forward

    steps = plan.steps
    readers = _readers(steps)
    kept = {id(t) for t in plan.keep}
    out, skip = [], set()
    for i, s in enumerate(steps):
        if i in skip:
            continue
        if s.is_("bias_add") and readers[id(s.writes[0])]:
            z = s.writes[0]
            j = readers[id(z)][0]
            act = steps[j]
            if (act.kind == "forward" and act.op.pointwise is not None
                    and len(act.op.inputs) == 1 and act.reads == [z] and act.seed_at is None):
                needed = id(z) in kept or len(readers[id(z)]) > 1
                y = act.writes[0]
                fused = fused_bias_forward(act.op).kernel(plan.backend.name)
                out.append(Step(fused, s.op, "fused", s.reads, act.attrs,
                                [z if needed else y, y], label=f"bias_add+{act.op.name}"))
                skip.add(j)
                continue
        out.append(s)
    plan.steps = out
    return bool(skip)


def alias_bias_grad(plan, options: dict) -> bool:
    """The backward of ``bias_add`` copies its incoming gradient to its input's: make them
    one buffer instead, and skip the copy (after that step nothing writes the incoming
    gradient, so the input's gradient may take it over)."""
    own = {id(g) for g in plan.grads.values()}
    rename = {}
    for s in plan.steps:
        s.reads = [rename.get(id(t), t) if t is not None else None for t in s.reads]
        s.writes = [rename.get(id(t), t) if t is not None else None for t in s.writes]
        if s.is_("bias_add", "backward") and s.writes[0] is not None:
            dy, dx = s.reads[0], s.writes[0]
            if dy is not plan.loss_grad and id(dx) not in own and id(dy) not in own:
                rename[id(dx)] = dy
                s.writes[0] = None
    return bool(rename)
