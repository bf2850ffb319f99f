"""Layers against references written in numpy here: Dense (every activation), weight
layout and initialisation, Dropout, Flatten, Activation, configs, and the errors."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine.core.graph import Placeholder
from dlrun.engine.core.plan import Plan
from dlrun.errors import ConfigError, DlrunError, ShapeError
from dlrun.ops import Spec


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# Independent definitions. leaky_relu's slope 0.3 and elu's alpha 1.0 are the Keras layer
# defaults (LeakyReLU(alpha=0.3), ELU(alpha=1.0)).
NP_ACTIVATIONS = {
    None: lambda z: z,
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "softmax": np_softmax,
    "leaky_relu": lambda z: np.where(z > 0, z, 0.3 * z),
    "elu": lambda z: np.where(z > 0, z, np.exp(np.minimum(z, 0)) - 1),
}


def test_every_activation_name_has_a_reference_here():
    assert set(dl.layers.ACTIVATIONS) | {None} == set(NP_ACTIVATIONS)


@pytest.mark.parametrize("activation", list(NP_ACTIVATIONS), ids=str)
def test_dense_forward(activation):
    dl.set_seed(1)
    model = dl.Sequential([dl.layers.Dense(4, activation=activation, input_shape=(5,))])
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    model.set_weights([W, b])                       # layout (in, out) then (out,)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    expected = NP_ACTIVATIONS[activation](x.astype(np.float64) @ W + b)
    out = model.predict(x)
    assert out.shape == (7, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_dense_without_bias():
    model = dl.Sequential([dl.layers.Dense(3, use_bias=False, input_shape=(2,))])
    (W,) = model.get_weights()
    assert W.shape == (2, 3)
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.testing.assert_allclose(model.predict(x), x @ W, rtol=1e-6)


def test_dense_weight_layout_and_glorot_uniform_init():
    dl.set_seed(3)
    layer = dl.layers.Dense(40, input_shape=(60,))
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


@pytest.mark.parametrize("name,shape", [
    ("glorot_uniform", (60, 40)), ("he_uniform", (60, 40)), ("glorot_normal", (60, 40)),
    ("he_normal", (60, 40)), ("glorot_uniform", (8, 3, 5, 5)), ("he_normal", (8, 3, 5, 5)),
])
def test_variance_scaling_initializers(name, shape):
    """Keras' variance scaling: fans of (in, out) or (out_ch, in_ch, kh, kw); uniform on
    [-l, l] with l = sqrt(3 var); normals truncated at two (pre-truncation) deviations."""
    field = int(np.prod(shape[2:]))
    fan_in, fan_out = (shape[0], shape[1]) if len(shape) == 2 else \
        (shape[1] * field, shape[0] * field)
    var = 2 / (fan_in + fan_out) if name.startswith("glorot") else 2 / fan_in
    dl.set_seed(0)
    w = dl.initializers.get(name)(shape, np.float32)
    assert w.shape == shape and w.dtype == np.float32
    assert w.std() == pytest.approx(np.sqrt(var), rel=0.06)
    assert abs(w.mean()) < 0.1 * np.sqrt(var)
    if name.endswith("uniform"):
        assert np.abs(w).max() <= np.sqrt(3 * var) * (1 + 1e-6)
    else:
        assert np.abs(w).max() <= 2 * np.sqrt(var) / 0.87962566103423978 * (1 + 1e-6)


def test_initialisation_follows_the_seed():
    def weights(seed):
        dl.set_seed(seed)
        return dl.Sequential([dl.layers.Dense(3, input_shape=(4,))]).get_weights()[0]
    np.testing.assert_array_equal(weights(5), weights(5))
    assert not np.array_equal(weights(5), weights(6))


def trace(layer, x, training, seed=0):
    """Run one layer on a batch through the graph engine."""
    xp = Placeholder(Spec(x.shape, x.dtype), name="x")
    layer.ensure_built(x.shape[1:])
    out = layer.call(xp, training)
    if out is xp:
        return x.copy()
    plan = Plan([xp], [out], layer.weights)
    plan.feed[xp][...] = x
    plan.run(seed=seed)
    return plan.value(out).copy()


def test_dropout_is_identity_at_inference():
    x = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
    model = dl.Sequential([dl.layers.Dropout(0.5, input_shape=(10,))])
    np.testing.assert_array_equal(model.predict(x), x)
    np.testing.assert_array_equal(trace(dl.layers.Dropout(0.5), x, training=False), x)


def test_dropout_in_training_zeroes_a_fraction_and_scales_the_rest():
    x = np.random.default_rng(0).uniform(1, 2, (50, 80)).astype(np.float32)
    layer = dl.layers.Dropout(0.25)
    y = trace(layer, x, training=True, seed=4)
    kept = y != 0
    assert kept.mean() == pytest.approx(0.75, abs=0.03)
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    y2 = trace(layer, x, training=True, seed=5)
    assert not np.array_equal(y != 0, y2 != 0)
    np.testing.assert_array_equal(trace(dl.layers.Dropout(0.0), x, training=True), x)


def test_flatten():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    flat = dl.layers.Flatten()
    assert flat.compute_output_shape((2, 3, 4)) == (24,)
    np.testing.assert_array_equal(trace(flat, x, training=False), x.reshape(3, 24))
    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Flatten(input_shape=(2, 3, 4)),
                           dl.layers.Dense(5, activation="tanh")])
    W, b = model.get_weights()
    assert W.shape == (24, 5)
    np.testing.assert_allclose(model.predict(x), np.tanh(x.reshape(3, -1) @ W + b),
                               rtol=1e-5, atol=1e-6)
    # already flat: passes through
    x2 = rng.standard_normal((3, 7)).astype(np.float32)
    np.testing.assert_array_equal(trace(dl.layers.Flatten(), x2, training=False), x2)


def test_activation_layer():
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    model = dl.Sequential([dl.layers.Activation("sigmoid", input_shape=(4,))])
    np.testing.assert_allclose(model.predict(x), 1 / (1 + np.exp(-x.astype(np.float64))),
                               rtol=1e-6)


@pytest.mark.parametrize("layer", [
    dl.layers.Dense(3, activation="relu", use_bias=False, name="d"),
    dl.layers.Dropout(0.3), dl.layers.Flatten(), dl.layers.Activation("tanh"),
    dl.layers.Dense(2, input_shape=(4,), trainable=False, kernel_initializer="he_normal"),
], ids=lambda l: type(l).__name__)
def test_config_round_trip(layer):
    again = type(layer).from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    assert dl.layers.layer_from_config(type(layer).__name__, layer.get_config()).get_config() \
        == layer.get_config()


def test_frozen_layer_weights_are_not_trainable():
    layer = dl.layers.Dense(2, trainable=False)
    dl.Sequential([dl.layers.Dense(3, input_shape=(4,)), layer]).build((4,))
    assert [p.trainable for p in layer.weights] == [False, False]
    layer.trainable = True
    assert [p.trainable for p in layer.weights] == [True, True]


# -- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("units", [0, -3, 2.5, "3", None])
def test_dense_bad_units(units):
    with pytest.raises(ConfigError, match=repr(units).replace(".", r"\.")):
        dl.layers.Dense(units)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, "high", None])
def test_dropout_bad_rate(rate):
    with pytest.raises(ConfigError, match="rate.*" + repr(rate).replace(".", r"\.")):
        dl.layers.Dropout(rate)


def test_unknown_activation_names_it_and_lists_known():
    with pytest.raises(ConfigError, match=r"'relux'.*relu"):
        dl.layers.Dense(3, activation="relux")
    with pytest.raises(ConfigError, match="'swishy'"):
        dl.layers.Activation("swishy")


def test_unknown_initializer():
    with pytest.raises(ConfigError, match="'glorot_uniformm'"):
        dl.layers.Dense(3, kernel_initializer="glorot_uniformm")


def test_dense_on_3d_input_suggests_flatten():
    # raised where the model is built: at construction or at first use
    for layers in ([dl.layers.Dense(3, input_shape=(2, 5))], [dl.layers.Dense(3)]):
        with pytest.raises(ShapeError, match=r"\(batch, 2, 5\).*Flatten"):
            dl.Sequential(layers).predict(np.zeros((4, 2, 5), np.float32))


def test_layer_reused_with_another_shape():
    layer = dl.layers.Dense(3)
    dl.Sequential([layer]).build((4,))
    with pytest.raises(ShapeError, match=r"\(4,\).*\(5,\)"):
        dl.Sequential([layer]).build((5,))


def test_set_weights_checks_shapes_and_counts():
    layer = dl.layers.Dense(3)
    dl.Sequential([layer]).build((4,))
    with pytest.raises(ShapeError, match=r"\(4, 3\).*\(3, 4\)"):
        layer.set_weights([np.zeros((3, 4)), np.zeros(3)])
    with pytest.raises(ShapeError, match="2 weight arrays, got 1"):
        layer.set_weights([np.zeros((4, 3))])


def test_unknown_layer_class():
    with pytest.raises(ConfigError, match="'Dence'"):
        dl.layers.layer_from_config("Dence", {})
    assert issubclass(ConfigError, DlrunError)
