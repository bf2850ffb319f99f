"""Loss names (Keras spelling) and how each becomes ops in the training graph."""
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


def target_placeholder(name: str, output) -> Placeholder:
    """The placeholder the targets of a batch are fed into."""
    if LOSSES[name][1] == "labels":
        return Placeholder(Spec(output.shape[:1], np.int64), name="y")
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
        if output.node is None or output.node.op.name != "softmax":
            raise ConfigError(f"loss {name!r} needs a softmax output layer (e.g. "
                              "Dense(..., activation='softmax')); this model's output "
                              f"comes from {output.node.op.name if output.node else 'its input'}")
        if len(output.shape) != 2:
            raise ConfigError(f"loss {name!r} needs outputs of shape (batch, classes), "
                              f"got {output.shape}")
        loss = apply(op, output.node.inputs[0], target, weights)
        return loss, loss.node.outputs[1]
    return apply(op, output, target, weights), output


def check_targets(name: str, y: np.ndarray, output_shape: tuple) -> np.ndarray:
    """Validate (and convert) a whole target array once, before training on it."""
    kind = LOSSES[name][1]
    y = np.asarray(y)
    if kind == "labels":
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(f"loss {name!r} takes integer class labels of shape (samples,), "
                            f"got an array of shape {y.shape}; for one-hot targets use "
                            "'categorical_crossentropy'")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                raise DataError(f"loss {name!r} takes integer class labels; got "
                                f"non-integer values such as {y[y != np.round(y)][:1]}")
        elif y.dtype.kind not in "iub":
            raise DataError(f"labels must be integers, got dtype {y.dtype}")
        classes = output_shape[-1]
        bad = np.flatnonzero((y < 0) | (y >= classes))
        if bad.size:
            raise DataError(f"label {y[bad[0]].item()!r} at sample {bad[0]} is out of range for "
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
