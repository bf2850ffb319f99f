"""Loss names (Keras spelling) and how each becomes ops in the training graph; and user
losses, Python functions ``fn(y_true, y_pred)`` of symbolic tensors (``dlrun.backend``).

Cross entropy on sequences (outputs (batch, time, classes): a per-step softmax after
``return_sequences=True``, for tagging) is a loss per step: labels (samples, time), or
one-hot targets (samples, time, classes); the steps become the rows of one
(batch * time, classes) loss, each sample's weight on each of its steps, so the loss is
``sum_{i,t} w_i loss_{i,t} / (batch * time)``, Keras' mean over the steps, then over the
samples. Its predictions, and the targets the metrics read (:func:`metric_targets`), are
then (batch * time, classes) and (batch * time,): accuracy counts steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dlrun.engine import custom_objects
from dlrun.engine.core.graph import Placeholder, Tensor, apply
from dlrun.errors import ConfigError, DataError, DlrunError, ShapeError
from dlrun.ops import Spec

# name -> (op, what the targets are): "labels" integer classes, "onehot" one-hot rows after
# a softmax (fused with it), "values" floats of the output's shape, "signs" such floats
# meant as -1/1 (0/1 targets become -1/1, as Keras converts them for its hinge losses)
LOSSES = {
    "sparse_categorical_crossentropy": ("softmax_ce", "labels"),
    "categorical_crossentropy": ("softmax_ce_onehot", "onehot"),
    "mean_squared_error": ("mse", "values"),
    "binary_crossentropy": ("binary_ce", "values"),
    "hinge": ("hinge", "signs"),
    "squared_hinge": ("squared_hinge", "signs"),
    "categorical_hinge": ("categorical_hinge", "values"),
    "mean_absolute_error": ("mae", "values"),
    "kullback_leibler_divergence": ("kld", "values"),
    "poisson": ("poisson", "values"),
    "cosine_similarity": ("cosine_similarity", "values"),
}
ALIASES = {"mse": "mean_squared_error", "MSE": "mean_squared_error",
           "sparse_categorical_cross_entropy": "sparse_categorical_crossentropy",
           "categorical_cross_entropy": "categorical_crossentropy",
           "binary_cross_entropy": "binary_crossentropy",
           "mae": "mean_absolute_error", "MAE": "mean_absolute_error",
           "kld": "kullback_leibler_divergence", "KLD": "kullback_leibler_divergence",
           "kl_divergence": "kullback_leibler_divergence",
           "cosine_proximity": "cosine_similarity"}


@dataclass(frozen=True)
class UserLoss:
    """A loss given as a function ``fn(y_true, y_pred)`` of symbolic tensors; a saved model
    holds its ``name`` (and needs the function again to load: ``custom_objects``)."""

    name: str
    fn: Callable

    def __str__(self) -> str:
        return self.name


def canonical(loss):
    """The LOSSES key of a loss name or alias, or a :class:`UserLoss` for a function (or for
    the name of one given as a custom object, as ``load_model`` does)."""
    if isinstance(loss, UserLoss):
        return loss
    if callable(loss):
        return UserLoss(getattr(loss, "__name__", type(loss).__name__), loss)
    key = ALIASES.get(loss, loss) if isinstance(loss, str) else None
    if key in LOSSES:
        return key
    fn = custom_objects.lookup(loss) if isinstance(loss, str) else None
    if callable(fn):
        return UserLoss(loss, fn)
    raise ConfigError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)} (or "
                      f"{sorted(ALIASES)}), or a function loss(y_true, y_pred) built with "
                      "dlrun.backend. A saved model compiled with such a function names it: "
                      + (custom_objects.hint(loss) if isinstance(loss, str) else
                         "give the function itself"))


def saved_name(loss) -> str:
    """What a saved model holds for a canonical loss: its name."""
    return loss.name if isinstance(loss, UserLoss) else loss


def target_kind(loss) -> str:
    """What the targets of a canonical loss are: a :data:`LOSSES` kind, or "user"."""
    return "user" if isinstance(loss, UserLoss) else LOSSES[loss][1]


def per_step(name: str, output_shape: tuple) -> bool:
    """Whether loss ``name`` on outputs of ``output_shape`` (no batch axis) is a loss per
    step: cross entropy on (time, classes)."""
    return target_kind(name) in ("labels", "onehot") and len(output_shape) == 2


def target_placeholder(name: str, output) -> Placeholder:
    """The placeholder the targets of a batch are fed into."""
    if target_kind(name) == "labels":
        return Placeholder(Spec(output.shape[:-1], np.int64), name="y")
    return Placeholder(Spec(output.shape, output.dtype), name="y")


def weights_placeholder(output) -> Placeholder:
    """The placeholder of a batch's per-sample loss weights (ones unless given)."""
    return Placeholder(Spec(output.shape[:1], output.dtype), name="sample_weight")


def loss_node(name: str, output, target, weights):
    """(loss tensor, prediction tensor) for a model output, its target placeholder and the
    per-sample weights: ``sum_i w_i loss_i / batch``, as Keras weighs samples.

    A softmax output followed by cross entropy becomes one fused op on the logits; the
    fused op's probabilities are the predictions (identical to the softmax output). A user
    loss is its function's result, reduced per sample and weighted by ``weighted_mean``.
    """
    if isinstance(name, UserLoss):
        return user_loss_node(name, output, target, weights), output
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
    kind = target_kind(name)
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
        raise DataError(f"loss {str(name)!r} needs targets of shape (samples, "
                        f"{', '.join(map(str, output_shape))}) to match the model's output; "
                        f"got {y.shape}")
    y = np.ascontiguousarray(y, np.float32)
    if not np.all(np.isfinite(y)):
        raise DataError("targets contain NaN or infinity")
    if name == "binary_crossentropy" and (y.min() < 0 or y.max() > 1):
        raise DataError(f"binary_crossentropy targets must lie in [0, 1]; got values from "
                        f"{y.min()} to {y.max()}")
    if kind == "signs" and np.all((y == 0) | (y == 1)):
        y = 2 * y - 1                          # Keras' hinge losses take 0/1 as -1/1
    return y


def user_loss_node(loss: UserLoss, output, target, weights):
    """``weighted_mean`` of what ``loss.fn(target, output)`` returns: one loss per sample
    (batch,), a (batch, ...) tensor (each sample's mean) or a scalar (for every sample)."""
    try:
        value = loss.fn(target, output)
    except DlrunError as e:
        raise type(e)(f"loss function {loss.name!r}: {e}") from None
    if not isinstance(value, Tensor):
        raise ConfigError(f"loss function {loss.name!r} returned {type(value).__name__}; it "
                          "must return a tensor built from its arguments with dlrun.backend "
                          "functions, e.g. K.mean(K.square(y_pred - y_true), axis=-1)")
    batch = output.shape[0]
    if value.shape == ():
        value = apply("broadcast_to", value, shape=(batch,))
    elif value.shape[0] != batch or value.dtype != output.dtype:
        raise ShapeError(f"loss function {loss.name!r} returned a tensor of shape "
                         f"{value.shape} ({value.dtype}) for outputs of shape {output.shape}; "
                         f"it must return one loss per sample, shape ({batch},) (as "
                         "K.mean(..., axis=-1) gives), a ({batch}, ...) tensor or a scalar, "
                         f"of dtype {output.dtype}")
    return apply("weighted_mean", value, weights)
