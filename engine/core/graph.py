"""Symbolic tensors and the graph they form.

A model is traced into a graph once per (input shape, mode): layers call :func:`apply`
on symbolic :class:`Tensor` objects, which runs the op's shape rule at once (so a bad
shape is reported where it is made) and records a :class:`Node`. Nothing is computed here;
the planner turns the graph into buffers and kernel calls.
"""
from __future__ import annotations

import itertools

import numpy as np

from dlrun.errors import ShapeError
from dlrun.ops import OpError, Spec, get

_ids = itertools.count()


class Tensor:
    """A symbolic array: produced by a node, or a source (placeholder or parameter)."""

    def __init__(self, spec: Spec, node: "Node | None" = None, index: int = 0, name: str = ""):
        self.spec = spec
        self.node = node
        self.index = index
        self.name = name
        self.id = next(_ids)

    @property
    def shape(self) -> tuple:
        return self.spec.shape

    @property
    def dtype(self) -> np.dtype:
        return self.spec.dtype

    def __repr__(self):
        src = self.node.op.name if self.node else type(self).__name__.lower()
        return f"<Tensor {self.name or src} {self.shape} {self.dtype}>"

    # Arithmetic with tensors and Python numbers, as Keras' backend tensors have (a loss
    # function's ``y_pred - y_true``): nodes made by dlrun.engine.functions, imported when
    # used (it imports this module). numpy defers to these rather than making object arrays.
    __array_ufunc__ = None

    def __add__(self, other):
        return _functions().add(self, other)

    def __radd__(self, other):
        return _functions().add(other, self)

    def __sub__(self, other):
        return _functions().subtract(self, other)

    def __rsub__(self, other):
        return _functions().subtract(other, self)

    def __mul__(self, other):
        return _functions().multiply(self, other)

    def __rmul__(self, other):
        return _functions().multiply(other, self)

    def __truediv__(self, other):
        return _functions().divide(self, other)

    def __rtruediv__(self, other):
        return _functions().divide(other, self)

    def __pow__(self, other):
        return _functions().pow(self, other)

    def __rpow__(self, other):
        return _functions().pow(other, self)

    def __neg__(self):
        return _functions().negative(self)


def _functions():
    from dlrun.engine import functions

    return functions


class Placeholder(Tensor):
    """Data fed each step (a batch of samples, labels or targets)."""


class StateFeed(Placeholder):
    """A placeholder the model fills itself before every run, with ``source(state)`` of its
    :class:`~dlrun.engine.models.training.TrainingState` (an annealed dropout rate, from the
    epoch): a value that changes between steps without a new plan."""

    def __init__(self, spec: Spec, source, name: str = ""):
        super().__init__(spec, name=name)
        self.source = source


# Bumped whenever a Parameter's trainable flag changes: a model compares it with the value
# its programs were made at, so a step's lookup stays one comparison.
_flag_changes = [0]


def trainable_changes() -> int:
    """How many times any Parameter's ``trainable`` flag has changed in this process."""
    return _flag_changes[0]


class Parameter(Tensor):
    """A weight array owned by a layer; the plan reads and the optimizer updates it in place."""

    def __init__(self, value: np.ndarray, name: str, trainable: bool = True,
                 regularizer=None):
        super().__init__(Spec(value.shape, value.dtype), name=name)
        # Where newer values are held (a GPU's DeviceStore, while the model trains there),
        # or None; ``host_value`` is the host array itself, read without that check.
        self.holder = None
        self.host_value = value
        self._trainable = bool(trainable)
        self.regularizer = regularizer      # adds a penalty on this weight to the loss

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if bool(value) != self._trainable:
            self._trainable = bool(value)
            _flag_changes[0] += 1

    @property
    def value(self) -> np.ndarray:
        """The weight array on the host. While a GPU holds newer values (a model training
        on ``cuda``), reading it copies them back first, and the next step on the GPU
        copies the host's values up again, so writing into it between steps works too."""
        if self.holder is not None:
            self.holder.to_host()
        return self.host_value

    @value.setter
    def value(self, array: np.ndarray) -> None:
        if self.holder is not None:
            self.holder.to_host()
        self.host_value = array


class Node:
    """One op applied to tensors, with its attributes and output tensors."""

    def __init__(self, op, inputs: list, attrs: dict, specs: list):
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        self.outputs = [Tensor(s, self, i) for i, s in enumerate(specs)]
        self.id = next(_ids)

    def __repr__(self):
        return f"<Node {self.op.name} {[t.shape for t in self.inputs]}>"


def apply(op_name, *inputs: Tensor, **attrs) -> Tensor:
    """Add a node running ``op_name`` on ``inputs``; returns its first output.

    Further outputs (auxiliaries such as softmax probabilities) are ``result.node.outputs``.
    """
    op = get(op_name)
    attrs = op.resolve_attrs(attrs)
    try:
        specs = op.infer([t.spec for t in inputs], attrs)
    except OpError as e:
        raise ShapeError(str(e)) from None
    return Node(op, list(inputs), attrs, specs).outputs[0]


def topological_order(outputs: list) -> list:
    """Nodes that ``outputs`` depend on, each after its inputs' producers (iterative DFS)."""
    order, done, stack = [], set(), []
    for t in outputs:
        if t.node is not None:
            stack.append((t.node, False))
    while stack:
        node, expanded = stack.pop()
        if node.id in done:
            continue
        if expanded:
            done.add(node.id)
            order.append(node)
            continue
        stack.append((node, True))
        for t in reversed(node.inputs):
            if t.node is not None and t.node.id not in done:
                stack.append((t.node, False))
    return order


def state_feeds(outputs: list) -> list:
    """The :class:`StateFeed` inputs of the graph computing ``outputs``, each once."""
    found = {}
    for node in topological_order(outputs):
        for t in node.inputs:
            if isinstance(t, StateFeed):
                found.setdefault(t.id, t)
    return list(found.values())
