"""Check any op's backward kernel against finite differences, in float64.

Two checks, after Chainer's and PyTorch's:

* directional derivative: for a random direction ``v`` in input space and a random
  cotangent ``c`` on the output, the central difference of ``<c, f(x + h v)>`` must equal
  ``<v, J^T c>`` computed by the backward kernel;
* the full Jacobian, column by column, for inputs small enough (``max_elements``).
"""
from __future__ import annotations

import numpy as np

from dlrun.ops.registry import Op, OpError, get


class GradcheckError(OpError, AssertionError):
    """The backward kernel of an op disagrees with finite differences."""


def run_forward(op: Op, inputs, attrs: dict, seed: int = 0, device: str = "cpu"):
    """Allocate outputs from the shape rule and call the op's forward kernel."""
    from dlrun.ops.registry import Spec

    attrs = op.resolve_attrs(attrs)
    specs = op.infer([Spec(np.shape(x), np.asarray(x).dtype) for x in inputs], attrs)
    outs = [np.full(s.shape, np.nan if s.dtype.kind == "f" else 0, s.dtype) for s in specs]
    fwd, _ = op.kernels(device)
    fwd(*inputs, *attrs.values(), *((seed,) if op.rng else ()), *outs)
    return outs


def run_backward(op: Op, inputs, outs, dy, attrs: dict, wanted=None):
    """Call the op's backward kernel; returns one gradient (or None) per ``op.diff``."""
    attrs = op.resolve_attrs(attrs)
    named = dict(zip(op.inputs, inputs)) | dict(zip(op.outputs, outs))
    wanted = op.diff if wanted is None else wanted
    grads = [np.full(np.shape(named[d]), np.nan, named[d].dtype) if d in wanted else None
             for d in op.diff]
    op.backward(dy, *(named[s] for s in op.saves), *attrs.values(), *grads)
    return grads


def gradcheck(op_or_name, *inputs, eps: float = 1e-6, rtol: float = 1e-5,
              atol: float = 1e-7, max_elements: int = 64, seed: int = 0, **attrs) -> bool:
    """Verify an op's backward against central finite differences in float64.

    Parameters
    ----------
    op_or_name : a registered op's name or a :class:`dlrun.ops.Op`.
    *inputs : the op's input arrays (floating inputs are cast to float64).
    eps, rtol, atol : finite-difference step and tolerances.
    max_elements : also compare the full Jacobian when every differentiable input has at
        most this many elements.
    **attrs : the op's attributes.

    Returns True, or raises :class:`GradcheckError` naming the input that disagrees.
    """
    op = get(op_or_name)
    if op.backward is None:
        raise OpError(f"op {op.name!r} has no backward kernel to check")
    if len(inputs) != len(op.inputs):
        raise OpError(f"gradcheck({op.name!r}) needs {len(op.inputs)} inputs {op.inputs}, "
                      f"got {len(inputs)}")
    xs = [np.array(x, np.float64) if np.asarray(x).dtype.kind == "f" else np.array(x)
          for x in inputs]
    rng = np.random.default_rng(seed)

    def f(vals):
        return run_forward(op, vals, attrs, seed)[0]

    y = f(xs)
    c = np.asarray(rng.standard_normal(y.shape))
    grads = run_backward(op, xs, run_forward(op, xs, attrs, seed), c, attrs)
    for name, g in zip(op.diff, grads):
        if g is not None and not np.all(np.isfinite(g)):
            raise GradcheckError(f"{op.name}: gradient of {name!r} has NaN/inf "
                                 "(did the kernel skip elements?)")
    diff_idx = [op.inputs.index(d) for d in op.diff]

    def probe(direction):
        plus = [x + eps * d if d is not None else x for x, d in zip(xs, direction)]
        minus = [x - eps * d if d is not None else x for x, d in zip(xs, direction)]
        return float(np.sum(c * (f(plus) - f(minus))) / (2 * eps))

    # 1. one random direction through every differentiable input at once
    dirs = [None] * len(xs)
    for k in diff_idx:
        dirs[k] = rng.standard_normal(xs[k].shape)
    numeric = probe(dirs)
    analytic = float(sum(np.sum(dirs[k] * g) for k, g in zip(diff_idx, grads)))
    if not np.isclose(numeric, analytic, rtol=rtol * 10, atol=atol * 10):
        raise GradcheckError(f"{op.name}: directional derivative {numeric:.8g} (finite "
                             f"differences) != {analytic:.8g} (backward kernel)")
    # 2. the full vector-Jacobian product, one element at a time, when small
    for k, g in zip(diff_idx, grads):
        if xs[k].size > max_elements:
            continue
        num = np.zeros(xs[k].size)
        for i in range(xs[k].size):
            d = [None] * len(xs)
            d[k] = np.zeros(xs[k].size)
            d[k][i] = 1.0
            d[k] = d[k].reshape(xs[k].shape)
            num[i] = probe(d)
        num = num.reshape(xs[k].shape)
        if not np.allclose(num, g, rtol=rtol, atol=atol):
            worst = np.unravel_index(np.argmax(np.abs(num - g)), g.shape)
            raise GradcheckError(
                f"{op.name}: gradient of {op.inputs[k]!r} differs from finite differences "
                f"at index {worst}: backward {g[worst]:.8g}, numeric {num[worst]:.8g}")
    return True
