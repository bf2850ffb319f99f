"""engine/losses.py through the model API: every Keras loss learns a tiny problem; user
losses (functions of symbolic tensors built with dlrun.backend) train as the built-in
ones do, with per-sample weights, and save by name; the errors a user can cause."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun import backend as K
from dlrun.engine.custom_objects import get_custom_objects
from dlrun.engine.losses import canonical, check_targets
from dlrun.engine.models.checkpoints import load_checkpoint, save_checkpoint, user_functions
from dlrun.errors import ConfigError, ModelFileError, ShapeError

EPS = 1e-7


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def learning_problem(loss: str, rng):
    """(x, y, output units, output activation, the loss's lowest value on y)."""
    x = rng.standard_normal((48, 4)).astype(np.float32)
    z = x @ rng.standard_normal((4, 3))
    if loss in ("hinge", "squared_hinge"):          # 0/1 labels, read as -1/1
        return x, (z[:, :1] > 0).astype(np.float32), 1, None, 0.0
    if loss == "categorical_hinge":
        return x, np.eye(3, dtype=np.float32)[z.argmax(axis=1)], 3, None, 0.0
    if loss == "kullback_leibler_divergence":
        return x, _softmax(z).astype(np.float32), 3, "softmax", 0.0
    if loss == "poisson":                           # rates through an exp link
        y = np.exp(0.3 * z)
        return x, y.astype(np.float32), 3, "exp", float(np.mean(y - y * np.log(y + EPS)))
    if loss == "cosine_similarity":
        return x, z.astype(np.float32), 3, None, -1.0
    return x, z.astype(np.float32), 3, None, 0.0    # mean_absolute_error


@pytest.mark.parametrize("loss", ["hinge", "squared_hinge", "categorical_hinge",
                                  "mean_absolute_error", "kullback_leibler_divergence",
                                  "poisson", "cosine_similarity"])
def test_each_keras_loss_learns(loss):
    x, y, units, activation, best = learning_problem(loss, np.random.default_rng(0))
    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Dense(units, activation=activation, input_shape=(4,))])
    model.compile(optimizer=dl.optimizers.SGD(lr=0.1, momentum=0.9), loss=loss)
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=16, epochs=30, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after - best < 0.3 * (before - best), (before, after, best)


def my_mse(y_true, y_pred):
    return K.mean(K.square(y_pred - y_true), axis=-1)


def squares(y_true, y_pred):            # (batch, n): Keras takes each sample's mean
    return K.square(y_pred - y_true)


def mean_of_all(y_true, y_pred):        # a scalar: every sample's loss
    return K.mean(K.square(y_pred - y_true))


def trained(loss, x, y, weights=None, steps=3):
    """(losses of ``steps`` train_on_batch calls, the weights after them)."""
    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Dense(3, activation="tanh", input_shape=(5,)),
                           dl.layers.Dense(2)])
    model.compile(optimizer=dl.optimizers.SGD(lr=0.2), loss=loss)
    losses = [model.train_on_batch(x, y, sample_weight=weights) for _ in range(steps)]
    return np.array(losses), model.get_weights()


@pytest.fixture
def xy():
    rng = np.random.default_rng(1)
    return (rng.standard_normal((6, 5)).astype(np.float32),
            rng.standard_normal((6, 2)).astype(np.float32))


@pytest.mark.parametrize("fn", [my_mse, squares], ids=["per-sample", "per-element"])
@pytest.mark.parametrize("weighted", [False, True])
def test_a_user_mse_trains_as_the_built_in_one(xy, fn, weighted):
    x, y = xy
    w = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0], np.float32) if weighted else None
    want_losses, want_weights = trained("mse", x, y, w)
    got_losses, got_weights = trained(fn, x, y, w)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-6)
    for g, e in zip(got_weights, want_weights):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)


def test_a_scalar_user_loss_is_every_samples_loss(xy):
    """Keras broadcasts a scalar loss over the batch: with weights, L * mean(w)."""
    x, y = xy
    w = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0], np.float32)
    plain, _ = trained("mse", x, y, steps=1)
    weighted, _ = trained(mean_of_all, x, y, w, steps=1)
    assert weighted[0] == pytest.approx(plain[0] * w.mean(), rel=1e-6)


