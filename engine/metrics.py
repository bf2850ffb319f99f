"""Metrics: what each one counts per batch (by a small kernel on the step's device: the
``correct_*`` twins of :mod:`dlrun.ops.counts`), and their accumulation over an epoch
(:class:`Tally`)."""
from __future__ import annotations

import math

import numpy as np

from dlrun.errors import ConfigError


# named accuracy -> (the kernel that counts it, what it counts per: sample or element,
# the target kind it needs: "labels" (integer classes) or anything else (arrays))
NAMED = {
    "sparse_categorical_accuracy": ("correct_sparse", "sample", "labels"),
    "categorical_accuracy": ("correct_onehot", "sample", "arrays"),
    "binary_accuracy": ("correct_binary", "element", "arrays"),
    "sparse_top_k_categorical_accuracy": ("correct_sparse_top5", "sample", "labels"),
    "top_k_categorical_accuracy": ("correct_top5", "sample", "arrays"),
}


class Accuracy:
    """Fraction of correct predictions, counted by a small kernel on the device the step
    ran on (:meth:`kernel_for` names it).

    ``'accuracy'`` (or ``'acc'``) means what it means in Keras, whatever the loss: sparse
    categorical for integer labels, binary (each element against 0.5) for one output unit
    or binary cross entropy, else categorical (argmax of the prediction against argmax of
    the target). Which one is settled from the output's shape when a program is made.
    The named accuracies of :data:`NAMED` count as they say.
    """

    def __init__(self, name: str, loss: str, targets: str):
        self.name, self.loss, self.targets = name, loss, targets
        if name in NAMED:
            need = NAMED[name][2]
            if (targets == "labels") != (need == "labels"):
                other = name[len("sparse_"):] if name.startswith("sparse_") else \
                    "sparse_" + name
                given = "integer labels" if targets == "labels" else "target arrays"
                raise ConfigError(f"metric {name!r} does not fit loss {loss!r}, whose "
                                  f"targets are {given}; use {other!r} or 'accuracy'")

    def rule(self, pred_shape: tuple) -> tuple[str, str]:
        """(kernel, per) for predictions of ``pred_shape`` (batch axis first)."""
        if self.name in NAMED:
            return NAMED[self.name][:2]
        if self.targets == "labels":
            return NAMED["sparse_categorical_accuracy"][:2]
        if pred_shape[-1] == 1 or self.loss == "binary_crossentropy":
            return NAMED["binary_accuracy"][:2]
        return NAMED["categorical_accuracy"][:2]

    def kernel_for(self, pred_shape: tuple) -> str:
        return self.rule(pred_shape)[0]

    def total(self, pred_shape: tuple) -> int:
        """How many predictions a batch of this shape counts."""
        per = self.rule(pred_shape)[1]
        return int(np.prod(pred_shape[:-1] if per == "sample" else pred_shape))


class OutputLoss:
    """The (unweighted) loss of one output of a model of several: ``<output>_loss`` in
    the logs, averaged over the samples as the total loss is."""

    def __init__(self, name: str):
        self.name = name

    def kernel_for(self, pred_shape: tuple) -> None:
        return None


def get(name, loss: str, targets: str) -> Accuracy:
    """The metric ``name`` (a Keras name, or one of :mod:`dlrun.metrics`' functions) of an
    output trained with ``loss``, whose targets are ``targets`` ("labels" for integer
    class labels)."""
    key = getattr(name, "__name__", name)
    if key in ("accuracy", "acc"):
        return Accuracy("accuracy", loss, targets)
    if key in NAMED:
        return Accuracy(key, loss, targets)
    raise ConfigError(f"unknown metric {name!r}; dlrun knows 'accuracy' (or 'acc') and "
                      f"{sorted(NAMED)}")


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
        names = [m.kernel_for(preds[i].shape) for m, i in zip(self.metrics, self.outputs)]
        self.kernels = [backend.twin(k) if k else None for k in names]
        self.out = backend.zeros((max(1, len(self.metrics)),), np.int64)
        # what each count reads: a row-wise count of outputs with more axes (a sequence's
        # steps) reads them as rows of the last axis
        self.args = [(_rows(preds[i]), _rows(ys[i]) if ys[i].ndim > 1 else ys[i])
                     if k and m.rule(preds[i].shape)[1] == "sample" else (preds[i], ys[i])
                     for m, k, i in zip(self.metrics, names, self.outputs)]
        # the loss parts that per-output loss metrics read, fetched with the loss
        self.parts = [parts[i] for k, i in zip(names, self.outputs) if not k]
        self.totals = [m.total(preds[i].shape) if k else None
                       for m, k, i in zip(self.metrics, names, self.outputs)]

    def launch(self) -> None:
        for slot, (k, (p, y)) in enumerate(zip(self.kernels, self.args)):
            if k is not None:
                k(p, y, self.out, slot)

    def counts(self, out, parts, samples: int) -> list:
        """[numerator, denominator] per metric from the fetched ``out`` and ``parts``."""
        parts, result = iter(parts), []
        for slot, total in enumerate(self.totals):
            if total is not None:
                result.append((int(out[slot]), total))
            else:
                result.append((float(next(parts)) * samples, samples))
        return result


def _rows(a):
    """``a`` as a matrix of rows of its last axis (itself when it is one already)."""
    return a if a.ndim <= 2 else a.reshape((-1, a.shape[-1]))


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
