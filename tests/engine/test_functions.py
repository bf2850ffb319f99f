"""dlrun.backend (engine/functions.py): every function and operator on symbolic tensors,
run through a real plan in float64, against the same expression on numpy arrays (a numpy
namespace written here), and its gradient against central finite differences; then the
errors a user can cause."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from dlrun import backend as K
from dlrun.engine.core.graph import Parameter, Placeholder, apply
from dlrun.engine.core.plan import Plan
from dlrun.errors import ConfigError, ShapeError
from dlrun.ops import Spec


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _relu(x, alpha=0.0, max_value=None):
    y = np.where(x > 0, x, alpha * x)
    return y if max_value is None else np.minimum(y, max_value)


# the numpy counterpart of each K function
NP = SimpleNamespace(
    mean=np.mean, sum=np.sum, max=np.max, min=np.min, square=np.square, abs=np.abs,
    sqrt=np.sqrt, exp=np.exp, log=np.log, maximum=np.maximum, minimum=np.minimum,
    clip=np.clip, pow=np.power, dot=np.dot, softmax=_softmax, relu=_relu,
    sigmoid=lambda x: 1 / (1 + np.exp(-x)), tanh=np.tanh, reshape=np.reshape,
    epsilon=lambda: 1e-7)

# (id, expression of the namespace k and the inputs, the inputs' shapes, their range)
CASES = [
    ("mse", lambda k, a, b: k.mean(k.square(a - b), axis=-1), [(3, 4), (3, 4)], (-2, 2)),
    ("mean-all", lambda k, a: k.mean(a), [(3, 4)], (-2, 2)),
    ("mean-keepdims", lambda k, a: k.mean(a, axis=1, keepdims=True), [(2, 3, 4)], (-2, 2)),
    ("sum-axes", lambda k, a: k.sum(a, axis=(0, 2)), [(2, 3, 4)], (-2, 2)),
    ("sum-all-keepdims", lambda k, a: k.sum(a, keepdims=True), [(3, 4)], (-2, 2)),
    ("max-axis0", lambda k, a: k.max(a, axis=0), [(3, 4)], (-2, 2)),
    ("max-all", lambda k, a: k.max(a), [(3, 4)], (-2, 2)),
    ("min-last", lambda k, a: k.min(a, axis=-1, keepdims=True), [(3, 4)], (-2, 2)),
    ("abs-sqrt", lambda k, a: k.sqrt(k.abs(a) + 0.5), [(3, 4)], (-2, 2)),
    ("exp-log", lambda k, a: k.log(a) * k.exp(-a), [(3, 4)], (0.2, 2)),
    ("maximum", lambda k, a, b: k.maximum(a, b) + k.minimum(a, 0.5), [(3, 4), (3, 4)],
     (-2, 2)),
    ("maximum-number", lambda k, a: k.maximum(1.0 - a, 0.0), [(3, 4)], (-2, 2)),
    ("clip", lambda k, a: k.clip(a, -0.5, 1.0), [(3, 4)], (-2, 2)),
    ("clip-epsilon", lambda k, a: k.log(k.clip(a, k.epsilon(), 1.0)), [(3, 4)], (0.05, 2)),
    ("pow", lambda k, a: k.pow(a, 1.5) + a ** 2, [(3, 4)], (0.2, 2)),
    ("pow-tensor", lambda k, a, b: a ** b + 2.0 ** b, [(3, 4), (3, 4)], (0.2, 2)),
    ("dot", lambda k, a, b: k.dot(a, b), [(3, 4), (4, 2)], (-2, 2)),
    ("softmax", lambda k, a: k.softmax(a), [(3, 4)], (-2, 2)),
    ("relu", lambda k, a: k.relu(a, alpha=0.1, max_value=1.0) + k.relu(a), [(3, 4)],
     (-2, 2)),
    ("sigmoid-tanh", lambda k, a: k.sigmoid(a) * k.tanh(a), [(3, 4)], (-2, 2)),
    ("numbers", lambda k, a: (2.0 - a) / 4 + 1 / (a + 3) - (-a) * 0.5, [(3, 4)], (-2, 2)),
    ("divide", lambda k, a, b: a / b, [(3, 4), (3, 4)], (0.5, 2)),
    ("broadcast-row", lambda k, a, b: a * b - b, [(3, 4), (4,)], (-2, 2)),
    ("broadcast-column", lambda k, a: a - k.max(a, axis=-1, keepdims=True), [(3, 4)],
     (-2, 2)),
    ("broadcast-both", lambda k, a, b: a + b, [(3, 1), (1, 4)], (-2, 2)),
    ("reshape", lambda k, a: k.reshape(a, (2, 6)) * 3, [(3, 4)], (-2, 2)),
]


def _central(f, v, d, h=1e-6) -> float:
    saved = v.copy()
    v[...] = saved + h * d
    plus = f()
    v[...] = saved - h * d
    minus = f()
    v[...] = saved
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_function_matches_numpy_and_its_gradient_finite_differences(case):
    _, expr, shapes, (lo, hi) = case
    rng = np.random.default_rng(0)
    values = [rng.uniform(lo, hi, s) for s in shapes]
    for v in values:            # away from kinks (0, the clips' bounds, ties)
        v[np.abs(v) < 0.05] += 0.1
    params = [Parameter(v, f"x{i}") for i, v in enumerate(values)]
    y = expr(K, *params)
    want = np.asarray(expr(NP, *values))
    assert y.shape == want.shape, f"shape {y.shape}, numpy {want.shape}"
    c = Placeholder(Spec((max(1, want.size), 1), np.float64), name="c")
    loss = apply("sum", apply("matmul", apply("reshape", y, shape=(1, -1)), c))
    plan = Plan([c], [y], params, loss=loss)
    plan.feed[c][...] = rng.standard_normal(c.shape)

    def f() -> float:
        plan.run()
        return float(plan.value(loss))

    f()
    np.testing.assert_allclose(plan.value(y), want, rtol=1e-12, atol=1e-12)
    for p in params:
        f()                     # the gradients at the values themselves (not a shifted one)
        g = plan.grad(p).copy()
        d = rng.standard_normal(p.shape)
        assert _central(f, p.value, d) == pytest.approx(float(np.sum(g * d)), rel=1e-6,
                                                        abs=1e-8), p.name
        for i in rng.choice(p.value.size, min(6, p.value.size), replace=False):
            unit = np.zeros(p.shape)
            unit.flat[i] = 1.0
            assert _central(f, p.value, unit) == pytest.approx(g.flat[i], rel=1e-6, abs=1e-8)


def test_numpy_scalars_and_0d_arrays_are_numbers():
    x = Parameter(np.ones((2, 3)), "x")
    for number in (np.float32(2.0), np.int64(2), np.array(2.0)):
        y = x * number
        assert y.node.op.name == "scale" and y.node.attrs["factor"] == 2.0
        assert (number * x).node.op.name == "scale"
    assert K.sum(x, axis=[0, -1]).shape == () and K.max(x, axis=[1]).shape == (2,)


def test_errors_name_what_was_given():
    x = Parameter(np.ones((2, 3)), "x")
    with pytest.raises(ConfigError, match=r"K.square takes a symbolic tensor.*ndarray"):
        K.square(np.ones(3))
    with pytest.raises(ConfigError, match=r"K.add.*Python numbers, got str 'a'"):
        x + "a"
    with pytest.raises(ConfigError, match=r"K.add.*ndarray"):
        K.add(x, np.ones((2, 3)))
    with pytest.raises(ShapeError, match=r"\(2, 3\) and \(4,\) do not broadcast"):
        x - Parameter(np.ones(4), "b")
    with pytest.raises(ConfigError, match="axis 2 is not an axis.*\\(2, 3\\)"):
        K.mean(x, axis=2)
    with pytest.raises(ConfigError, match="min_value <= max_value.*1.0 and 0.0"):
        K.clip(x, 1.0, 0.0)
    with pytest.raises(ConfigError, match="last axis; got axis=0"):
        K.softmax(x, axis=0)
    with pytest.raises(ShapeError, match=r"2-D tensors; got shapes \(2, 3\) and \(3,\)"):
        K.dot(x, Parameter(np.ones(3), "v"))
    with pytest.raises(ConfigError, match="base > 0, got -2.0"):
        (-2.0) ** x
    with pytest.raises(ConfigError, match="by the number 0"):
        x / 0
    assert K.epsilon() == 1e-7 and math.isinf(K.maximum(x, 0.0).node.attrs["hi"])
