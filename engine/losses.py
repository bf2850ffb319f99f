"""Loss names (Keras spelling) and how each becomes ops in the training graph.

Cross entropy on sequences (outputs (batch, time, classes): a per-step softmax after
``return_sequences=True``, for tagging) is a loss per step: labels (samples, time), or
one-hot targets (samples, time, classes); the steps become the rows of one
(batch * time, classes) loss, each sample's weight on each of its steps, so the loss is
``sum_{i,t} w_i loss_{i,t} / (batch * time)``, Keras' mean over the steps, then over the
samples. Its predictions, and the targets the metrics read (:func:`metric_targets`), are
then (batch * time, classes) and (batch * time,): accuracy counts steps.
"""
from __future__ import annotations

import numpy as np

from dlrun.engine.core.graph import Placeholder, apply
from dlrun.errors import ConfigError, DataError
from dlrun.ops import Spec

# name -> (op, what the targets are)
LOSSES = {
    "sparse_categorical_crossentropy": ("softmax_ce", "labels"),
    "categorical_crossentropy": ("softmax_ce_onehot", "onehot"),
    "mean_squared_error": ("mse", "values"),
    "binary_crossentropy": ("binary_ce", "values"),
}
ALIASES = {"mse": "mean_squared_error", "sparse_categorical_cross_entropy":
           "sparse_categorical_crossentropy", "categorical_cross_entropy":
           "categorical_crossentropy", "binary_cross_entropy": "binary_crossentropy"}


def canonical(name) -> str:
    key = ALIASES.get(name, name)
    if key not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return key


def per_step(name: str, output_shape: tuple) -> bool:
    """Whether loss ``name`` on outputs of ``output_shape`` (no batch axis) is a loss per
    step: cross entropy on (time, classes)."""
    return LOSSES[name][1] in ("labels", "onehot") and len(output_shape) == 2


def target_placeholder(name: str, output) -> Placeholder:
    """The placeholder the targets of a batch are fed into."""
    if LOSSES[name][1] == "labels":
        return Placeholder(Spec(output.shape[:-1], np.int64), name="y")
    return Placeholder(Spec(output.shape, output.dtype), name="y")


def weights_placeholder(output) -> Placeholder:
    """The placeholder of a batch's per-sample loss weights (ones unless given)."""
    return Placeholder(Spec(output.shape[:1], output.dtype), name="sample_weight")


def loss_node(name: str, output, target, weights):
    """(loss tensor, prediction tensor) for a model output, its target placeholder and the
    per-sample weights: ``sum_i w_i loss_i / batch``, as Keras weighs samples.

    A softmax output followed by cross entropy becomes one fused op on the logits; the
    fused op's probabilities are the predictions (identical to the softmax output).
    """
    op, kind = LOSSES[name]
    if kind in ("labels", "onehot"):
        logits = _softmax_input(name, output)
        if len(output.shape) == 3:
            return _per_step(op, logits, output, target, weights)
        if len(output.shape) != 2:
            raise ConfigError(f"loss {name!r} needs outputs of shape (batch, classes) or "
                              f"(batch, time, classes), got {output.shape}")
        loss = apply(op, logits, target, weights)
        return loss, loss.node.outputs[1]
    return apply(op, output, target, weights), output


def _softmax_input(name: str, output):
    """The logits of a softmax output: the softmax's input, found through the reshape that
    puts a per-step softmax's rows back into sequences (Dense or TimeDistributed on
    sequences)."""
    node = output.node
    if node is not None and node.op.name == "reshape":
        inner = node.inputs[0]
        if inner.node is not None and inner.node.op.name == "softmax" \
                and inner.shape[-1] == output.shape[-1]:
            node = inner.node
    if node is None or node.op.name != "softmax":
        raise ConfigError(f"loss {name!r} needs a softmax output layer (e.g. "
                          "Dense(..., activation='softmax')); this model's output "
                          f"comes from {node.op.name if node else 'its input'}")
    return node.inputs[0]


def _per_step(op: str, logits, output, target, weights):
    """(loss, predictions) of a loss per step (see the module docstring): the steps as
    rows, each sample's weight repeated over its steps."""
    batch, steps, classes = output.shape
    rows = logits if len(logits.shape) == 2 else \
        apply("reshape", logits, shape=(batch * steps, classes))
    flat = apply("reshape", target, shape=(batch * steps, *target.shape[2:]))
    loss = apply(op, rows, flat, apply("repeat", weights, times=steps))
    return loss, loss.node.outputs[1]


def metric_targets(y, pred):
    """The targets buffer ``y`` of a batch as the metrics read it beside the predictions
    buffer ``pred``: a view with one row per row of ``pred`` (per step, for a loss per
    step)."""
    if tuple(y.shape) in (tuple(pred.shape), tuple(pred.shape[:1])):
        return y
    return y.reshape((pred.shape[0], *y.shape[2:]))


def check_targets(name: str, y: np.ndarray, output_shape: tuple) -> np.ndarray:
    """Validate (and convert) a whole target array once, before training on it."""
    kind = LOSSES[name][1]
    y = np.asarray(y)
    if kind == "labels":
        steps = tuple(output_shape[:-1])        # (time,) for a loss per step
        if y.ndim == len(steps) + 2 and y.shape[-1] == 1:
            y = y[..., 0]
        if y.shape[1:] != steps:
            raise DataError(f"loss {name!r} takes integer class labels of shape (samples"
                            f"{''.join(f', {d}' for d in steps)}), got an array of shape "
                            f"{y.shape}; for one-hot targets use 'categorical_crossentropy'")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                raise DataError(f"loss {name!r} takes integer class labels; got "
                                f"non-integer values such as {y[y != np.round(y)][:1]}")
        elif y.dtype.kind not in "iub":
            raise DataError(f"labels must be integers, got dtype {y.dtype}")
        classes = output_shape[-1]
        bad = np.flatnonzero((y < 0) | (y >= classes))
        if bad.size:
            where = np.unravel_index(bad[0], y.shape)
            at = f"sample {where[0]}" + (f", step {where[1]}" if steps else "")
            raise DataError(f"label {y[where].item()!r} at {at} is out of range for "
                            f"a model with {classes} outputs (expected 0..{classes - 1})")
        return np.ascontiguousarray(y, np.int64)
    if tuple(y.shape[1:]) != tuple(output_shape):
        raise DataError(f"loss {name!r} needs targets of shape (samples, "
                        f"{', '.join(map(str, output_shape))}) to match the model's output; "
                        f"got {y.shape}")
    y = np.ascontiguousarray(y, np.float32)
    if not np.all(np.isfinite(y)):
        raise DataError("targets contain NaN or infinity")
    if name == "binary_crossentropy" and (y.min() < 0 or y.max() > 1):
        raise DataError(f"binary_crossentropy targets must lie in [0, 1]; got values from "
                        f"{y.min()} to {y.max()}")
    return y
