"""Helpers of the tests in this folder's own modules (callbacks, optimizers...): the toy
classification problem the two callback modules train on (fixtures ``data`` and
``make_model``). Test modules that define their own ``data`` or ``make_model`` use theirs."""
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
        model.compile(optimizer=optimizer or dl.optimizers.SGD(lr=lr),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model
    return make
