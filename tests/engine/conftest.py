"""Helpers the callback and checkpoint tests share: the toy classification problem the two
callback modules train on (fixtures ``data`` and ``make_model``; a module that defines its
own ``data`` uses its own), a callback that scripts the monitored value (``scripted``) and
one that makes the weights NaN (``poison_after``)."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl


@pytest.fixture
def data():
    """Ten samples of three features, labelled by the sign of the first: ``(x, y)``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


@pytest.fixture
def make_model():
    """``make_model(seed=0, lr=0.05, optimizer=None)``: a 3-4-2 tanh / softmax classifier
    for :func:`data`, compiled with SGD (``lr``) unless ``optimizer`` is given, its weights
    drawn from ``seed``."""
    def make(seed=0, lr=0.05, optimizer=None):
        dl.set_seed(seed)
        model = dl.Sequential([dl.layers.Dense(4, activation="tanh", input_shape=(3,)),
                               dl.layers.Dense(2, activation="softmax")])
        model.compile(optimizer=optimizer or dl.optimizers.SGD(learning_rate=lr),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model
    return make


class Scripted(dl.callbacks.Callback):
    """Puts a scripted 'score' into the epoch logs and records the weights of each epoch."""

    def __init__(self, values):
        super().__init__()
        self.values, self.weights = values, []

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.values[epoch]
        self.weights.append(self.model.get_weights())


@pytest.fixture
def scripted():
    """:class:`Scripted`, a callback that scores epoch ``k`` with ``values[k]``."""
    return Scripted


class PoisonAfter(dl.callbacks.Callback):
    """Makes the weights NaN at the end of epoch ``k``, as a diverging run would; keeps the
    weights it replaced in ``good``."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.k:
            self.good = self.model.get_weights()
            self.model.set_weights([np.full_like(w, np.nan) for w in self.good])


@pytest.fixture
def poison_after():
    """:class:`PoisonAfter` (the callback and checkpoint tests of TerminateOnNaN)."""
    return PoisonAfter
