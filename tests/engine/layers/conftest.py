"""The layer-test harness, for every test module of this folder (which cannot import each
other): fixtures ``check_layer`` and ``run_layer``.

``check_layer(cls, input_shape, reference, **layer_kwargs)`` makes one layer case, in the
spirit of Chainer's ``testing/function_link.py``: it

1. builds ``cls(**layer_kwargs)`` in a one-layer functional model, gives every weight random
   values and calls the model's ``predict`` on a random batch;
2. checks the output's dtype and its shape against ``compute_output_shape``, and its values
   against ``reference(x, *weights)``, an independent numpy forward (inference mode) in
   float64 written in the test module (``x`` is a list for a layer called on a list);
3. rebuilds the layer from its ``get_config()`` after a JSON round trip
   (``type(layer).from_config``), gives it the same weights and expects the same output,
   bit for bit;
4. builds ``cls(**layer_kwargs, dtype="float64")`` with the same weights and checks the
   gradient of the loss ``sum(y * c)`` (``c`` random) with respect to the input and to every
   trainable weight against central finite differences: along one random direction through
   all of them, and element by element (a random sample of them in large arrays).

With ``indices=n`` the inputs are int32 indices in [0, n) (an Embedding's): fed through an
integer ``dl.Input``, given to the reference as they are, and without a gradient.

It returns the float32 layer, for checks of a case's own.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine.core.graph import Parameter, Placeholder, apply, state_feeds
from dlrun.engine.core.plan import Plan
from dlrun.engine.layers import LAYERS
from dlrun.engine.models.training import TrainingState
from dlrun.engine.layers.symbolic import InputLayer
from dlrun.ops import Spec

EPS = 1e-6              # finite-difference step, in float64
MAX_ELEMENTS = 48       # elements of one array checked one by one (a random sample beyond)


def check_layer(cls, input_shape, reference, /, *, batch: int = 3, training: bool = True,
                weights: dict | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                seed: int = 0, indices: int | None = None, **layer_kwargs):
    """The layer case described in the module docstring.

    Parameters
    ----------
    cls : a layer class registered in :data:`dlrun.engine.layers.LAYERS`.
    input_shape : one sample's shape (no batch axis), or a list of them for a layer called
        on a list (Add, Concatenate).
    reference : ``reference(x, *weights) -> array``, numpy, float64, inference mode.
    batch : samples in the random batch.
    training : the mode of the gradient check (False for layers whose training forward
        has no gradient, as the augmentation layers).
    weights : ``{weight name: (low, high)}`` to draw a weight from other than (-1, 1).
    rtol, atol : tolerances of the float32 forward against the reference.
    indices : integer inputs in [0, indices) instead of normal floats (see above).
    **layer_kwargs : the layer's arguments.
    """
    assert LAYERS.get(cls.__name__) is cls, f"{cls.__name__} is not in the layer registry"
    rng = np.random.default_rng(seed)
    multi = isinstance(input_shape, list)
    shapes = [tuple(s) for s in input_shape] if multi else [tuple(input_shape)]
    # float32-representable inputs, so the reference sees exactly what the layer sees
    xs = [rng.standard_normal((batch, *s)).astype(np.float32) if indices is None else
          rng.integers(0, indices, (batch, *s)).astype(np.int32) for s in shapes]
    sample_shapes = shapes if multi else shapes[0]

    layer = cls(**layer_kwargs)
    model = _one_layer_model(layer, shapes, multi, xs[0].dtype)
    values = _random_weights(layer, rng, weights or {})
    layer.set_weights(values)
    y = model.predict(xs if multi else xs[0])
    assert y.dtype == np.float32, f"{cls.__name__} predicts {y.dtype}"
    assert y.shape == (batch, *layer.compute_output_shape(sample_shapes)), \
        f"{cls.__name__}: output {y.shape}, compute_output_shape says " \
        f"{layer.compute_output_shape(sample_shapes)}"
    x64 = [x.astype(np.float64) if indices is None else x for x in xs]
    want = reference(x64 if multi else x64[0], *(v.astype(np.float64) for v in values))
    np.testing.assert_allclose(y, want, rtol=rtol, atol=atol,
                               err_msg=f"{cls.__name__} against its reference")

    _check_config_round_trip(layer, shapes, multi, xs, y)
    _check_gradients(cls, layer_kwargs, sample_shapes, multi, x64, values, training, rng)
    return layer


def _one_layer_model(layer, shapes: list, multi: bool, dtype=np.float32):
    if isinstance(layer, InputLayer):          # the source of a model, not callable
        return dl.Model(layer.output, layer.output)
    ins = [dl.Input(shape=s, dtype=dtype) for s in shapes]
    return dl.Model(ins if multi else ins[0], layer(ins if multi else ins[0]))


def _random_weights(layer, rng, ranges: dict) -> list:
    """Random values for every weight (zeros or ones at first would hide mistakes)."""
    out = []
    for p in layer.weights:
        low, high = ranges.get(p.name.rsplit("/", 1)[-1], (-1.0, 1.0))
        out.append(rng.uniform(low, high, p.shape).astype(p.dtype))
    return out


def _check_config_round_trip(layer, shapes: list, multi: bool, xs: list, y) -> None:
    cfg = layer.get_config()
    saved = json.loads(json.dumps(cfg))        # what a saved model or a Ray worker gets
    assert saved == cfg, f"{type(layer).__name__}.get_config() does not survive JSON"
    again = type(layer).from_config(saved)
    assert type(again) is type(layer) and again.get_config() == cfg
    model = _one_layer_model(again, shapes, multi, xs[0].dtype)
    again.set_weights(layer.get_weights())
    np.testing.assert_array_equal(model.predict(xs if multi else xs[0]), y,
                                  err_msg=f"{type(layer).__name__} rebuilt from its config")


def _check_gradients(cls, layer_kwargs, sample_shapes, multi, x64, values, training,
                     rng) -> None:
    """Plan gradients of ``sum(y * c)`` against central differences, all in float64."""
    layer = cls(**layer_kwargs, dtype="float64")
    layer.ensure_built(sample_shapes)
    layer.set_weights(values)
    # the inputs as parameters, so the plan computes their gradients too (indices: fed)
    xp = [Parameter(x.copy(), f"input{i}") if x.dtype.kind == "f" else
          Placeholder(Spec(x.shape, x.dtype), name=f"input{i}") for i, x in enumerate(x64)]
    y = layer.call(xp if multi else xp[0], training)
    assert y.dtype == np.float64, f"{cls.__name__}(dtype='float64') gives {y.dtype}"
    c = Placeholder(Spec((int(np.prod(y.shape)), 1), np.float64), name="c")
    loss = apply("sum", apply("matmul", apply("reshape", y, shape=(1, -1)), c))
    fed = [t for t in xp if not isinstance(t, Parameter)]
    xp = [t for t in xp if isinstance(t, Parameter)]
    checked = xp + [p for p in layer.weights if p.trainable]
    plan = Plan([c, *fed] + _fed(y), [y], xp + layer.weights, loss=loss)
    plan.feed[c][...] = rng.standard_normal(c.shape)
    for t in fed:
        plan.feed[t][...] = x64[int(t.name[len("input"):])]
    _feed(plan, y, epoch=0)

    def f() -> float:
        plan.run(seed=0)                       # the same dropout mask every time
        return float(plan.value(loss))

    f()
    grads = [plan.grad(p).copy() for p in checked]
    # 1. one random direction through every input and weight at once
    dirs = [rng.standard_normal(p.shape) for p in checked]
    numeric = _central(f, [(p.value, d) for p, d in zip(checked, dirs)])
    analytic = sum(float(np.sum(d * g)) for d, g in zip(dirs, grads))
    assert np.isclose(numeric, analytic, rtol=1e-5, atol=1e-6), \
        f"{cls.__name__}: directional derivative {numeric:.10g} (finite differences) != " \
        f"{analytic:.10g} (plan)"
    # 2. element by element
    for p, g in zip(checked, grads):
        v = p.value
        flat = np.arange(v.size)
        if v.size > MAX_ELEMENTS:
            flat = rng.choice(flat, MAX_ELEMENTS, replace=False)
        for i in flat:
            idx = np.unravel_index(i, v.shape)
            unit = np.zeros(v.shape)
            unit[idx] = 1.0
            num = _central(f, [(v, unit)])
            assert np.isclose(g[idx], num, rtol=1e-5, atol=1e-6), \
                f"{cls.__name__}: gradient of {p.name} at {idx}: plan {g[idx]:.10g}, " \
                f"finite differences {num:.10g}"


def _central(f, moves: list) -> float:
    """(f(v + EPS d) - f(v - EPS d)) / (2 EPS) for every (array v, direction d): moves the
    arrays in place and puts their values back."""
    saved = [v.copy() for v, _ in moves]
    for (v, d), v0 in zip(moves, saved):
        v[...] = v0 + EPS * d
    plus = f()
    for (v, d), v0 in zip(moves, saved):
        v[...] = v0 - EPS * d
    minus = f()
    for (v, _), v0 in zip(moves, saved):
        v[...] = v0
    return (plus - minus) / (2 * EPS)


def _fed(y) -> list:
    """The placeholders a model would fill from its training state (an annealed rate)."""
    return state_feeds([y])


def _feed(plan, y, epoch: int) -> None:
    """Fill them as a model whose training is at epoch ``epoch`` would."""
    for t in _fed(y):
        plan.feed[t][...] = t.source(TrainingState(seed=0, epoch=epoch))


def run_layer(layer, x, training: bool = False, seed: int = 0, epoch: int = 0):
    """The layer's output for the batch ``x`` (building it first), through a real plan
    (of a model whose training is at epoch ``epoch``)."""
    xp = Placeholder(Spec(x.shape, x.dtype), name="x")
    layer.ensure_built(x.shape[1:])
    out = layer.call(xp, training)
    if out is xp:                              # an identity: there is no plan to run
        return x.copy()
    plan = Plan([xp] + _fed(out), [out], layer.weights)
    plan.feed[xp][...] = x
    _feed(plan, out, epoch)
    plan.run(seed=seed)
    return plan.value(out).copy()


@pytest.fixture(name="check_layer")
def check_layer_fixture():
    """:func:`check_layer`."""
    return check_layer


@pytest.fixture(name="run_layer")
def run_layer_fixture():
    """:func:`run_layer`."""
    return run_layer