def test_a_user_loss_of_the_wrong_shape_or_type_is_refused(xy):
    x, y = xy

    def per_feature(y_true, y_pred):        # (2,): a mean over the batch, not per sample
        return K.mean(K.square(y_pred - y_true), axis=0)

    def not_a_tensor(y_true, y_pred):
        return 0.0

    def mismatched(y_true, y_pred):
        return K.mean(y_pred - K.reshape(y_true, (-1,)), axis=-1)

    model = dl.Sequential([dl.layers.Dense(2, input_shape=(5,))])
    for fn, error, match in [
            (per_feature, ShapeError, r"'per_feature' returned a tensor of shape \(2,\).*"
                                      r"shape \(6,\)"),
            (not_a_tensor, ConfigError, "'not_a_tensor' returned float"),
            (mismatched, ShapeError, r"'mismatched'.*\(6, 2\) and \(12,\)")]:
        model.compile(optimizer="sgd", loss=fn)
        with pytest.raises(error, match=match):
            model.train_on_batch(x, y)


def test_an_unknown_loss_name_lists_the_known_ones():
    model = dl.Sequential([dl.layers.Dense(2, input_shape=(5,))])
    with pytest.raises(ConfigError, match=r"unknown loss 'hinje'.*'hinge'.*'poisson'"):
        model.compile(optimizer="sgd", loss="hinje")


def test_hinge_targets_0_1_become_minus_1_1():
    y = np.array([[0.0], [1.0], [1.0]])
    for loss in ("hinge", "squared_hinge"):
        np.testing.assert_array_equal(check_targets(loss, y, (1,)), [[-1], [1], [1]])
        np.testing.assert_array_equal(check_targets(loss, 2 * y - 1, (1,)), [[-1], [1], [1]])
    np.testing.assert_array_equal(check_targets("mean_squared_error", y, (1,)), y)
    np.testing.assert_array_equal(check_targets(canonical(my_mse), y, (1,)), y)


def test_a_model_with_a_user_loss_saves_by_name_and_loads_with_custom_objects(xy, tmp_path):
    x, y = xy
    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Dense(2, input_shape=(5,))])
    model.compile(optimizer="sgd", loss=my_mse)
    model.train_on_batch(x, y)
    model.save(tmp_path / "m")
    with pytest.raises(ModelFileError, match=r"unknown loss 'my_mse'.*custom_objects="
                                             r"\{'my_mse': my_mse\}"):
        dl.load_model(tmp_path / "m")
    again = dl.load_model(tmp_path / "m", custom_objects={"my_mse": my_mse})
    assert again.loss == "my_mse"
    assert again.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0))
    get_custom_objects()["my_mse"] = my_mse
    try:
        assert dl.load_model(tmp_path / "m").loss == "my_mse"
    finally:
        del get_custom_objects()["my_mse"]


def test_a_lambda_loss_cannot_be_saved(tmp_path):
    model = dl.Sequential([dl.layers.Dense(2, input_shape=(5,))])
    model.compile(optimizer="sgd", loss=lambda t, p: K.mean(K.abs(p - t), axis=-1))
    with pytest.raises(ConfigError, match="lambda cannot be saved.*def"):
        model.save(tmp_path / "m")


def test_a_checkpoint_of_a_model_with_user_functions_restores(xy, tmp_path):
    x, y = xy
    model = dl.Sequential([dl.layers.Dense(2, input_shape=(5,)),
                           dl.layers.Lambda(squares_of_one)])
    model.compile(optimizer="sgd", loss=my_mse)
    assert user_functions(model) == {"my_mse": my_mse, "squares_of_one": squares_of_one}
    save_checkpoint(model, tmp_path / "c", epoch=1)
    again = load_checkpoint(tmp_path / "c", custom_objects=user_functions(model))
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def squares_of_one(x):
    return K.square(x)
