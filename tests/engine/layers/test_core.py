"""engine/layers/core.py: Dense (every activation; on sequences too), Highway, Activation,
Dropout, Flatten and Reshape through the harness against numpy references written here;
Dense's weight layout and initialisation, Dropout in training, and the errors users
cause; DropConnect and AnnealedDropout (through the harness, then their masks in
training)."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, ShapeError

L = dl.layers


# -- through the harness ---------------------------------------------------------------------
def test_every_activation_name_has_a_reference(naive):
    assert set(dl.layers.ACTIVATIONS) | {None} == set(naive.ACTIVATIONS)


@pytest.mark.parametrize("activation", [None, "linear", "relu", "sigmoid", "tanh", "softmax",
                                        "leaky_relu", "elu"], ids=str)
def test_dense(check_layer, naive, activation):
    act = naive.ACTIVATIONS[activation]
    check_layer(L.Dense, (5,), lambda x, w, b: act(x @ w + b), units=4, activation=activation)


@pytest.mark.parametrize("activation", [None, "softmax"], ids=str)
def test_dense_on_sequences(check_layer, naive, activation):
    """(batch, time, features) -> (batch, time, units): the same weights at every step,
    the activation (a softmax too) per step, as Keras 2."""
    act = naive.ACTIVATIONS[activation]

    def per_step(x, w, b):
        return np.stack([act(x[:, t] @ w + b) for t in range(x.shape[1])], axis=1)

    layer = check_layer(L.Dense, (3, 5), per_step, units=4, activation=activation)
    assert layer.compute_output_shape((3, 5)) == (3, 4)
    assert [p.shape for p in layer.weights] == [(5, 4), (4,)]


def test_dense_without_bias_frozen_and_other_arguments(check_layer):
    check_layer(L.Dense, (4,), lambda x, w: np.maximum(x @ w, 0), units=2, activation="relu",
                use_bias=False, name="d", kernel_initializer="he_normal")
    layer = check_layer(L.Dense, (4,), lambda x, w, b: x @ w + b, units=2, input_shape=(4,),
                        trainable=False, kernel_regularizer=dl.regularizers.l2(0.01))
    assert [p.trainable for p in layer.weights] == [False, False]


@pytest.mark.parametrize("activation", ["relu", "tanh", "linear"])
def test_highway(check_layer, naive, activation):
    def highway(x, w, b, wt, bt):
        t = naive.sigmoid(x @ wt + bt)
        return t * naive.ACTIVATIONS[activation](x @ w + b) + (1 - t) * x

    check_layer(L.Highway, (4,), highway, activation=activation, transform_bias=-3.0)


def test_activation(check_layer, naive):
    check_layer(L.Activation, (4,), naive.sigmoid, activation="sigmoid")
    check_layer(L.Activation, (2, 3), lambda x: x, activation="linear")


def test_dropout_is_the_identity_at_inference(check_layer):
    # the gradient check runs in training mode: through one fixed mask
    check_layer(L.Dropout, (6,), lambda x: x, rate=0.5)
    check_layer(L.Dropout, (2, 3), lambda x: x, rate=0.0)


def test_flatten(check_layer):
    check_layer(L.Flatten, (2, 3, 4), lambda x: x.reshape(len(x), -1))
    check_layer(L.Flatten, (7,), lambda x: x)          # already flat: passes through


def test_reshape(check_layer):
    check_layer(L.Reshape, (3, 4, 5), lambda x: x.reshape(len(x), 5, 12), target_shape=(5, -1))
    check_layer(L.Reshape, (6,), lambda x: x.reshape(len(x), 2, 3), target_shape=(2, 3))


# -- Dense: layout and initialisation --------------------------------------------------------
def test_dense_weight_layout_and_glorot_uniform_init():
    dl.set_seed(3)
    layer = L.Dense(40, input_shape=(60,))
    model = dl.Sequential([layer])
    W, b = model.get_weights()
    assert (W.shape, b.shape) == ((60, 40), (40,))
    assert W.dtype == b.dtype == np.float32
    assert [p.name for p in layer.weights] == [f"{layer.name}/kernel", f"{layer.name}/bias"]
    limit = np.sqrt(6 / (60 + 40))
    assert np.abs(W).max() <= limit
    assert np.abs(W).max() > 0.95 * limit           # uses the whole range (2400 draws)
    assert abs(W.mean()) < 0.05 * limit
    assert W.std() == pytest.approx(limit / np.sqrt(3), rel=0.05)
    np.testing.assert_array_equal(b, 0)


def test_initialisation_follows_the_seed():
    def weights(seed):
        dl.set_seed(seed)
        return dl.Sequential([L.Dense(3, input_shape=(4,))]).get_weights()[0]
    np.testing.assert_array_equal(weights(5), weights(5))
    assert not np.array_equal(weights(5), weights(6))


def test_highway_weights_start_near_the_identity():
    layer = L.Highway(transform_bias=-1.0)
    layer.ensure_built((4,))
    assert [w.shape for w in layer.get_weights()] == [(4, 4), (4,), (4, 4), (4,)]
    np.testing.assert_array_equal(layer.get_weights()[3], -1.0)
    np.testing.assert_array_equal(L.Highway().get_config()["transform_bias"], -2.0)


def test_flatten_then_dense():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    dl.set_seed(0)
    model = dl.Sequential([L.Flatten(input_shape=(2, 3, 4)), L.Dense(5, activation="tanh")])
    W, b = model.get_weights()
    assert W.shape == (24, 5)
    np.testing.assert_allclose(model.predict(x), np.tanh(x.reshape(3, -1) @ W + b),
                               rtol=1e-5, atol=1e-6)


# -- Dropout in training ------------------------------------------------------------------------
def test_dropout_in_a_model_is_the_identity_at_inference(run_layer):
    x = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
    model = dl.Sequential([L.Dropout(0.5, input_shape=(10,))])
    np.testing.assert_array_equal(model.predict(x), x)
    np.testing.assert_array_equal(run_layer(L.Dropout(0.5), x, training=False), x)


def test_dropout_in_training_zeroes_a_fraction_and_scales_the_rest(run_layer):
    x = np.random.default_rng(0).uniform(1, 2, (50, 80)).astype(np.float32)
    layer = L.Dropout(0.25)
    y = run_layer(layer, x, training=True, seed=4)
    kept = y != 0
    assert kept.mean() == pytest.approx(0.75, abs=0.03)
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    y2 = run_layer(layer, x, training=True, seed=5)
    assert not np.array_equal(y != 0, y2 != 0)
    np.testing.assert_array_equal(run_layer(L.Dropout(0.0), x, training=True), x)


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("units", [0, -3, 2.5, "3"])
def test_dense_bad_units(units):
    with pytest.raises(ConfigError, match=repr(units).replace(".", r"\.")):
        L.Dense(units)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, "high", None])
def test_dropout_bad_rate(rate):
    with pytest.raises(ConfigError, match="rate.*" + repr(rate).replace(".", r"\.")):
        L.Dropout(rate)


def test_unknown_activation_names_it_and_lists_known():
    with pytest.raises(ConfigError, match=r"'relux'.*relu"):
        L.Dense(3, activation="relux")
    with pytest.raises(ConfigError, match="'swishy'"):
        L.Activation("swishy")


def test_unknown_initializer():
    with pytest.raises(ConfigError, match="'glorot_uniformm'"):
        L.Dense(3, kernel_initializer="glorot_uniformm")


def test_dense_on_images_suggests_flatten():
    # raised where the model is built: at construction or at first use; sequences
    # (batch, time, features) are taken (the last axis), images are not
    for layers in ([L.Dense(3, input_shape=(1, 2, 5))], [L.Dense(3)]):
        with pytest.raises(ShapeError, match=r"\(batch, 1, 2, 5\).*Flatten"):
            dl.Sequential(layers).predict(np.zeros((4, 1, 2, 5), np.float32))


def test_highway_errors():
    with pytest.raises(ConfigError, match="transform_bias.*'high'"):
        L.Highway(transform_bias="high")
    with pytest.raises(ShapeError, match="Flatten"):
        L.Highway().ensure_built((2, 3))


def test_reshape_errors():
    with pytest.raises(ShapeError, match="cannot reshape"):
        L.Reshape((7, -1)).compute_output_shape((3, 4, 5))
    with pytest.raises(ConfigError, match="at most one -1"):
        L.Reshape((-1, -1))


# -- DropConnect and AnnealedDropout -----------------------------------------------------------
def test_drop_connect_is_dense_at_inference(check_layer, naive):
    # the gradient check runs in training mode: through one fixed mask on the kernel
    check_layer(L.DropConnect, (5,), lambda x, w, b: np.tanh(x @ w + b), units=4, rate=0.5,
                activation="tanh")
    check_layer(L.DropConnect, (3,), lambda x, w: x @ w, units=2, rate=0.0, use_bias=False)


def test_drop_connect_drops_weights_with_one_mask_per_step(run_layer):
    """Rows of the identity read the masked kernel itself: each entry dropped or scaled by
    1 / (1 - rate), one mask for the whole batch, a new one the next step."""
    layer = L.DropConnect(60, rate=0.3, bias_initializer="ones")
    eye = np.eye(50, dtype=np.float32)
    run_layer(layer, eye)
    w = layer.get_weights()[0]
    seen = run_layer(layer, np.concatenate([eye, eye]), training=True, seed=9) - 1.0
    np.testing.assert_array_equal(seen[:50], seen[50:])         # shared by the batch
    kept = seen[:50] != 0                                       # (the bias is never dropped)
    assert kept.mean() == pytest.approx(0.7, abs=0.03)          # 3,000 draws: s.e. 0.008
    np.testing.assert_allclose(seen[:50][kept], w[kept] / 0.7, rtol=1e-5, atol=1e-6)
    again = run_layer(layer, eye, training=True, seed=10) - 1.0
    assert np.mean((again != 0) != kept) > 0.2
    np.testing.assert_allclose(run_layer(layer, eye), w + 1.0, rtol=1e-6)


def test_annealed_dropout_is_the_identity_at_inference(check_layer):
    check_layer(L.AnnealedDropout, (6,), lambda x: x, initial_rate=0.5, epochs=4)
    check_layer(L.AnnealedDropout, (2, 3), lambda x: x, initial_rate=0.2, final_rate=0.6,
                epochs=1)


@pytest.mark.parametrize("epoch,rate", [(0, 0.6), (1, 0.45), (2, 0.3), (4, 0.0), (9, 0.0)])
def test_annealed_dropout_rate_falls_linearly_over_epochs(run_layer, epoch, rate):
    layer = L.AnnealedDropout(0.6, epochs=4)
    assert layer.rate_at(epoch) == pytest.approx(rate)
    x = np.random.default_rng(0).uniform(1, 2, (100, 80)).astype(np.float32)
    y = run_layer(layer, x, training=True, seed=epoch, epoch=epoch)
    kept = y != 0
    assert kept.mean() == pytest.approx(1 - rate, abs=0.02)     # 8,000 draws: s.e. <= 0.006
    np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=1e-6)


def test_drop_connect_and_annealed_dropout_errors():
    with pytest.raises(ConfigError, match="DropConnect rate.*1.0"):
        L.DropConnect(3, rate=1.0)
    with pytest.raises(ConfigError, match="final_rate.*'none'"):
        L.AnnealedDropout(0.5, "none", epochs=3)
    with pytest.raises(ConfigError, match="initial_rate.*-0.2"):
        L.AnnealedDropout(-0.2, epochs=3)
    with pytest.raises(ConfigError, match="epochs.*0"):
        L.AnnealedDropout(0.5, epochs=0)
    with pytest.raises(TypeError, match="epochs"):
        L.AnnealedDropout(0.5)
