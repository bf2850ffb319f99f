"""Metrics: what each one counts per batch (by a small kernel on the step's device: the
``correct_*`` twins of :mod:`dlrun.ops.counts`), and their accumulation over an epoch
(:class:`Tally`)."""
from __future__ import annotations

import math

import numpy as np

from dlrun.errors import ConfigError


class Accuracy:
    """Fraction of correct predictions; how 'correct' is decided follows the loss. Counted
    by a small kernel on the device the step ran on (``kernel`` names it)."""

    name = "accuracy"

    def __init__(self, loss: str):
        if loss == "sparse_categorical_crossentropy":
            self.kernel, self.per = "correct_sparse", "sample"
        elif loss == "categorical_crossentropy":
            self.kernel, self.per = "correct_onehot", "sample"
        else:
            self.kernel, self.per = "correct_binary", "element"

    def total(self, pred_shape: tuple) -> int:
        """How many predictions a batch of this shape counts."""
        return pred_shape[0] if self.per == "sample" else int(np.prod(pred_shape))


class OutputLoss:
    """The (unweighted) loss of one output of a model of several: ``<output>_loss`` in
    the logs, averaged over the samples as the total loss is."""

    kernel = None

    def __init__(self, name: str):
        self.name = name


def get(name, loss: str):
    if name in ("accuracy", "acc"):
        return Accuracy(loss)
    raise ConfigError(f"unknown metric {name!r}; dlrun knows 'accuracy'")


class Counter:
    """A step's metric counts, made on the device the step ran on: each accuracy by its
    kernel, into one slot of a small integer array (``out``), so a step brings back a few
    numbers rather than its predictions; a per-output loss reads its part of the loss.

    ``preds``/``ys``/``parts`` are the plan's buffers the metrics read, per output;
    ``metrics[i]`` reads output ``outputs[i]``.
    """

    def __init__(self, backend, metrics: list, outputs: list, preds: list, ys: list,
                 parts: list):
        self.metrics, self.outputs = list(metrics), list(outputs)
        self.kernels = [backend.twin(m.kernel) if m.kernel else None for m in self.metrics]
        self.out = backend.zeros((max(1, len(self.metrics)),), np.int64)
        self.preds, self.ys = preds, ys
        # the loss parts that per-output loss metrics read, fetched with the loss
        self.parts = [parts[i] for m, i in zip(self.metrics, self.outputs) if not m.kernel]
        self.totals = [m.total(preds[i].shape) if m.kernel else None
                       for m, i in zip(self.metrics, self.outputs)]

    def launch(self) -> None:
        for slot, (k, i) in enumerate(zip(self.kernels, self.outputs)):
            if k is not None:
                k(self.preds[i], self.ys[i], self.out, slot)

    def counts(self, out, parts, samples: int) -> list:
        """[numerator, denominator] per metric from the fetched ``out`` and ``parts``."""
        parts, result = iter(parts), []
        for slot, total in enumerate(self.totals):
            if total is not None:
                result.append((int(out[slot]), total))
            else:
                result.append((float(next(parts)) * samples, samples))
        return result


def logs(metrics: list, loss: float, counts: list) -> dict:
    """``{"loss": ..., <metric name>: value}`` from a loss and [numerator, denominator]s."""
    out = {"loss": loss}
    for m, (k, n) in zip(metrics, counts):
        out[m.name] = k / n if n else 0.0
    return out


class Tally:
    """Loss and metric counts summed over batches, or over the rounds of several workers:
    what an epoch's (or an evaluation's) logs report."""

    def __init__(self, metrics: list):
        self.metrics = list(metrics)
        self.loss_sum, self.samples = 0.0, 0
        self.counts = [[0, 0] for _ in self.metrics]

    def add(self, loss_sum: float, samples: int, counts) -> None:
        """Add ``samples`` samples whose losses sum to ``loss_sum``, and their counts."""
        self.loss_sum += loss_sum
        self.samples += samples
        for acc, (k, n) in zip(self.counts, counts):
            acc[0] += k
            acc[1] += n

    def add_batch(self, result) -> None:
        """Add a :class:`~dlrun.engine.models.training.BatchResult`."""
        self.add(result.loss * result.samples, result.samples, result.counts)

    def logs(self) -> dict:
        loss = self.loss_sum / self.samples if self.samples else math.nan
        return logs(self.metrics, loss, self.counts)
