"""Weight regularisers: the penalty in the reported loss and its gradient in the update,
against a numpy softmax regression written out here; config, saving, errors."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine import regularizers
from dlrun.errors import ConfigError


def numpy_step(W, b, x, y, lr, l1=0.0, l2=0.0, bl2=0.0):
    """One SGD step of softmax regression with penalties; returns (W, b, reported loss)."""
    z = x @ W + b
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    n = len(x)
    ce = -np.log(p[np.arange(n), y]).mean()
    loss = ce + l1 * np.abs(W).sum() + l2 * (W * W).sum() + bl2 * (b * b).sum()
    dz = p.copy()
    dz[np.arange(n), y] -= 1
    dz /= n
    dW = x.T @ dz + l1 * np.sign(W) + 2 * l2 * W     # the lecture's extra -2 lr lambda w
    db = dz.sum(0) + 2 * bl2 * b
    return W - lr * dW, b - lr * db, loss


@pytest.mark.parametrize("kernel, bias, l1, l2, bl2", [
    (dl.regularizers.l2(0.05), None, 0.0, 0.05, 0.0),
    (dl.regularizers.l1(0.02), dl.regularizers.l2(0.3), 0.02, 0.0, 0.3),
    (dl.regularizers.l1_l2(l1=0.01, l2=0.1), None, 0.01, 0.1, 0.0),
    ("l2", None, 0.0, 0.01, 0.0),
], ids=["l2", "l1+bias_l2", "l1_l2", "by_name"])
def test_sgd_with_penalty_matches_numpy(kernel, bias, l1, l2, bl2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4))
    y = rng.integers(0, 3, 6)
    dl.set_seed(1)
    layer = dl.layers.Dense(3, activation="softmax", input_shape=(4,),
                            kernel_regularizer=kernel, bias_regularizer=bias,
                            bias_initializer="ones")
    model = dl.Sequential([layer])
    model.compile(optimizer=dl.optimizers.SGD(learning_rate=0.5),
                  loss="sparse_categorical_crossentropy")
    W, b = (w.astype(np.float64) for w in model.get_weights())
    for _ in range(4):
        got = model.train_on_batch(x, y)
        W, b, want = numpy_step(W, b, x.astype(np.float32).astype(np.float64), y, 0.5,
                                l1, l2, bl2)
        assert got == pytest.approx(want, rel=2e-6)
    np.testing.assert_allclose(model.get_weights()[0], W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.get_weights()[1], b, rtol=1e-5, atol=1e-6)
    # evaluate reports the penalised loss too (Keras does), fit's logs as well
    _, _, want = numpy_step(W, b, x.astype(np.float32).astype(np.float64), y, 0.5, l1, l2, bl2)
    assert model.evaluate(x, y) == pytest.approx(want, rel=2e-6)


def test_penalty_shrinks_weights_and_frozen_weights_pay_none():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def train(reg, trainable=True):
        dl.set_seed(3)
        model = dl.Sequential([dl.layers.Dense(8, activation="relu", input_shape=(5,),
                                               kernel_regularizer=reg, trainable=trainable),
                               dl.layers.Dense(2, activation="softmax")])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=5, batch_size=8, verbose=0)
        return model

    plain, reg = train(None), train(dl.regularizers.l2(0.5))
    assert np.sum(reg.get_weights()[0] ** 2) < 0.9 * np.sum(plain.get_weights()[0] ** 2)
    frozen = train(dl.regularizers.l2(0.5), trainable=False)
    frozen_plain = train(None, trainable=False)
    assert frozen.evaluate(x, y) == frozen_plain.evaluate(x, y)


def test_config_and_save_round_trip(tmp_path):
    model = dl.Sequential([dl.layers.Dense(3, activation="softmax", input_shape=(4,),
                                           kernel_regularizer=dl.regularizers.l1_l2(0.1, 0.2),
                                           bias_regularizer=dl.regularizers.l1(0.3))])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    cfg = model.layers[0].get_config()
    assert cfg["kernel_regularizer"] == {"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}}
    assert cfg["bias_regularizer"] == {"class_name": "L1", "config": {"l1": 0.3}}
    x = np.ones((2, 4), np.float32)
    y = np.array([0, 2])
    model.save(tmp_path / "m")
    loaded = dl.load_model(tmp_path / "m")
    assert loaded.layers[0].get_config() == cfg
    assert loaded.evaluate(x, y) == model.evaluate(x, y)


def test_errors_name_the_value():
    with pytest.raises(ConfigError, match="-0.1"):
        dl.regularizers.l2(-0.1)
    with pytest.raises(ConfigError, match="'l3'"):
        dl.layers.Dense(3, kernel_regularizer="l3")
    with pytest.raises(ConfigError, match="'much'"):
        regularizers.L1L2(l1="much")
