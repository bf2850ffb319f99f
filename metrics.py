"""Keras' ``keras.metrics``: the accuracies by name, as functions of numpy arrays that
give one value per sample (``compile(metrics=[categorical_accuracy])`` takes them by
name; during training each is counted by its kernel on the step's device, see
:mod:`dlrun.engine.metrics`)."""
from __future__ import annotations

import numpy as np

from dlrun.engine.metrics import NAMED, Accuracy, get

TOP_K = 5       # what the counting kernels of the top-k accuracies use (Keras' default k)

__all__ = ["NAMED", "Accuracy", "binary_accuracy", "categorical_accuracy", "get",
           "sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy",
           "top_k_categorical_accuracy"]


def categorical_accuracy(y_true, y_pred) -> np.ndarray:
    """1.0 where the argmax of the prediction is the argmax of the target, per sample."""
    return (np.argmax(y_pred, -1) == np.argmax(y_true, -1)).astype(np.float32)


def sparse_categorical_accuracy(y_true, y_pred) -> np.ndarray:
    """1.0 where the argmax of the prediction is the integer label, per sample."""
    y_true = np.asarray(y_true)
    if y_true.ndim == np.ndim(y_pred):
        y_true = y_true[..., 0]
    return (np.argmax(y_pred, -1) == y_true).astype(np.float32)


def binary_accuracy(y_true, y_pred, threshold: float = 0.5) -> np.ndarray:
    """The share of elements on the target's side of ``threshold``, per sample."""
    hit = (np.asarray(y_pred) > threshold) == (np.asarray(y_true) > threshold)
    return hit.mean(-1).astype(np.float32)


def _in_top(scores, classes, k: int) -> np.ndarray:
    scores = np.asarray(scores)
    own = np.take_along_axis(scores, classes[..., None], -1)
    return ((scores > own).sum(-1) < k).astype(np.float32)


def top_k_categorical_accuracy(y_true, y_pred, k: int = TOP_K) -> np.ndarray:
    """1.0 where the target's class is among the ``k`` highest scores (ties count in)."""
    return _in_top(y_pred, np.argmax(y_true, -1), k)


def sparse_top_k_categorical_accuracy(y_true, y_pred, k: int = TOP_K) -> np.ndarray:
    """1.0 where the integer label is among the ``k`` highest scores (ties count in)."""
    y_true = np.asarray(y_true).astype(np.int64)
    if y_true.ndim == np.ndim(y_pred):
        y_true = y_true[..., 0]
    return _in_top(y_pred, y_true, k)
