"""Autodiff, the planner and the executor.

A :class:`Plan` is made once per (input shape, mode): it orders the forward nodes, derives
the backward pass from each op's backward kernel, lets the device's rewrites
(:mod:`~dlrun.engine.core.rewrites`) change the list of calls, works out how long every
array must live, gives it a buffer from a pool (arrays whose lives do not overlap share
memory) and binds every kernel call to its buffers. :meth:`Plan.run` replays that list of
calls, so a training step allocates nothing.

Everything that depends on the device goes through the plan's backend
(:mod:`~dlrun.engine.core.backend`): which kernels run, where buffers live, what happens
before the calls (a GPU copies the batch up) and how results come back.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from dlrun.engine.core.graph import Parameter, Tensor, topological_order
from dlrun.errors import ConfigError
from dlrun.ops import get as get_op


class Grad:
    """The gradient array of a tensor, or a scratch one when a value is used twice."""

    def __init__(self, of: Tensor):
        self.of = of
        self.shape, self.dtype = of.shape, of.dtype


class Step:
    """One kernel call: ``fn(*args)``, with args laid out as ``reads + attrs + writes``.

    ``op`` is the op the call belongs to and ``kind`` what it does for it (``forward``,
    ``backward``, ``accumulate``, or what a rewrite made of it, e.g. ``backward+sgd``);
    rewrites match on those. ``label`` names the call in :meth:`Plan.describe`.
    ``reads``/``writes`` are tensors or :class:`Grad` slots until the planner binds them to
    buffers; ``None`` marks a gradient the kernel should skip.
    """

    __slots__ = ("fn", "op", "kind", "label", "reads", "attrs", "writes", "args", "seed_at")

    def __init__(self, fn, op, kind, reads, attrs, writes, rng=False, label=None):
        self.fn, self.op, self.kind = fn, op, kind
        self.label = label or (op.name if kind == "forward" else f"{op.name}.{kind}")
        self.reads, self.attrs, self.writes = list(reads), list(attrs), list(writes)
        if rng:                                  # the seed is the last attribute
            self.attrs.append(0)
        self.seed_at = len(self.reads) + len(self.attrs) - 1 if rng else None
        self.args = None

    def is_(self, op_name: str, kind: str = "forward") -> bool:
        return self.op.name == op_name and self.kind == kind


class Plan:
    """The forward pass, and with ``loss`` given the backward pass, as bound kernel calls.

    Parameters
    ----------
    placeholders : data tensors the caller fills before each run (``plan.feed[t]``).
    outputs : tensors the caller reads after a run (``plan.value(t)``, ``plan.fetch``).
    params : every parameter of the model; the trainable ones that the loss depends on
        get a gradient (``plan.grad(p)``).
    loss : tensor to differentiate. A scalar's seed gradient is 1 (``set_loss_scale``
        changes it); any other tensor's is fed by the caller into ``plan.seed`` (a host
        array shaped like it), so a run computes the gradient of ``sum(seed * loss)``: the
        vector-Jacobian product, e.g. of one output unit or of a layer's mean.
    backend : where it runs (:mod:`~dlrun.engine.core.backend`); the CPU by default.
    options : what the device's rewrites may use: ``{"sgd_lr": placeholder}`` lets the CPU
        fuse a plain SGD update into the weight gradients' products, reading the learning
        rate from that placeholder (fed by the caller only when ``plan.fused`` is true).
    wrt : the tensors to differentiate with respect to, placeholders or parameters
        (trainable or not); by default the trainable parameters. Each that the loss
        depends on gets a gradient (``plan.grad(t)``).
    """

    def __init__(self, placeholders: list, outputs: list, params: list = (),
                 loss: Tensor | None = None, backend=None, options: dict | None = None,
                 wrt: list | None = None):
        if backend is None:
            from dlrun.engine.core.backend import CpuBackend

            backend = CpuBackend()
        self.backend = backend
        self.kernels_per_step = None          # kernel launches of one step, once measured
        keep = list(outputs) + ([loss] if loss is not None else [])
        self.nodes = topological_order(keep)
        self.params = list(params)
        self._wrt_given = wrt is not None
        self.wrt = list(wrt) if self._wrt_given else \
            [p for p in self.params if isinstance(p, Parameter) and p.trainable]
        self.seed = None                     # the caller's seed gradient (non-scalar loss)
        self.steps = [self._forward_step(n) for n in self.nodes]
        self.grads: dict[int, Grad] = {}
        self.loss_grad = None
        if loss is not None:
            self.steps += self._backward_steps(loss)
        self.keep = keep                     # what must outlive its last use
        self.extra_feeds: list = []          # placeholders that rewrites add
        self.fused: list = []                # names of the rewrites that changed something
        for rewrite in backend.rewrites:
            if rewrite(self, options or {}):
                self.fused.append(rewrite.__name__)
        self._bind(list(placeholders) + self.extra_feeds, keep + list(self.grads.values()))
        self._seeded = [s for s in self.steps if s.seed_at is not None]

    # -- building --------------------------------------------------------------------------
    def _forward_step(self, node) -> Step:
        fwd, _ = self.backend.kernels(node.op)
        return Step(fwd, node.op, "forward", node.inputs, node.attrs.values(), node.outputs,
                    rng=node.op.rng)

    def _backward_steps(self, loss: Tensor) -> list:
        live = self._grad_tensors(loss)
        self.loss_grad = Grad(loss)
        slot = {loss.id: self.loss_grad}
        add_op = get_op("add")
        add = self.backend.kernels(add_op)[0]
        steps = []
        for node in reversed(self.nodes):
            y = node.outputs[0]
            if y.id not in live:
                continue
            _, bwd = self.backend.kernels(node.op)
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
                    adds.append(Step(add, add_op, "accumulate", [slot[t.id], scratch], [],
                                     [slot[t.id]], label="accumulate"))
            steps.append(Step(bwd, node.op, "backward",
                              [slot[y.id]] + [named[s] for s in node.op.saves],
                              node.attrs.values(), grads))
            steps += adds
        self.grads = {t.id: slot[t.id] for t in self.wrt if t.id in slot}
        return steps

    def _grad_tensors(self, loss: Tensor) -> set:
        """Ids of tensors that need a gradient: downstream of a tensor of ``wrt`` (by
        default the trainable parameters) and upstream of the loss."""
        down = {t.id for t in self.wrt}
        for node in self.nodes:
            if any(t.id in down for t in _diff_inputs(node)):
                down.add(node.outputs[0].id)
        up = {loss.id}
        for node in reversed(self.nodes):
            if node.outputs[0].id in up:
                up.update(t.id for t in node.inputs)
        live = down & up
        if loss.id not in live:
            if not self._wrt_given:
                raise ConfigError("the loss does not depend on any trainable weight "
                                  "(is every layer frozen?)")
            raise ConfigError(f"{loss!r} does not depend, through differentiable ops, on "
                              f"any of {self.wrt}")
        return live

    # -- buffers ---------------------------------------------------------------------------
    def _fixed_buffers(self, placeholders) -> dict:
        """The buffers the plan does not pool: feeds, weights, the seed gradient, and the
        gradients a device lays out its own way."""
        be = self.backend
        self.feed, self.uploads, bufs = {}, [], {}
        for t in placeholders:
            host, buf = be.feed(t.shape, t.dtype)
            self.feed[t], bufs[id(t)] = host, buf
            if host is not buf:                 # the device reads a copy of the host's
                self.uploads.append((host, buf))
        bufs.update({id(p): be.param(p) for p in self.params})
        seed = self.loss_grad
        if seed is not None and seed.shape:     # the caller's vector, fed like the batch
            self.seed, bufs[id(seed)] = be.feed(seed.shape, seed.dtype)
            if self.seed is not bufs[id(seed)]:
                self.uploads.append((self.seed, bufs[id(seed)]))
        elif seed is not None:
            bufs[id(seed)] = be.constant(1.0, seed.dtype)
        layout = be.grad_buffers([p for p in self.params if p.id in self.grads])
        self.flat_grads = layout.pop("flat", None)
        bufs.update({id(self.grads[pid]): view for pid, view in layout.items()})
        return bufs

    def _bind(self, placeholders, keep) -> None:
        """Bind every step to buffers; an array goes back to the pool after its last use."""
        last = {}
        for i, s in enumerate(self.steps):
            for t in s.reads + s.writes:
                if t is not None:
                    last[id(t)] = i
        pinned = {id(t) for t in keep}
        bufs = self._fixed_buffers(placeholders)
        fixed = set(bufs)
        pool = defaultdict(list)              # (size, dtype) -> free flat arrays
        owned = {}                            # id -> its flat array, while live
        empty = self.backend.empty

        def buf(t):
            if t is None:
                return None
            k = id(t)
            if k not in bufs:
                if isinstance(t, Tensor) and t.node is None:
                    raise ConfigError(f"{t!r} is an input of the graph but was not given "
                                      "to the plan as a placeholder or parameter")
                if not t.shape:               # a scalar: its own 0-d array
                    bufs[k] = empty((), t.dtype)
                    return bufs[k]
                free = pool[(int(np.prod(t.shape)), np.dtype(t.dtype))]
                owned[k] = free.pop() if free else empty(int(np.prod(t.shape)), t.dtype)
                bufs[k] = owned[k].reshape(t.shape)
            return bufs[k]

        for i, s in enumerate(self.steps):
            s.args = [buf(t) for t in s.reads] + s.attrs + [buf(t) for t in s.writes]
            for t in s.reads + s.writes:
                k = id(t)
                if t is not None and last[k] == i and k not in pinned and k in owned:
                    flat = owned.pop(k)
                    pool[(flat.size, np.dtype(flat.dtype))].append(flat)
                    del bufs[k]
        self._bufs = bufs
        self.nbytes = sum(b.nbytes for k, b in bufs.items() if k not in fixed) + \
            sum(f.nbytes for lst in pool.values() for f in lst)

    # -- running ---------------------------------------------------------------------------
    def run(self, seed: int = 0) -> None:
        """Execute every call; ops with ``rng`` get a fresh seed derived from ``seed``. The
        backend starts first (a GPU copies the weights the host owns and the feeds up,
        queued: the call returns before the GPU is done; :meth:`fetch` waits)."""
        for k, s in enumerate(self._seeded):
            s.args[s.seed_at] = (seed * 0x9E3779B1 + k * 0x85EBCA77) & 0x7FFFFFFFFFFFFFFF
        self.backend.start(self)
        for s in self.steps:
            s.fn(*s.args)

    def value(self, t: Tensor):
        """The buffer holding ``t`` after a run (overwritten by the next run); on a GPU a
        device array (see :meth:`fetch`)."""
        return self._bufs[id(t)]

    def fetch(self, *tensors) -> list:
        """Host copies of tensors (or of buffers given in their place) after a run, after
        waiting for the device; on the CPU the buffers themselves."""
        return self.backend.fetch([self._bufs[id(t)] if isinstance(t, Tensor) else t
                                   for t in tensors])

    def grad(self, t: Tensor):
        """The gradient buffer of a tensor of ``wrt`` (by default a trainable parameter)
        after a run."""
        return self._bufs[id(self.grads[t.id])]

    def set_loss_scale(self, scale: float) -> None:
        self.backend.fill(self._bufs[id(self.loss_grad)], scale)

    def describe(self) -> str:
        """One line per kernel call, in execution order."""
        return "\n".join(s.label for s in self.steps)


def _diff_inputs(node) -> list:
    return [t for t, n in zip(node.inputs, node.op.inputs) if n in node.op.diff]
