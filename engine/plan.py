"""Autodiff, the planner and the executor.

A :class:`Plan` is made once per (input shape, mode): it orders the forward nodes, derives
the backward pass from each op's backward kernel, works out how long every array must
live, gives it a buffer from a pool (arrays whose lives do not overlap share memory) and
binds every kernel call to its buffers. :meth:`Plan.run` replays that list of calls, so a
training step allocates nothing.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from dlrun.engine.graph import Parameter, Tensor, topological_order
from dlrun.errors import ConfigError


class Grad:
    """The gradient array of a tensor, or a scratch one when a value is used twice."""

    def __init__(self, of: Tensor):
        self.of = of
        self.shape, self.dtype = of.shape, of.dtype


class Step:
    """One kernel call: ``fn(*args)``, with args laid out as ``reads + attrs + writes``.

    ``reads``/``writes`` are tensors or :class:`Grad` slots until the planner binds them to
    buffers; ``None`` marks a gradient the kernel should skip.
    """

    __slots__ = ("fn", "label", "reads", "attrs", "writes", "args", "seed_at")

    def __init__(self, fn, label, reads, attrs, writes, rng=False):
        self.fn, self.label = fn, label
        self.reads, self.attrs, self.writes = list(reads), list(attrs), list(writes)
        if rng:                                  # the seed is the last attribute
            self.attrs.append(0)
        self.seed_at = len(self.reads) + len(self.attrs) - 1 if rng else None
        self.args = None


class Plan:
    """The forward pass, and with ``loss`` given the backward pass, as bound kernel calls.

    Parameters
    ----------
    placeholders : data tensors the caller fills before each run (``plan.feed[t]``).
    outputs : tensors the caller reads after a run (``plan.value(t)``).
    params : every parameter of the model; the trainable ones that the loss depends on
        get a gradient (``plan.grad(p)``).
    loss : scalar tensor to differentiate; the seed gradient is ``plan.loss_scale``.
    """

    def __init__(self, placeholders: list, outputs: list, params: list = (),
                 loss: Tensor | None = None, device: str = "cpu"):
        self.device = device
        keep = list(outputs) + ([loss] if loss is not None else [])
        self.nodes = topological_order(keep)
        self.params = list(params)
        steps = [self._forward_step(n) for n in self.nodes]
        self.grads: dict[int, Grad] = {}
        self.loss_grad = None
        if loss is not None:
            steps += self._backward_steps(loss)
            keep += list(self.grads.values())
        self.steps = steps
        self._bind(placeholders, keep)
        self._seeded = [s for s in steps if s.seed_at is not None]

    # -- building --------------------------------------------------------------------------
    def _forward_step(self, node) -> Step:
        fwd, _ = node.op.kernels(self.device)
        return Step(fwd, node.op.name, node.inputs, node.attrs.values(), node.outputs,
                    rng=node.op.rng)

    def _backward_steps(self, loss: Tensor) -> list:
        live = self._grad_tensors(loss)
        self.loss_grad = Grad(loss)
        slot = {loss.id: self.loss_grad}
        steps = []
        for node in reversed(self.nodes):
            y = node.outputs[0]
            if y.id not in live:
                continue
            _, bwd = node.op.kernels(self.device)
            if bwd is None:
                raise ConfigError(f"op {node.op.name!r} has no backward kernel, so the "
                                  "weights before it cannot be trained")
            named = dict(zip(node.op.inputs, node.inputs)) | dict(zip(node.op.outputs,
                                                                      node.outputs))
            grads, adds = [], []
            for t in _diff_inputs(node):
                if t.id not in live:
                    grads.append(None)
                elif t.id not in slot:        # the first contribution writes in place
                    slot[t.id] = Grad(t)
                    grads.append(slot[t.id])
                else:                         # later ones go to scratch and are added
                    scratch = Grad(t)
                    grads.append(scratch)
                    adds.append(Step(np.add, "accumulate", [slot[t.id], scratch], [],
                                     [slot[t.id]]))
            steps.append(Step(bwd, node.op.name + ".backward",
                              [slot[y.id]] + [named[s] for s in node.op.saves],
                              node.attrs.values(), grads))
            steps += adds
        self.grads = {p.id: slot[p.id] for p in self.params if p.id in slot}
        return steps

    def _grad_tensors(self, loss: Tensor) -> set:
        """Ids of tensors that need a gradient: downstream of a trainable parameter and
        upstream of the loss."""
        down = {p.id for p in self.params if isinstance(p, Parameter) and p.trainable}
        for node in self.nodes:
            if any(t.id in down for t in _diff_inputs(node)):
                down.add(node.outputs[0].id)
        up = {loss.id}
        for node in reversed(self.nodes):
            if node.outputs[0].id in up:
                up.update(t.id for t in node.inputs)
        live = down & up
        if loss.id not in live:
            raise ConfigError("the loss does not depend on any trainable weight "
                              "(is every layer frozen?)")
        return live

    # -- buffers ---------------------------------------------------------------------------
    def _bind(self, placeholders, keep) -> None:
        """Bind every step to buffers; an array goes back to the pool after its last use."""
        last = {}
        for i, s in enumerate(self.steps):
            for t in s.reads + s.writes:
                if t is not None:
                    last[id(t)] = i
        pinned = {id(t) for t in keep}
        self.feed = {t: np.zeros(t.shape, t.dtype) for t in placeholders}
        bufs = {id(t): b for t, b in self.feed.items()}
        bufs.update({id(p): p.value for p in self.params})
        if self.loss_grad is not None:
            bufs[id(self.loss_grad)] = np.ones((), self.loss_grad.dtype)
        fixed = set(bufs)
        pool = defaultdict(list)              # (size, dtype) -> free flat arrays
        owned = {}                            # id -> its flat array, while live

        def buf(t):
            if t is None:
                return None
            k = id(t)
            if k not in bufs:
                if isinstance(t, Tensor) and t.node is None:
                    raise ConfigError(f"{t!r} is an input of the graph but was not given "
                                      "to the plan as a placeholder or parameter")
                size = int(np.prod(t.shape))
                free = pool[(size, np.dtype(t.dtype))]
                owned[k] = free.pop() if free else np.empty(size, t.dtype)
                bufs[k] = owned[k].reshape(t.shape)
            return bufs[k]

        for i, s in enumerate(self.steps):
            s.args = [buf(t) for t in s.reads] + s.attrs + [buf(t) for t in s.writes]
            for t in s.reads + s.writes:
                k = id(t)
                if t is not None and last[k] == i and k not in pinned and k in owned:
                    flat = owned.pop(k)
                    pool[(flat.size, flat.dtype)].append(flat)
                    del bufs[k]
            # keep the kept arrays reachable even when they were never pooled
        self._bufs = {k: b for k, b in bufs.items()}
        self._fixed = fixed
        self.nbytes = sum(b.nbytes for k, b in bufs.items() if k not in fixed) + \
            sum(f.nbytes for lst in pool.values() for f in lst)

    # -- running ---------------------------------------------------------------------------
    def run(self, seed: int = 0) -> None:
        """Execute every call; ops with ``rng`` get a fresh seed derived from ``seed``."""
        for k, s in enumerate(self._seeded):
            s.args[s.seed_at] = (seed * 0x9E3779B1 + k * 0x85EBCA77) & 0x7FFFFFFFFFFFFFFF
        for s in self.steps:
            s.fn(*s.args)

    def value(self, t: Tensor) -> np.ndarray:
        """The buffer holding ``t`` after a run (overwritten by the next run)."""
        return self._bufs[id(t)]

    def grad(self, p: Parameter) -> np.ndarray:
        """The gradient buffer of a trainable parameter after a training run."""
        return self._bufs[id(self.grads[p.id])]

    def set_loss_scale(self, scale: float) -> None:
        self._bufs[id(self.loss_grad)][()] = scale

    def describe(self) -> str:
        """One line per kernel call, in execution order."""
        return "\n".join(s.label for s in self.steps)


def _diff_inputs(node) -> list:
    return [t for t, n in zip(node.inputs, node.op.inputs) if n in node.op.diff]
