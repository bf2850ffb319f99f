"""Metrics accumulated over an epoch: counts from a small kernel per batch."""
from __future__ import annotations

from dlrun.errors import ConfigError
from dlrun.ops.config import jit


@jit
def correct_sparse_cpu(p, labels):
    """sum_i [argmax p_i == labels_i]"""
    n = 0
    for i in range(p.shape[0]):
        best = 0
        for j in range(1, p.shape[1]):
            if p[i, j] > p[i, best]:
                best = j
        n += best == labels[i]
    return n


@jit
def correct_onehot_cpu(p, t):
    """sum_i [argmax p_i == argmax t_i]"""
    n = 0
    for i in range(p.shape[0]):
        bp = 0
        bt = 0
        for j in range(1, p.shape[1]):
            if p[i, j] > p[i, bp]:
                bp = j
            if t[i, j] > t[i, bt]:
                bt = j
        n += bp == bt
    return n


@jit
def correct_binary_cpu(p, t):
    """sum [(p > 0.5) == (t > 0.5)] over every element"""
    pf = p.reshape(-1)
    tf = t.reshape(-1)
    n = 0
    for i in range(pf.size):
        n += (pf[i] > 0.5) == (tf[i] > 0.5)
    return n


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
        return int(self.kernel(pred, target)), total


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
