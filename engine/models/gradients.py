"""Gradients on demand: ``dl.gradients(model, x, ...)``, the gradient of a model's loss,
of one output unit, or of a layer's mean activation, with respect to the input samples or
the weights, as numpy arrays (what saliency maps and Deep Dream are made of).

Each kind of gradient is a :class:`~dlrun.engine.models.program.Program` the model keeps
beside its training ones (under the mode ``("gradients", wrt, what, which)``, for a batch
size), so asking again with a batch of the same size reruns a made plan. The plan is the
model traced for inference (no dropout; batch normalisation with its moving statistics),
differentiated by :class:`~dlrun.engine.core.plan.Plan` with respect to the input
placeholders or every weight. A loss is a scalar with the seed gradient 1; an output unit
or a layer's mean is the vector-Jacobian product of the output with a seed the call fills
(ones at the unit, or ``1 / size`` everywhere), so every unit shares one plan.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from dlrun.engine.core.plan import Plan
from dlrun.engine.models import data, program
from dlrun.errors import ConfigError

WRT = ("inputs", "weights")


def gradients(model, x, y=None, wrt: str = "inputs", output=None, layer: str | None = None,
              sample_weight=None):
    """Gradients of a model's loss, of one output unit, or of a layer's mean, for a batch.

    Parameters
    ----------
    model : a built model (a compiled one when ``y`` is given), on its device.
    x : input samples, one batch (a list, or a dict by input name, with several inputs).
    y : targets: differentiate the compiled loss, as ``evaluate`` computes it: the mean
        over the batch of each sample's loss (weighted by ``sample_weight`` when given),
        with ``loss_weights`` and the weights' penalties.
    wrt : ``"inputs"``: the gradient with respect to ``x``, an array shaped like ``x``
        (a list with several inputs); ``"weights"``: with respect to every weight, a list
        shaped like ``model.get_weights()``, frozen (non-trainable) weights included. A
        weight no differentiable op reaches gets zeros (``BatchNormalization``'s moving
        statistics: the graph treats them as constants).
    output : without ``y``: one output unit, an int or a tuple index into the output's
        shape without the batch axis (``(k, unit)`` for a model of several outputs, ``k``
        the output's index or name). The gradient is that of ``sum_i out[i, unit]``, so
        row ``i`` of the input gradient is ``d out[i, unit] / d x[i]``: a saliency map.
    layer : without ``y``: the name of a layer; the gradient of the mean of its output
        over every element and sample (Keras' ``K.gradients(K.mean(layer.output),
        model.input)``, Deep Dream's objective), or with ``output`` given, of the sum over
        the batch of that unit of the layer's output.
    sample_weight : per-sample loss weights (with ``y``).

    The model runs in inference mode: no dropout, batch normalisation by its moving
    statistics. ``x`` is run as one batch; the plan is kept for the next call with as
    many samples.
    """
    if wrt not in WRT:
        raise ConfigError(f"wrt must be one of {WRT}, got {wrt!r}")
    if y is not None:
        if output is not None or layer is not None:
            raise ConfigError("give y (the loss's gradient) or output=/layer= (an output "
                              f"unit's or a layer's), not both; got output={output!r}, "
                              f"layer={layer!r}")
        model.require_compiled()
        xs, ys = data.check_xy(model, x, y)
        weights = data.sample_weights(model, ys, data.count(xs), sample_weight)
        what, which = "loss", None
    else:
        if sample_weight is not None:
            raise ConfigError("sample_weight weighs the loss's samples; give y as well")
        if output is None and layer is None:
            raise ConfigError("dl.gradients needs y (the loss's gradient), output=unit (an "
                              "output unit's) or layer=name (the mean of a layer's output)")
        xs, ys, weights = data.check_x(model, x), None, None
        if layer is not None:
            what, which = "layer", _layer_name(model, layer)
        else:
            what = "output"
            which, output = _output_index(model, output)
    multi = isinstance(xs, list)
    xs = xs if multi else [xs]
    prog = model.program(("gradients", wrt, what, which), len(xs[0]),
                         build=partial(_build, wrt=wrt, what=what, which=which))
    plan = prog.plan
    for src, t in zip(xs, prog.xs):
        np.copyto(plan.feed[t], src)
    if what == "loss":
        for src, t in zip(ys if len(prog.ys) > 1 else [ys], prog.ys):
            np.copyto(plan.feed[t], src)
        plan.feed[prog.weights][...] = 1 if weights is None else weights
    else:
        _fill_seed(plan.seed, output, what == "layer", layer or model.output_names[which])
    plan.run(seed=model.training.seed)
    grads = _fetch(plan)
    if wrt == "weights":
        return grads
    return grads if multi else grads[0]


def _build(model, batch: int, wrt: str, what: str, which) -> program.Program:
    """The gradient program of ``model`` for batches of ``batch`` (see the module doc)."""
    params = model.weights_params()
    if what == "layer":
        xs, outs, target = _trace_layer(model, which, batch)
    else:
        xs, outs = model._graph(batch, training=False)
        target = outs[which] if what == "output" else None
    ys, weights, feeds = [], None, list(xs)
    if what == "loss":
        ys, weights, target, _, _ = program.loss_graph(model, outs, params)
        feeds += ys + [weights]
    plan = Plan(feeds, [target], params, loss=target, backend=model.backend,
                wrt=list(xs) if wrt == "inputs" else params)
    return program.Program(("gradients", wrt, what, which), plan, xs, [target], ys,
                           weights, loss=target)


def _fetch(plan) -> list:
    """Host copies of the gradient of each tensor of ``plan.wrt`` (zeros where the plan
    has none: nothing differentiable connects it to what was differentiated)."""
    have = [t for t in plan.wrt if t.id in plan.grads]
    got = dict(zip([t.id for t in have], plan.fetch(*[plan.grad(t) for t in have])))
    return [np.array(got[t.id]).reshape(t.shape) if t.id in got
            else np.zeros(t.shape, t.dtype) for t in plan.wrt]


def _trace_layer(model, name: str, batch: int):
    """(input placeholders, outputs, the output of layer ``name``) of ``model`` traced for
    inference. The layer's ``call`` is wrapped for this one trace (an instance attribute
    shadows the method), which finds its output in any kind of model without the models
    keeping every intermediate tensor."""
    layer = next(lay for lay in model.layers if lay.name == name)
    seen, own = [], layer.__dict__.get("call")
    traced = layer.call

    def call(x, training):
        out = traced(x, training)
        seen.append(out)
        return out

    layer.call = call
    try:
        xs, outs = model._graph(batch, training=False)
    finally:
        if own is None:
            del layer.call
        else:
            layer.call = own
    if len(seen) != 1:
        raise ConfigError(f"layer {name!r} is called {len(seen)} times in model "
                          f"{model.name!r}, so its output is not one tensor; name a layer "
                          "called once")
    return xs, outs, seen[0]


def _layer_name(model, layer) -> str:
    model.require_built()
    names = [lay.name for lay in model.layers]
    if layer not in names:
        raise ConfigError(f"model {model.name!r} has no layer named {layer!r}; its layers "
                          f"are {names}")
    return layer


def _output_index(model, output) -> tuple:
    """(index of the output, the unit within it) from ``output``: a unit (one output), or
    ``(output index or name, unit)`` (several)."""
    if not model._multi_output:
        return 0, output
    names = model.output_names
    if not isinstance(output, tuple) or len(output) != 2:
        raise ConfigError(f"model {model.name!r} has {len(names)} outputs {names}: give "
                          f"output=(output index or name, unit), got {output!r}")
    k, unit = output
    if isinstance(k, str) and k in names:
        return names.index(k), unit
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 0 <= k < len(names):
        return int(k), unit
    raise ConfigError(f"output {k!r} is not one of model {model.name!r}'s outputs: give "
                      f"an index 0..{len(names) - 1} or one of {names}")


def _fill_seed(seed: np.ndarray, unit, mean: bool, what: str) -> None:
    """The seed gradient: ones at ``unit`` of every sample, or ``1 / size`` everywhere
    (the mean of a layer's output, when no unit is given)."""
    if unit is None and mean:
        seed[...] = 1.0 / seed.size
        return
    shape = seed.shape[1:]
    index = unit if isinstance(unit, tuple) else (unit,)
    if len(index) != len(shape) or not all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i < n
            for i, n in zip(index, shape)):
        raise ConfigError(f"output unit {unit!r} is not in {what!r}'s output of shape "
                          f"(batch, {', '.join(map(str, shape))}): give "
                          f"{'an int' if len(shape) == 1 else 'a tuple of ints'} below "
                          f"{shape[0] if len(shape) == 1 else shape}")
    seed[...] = 0
    seed[(slice(None), *index)] = 1
