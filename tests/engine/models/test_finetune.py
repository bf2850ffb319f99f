"""Fine-tuning, the lectures' recipe: train a network, reuse its first layers in a new one
with another head, freeze them, train the head. Checked on real (shipped) digits."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl


@pytest.fixture(scope="module")
def digits():
    from dlrun.datasets import open_dataset

    x, y = open_dataset("digits").split("train")         # normalised float32 samples
    return x[:600].reshape(600, -1), y[:600].astype(np.int64)


def _base(x, y):
    dl.set_seed(0)
    base = dl.Sequential([dl.layers.Dense(32, activation="relu", input_shape=(64,)),
                          dl.layers.Dense(10, activation="softmax")])
    base.compile(dl.optimizers.SGD(learning_rate=0.1, momentum=0.9),
                 loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    base.fit(x, y, batch_size=50, epochs=3, verbose=0)
    return base


def test_saved_layers_reused_frozen_under_a_new_head(tmp_path, digits):
    x, y = digits
    base = _base(x, y)
    base.save(tmp_path / "base")
    loaded = dl.load_model(tmp_path / "base")
    trunk = loaded.layers[0]
    trunk.trainable = False
    kept = [w.copy() for w in trunk.get_weights()]
    # a new task on the same inputs: is the digit even? (2 classes)
    head = dl.layers.Dense(2, activation="softmax")
    model = dl.Sequential([trunk, head])
    model.compile(dl.optimizers.SGD(learning_rate=0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    even = (y % 2).astype(np.int64)
    before = model.evaluate(x, even, return_dict=True)
    model.fit(x, even, batch_size=50, epochs=5, verbose=0)
    after = model.evaluate(x, even, return_dict=True)
    for w, k in zip(trunk.get_weights(), kept):
        np.testing.assert_array_equal(w, k)                     # the trunk did not move
    assert after["loss"] < 0.7 * before["loss"]                 # the head learned
    assert after["accuracy"] > 0.8
    # the reused layer computes what it computed in the trained model
    h_base = np.maximum(x @ base.layers[0].get_weights()[0] + base.layers[0].get_weights()[1], 0)
    h_new = np.maximum(x @ kept[0] + kept[1], 0)
    np.testing.assert_allclose(h_new, h_base, rtol=1e-6)


def test_weights_copied_layer_by_layer_into_a_wider_model(digits):
    x, y = digits
    base = _base(x, y)
    model = dl.Sequential([dl.layers.Dense(32, activation="relu", input_shape=(64,)),
                           dl.layers.Dense(16, activation="relu"),
                           dl.layers.Dense(10, activation="softmax")])
    model.layers[0].set_weights(base.layers[0].get_weights())
    model.layers[0].trainable = False
    model.compile(dl.optimizers.Adam(learning_rate=0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=50, epochs=4, verbose=0)
    for w, k in zip(model.layers[0].get_weights(), base.layers[0].get_weights()):
        np.testing.assert_array_equal(w, k)
    assert model.evaluate(x, y, return_dict=True)["accuracy"] > 0.8
