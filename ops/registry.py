"""The op contract and the registry: the one place that knows which kernel runs where.

An op is one :class:`Op` record. Its kernels follow one calling convention, which the
engine (and :func:`dlrun.ops.gradcheck`) relies on::

    forward(*inputs, *attr_values, *outputs)             # writes every output
    backward(dy, *saved, *attr_values, *grads)           # writes each grad not None

``inputs``/``outputs`` are the op's declared names in order; ``saved`` are the arrays named
in ``saves`` (any of the input and output names), in that order; ``grads`` has one buffer
per name in ``diff`` (the differentiable inputs), ``None`` where no gradient is wanted.
The first output is the op's result; further outputs are auxiliaries the backward needs
(a dropout mask, softmax probabilities) and have no gradient. Kernels overwrite their
buffers: they never allocate, and never accumulate into a gradient (the engine sums
gradients of a value used twice). An op with ``rng=True`` receives one more attribute,
``seed`` (an integer), after its declared ones; the engine changes it every call.

Kernels that are not ops (optimizer updates, metric counts, the planner's fused kernels)
are :class:`Twin` records, kept here too: the CUDA checks run every op and every twin.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dlrun.errors import DlrunError


@dataclass(frozen=True)
class Spec:
    """Shape and dtype of one array."""

    shape: tuple
    dtype: np.dtype

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))


class OpError(DlrunError, ValueError):
    """An op was given inputs or attributes it cannot take."""


@dataclass(frozen=True)
class Op:
    """One primitive: its shape rule, what its backward saves, and its kernels per device.

    Parameters
    ----------
    name : registry key.
    inputs, outputs : names of the positional arrays (first output = the result).
    shape : ``shape(*input_specs, **attrs) -> [Spec, ...]``, one per output; raises
        :class:`OpError` for inputs the op cannot take. Checked before any kernel runs.
    forward, backward : CPU kernels (see the module docstring for the convention).
    saves : names of inputs/outputs the backward reads, in its argument order.
    diff : inputs that have a gradient (default: all).
    attrs : attribute names and defaults, in kernel argument order.
    cuda_forward, cuda_backward : the CUDA twins, same convention, on device arrays.
    rng : the forward takes a per-call ``seed`` attribute.
    sample : ``sample(rng, dtype) -> (inputs, attrs)`` small inputs for tests.
    reference : ``reference(*inputs, **attrs) -> tuple of outputs``, in plain numpy.
    big_sample : like ``sample``, inputs that span several CUDA blocks and grid-stride
        rounds at the parity check's block size (default: none, ``sample`` only).
    pointwise : the :class:`dlrun.ops.elementwise.Elementwise` (scalar formulas) the op
        was made from, if any; the planner fuses such ops with the ``bias_add`` before.
    """

    name: str
    inputs: tuple
    shape: Callable
    forward: Callable
    backward: Callable | None = None
    outputs: tuple = ("y",)
    saves: tuple = ()
    diff: tuple | None = None
    attrs: dict = field(default_factory=dict)
    cuda_forward: Callable | None = None
    cuda_backward: Callable | None = None
    rng: bool = False
    sample: Callable | None = None
    reference: Callable | None = None
    big_sample: Callable | None = None
    pointwise: Any = None

    def __post_init__(self):
        known = set(self.inputs) | set(self.outputs)
        bad = [s for s in self.saves if s not in known]
        if bad:
            raise OpError(f"op {self.name!r}: saves {bad} are neither inputs {self.inputs} "
                          f"nor outputs {self.outputs}")
        if self.diff is None:
            object.__setattr__(self, "diff", tuple(self.inputs))
        bad = [d for d in self.diff if d not in self.inputs]
        if bad:
            raise OpError(f"op {self.name!r}: diff {bad} are not inputs {self.inputs}")

    # -- helpers the engine and gradcheck share -------------------------------------------
    def resolve_attrs(self, attrs: dict) -> dict:
        """Declared attributes with defaults filled in; unknown names are refused."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise OpError(f"op {self.name!r} got unknown attribute(s) {sorted(unknown)}; "
                          f"it takes {list(self.attrs) or 'none'}")
        return {k: attrs.get(k, v) for k, v in self.attrs.items()}

    def infer(self, specs: list, attrs: dict) -> list:
        """Run the shape rule on input specs; returns one Spec per output."""
        if len(specs) != len(self.inputs):
            raise OpError(f"op {self.name!r} takes {len(self.inputs)} inputs "
                          f"{self.inputs}, got {len(specs)}")
        out = self.shape(*specs, **attrs)
        if len(out) != len(self.outputs):
            raise OpError(f"op {self.name!r}: shape rule returned {len(out)} specs for "
                          f"outputs {self.outputs}")
        return list(out)

    def kernels(self, device: str = "cpu") -> tuple:
        """(forward, backward) for a device."""
        if device == "cpu":
            return self.forward, self.backward
        if device == "cuda":
            if self.cuda_forward is None:
                raise OpError(f"op {self.name!r} has no CUDA kernels")
            return self.cuda_forward, self.cuda_backward
        raise OpError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")


