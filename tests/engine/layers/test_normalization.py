"""engine/layers/normalization.py: BatchNormalization through the harness (inference against
numpy, the training gradient), its training forward and moving statistics, the frozen layer
in inference mode (also inside fit), and its errors."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, ShapeError

L = dl.layers
TOL = {"rtol": 1e-5, "atol": 1e-5}
POSITIVE = {"moving_variance": (0.5, 1.5)}


def bn_ref(x, gamma, beta, mean, var, epsilon):
    """gamma (x - mean) / sqrt(var + epsilon) + beta over axis 1 (features or channels)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    g, b, m, v = (a.reshape(shape) for a in (gamma, beta, mean, var))
    return g * (x - m) / np.sqrt(v + epsilon) + b


@pytest.mark.parametrize("shape", [(4,), (3, 2, 4)], ids=["features", "images"])
def test_batch_normalization(check_layer, shape):
    # inference against the reference; the gradient check runs the training forward
    check_layer(L.BatchNormalization, shape,
                lambda x, *w: bn_ref(x, *w, 1e-3), batch=5, weights=POSITIVE)
    check_layer(L.BatchNormalization, shape,
                lambda x, *w: bn_ref(x, *w, 1e-2), batch=5, weights=POSITIVE,
                momentum=0.9, epsilon=1e-2)


@pytest.mark.parametrize("shape,axes", [((6, 4), (0,)), ((5, 3, 2, 4), (0, 2, 3))])
def test_training_and_inference(run_layer, shape, axes):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3.0 + 1.0).astype(np.float32)
    bn = L.BatchNormalization(momentum=0.9, epsilon=1e-3)
    bn.ensure_built(x.shape[1:])
    c = shape[1]
    rng = np.random.default_rng(2)
    gamma, beta = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    mm, mv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    bn.set_weights([gamma, beta, mm, mv])
    y = run_layer(bn, x, training=True)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    np.testing.assert_allclose(y, bn_ref(x, gamma, beta, mean, var, 1e-3), **TOL)
    _, _, mm2, mv2 = bn.get_weights()                       # updated in place, as Keras does
    np.testing.assert_allclose(mm2, 0.9 * mm + 0.1 * mean, **TOL)
    np.testing.assert_allclose(mv2, 0.9 * mv + 0.1 * var, **TOL)

    want = bn_ref(x, gamma, beta, mm2, mv2, 1e-3)
    np.testing.assert_allclose(run_layer(bn, x, training=False), want, **TOL)
    bn.trainable = False                                    # frozen: inference mode
    np.testing.assert_allclose(run_layer(bn, x, training=True), want, **TOL)
    assert [p.trainable for p in bn.weights] == [False] * 4
    bn.trainable = True
    assert [p.trainable for p in bn.weights] == [True, True, False, False]


def test_frozen_batch_norm_keeps_all_its_weights_during_fit():
    dl.set_seed(0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 2, 4, 4)).astype(np.float32) * 2 + 1
    y = rng.integers(0, 2, 16)
    bn = L.BatchNormalization()
    model = dl.Sequential([L.Conv2D(3, 3, input_shape=(2, 4, 4)), bn, L.Flatten(),
                           L.Dense(2, activation="softmax")])
    bn.trainable = False
    model.compile(optimizer=dl.optimizers.SGD(learning_rate=0.1),
                  loss="sparse_categorical_crossentropy")
    before = bn.get_weights()
    conv_before = model.layers[0].get_weights()[0]
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for a, b in zip(bn.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(model.layers[0].get_weights()[0], conv_before)


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="momentum=1.5"):
        L.BatchNormalization(momentum=1.5)
    with pytest.raises(ConfigError, match="epsilon=0"):
        L.BatchNormalization(epsilon=0)
    with pytest.raises(ShapeError, match=r"\(batch, 2, 3\)"):
        L.BatchNormalization().ensure_built((2, 3))
