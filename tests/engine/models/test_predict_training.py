"""``predict(x, training=True)`` (Monte-Carlo dropout: fresh masks every call, their mean
the inference output; batch normalisation by batch statistics, no state changed) and an
annealed dropout rate fed to the training program every epoch without a new plan."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl

L = dl.layers


def linear_with_dropout(rate: float, features: int = 20):
    dl.set_seed(0)
    return dl.Sequential([L.Dropout(rate, input_shape=(features,)),
                          L.Dense(1, use_bias=False)])


def test_monte_carlo_dropout_draws_fresh_masks_and_averages_to_the_inference_output():
    model = linear_with_dropout(0.5)
    x = np.random.default_rng(0).standard_normal((40, 20)).astype(np.float32)
    w = model.get_weights()[0].astype(np.float64)
    want = x @ w
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-6)
    first, second = model.predict(x, training=True), model.predict(x, training=True)
    assert np.mean(first != second) > 0.9
    # each call: y = sum_j x_j w_j m_j, m_j = 0 or 2 with equal odds, so Var y = sum (x w)^2
    calls = 400
    mean = np.mean([model.predict(x, training=True, batch_size=16) for _ in range(calls)],
                   axis=0)
    z = (mean - want) / np.sqrt(((x * w[:, 0]) ** 2).sum(axis=1, keepdims=True) / calls)
    assert np.abs(z).max() < 4.5
    assert np.mean(z ** 2) == pytest.approx(1.0, abs=0.6)        # 40 samples: s.e. 0.22
    np.testing.assert_array_equal(model.get_weights()[0], w.astype(np.float32))
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-6)


def test_monte_carlo_draws_follow_the_seed():
    model = linear_with_dropout(0.3)
    x = np.random.default_rng(1).standard_normal((8, 20)).astype(np.float32)
    dl.set_seed(5)
    a = model.predict(x, training=True)
    dl.set_seed(5)
    np.testing.assert_array_equal(model.predict(x, training=True), a)


def test_batch_norm_uses_batch_statistics_and_keeps_its_moving_ones():
    dl.set_seed(0)
    model = dl.Sequential([L.BatchNormalization(input_shape=(3,))])
    gamma, beta = np.array([1.5, 0.5, 2.0]), np.array([0.1, -0.2, 0.3])
    moving = [np.array([0.2, -0.1, 0.4]), np.array([2.0, 0.5, 1.5])]
    model.set_weights([a.astype(np.float32) for a in (gamma, beta, *moving)])
    x = np.random.default_rng(2).standard_normal((10, 3)).astype(np.float32) * 3 + 1
    before = model.get_weights()
    xs = x.astype(np.float64)
    batch = (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-3) * gamma + beta
    np.testing.assert_allclose(model.predict(x, training=True), batch, rtol=1e-5, atol=1e-5)
    for got, was in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, was)
    stored = (xs - moving[0]) / np.sqrt(moving[1] + 1e-3) * gamma + beta
    np.testing.assert_allclose(model.predict(x), stored, rtol=1e-5, atol=1e-5)


class RateSeen(dl.callbacks.Callback):
    """After each epoch: the rate the training program was fed, and the program itself."""

    def __init__(self, batch):
        super().__init__()
        self.batch, self.rates, self.programs = batch, [], []

    def on_epoch_end(self, epoch, logs=None):
        prog = self.model.program("train", self.batch)
        (fed,) = prog.feeds
        self.rates.append(float(prog.plan.feed[fed][0]))
        self.programs.append(prog)


def test_annealed_dropout_follows_the_epochs_in_one_training_program():
    """Rows that sum to 0 through a Dense of ones: y = sum_j x_j m_j has mean 0 and
    E[y^2] = sum_j x_j^2 r / (1 - r), so each epoch's mse loss shows the rate it trained
    with (the learning rate is too small to move the weights)."""
    dl.set_seed(0)
    model = dl.Sequential([L.AnnealedDropout(0.8, 0.2, epochs=3, input_shape=(30,)),
                           L.Dense(1, use_bias=False, kernel_initializer="ones")])
    model.compile(optimizer=dl.optimizers.SGD(lr=1e-9), loss="mse")
    half = np.random.default_rng(3).uniform(1, 2, (500, 15)).astype(np.float32)
    x = np.concatenate([half, -half], axis=1)
    seen = RateSeen(100)
    h = model.fit(x, np.zeros((500, 1), np.float32), batch_size=100, epochs=5, verbose=0,
                  callbacks=[seen]).history
    rates = np.array([0.8, 0.6, 0.4, 0.2, 0.2])
    assert seen.rates == pytest.approx(rates)
    assert all(p is seen.programs[0] for p in seen.programs)
    want = (x.astype(np.float64) ** 2).sum(axis=1).mean() * rates / (1 - rates)
    np.testing.assert_allclose(h["loss"], want, rtol=0.25)       # s.e. about 6 %
    # predict(x, training=True) feeds the rate of the model's epoch too
    ones = dl.Sequential([L.AnnealedDropout(0.8, 0.2, epochs=3, input_shape=(30,))])
    ones.training.epoch = 1
    kept = ones.predict(x, training=True) != 0
    assert kept.mean() == pytest.approx(0.4, abs=0.02)           # 15,000 draws: s.e. 0.004


def test_a_saved_model_keeps_the_epoch_its_annealed_rate_follows(tmp_path):
    model = dl.Sequential([L.AnnealedDropout(0.8, 0.2, epochs=3, input_shape=(30,))])
    model.training.epoch = 3
    model.save(tmp_path / "m")
    again = dl.load_model(tmp_path / "m")
    assert again.training.epoch == 3
    x = np.ones((500, 30), np.float32)
    assert np.mean(again.predict(x, training=True) != 0) == pytest.approx(0.8, abs=0.02)
