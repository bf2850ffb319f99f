"""Checking what a user gives ``fit``, ``evaluate`` and ``predict``: input samples and
targets as arrays (a list, or a dict by name, with several inputs or outputs), converted
once, before any batch runs; bad data is refused with a message that names it."""
from __future__ import annotations

import numpy as np

from dlrun.engine import losses as losses_mod
from dlrun.errors import ConfigError, DataError, ShapeError


def check_x(model, x):
    """The input samples as float32 arrays: one, or a list with several inputs."""
    if x is None:
        raise DataError("no input samples given (x is None)")
    if model._multi_input:
        xs = by_name(x, model.input_names, "input", "x")
        xs = [check_input(model, a, shape, name) for a, shape, name in
              zip(xs, model.input_shape, model.input_names)]
        if len({len(a) for a in xs}) > 1:
            raise DataError(f"the inputs hold different numbers of samples: "
                            f"{dict(zip(model.input_names, map(len, xs)))}")
        return xs
    if isinstance(x, dict):
        x = by_name(x, model.input_names, "input", "x")[0]
    return check_input(model, x)


def check_input(model, x, shape=None, name=None) -> np.ndarray:
    """One input's samples as a float32 array (int32 indices for an input an Embedding
    reads), checked by the layers that read it; the model is built from their shape if it
    has none yet."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise DataError(f"input samples must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ShapeError(f"input samples need a batch axis first: got shape {x.shape}; "
                         "for a single sample use x[None]")
    if name is not None:                  # one input of several
        if tuple(x.shape[1:]) != tuple(shape):
            raise ShapeError(f"input {name!r} of model {model.name!r} expects samples "
                             f"of shape (batch, {', '.join(map(str, shape))}), got "
                             f"{x.shape}")
    elif not model.ensure_built():
        model.build(x.shape[1:])
    elif tuple(x.shape[1:]) != model.input_shape:
        raise ShapeError(f"model {model.name!r} expects input of shape "
                         f"(batch, {', '.join(map(str, model.input_shape))}), got "
                         f"{x.shape}")
    if len(x) == 0:
        raise DataError("no input samples given (x has length 0)")
    k = 0 if name is None else model.input_names.index(name)
    dtype = model.input_dtypes()[k]
    x = np.ascontiguousarray(x, np.float32) if dtype.kind == "f" else indices(x, name)
    for layer in model.input_readers()[k]:
        layer.check_data(x)
    return x if dtype.kind == "f" else np.ascontiguousarray(x, dtype)


def indices(x: np.ndarray, name=None) -> np.ndarray:
    """Input samples that must be whole numbers (an Embedding's indices), as int64."""
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x) | (x != np.round(x))
        if bad.any():
            where = np.unravel_index(np.flatnonzero(bad)[0], x.shape)
            position = ", ".join(str(int(i)) for i in where[1:])
            raise DataError(f"input {name or 'x'!r} holds indices (it feeds an Embedding), "
                            f"which must be whole numbers; got {x[where].item()!r} at sample "
                            f"{where[0]}, position {position}")
    return x.astype(np.int64)


def check_xy(model, x, y):
    """Checked inputs and targets (the targets converted as each output's loss needs)."""
    x = check_x(model, x)
    n = count(x)
    if y is None:
        raise DataError("no targets given (y is None)")
    names = model.output_names
    if not model._multi_output:
        if isinstance(y, dict):
            y = by_name(y, names, "output", "y")[0]
        y = np.asarray(y)
        if len(y) != n:
            raise DataError(f"x and y hold different numbers of samples: {n} and "
                            f"{len(y)}")
        return x, losses_mod.check_targets(model.compiled_loss.loss_names[0], y,
                                           model.output_shape)
    ys = []
    for t, name, loss, shape in zip(by_name(y, names, "output", "y"), names,
                                    model.compiled_loss.loss_names, model.output_shape):
        t = np.asarray(t)
        if t.ndim == 0 or len(t) != n:
            raise DataError(f"the targets of output {name!r} hold "
                            f"{len(t) if t.ndim else 'no'} samples; x holds {n}")
        try:
            ys.append(losses_mod.check_targets(loss, t, shape))
        except DataError as e:
            raise DataError(f"output {name!r}: {e}") from None
    return x, ys


