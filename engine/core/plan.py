"""Autodiff, the planner and the executor.

A :class:`Plan` is made once per (input shape, mode): it orders the forward nodes, derives
the backward pass from each op's backward kernel, works out how long every array must
live, gives it a buffer from a pool (arrays whose lives do not overlap share memory) and
binds every kernel call to its buffers. :meth:`Plan.run` replays that list of calls, so a
training step allocates nothing.

On ``cuda`` the buffers are device arrays allocated once per plan, the parameters are
views into the model's :class:`~dlrun.engine.core.device.DeviceStore`, and the trainable
parameters' gradients are views of one flat buffer per dtype (so the optimizer updates all
of them with one launch). ``plan.feed`` is then pinned host memory, copied up at the start
of :meth:`Plan.run`; :meth:`Plan.fetch` brings outputs back. Two rewrites cut launches:
``bias_add`` followed by an activation runs as one fused kernel, and the backward of
``bias_add`` writes no copy of its incoming gradient (its input's gradient is the same
buffer).
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
    device : ``'cpu'`` or ``'cuda'``.
    store : on ``cuda``, the :class:`~dlrun.engine.core.device.DeviceStore` holding ``params``.
    """

    def __init__(self, placeholders: list, outputs: list, params: list = (),
                 loss: Tensor | None = None, device: str = "cpu", store=None):
        if device == "cuda" and store is None:
            raise ConfigError("a plan on 'cuda' needs the DeviceStore of its parameters")
        self.device = device
        self.store = store
        self.kernels_per_step = None          # kernel launches of one step, once measured
        keep = list(outputs) + ([loss] if loss is not None else [])
        self.nodes = topological_order(keep)
        self.params = list(params)
        steps = [self._forward_step(n) for n in self.nodes]
        self.grads: dict[int, Grad] = {}
        self.loss_grad = None
        if loss is not None:
            steps += self._backward_steps(loss)
            keep += list(self.grads.values())
        if device == "cuda":
            steps = _fuse_bias_activation(steps, keep)
            steps = _alias_bias_grad(steps, self.loss_grad, self.grads)
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
                    add = np.add if self.device == "cpu" else get_op("add").cuda_forward
                    adds.append(Step(add, "accumulate", [slot[t.id], scratch], [],
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
        if self.device == "cuda":
            bufs, empty = self._device_buffers(placeholders)
        else:
            self.feed = {t: np.zeros(t.shape, t.dtype) for t in placeholders}
            bufs = {id(t): b for t, b in self.feed.items()}
            bufs.update({id(p): p.value for p in self.params})
            if self.loss_grad is not None:
                bufs[id(self.loss_grad)] = np.ones((), self.loss_grad.dtype)
            empty = np.empty
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
                if not t.shape and self.device == "cuda":   # a scalar: its own 0-d array
                    bufs[k] = empty((), t.dtype)
                    return bufs[k]
                free = pool[(size, np.dtype(t.dtype))]
                owned[k] = free.pop() if free else empty(size, t.dtype)
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
        self._host = {}                        # on cuda: pinned host copies for fetch()
        self.nbytes = sum(b.nbytes for k, b in bufs.items() if k not in fixed) + \
            sum(f.nbytes for lst in pool.values() for f in lst)

    def _device_buffers(self, placeholders) -> tuple[dict, callable]:
        """On cuda: pinned feeds and their device twins, the parameters' views in the
        store, the seed gradient, and the trainable gradients as views of flat buffers."""
        cuda, store = self.store.cuda, self.store
        # the kernels' stream, so copies queue in order with them (the simulator has none)
        self.stream = getattr(cuda, "default_stream", cuda.stream)()
        self.feed, self._dfeed = {}, {}
        for t in placeholders:
            self.feed[t] = cuda.pinned_array(t.shape, t.dtype)
            self.feed[t][...] = 0
            self._dfeed[t] = cuda.device_array(t.shape, t.dtype)
        bufs = {id(t): b for t, b in self._dfeed.items()}
        bufs.update({id(p): store.dev[p.id] for p in self.params})
        if self.loss_grad is not None:
            bufs[id(self.loss_grad)] = cuda.to_device(np.ones((), self.loss_grad.dtype))
        self.flat_grads = None
        trained = [p for p in self.params if p.id in self.grads]
        if trained and [p.id for p in trained] == [p.id for p in store.trainable]:
            from dlrun.engine.core.device import _pack

            self.flat_grads, views = _pack(cuda, [np.empty(p.shape, p.dtype) for p in trained],
                                           [p.id for p in trained])
            bufs.update({id(self.grads[p.id]): views[p.id] for p in trained})
        return bufs, cuda.device_array

    # -- running ---------------------------------------------------------------------------
    def run(self, seed: int = 0) -> None:
        """Execute every call; ops with ``rng`` get a fresh seed derived from ``seed``. On
        cuda the weights (when the host owns them) and the feeds are copied up first, the
        feeds queued: the call returns before the GPU is done; :meth:`fetch` waits."""
        for k, s in enumerate(self._seeded):
            s.args[s.seed_at] = (seed * 0x9E3779B1 + k * 0x85EBCA77) & 0x7FFFFFFFFFFFFFFF
        if self.device == "cuda":
            self.store.to_device()             # weights the host owns now go up first
            for t, host in self.feed.items():
                self._dfeed[t].copy_to_device(host, stream=self.stream)
        for s in self.steps:
            s.fn(*s.args)

    def value(self, t: Tensor) -> np.ndarray:
        """The buffer holding ``t`` after a run (overwritten by the next run); on cuda a
        device array (see :meth:`fetch`)."""
        return self._bufs[id(t)]

    def fetch(self, *tensors) -> list:
        """Host copies of tensors after a run, after waiting for the GPU (on the CPU, the
        buffers themselves); a device array may be given in place of a tensor. Each copy
        is reused by the next fetch."""
        if self.device != "cuda":
            return [self._bufs[id(t)] for t in tensors]
        out = []
        for t in tensors:
            dev = self._bufs[id(t)] if isinstance(t, Tensor) else t
            host = self._host.get(id(t))
            if host is None:
                host = self._host[id(t)] = self.store.cuda.pinned_array(dev.shape, dev.dtype)
            dev.copy_to_host(host, stream=self.stream)
            out.append(host)
        self.stream.synchronize()
        return out

    def grad(self, p: Parameter) -> np.ndarray:
        """The gradient buffer of a trainable parameter after a training run."""
        return self._bufs[id(self.grads[p.id])]

    def set_loss_scale(self, scale: float) -> None:
        buf = self._bufs[id(self.loss_grad)]
        if self.device == "cuda":
            buf.copy_to_device(np.full((), scale, buf.dtype))
        else:
            buf[()] = scale

    def describe(self) -> str:
        """One line per kernel call, in execution order."""
        return "\n".join(s.label for s in self.steps)


# activations the planner fuses with the bias_add before them, on cuda
_FUSABLE = ("relu", "sigmoid", "tanh", "leaky_relu", "elu")


def _fuse_bias_activation(steps: list, keep: list) -> list:
    """``bias_add`` then an activation of its result -> one ``bias_act`` launch. The sum
    ``z`` is still written when anything else reads it (leaky_relu's and elu's backward do,
    relu's does not)."""
    from dlrun.ops.fused import ACTIVATIONS, bias_act_fwd_cuda

    readers = defaultdict(list)
    for i, s in enumerate(steps):
        for t in s.reads:
            if t is not None:
                readers[id(t)].append(i)
    kept = {id(t) for t in keep}
    out, skip = [], set()
    for i, s in enumerate(steps):
        if i in skip:
            continue
        if s.label == "bias_add" and len(readers[id(s.writes[0])]) >= 1:
            z = s.writes[0]
            j = readers[id(z)][0]
            act = steps[j]
            if act.label in _FUSABLE and act.reads == [z] and act.seed_at is None:
                alpha = act.attrs[0] if act.attrs else 0.0
                needed = id(z) in kept or len(readers[id(z)]) > 1
                y = act.writes[0]
                out.append(Step(bias_act_fwd_cuda, f"bias_add+{act.label}", s.reads,
                                [ACTIVATIONS[act.label], float(alpha)],
                                [z if needed else y, y]))
                skip.add(j)
                continue
        out.append(s)
    return out


def _alias_bias_grad(steps: list, loss_grad, param_grads: dict) -> list:
    """The backward of ``bias_add`` copies its incoming gradient to its input's: make them
    one buffer instead, and skip the copy (after that step nothing writes the incoming
    gradient, so the input's gradient may take it over)."""
    own = {id(g) for g in param_grads.values()}
    rename = {}
    for s in steps:
        s.reads = [rename.get(id(t), t) if t is not None else None for t in s.reads]
        s.writes = [rename.get(id(t), t) if t is not None else None for t in s.writes]
        if s.label == "bias_add.backward" and s.writes[0] is not None:
            dy, dx = s.reads[0], s.writes[0]
            if dy is not loss_grad and id(dx) not in own and id(dy) not in own:
                rename[id(dx)] = dy
                s.writes[0] = None
    return steps


def _diff_inputs(node) -> list:
    return [t for t, n in zip(node.inputs, node.op.inputs) if n in node.op.diff]
