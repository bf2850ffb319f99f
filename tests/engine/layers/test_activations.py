"""engine/layers/activations.py: LeakyReLU, ELU, PReLU, RReLU, Softmax and Maxout through the
harness against numpy references written here; PReLU's and Maxout's weights as Keras makes
them; the two learned units learn; RReLU's random slopes; the errors."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, ShapeError

L = dl.layers


# -- through the harness ---------------------------------------------------------------------
def test_leaky_relu(check_layer):
    check_layer(L.LeakyReLU, (6,), lambda x: np.where(x > 0, x, 0.3 * x))     # Keras' 0.3
    check_layer(L.LeakyReLU, (2, 3), lambda x: np.where(x > 0, x, 0.1 * x), alpha=0.1)


def test_elu(check_layer):
    check_layer(L.ELU, (6,), lambda x: np.where(x > 0, x, np.expm1(x)))        # Keras' 1.0
    check_layer(L.ELU, (2, 3), lambda x: np.where(x > 0, x, 0.5 * np.expm1(x)), alpha=0.5)


def test_prelu(check_layer):
    # the harness draws alpha at random: a slope per element of a sample
    check_layer(L.PReLU, (6,), lambda x, alpha: np.where(x > 0, x, alpha * x))
    check_layer(L.PReLU, (2, 3, 2), lambda x, alpha: np.where(x > 0, x, alpha * x),
                alpha_initializer="glorot_uniform")


def test_rrelu(check_layer):
    # inference: the mean slope; the gradient check runs in training, through drawn slopes
    check_layer(L.RReLU, (6,), lambda x: np.where(x > 0, x, (1 / 8 + 1 / 3) / 2 * x))
    check_layer(L.RReLU, (2, 3), lambda x: np.where(x > 0, x, 0.2 * x), lower=0.1, upper=0.3)


def test_softmax(check_layer, naive):
    check_layer(L.Softmax, (6,), naive.softmax)
    check_layer(L.Softmax, (4, 5), naive.softmax)                              # last axis


def test_maxout(check_layer):
    def maxout(x, w, b):
        z = x @ w + b
        return z.reshape(len(x), 3, 4).max(axis=2)       # unit u: pieces 4u .. 4u + 3

    check_layer(L.Maxout, (7,), maxout, units=3, pieces=4)
    check_layer(L.Maxout, (2,), lambda x, w, b: x @ w + b, units=2, pieces=1,
                kernel_initializer="he_uniform", kernel_regularizer=dl.regularizers.l2(0.1))


# -- weights -----------------------------------------------------------------------------------
def test_prelu_starts_as_relu(run_layer):
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    p = L.PReLU()
    np.testing.assert_array_equal(run_layer(p, x), np.maximum(x, 0))
    assert p.get_weights()[0].shape == (6,)


def test_maxout_weights_layout():
    m = L.Maxout(3, pieces=4)
    m.ensure_built((7,))
    w, b = m.get_weights()
    assert (w.shape, b.shape) == ((7, 12), (12,))
    assert m.compute_output_shape((7,)) == (3,)


def test_prelu_and_maxout_learn():
    dl.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    t = np.abs(x[:, :2]) - 0.5 * x[:, 2:]                    # piecewise linear target
    model = dl.Sequential([L.Maxout(8, pieces=3, input_shape=(4,)), L.PReLU(), L.Dense(2)])
    model.compile(optimizer=dl.optimizers.Adam(0.01), loss="mse")
    h = model.fit(x, t, batch_size=16, epochs=30, verbose=0).history["loss"]
    assert h[-1] < 0.2 * h[0]


def test_rrelu_draws_a_slope_per_element_and_step(run_layer):
    x = -np.random.default_rng(0).uniform(0.5, 2.0, (200, 100)).astype(np.float32)
    x[:, :10] *= -1                                           # some positive inputs
    layer = L.RReLU(lower=0.1, upper=0.5)
    y = run_layer(layer, x, training=True, seed=3)
    np.testing.assert_array_equal(y[:, :10], x[:, :10])      # kept as they are
    slope = (y[:, 10:] / x[:, 10:]).astype(np.float64)
    assert slope.min() >= 0.1 - 1e-6 and slope.max() <= 0.5 + 1e-6
    # 18,000 uniform draws on [0.1, 0.5]: mean 0.3 (s.e. 0.0009), variance 0.4^2 / 12
    assert slope.mean() == pytest.approx(0.3, abs=0.004)
    assert slope.var() == pytest.approx(0.4 ** 2 / 12, rel=0.05)
    assert len(np.unique(slope)) > 15000                      # one per element
    again = run_layer(layer, x, training=True, seed=4)
    assert np.mean(again != y) > 0.85                         # a fresh draw per step


# -- errors ------------------------------------------------------------------------------------
def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="Maxout units.*0"):
        L.Maxout(0)
    with pytest.raises(ConfigError, match="Maxout pieces.*'2'"):
        L.Maxout(3, pieces="2")
    with pytest.raises(ShapeError, match="Flatten"):
        L.Maxout(3).ensure_built((2, 5))
    with pytest.raises(ConfigError, match="'nope'"):
        L.PReLU(alpha_initializer="nope")
    for lower, upper in ((0.4, 0.2), (-0.1, 0.3), ("low", 0.3)):
        with pytest.raises(ConfigError, match=f"lower={lower!r}, upper={upper!r}"):
            L.RReLU(lower, upper)