# -- twins: kernels outside the op registry ------------------------------------------------
@dataclass(frozen=True)
class Twin:
    """A kernel that is not an op (an optimizer update, a metric count, a fused kernel the
    planner substitutes), with its CUDA twin: one calling convention on both devices.

    Parameters
    ----------
    name : registry key.
    cpu, cuda : ``kernel(*args)``, the same arguments on both devices.
    writes : positions in ``args`` the kernel writes (in place, or outputs).
    sample : ``sample(rng, dtype) -> args``, NumPy arrays and scalars spanning several
        CUDA blocks at the parity check's block size; or a list of such ``args``, one
        per case worth checking (each branch of the kernel).
    outputs : those of ``writes`` that are only written, never read (the checks fill them
        with NaN first, so an element left unwritten shows).
    no_cuda : why there is no CUDA kernel, when ``cuda`` is None.
    of : the op it was made from (removed with it), if any.
    """

    name: str
    cpu: Callable
    cuda: Callable | None
    writes: tuple
    sample: Callable
    outputs: tuple = ()
    no_cuda: str = ""
    of: str | None = None

    def __post_init__(self):
        if self.cuda is None and not self.no_cuda:
            raise OpError(f"twin {self.name!r} has no CUDA kernel; say why in no_cuda")
        bad = [k for k in self.outputs if k not in self.writes]
        if bad:
            raise OpError(f"twin {self.name!r}: outputs {bad} are not in writes {self.writes}")

    def kernel(self, device: str = "cpu") -> Callable:
        """The kernel for a device."""
        if device == "cpu":
            return self.cpu
        if device == "cuda":
            if self.cuda is None:
                raise OpError(f"kernel {self.name!r} has no CUDA twin: {self.no_cuda}")
            return self.cuda
        raise OpError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")


# -- the registries ----------------------------------------------------------------------
class _Records:
    """Records of one class by name: the registry of ops, or of twins."""

    def __init__(self, cls, kind: str):
        self.cls, self.kind, self.by_name = cls, kind, {}

    def add(self, record, replace: bool, caller: str):
        if not isinstance(record, self.cls):
            raise OpError(f"{caller}() takes a dlrun.ops.{self.cls.__name__}, got "
                          f"{type(record).__name__}")
        if record.name in self.by_name and not replace:
            raise OpError(f"{self.kind} named {record.name!r} is already registered; "
                          "pass replace=True to override it")
        self.by_name[record.name] = record
        return record

    def find(self, name):
        try:
            return self.by_name[name]
        except KeyError:
            raise OpError(f"unknown {self.kind.split()[-1]} {name!r}; registered: "
                          f"{', '.join(sorted(self.by_name))}") from None
        except TypeError:
            raise OpError(f"expected a name or dlrun.ops.{self.cls.__name__}, "
                          f"got {name!r}") from None


_OPS = _Records(Op, "an op")
_TWINS = _Records(Twin, "a kernel")


def register(op: Op, *, replace: bool = False) -> Op:
    """Add an op to the registry (users register their own ops the same way)."""
    return _OPS.add(op, replace, "register")


def unregister(name: str) -> None:
    """Remove a user op (mainly for tests), with the twins made from it."""
    _OPS.by_name.pop(name, None)
    for twin in [t for t in _TWINS.by_name.values() if t.of == name]:
        del _TWINS.by_name[twin.name]


def get(name_or_op: Any) -> Op:
    """The op record for a name (or the record itself)."""
    return name_or_op if isinstance(name_or_op, Op) else _OPS.find(name_or_op)


def names() -> list[str]:
    return sorted(_OPS.by_name)


def register_twin(twin: Twin, *, replace: bool = False) -> Twin:
    """Add a twin record; the CUDA parity and PTX checks run every one."""
    return _TWINS.add(twin, replace, "register_twin")


def get_twin(name: str) -> Twin:
    """The twin record for a name."""
    return _TWINS.find(name)


def twin_names() -> list[str]:
    return sorted(_TWINS.by_name)


def same_shape(x: Spec, **_) -> list:
    """Shape rule of elementwise unary ops: the output is like the input."""
    return [Spec(x.shape, x.dtype)]


def check_float(op: str, **specs: Spec) -> None:
    for name, s in specs.items():
        if s.dtype.kind != "f":
            raise OpError(f"op {op!r}: input {name!r} must be floating point, got {s.dtype}")