def by_name(value, names: list, what: str, arg: str) -> list:
    """One array per input (or output) from a list in order or a dict by name."""
    if isinstance(value, dict):
        unknown = [k for k in value if k not in names]
        if unknown:
            raise DataError(f"{arg} names an unknown {what} {unknown[0]!r}; this model's "
                            f"{what}s are {names}")
        left = [n for n in names if n not in value]
        if left:
            raise DataError(f"{arg} has no arrays for {what} {left[0]!r}; give one for each "
                            f"of {names}")
        return [value[n] for n in names]
    if isinstance(value, (list, tuple)) and len(value) == len(names) and \
            all(hasattr(v, "shape") or isinstance(v, (list, tuple)) for v in value):
        return list(value)
    if len(names) == 1:
        return [value]
    got = f"{len(value)} arrays" if isinstance(value, (list, tuple)) else \
        f"one {type(value).__name__}"
    raise DataError(f"this model has {len(names)} {what}s {names}: give {arg} as a list of "
                    f"{len(names)} arrays in that order, or a dict by {what} name; got {got}")


def count(x) -> int:
    """Samples in checked input data (one array, or a list with several inputs)."""
    return len(x[0]) if isinstance(x, list) else len(x)


def rows(data, which: slice):
    """Rows ``which`` of one array, or of each of a list (None stays None)."""
    if data is None:
        return None
    return [a[which] for a in data] if isinstance(data, list) else data[which]


def batch_size(value) -> int:
    """A checked batch size; Keras' 32 when none is given."""
    if value is None:
        return 32
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {value!r}")
    return int(value)


def class_weights(y, class_weight: dict) -> np.ndarray:
    """Per-sample weights ``class_weight[label]`` for the targets ``y`` of one output, as
    Keras reads labels: integer labels as given, one-hot rows by their argmax, a single
    probability column rounded; a label the dict leaves out weighs 1."""
    y = np.asarray(y)
    if y.ndim > 1:
        y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else y[..., 0]
    labels = np.round(y).astype(np.int64)
    table = np.ones(max(int(labels.max(initial=0)), max(class_weight, default=0)) + 1)
    for label, w in class_weight.items():
        table[label] = w
    return table[labels].astype(np.float32)


def balanced_class_weight(y) -> dict:
    """``{label: samples / (classes * count)}`` over the labels present in ``y``: every
    class weighs as much in the loss as if the classes were equally frequent (the
    definition scikit-learn's ``class_weight='balanced'`` uses)."""
    y = np.asarray(y)
    if y.ndim > 1:
        y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else y[..., 0]
    labels, counts = np.unique(np.round(y).astype(np.int64), return_counts=True)
    return {int(k): float(len(y) / (len(labels) * c)) for k, c in zip(labels, counts)}


def check_class_weight(class_weight, y=None) -> dict | None:
    """``class_weight`` as ``{int label: float weight >= 0}``: a dict (JSON's string keys
    accepted), or ``'balanced'`` given the labels ``y``; None stays None."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ConfigError(f"class_weight must be a dict {{label: weight}} or "
                              f"'balanced', got {class_weight!r}")
        if y is None:
            raise ConfigError("class_weight='balanced' needs the training labels")
        return balanced_class_weight(y)
    if not isinstance(class_weight, dict):
        raise ConfigError(f"class_weight must be a dict {{label: weight}} or 'balanced', "
                          f"got a {type(class_weight).__name__}")
    out = {}
    for k, w in class_weight.items():
        try:
            label = int(k)
            weight = float(w)
        except (TypeError, ValueError):
            label, weight = -1, -1.0
        if label < 0 or (isinstance(k, float) and k != label) or not weight >= 0 \
                or not np.isfinite(weight):
            raise ConfigError(f"class_weight maps class labels (integers >= 0) to weights "
                              f"(numbers >= 0); got {k!r}: {w!r}")
        out[label] = weight
    return out


def sample_weights(model, y, samples: int, sample_weight=None, class_weight=None):
    """The per-sample loss weights of checked targets ``y``: ``sample_weight`` (an array
    of one weight per sample), times ``class_weight``'s weight of each sample's class (a
    model of one output only); None when neither is given."""
    if class_weight is not None and model._multi_output:
        raise ConfigError("class_weight is for models of one output; give sample_weight "
                          "for a model of several")
    if class_weight is not None and losses_mod.per_step(model.compiled_loss.loss_names[0],
                                                     model.output_shape):
        raise ConfigError("class_weight weighs a sample by its class, and targets per step "
                          "have a class per step; give sample_weight (one weight per "
                          "sequence) instead")
    out = None
    if sample_weight is not None:
        out = np.asarray(sample_weight, np.float32)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.shape != (samples,):
            raise DataError(f"sample_weight needs one weight per sample, shape ({samples},); "
                            f"got {np.shape(sample_weight)}")
        bad = np.flatnonzero(~(np.isfinite(out) & (out >= 0)))
        if bad.size:
            raise DataError(f"sample_weight {out[bad[0]]!r} at sample {bad[0]}: weights "
                            "must be finite numbers >= 0")
        out = np.ascontiguousarray(out)
    cw = check_class_weight(class_weight, y)
    if cw is not None:
        by_class = class_weights(y, cw)
        out = by_class if out is None else out * by_class
    return out
