"""Sample weights, written once in the training loop: ``fit(sample_weight=)``,
``fit(class_weight=)``, ``train_on_batch`` and ``evaluate``, against a numpy reference of
the weighted loss and its gradient. Keras' meaning: the loss is ``sum_i w_i loss_i / batch``
(divided by the batch size, not by the weights' sum), so a zero weight removes a sample's
influence."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, DataError

N, D, C = 12, 5, 3
LR = 0.5


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.integers(0, C, N)
    w = rng.uniform(0.2, 3.0, N).astype(np.float32)
    w[[2, 7]] = 0.0
    return x, y, w


def softmax_model(loss="sparse_categorical_crossentropy", activation="softmax", units=C):
    dl.set_seed(1)
    m = dl.Sequential([dl.layers.Dense(units, activation=activation, input_shape=(D,))])
    m.compile(optimizer=dl.optimizers.SGD(LR), loss=loss, metrics=["accuracy"])
    return m


def reference_step(kernel, bias, x, y, w):
    """(weighted cross-entropy loss, kernel and bias after one SGD step), in float64."""
    kernel, bias, x = (np.asarray(a, np.float64) for a in (kernel, bias, x))
    z = x @ kernel + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    n = len(x)
    loss = np.sum(w * -np.log(p[np.arange(n), y])) / n
    dz = (p - np.eye(kernel.shape[1])[y]) * w[:, None] / n
    return loss, kernel - LR * x.T @ dz, bias - LR * dz.sum(axis=0)


def test_train_on_batch_weighs_each_sample_loss_and_gradient(batch):
    x, y, w = batch
    model = softmax_model()
    loss, kernel, bias = reference_step(*model.get_weights(), x, y, w)
    got, _ = model.train_on_batch(x, y, sample_weight=w)
    assert got == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(model.get_weights()[0], kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.get_weights()[1], bias, rtol=1e-5, atol=1e-6)


def test_a_zero_weight_removes_the_sample(batch):
    x, y, w = batch
    other_x, other_y = x.copy(), y.copy()
    other_x[[2, 7]] = 100.0                     # the zero-weighted samples changed
    other_y[[2, 7]] = (y[[2, 7]] + 1) % C
    a, b = softmax_model(), softmax_model()
    la = a.train_on_batch(x, y, sample_weight=w)
    lb = b.train_on_batch(other_x, other_y, sample_weight=w)
    assert la[0] == lb[0]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_unit_weights_train_as_no_weights_bit_for_bit(batch):
    x, y, _ = batch
    a, b = softmax_model(), softmax_model()
    a.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    b.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False,
          sample_weight=np.ones(N, np.float32))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_fit_steps_follow_the_reference_and_weights_go_back_to_one(batch):
    x, y, w = batch
    model = softmax_model()
    kernel, bias = model.get_weights()
    for rows in (slice(0, 6), slice(6, 12)):            # two batches, in order
        _, kernel, bias = reference_step(kernel, bias, x[rows], y[rows], w[rows])
    model.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0, sample_weight=w)
    np.testing.assert_allclose(model.get_weights()[0], kernel, rtol=1e-5, atol=1e-6)
    # evaluate without weights after weighted steps: every weight is one again
    loss, _, _ = reference_step(*model.get_weights(), x, y, np.ones(N))
    assert model.evaluate(x, y, batch_size=6) == pytest.approx([loss, _accuracy(model, x, y)],
                                                               rel=1e-5)
    weighted, _, _ = reference_step(*model.get_weights(), x, y, w)
    assert model.evaluate(x, y, batch_size=6, sample_weight=w)[0] == \
        pytest.approx(weighted, rel=1e-5)


def _accuracy(model, x, y):
    return float(np.mean(model.predict(x).argmax(axis=1) == y))


def test_class_weight_is_the_sample_weight_of_each_class(batch):
    x, y, _ = batch
    cw = {0: 2.0, 2: 0.0}                               # class 1 left out: weight 1
    a, b = softmax_model(), softmax_model()
    a.train_on_batch(x, y, class_weight=cw)
    b.train_on_batch(x, y, sample_weight=np.array([cw.get(k, 1.0) for k in y], np.float32))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_balanced_class_weight_weighs_classes_equally():
    from dlrun.engine.models.data import balanced_class_weight, class_weights

    y = np.array([0, 0, 0, 1, 2, 2])
    cw = balanced_class_weight(y)
    assert cw == pytest.approx({0: 6 / 9, 1: 6 / 3, 2: 6 / 6})
    totals = np.bincount(y, weights=class_weights(y, cw))
    np.testing.assert_allclose(totals, totals[0])       # every class weighs the same
    onehot = np.eye(3, dtype=np.float32)[y]
    np.testing.assert_array_equal(class_weights(onehot, cw), class_weights(y, cw))


def test_weighted_square_error_and_validation_weights(batch):
    x, _, w = batch
    t = np.random.default_rng(1).standard_normal((N, 2)).astype(np.float32)
    model = softmax_model(loss="mse", activation=None, units=2)
    kernel, bias = (a.astype(np.float64) for a in model.get_weights())
    err = x @ kernel + bias - t
    want = np.sum(w * np.mean(err ** 2, axis=1)) / N
    hist = model.fit(x, t, batch_size=N, epochs=1, verbose=0, sample_weight=w,
                     validation_data=(x, t, w)).history
    assert hist["loss"][0] == pytest.approx(want, rel=1e-5)
    grad = x.T @ (2 * err / err.shape[1] * w[:, None] / N)
    np.testing.assert_allclose(model.get_weights()[0], kernel - LR * grad, rtol=1e-5,
                               atol=1e-6)
    assert hist["val_loss"][0] == pytest.approx(
        model.evaluate(x, t, batch_size=N, sample_weight=w)[0], rel=1e-6)


def test_sample_weight_reaches_every_output_of_a_functional_model(batch):
    x, y, w = batch
    inp = dl.Input(shape=(D,))
    dl.set_seed(2)
    a = dl.layers.Dense(C, activation="softmax", name="a")(inp)
    b = dl.layers.Dense(C, activation="softmax", name="b")(inp)
    model = dl.Model(inp, [a, b])
    model.compile(dl.optimizers.SGD(LR), loss="sparse_categorical_crossentropy")
    logs = model.evaluate(x, [y, y], batch_size=N, sample_weight=w, return_dict=True)
    for name in ("a", "b"):
        layer = [lay for lay in model.layers if lay.name == name][0]
        want, _, _ = reference_step(*layer.get_weights(), x, y, w)
        assert logs[f"{name}_loss"] == pytest.approx(want, rel=1e-5)
    assert logs["loss"] == pytest.approx(logs["a_loss"] + logs["b_loss"], rel=1e-6)
    with pytest.raises(ConfigError, match="one output"):
        model.fit(x, [y, y], class_weight={0: 1.0}, verbose=0)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"sample_weight": np.ones(N - 1)}, DataError, r"one weight per sample, shape \(12,\)"),
    ({"sample_weight": -np.ones(N)}, DataError, "at sample 0"),
    ({"class_weight": {"one": 2.0}}, ConfigError, "'one': 2.0"),
    ({"class_weight": {0: -1}}, ConfigError, "0: -1"),
    ({"class_weight": "even"}, ConfigError, "'balanced'"),
])
def test_bad_weights_are_refused_with_what_was_given(batch, kwargs, error, match):
    x, y, _ = batch
    with pytest.raises(error, match=match):
        softmax_model().fit(x, y, verbose=0, **kwargs)


def test_balanced_weights_count_the_training_samples_only(batch):
    from dlrun.engine.models.data import balanced_class_weight

    x, y, _ = batch
    a, b = softmax_model(), softmax_model()
    a.fit(x, y, batch_size=9, epochs=1, shuffle=False, verbose=0, validation_split=0.25,
          class_weight="balanced")
    b.train_on_batch(x[:9], y[:9], class_weight=balanced_class_weight(y[:9]))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
