"""Keras' backend functions (``K.mean``, ``K.square``...) on dlrun's symbolic tensors.

A user's loss function ``fn(y_true, y_pred)`` and a ``Lambda`` layer's function are Python
functions of symbolic tensors (:class:`dlrun.engine.core.graph.Tensor`); each function here
adds graph nodes, so what they build trains like any layer: every op has CPU and CUDA
kernels and a gradient check (:mod:`dlrun.ops.pointwise`, :mod:`dlrun.ops.axes`). The
tensors' arithmetic operators (``y_pred - y_true``, ``2 * x``, ``x ** 2``, ``-x``) come
here too.

Shapes follow numpy's broadcasting: a Python number goes with any tensor (as an attribute
of the op, not as an array), and two tensors of different shapes are broadcast to a
common one (``(batch, n)`` with ``(n,)`` or with ``(batch, 1)``).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from dlrun.engine.core.graph import Tensor, apply
from dlrun.errors import ConfigError, ShapeError
from dlrun.ops.losses import EPS


def epsilon() -> float:
    """The fuzz factor Keras' losses use (1e-7)."""
    return EPS


def _tensor(x, fn: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ConfigError(f"K.{fn} takes a symbolic tensor (what a loss function or a Lambda "
                          f"layer receives), got {type(x).__name__} {x!r:.60}")
    return x


def _number(x) -> float | None:
    """``x`` as a float when it is a Python or numpy number (a 0-d array too), else None."""
    if isinstance(x, numbers.Real):
        return float(x)
    if isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iuf":
        return float(x)
    return None


def _operands(a, b, fn: str):
    """(a, b) with at least one tensor: (tensor, tensor) broadcast to one shape, or a
    tensor and a float (in their order); anything else is refused."""
    fa, fb = _number(a), _number(b)
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return _broadcast(a, b, fn)
    if isinstance(a, Tensor) and fb is not None:
        return a, fb
    if isinstance(b, Tensor) and fa is not None:
        return fa, b
    bad = b if isinstance(a, Tensor) else a
    raise ConfigError(f"K.{fn} takes symbolic tensors and Python numbers, got "
                      f"{type(bad).__name__} {bad!r:.60}")


def _broadcast(a: Tensor, b: Tensor, fn: str):
    if a.shape == b.shape:
        return a, b
    try:
        shape = tuple(np.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise ShapeError(f"K.{fn}: tensors of shapes {a.shape} and {b.shape} do not "
                         "broadcast together (each axis, aligned at the right, must be 1 "
                         "or equal)") from None
    return tuple(t if t.shape == shape else apply("broadcast_to", t, shape=shape)
                 for t in (a, b))


# -- arithmetic (the tensors' operators) --------------------------------------------------
def _commutative(a, b, fn: str, op: str, with_number):
    """``op`` on two tensors, else ``with_number(tensor, number)``, in either order."""
    a, b = _operands(a, b, fn)
    if isinstance(a, float):
        a, b = b, a
    return apply(op, a, b) if isinstance(b, Tensor) else with_number(a, b)


def add(a, b):
    """a + b"""
    return _commutative(a, b, "add", "add", lambda t, c: apply("affine", t, offset=c))


def subtract(a, b):
    """a - b"""
    a, b = _operands(a, b, "subtract")
    if isinstance(a, float):
        return apply("affine", b, factor=-1.0, offset=a)
    return apply("sub", a, b) if isinstance(b, Tensor) else apply("affine", a, offset=-b)


def multiply(a, b):
    """a * b"""
    return _commutative(a, b, "multiply", "mul", lambda t, c: apply("scale", t, factor=c))


def divide(a, b):
    """a / b"""
    a, b = _operands(a, b, "divide")
    if isinstance(a, float):                  # a number over a tensor: a * b^-1
        return apply("scale", apply("pow", b, exponent=-1.0), factor=a)
    if isinstance(b, Tensor):
        return apply("div", a, b)
    if b == 0:
        raise ConfigError("K.divide: division of a tensor by the number 0")
    return apply("scale", a, factor=1.0 / b)


def negative(x):
    """-x"""
    return apply("scale", _tensor(x, "negative"), factor=-1.0)


def pow(x, a):  # noqa: A001  (Keras' name)
    """x ** a; a number ``a`` is the op's attribute; a tensor ``a`` (or a number raised to
    a tensor) is ``exp(a log x)``, for x > 0."""
    x, a = _operands(x, a, "pow")
    if isinstance(a, float):
        return apply("pow", x, exponent=a)
    if isinstance(x, float):
        if x <= 0:
            raise ConfigError(f"K.pow: a number raised to a tensor needs a base > 0, got {x}")
        return apply("exp", apply("scale", a, factor=math.log(x)))
    return apply("exp", apply("mul", a, apply("log", x)))


def maximum(a, b):
    """The elementwise maximum of two tensors, or of a tensor and a number."""
    return _commutative(a, b, "maximum", "maximum",
                        lambda t, c: apply("clip", t, lo=c, hi=math.inf))


def minimum(a, b):
    """The elementwise minimum of two tensors, or of a tensor and a number."""
    return _commutative(a, b, "minimum", "minimum",
                        lambda t, c: apply("clip", t, lo=-math.inf, hi=c))


# -- functions of one tensor ----------------------------------------------------------------
def square(x):
    """x ** 2"""
    return apply("square", _tensor(x, "square"))


def abs(x):  # noqa: A001  (Keras' name)
    """|x|"""
    return apply("abs", _tensor(x, "abs"))


def sqrt(x):
    """The square root (NaN below 0)."""
    return apply("sqrt", _tensor(x, "sqrt"))


def exp(x):
    """e ** x"""
    return apply("exp", _tensor(x, "exp"))


def log(x):
    """The natural logarithm (NaN below 0)."""
    return apply("log", _tensor(x, "log"))


def clip(x, min_value, max_value):
    """x clipped into [min_value, max_value] (``None`` for no bound)."""
    lo = -math.inf if min_value is None else _number(min_value)
    hi = math.inf if max_value is None else _number(max_value)
    if lo is None or hi is None or lo > hi:
        raise ConfigError(f"K.clip takes two numbers min_value <= max_value, got "
                          f"{min_value!r} and {max_value!r}")
    return apply("clip", _tensor(x, "clip"), lo=lo, hi=hi)


def relu(x, alpha: float = 0.0, max_value: float | None = None):
    """max(x, 0); below 0 ``alpha * x`` when alpha is given; at most ``max_value``."""
    x = _tensor(x, "relu")
    y = apply("leaky_relu", x, alpha=float(alpha)) if alpha else apply("relu", x)
    return y if max_value is None else apply("clip", y, lo=-math.inf, hi=float(max_value))


def sigmoid(x):
    """1 / (1 + e ** -x)"""
    return apply("sigmoid", _tensor(x, "sigmoid"))


def tanh(x):
    """The hyperbolic tangent."""
    return apply("tanh", _tensor(x, "tanh"))


def softmax(x, axis: int = -1):
    """The softmax along the last axis (the only one dlrun's op takes)."""
    x = _tensor(x, "softmax")
    if axis not in (-1, len(x.shape) - 1):
        raise ConfigError(f"K.softmax works along the last axis; got axis={axis} for a "
                          f"tensor of shape {x.shape}")
    return apply("softmax", x)


def dot(a, b):
    """The matrix product of two 2-D tensors."""
    a, b = _tensor(a, "dot"), _tensor(b, "dot")
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise ShapeError(f"K.dot multiplies 2-D tensors; got shapes {a.shape} and {b.shape}")
    return apply("matmul", a, b)


def reshape(x, shape):
    """x with a new shape (one axis may be -1)."""
    return apply("reshape", _tensor(x, "reshape"), shape=tuple(int(d) for d in shape))


# -- reductions -----------------------------------------------------------------------------
def _axes(x: Tensor, axis, fn: str) -> list:
    """The axes to reduce, non-negative, largest first (so each stays valid)."""
    nd = len(x.shape)
    if axis is None:
        return list(range(nd - 1, -1, -1))
    given = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    out = set()
    for a in given:
        if not isinstance(a, numbers.Integral) or not -nd <= a < nd:
            raise ConfigError(f"K.{fn}: axis {a!r} is not an axis of a tensor of shape "
                              f"{x.shape}")
        out.add(int(a) % nd)
    return sorted(out, reverse=True)


def _reduce(x, axis, keepdims: bool, fn: str, op: str, whole: str | None):
    """``x`` reduced by ``op`` along ``axis`` (one, several, or None for all): the op
    ``whole`` when every axis goes and it exists, else one axis at a time."""
    x = _tensor(x, fn)
    axes = _axes(x, axis, fn)
    shape = x.shape
    if whole is not None and len(axes) == len(shape):
        y = apply(whole, x)
    else:
        y = x
        for a in axes:
            vector = len(y.shape) == 1        # the ops reduce arrays of 2 axes or more
            y = apply(op, apply("reshape", y, shape=(1, -1)) if vector else y,
                      axis=1 if vector else a)
            if vector:
                y = apply("reshape", y, shape=())
    if keepdims:
        y = apply("reshape", y, shape=tuple(1 if d in axes else n for d, n in enumerate(shape)))
    return y


def sum(x, axis=None, keepdims: bool = False):  # noqa: A001  (Keras' name)
    """The sum along ``axis`` (an int, a list, or None for every axis)."""
    return _reduce(x, axis, keepdims, "sum", "reduce_sum", "sum")


def mean(x, axis=None, keepdims: bool = False):
    """The mean along ``axis`` (an int, a list, or None for every axis)."""
    return _reduce(x, axis, keepdims, "mean", "reduce_mean", "mean")


def max(x, axis=None, keepdims: bool = False):  # noqa: A001  (Keras' name)
    """The maximum along ``axis``; its gradient goes to the first maximum."""
    return _reduce(x, axis, keepdims, "max", "reduce_max", None)


def min(x, axis=None, keepdims: bool = False):  # noqa: A001  (Keras' name)
    """The minimum along ``axis`` (minus the maximum of -x)."""
    return negative(max(negative(x), axis, keepdims))


__all__ = ["epsilon", "add", "subtract", "multiply", "divide", "negative", "pow", "maximum",
           "minimum", "square", "abs", "sqrt", "exp", "log", "clip", "relu", "sigmoid",
           "tanh", "softmax", "dot", "reshape", "sum", "mean", "max", "min"]
