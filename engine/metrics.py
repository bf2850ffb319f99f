"""Metrics accumulated over an epoch: counts from a small kernel per batch."""
from __future__ import annotations

import numpy as np

from dlrun.errors import ConfigError
# The count kernels are twins in dlrun.ops.counts (``kernel(p, target, out, slot)`` on
# either device); engine/core/device.py maps these CPU ones to their CUDA twins.
from dlrun.ops.counts import correct_binary_cpu, correct_onehot_cpu, correct_sparse_cpu


class Accuracy:
    """Fraction of correct predictions; how 'correct' is decided follows the loss."""

    name = "accuracy"

    def __init__(self, loss: str):
        if loss == "sparse_categorical_crossentropy":
            self.kernel, self.per = correct_sparse_cpu, "sample"
        elif loss == "categorical_crossentropy":
            self.kernel, self.per = correct_onehot_cpu, "sample"
        else:
            self.kernel, self.per = correct_binary_cpu, "element"

    def count(self, pred, target) -> tuple[int, int]:
        total = pred.shape[0] if self.per == "sample" else pred.size
        out = np.zeros(1, np.int64)
        self.kernel(pred, target, out, 0)
        return int(out[0]), total


class OutputLoss:
    """The (unweighted) loss of one output of a model of several: ``<output>_loss`` in
    the logs, averaged over the samples as the total loss is."""

    def __init__(self, name: str):
        self.name = name

    def count(self, value, samples: int) -> tuple[float, int]:
        return float(value) * samples, samples


def get(name, loss: str):
    if name in ("accuracy", "acc"):
        return Accuracy(loss)
    raise ConfigError(f"unknown metric {name!r}; dlrun knows 'accuracy'")
