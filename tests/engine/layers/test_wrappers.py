"""engine/layers/wrappers.py: TimeDistributed through the harness (Dense, Flatten) against
numpy references applied step by step, a convolution per step against the same Conv2D on
each step, its weights and freezing (the inner layer's), its nested config through a saved
model, and the errors users cause."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, ShapeError

L = dl.layers


def dense_config(units, activation=None):
    return {"class_name": "Dense", "config": {"units": units, "activation": activation}}


def test_time_distributed_dense(check_layer, naive):
    def per_step(x, w, b):
        return np.stack([naive.softmax(x[:, t] @ w + b) for t in range(x.shape[1])], axis=1)

    layer = check_layer(L.TimeDistributed, (4, 3), per_step,
                        layer=dense_config(2, "softmax"))
    assert layer.compute_output_shape((4, 3)) == (4, 2)
    assert [p.shape for p in layer.weights] == [(3, 2), (2,)]


def test_time_distributed_flatten(check_layer):
    def per_step(x):
        return np.stack([x[:, t].reshape(len(x), -1) for t in range(x.shape[1])], axis=1)

    check_layer(L.TimeDistributed, (3, 2, 2), per_step,
                layer={"class_name": "Flatten", "config": {}})


def test_time_distributed_conv2d_is_the_conv_on_every_step(run_layer):
    dl.set_seed(3)
    x = np.random.default_rng(0).standard_normal((2, 3, 1, 5, 5)).astype(np.float32)
    conv = L.Conv2D(2, 3, activation="relu")
    wrapped = L.TimeDistributed(conv)
    y = run_layer(wrapped, x)
    assert y.shape == (2, 3, *wrapped.layer.compute_output_shape((1, 5, 5)))
    assert wrapped.weights == conv.weights                  # the inner layer's own
    again = L.Conv2D(2, 3, activation="relu")
    again.ensure_built((1, 5, 5))
    again.set_weights(conv.get_weights())
    for t in range(3):
        np.testing.assert_allclose(y[:, t], run_layer(again, x[:, t]), rtol=1e-6, atol=1e-6)


def test_freezing_the_wrapper_freezes_the_inner_layer():
    inner = L.Dense(2)
    wrapped = L.TimeDistributed(inner)
    wrapped.ensure_built((4, 3))
    wrapped.trainable = False
    assert not inner.trainable and [p.trainable for p in wrapped.weights] == [False, False]
    frozen = L.TimeDistributed(L.Dense(2), trainable=False)
    frozen.ensure_built((4, 3))
    assert [p.trainable for p in frozen.weights] == [False, False]


def test_saved_model_rebuilds_the_inner_layer(tmp_path):
    dl.set_seed(4)
    model = dl.Sequential([L.Embedding(9, 4, input_shape=(5,)),
                           L.GRU(3, return_sequences=True),
                           L.TimeDistributed(L.Dense(2, activation="softmax"))])
    x = np.random.default_rng(1).integers(0, 9, (3, 5))
    model.save(tmp_path / "tagger")
    loaded = dl.load_model(tmp_path / "tagger")
    assert type(loaded.layers[-1].layer) is L.Dense
    assert loaded.layers[-1].get_config() == model.layers[-1].get_config()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_errors():
    with pytest.raises(ConfigError, match="takes a dlrun layer, got 3"):
        L.TimeDistributed(3)
    with pytest.raises(ConfigError, match="layer or its config"):
        L.TimeDistributed({"units": 3})
    with pytest.raises(ConfigError, match="unknown layer class 'Densely'"):
        L.TimeDistributed({"class_name": "Densely", "config": {}})
    with pytest.raises(ShapeError, match=r"\(batch, time, \.\.\.\), got \(batch, 4\)"):
        dl.Sequential([L.TimeDistributed(L.Dense(2), input_shape=(4,))])
