"""Keras' ``keras.utils.np_utils``: label and array helpers on numpy arrays."""
from __future__ import annotations

import numpy as np

from dlrun.errors import DataError


def to_categorical(y, num_classes: int | None = None, dtype="float32") -> np.ndarray:
    """One-hot rows for integer class labels: shape ``y.shape + (num_classes,)`` (a
    trailing axis of one is dropped first, as Keras does); ``num_classes`` defaults to
    the largest label plus one."""
    y = np.asarray(y)
    if y.ndim > 1 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError("to_categorical takes integer class labels; got non-integer "
                            f"values such as {y[~np.isfinite(y) | (y != np.round(y))][:1]}")
    elif y.dtype.kind not in "iub":
        raise DataError(f"to_categorical takes integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"class labels must be >= 0, got {y.min()}")
    top = int(y.max()) + 1 if y.size else 0
    if num_classes is None:
        num_classes = top
    elif not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DataError(f"num_classes must be a positive integer, got {num_classes!r}")
    elif top > num_classes:
        raise DataError(f"label {top - 1} is out of range for num_classes={num_classes} "
                        f"(expected 0..{num_classes - 1})")
    out = np.zeros((*y.shape, num_classes), dtype=dtype)
    np.put_along_axis(out, y[..., None], 1, axis=-1)
    return out


def normalize(x, axis: int = -1, order: int = 2) -> np.ndarray:
    """``x`` scaled to unit ``order``-norm along ``axis`` (rows of zeros stay zero)."""
    x = np.asarray(x)
    norm = np.atleast_1d(np.linalg.norm(x, order, axis))
    norm[norm == 0] = 1
    return x / np.expand_dims(norm, axis)
