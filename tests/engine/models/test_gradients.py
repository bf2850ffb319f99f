"""``dl.gradients``: input gradients against central differences of numpy float64 models
(checked against the model's own evaluate/predict first), weight gradients against what
one plain SGD step changes, output units and layer means against their closed forms, and
the errors a user can cause."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, ShapeError

L = dl.layers


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def central_differences(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x of a scalar float64 function, one element at a time."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        g[i] = (f(up) - f(down)) / (2 * eps)
    return g


def close_to(g, want, rtol=2e-3):
    np.testing.assert_allclose(g, want, rtol=rtol, atol=rtol * np.abs(want).max())


def mlp(**kw):
    dl.set_seed(1)
    return dl.Sequential([L.Dense(5, activation="tanh", input_shape=(4,), name="h", **kw),
                          L.Dense(3, activation="softmax")])


# -- the loss's gradient with respect to the inputs ---------------------------------------
def test_mlp_loss_input_gradient_matches_central_differences(rng):
    m = mlp()
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 2, 1, 0])
    w = rng.uniform(0.2, 2.0, 6).astype(np.float32)
    W1, b1, W2, b2 = (a.astype(np.float64) for a in m.get_weights())

    def loss(xv):                     # Keras' weighted mean: sum_i w_i loss_i / batch
        p = softmax(np.tanh(xv @ W1 + b1) @ W2 + b2)
        return np.sum(w * -np.log(p[np.arange(6), y])) / 6

    assert loss(x.astype(np.float64)) == pytest.approx(
        m.evaluate(x, y, sample_weight=w), rel=1e-5)
    g = dl.gradients(m, x, y, sample_weight=w)
    assert g.shape == x.shape and g.dtype == np.float32
    close_to(g, central_differences(loss, x.astype(np.float64)))
    # without weights: the plain mean (the plan is reused, its weights fed with ones)
    w = np.ones(6)
    close_to(dl.gradients(m, x, y), central_differences(loss, x.astype(np.float64)))


def conv_valid(x, k, b):
    """Cross-correlation of NCHW images with (out, in, kh, kw) kernels, no padding."""
    n, _, h, wd = x.shape
    o, _, kh, kw = k.shape
    out = np.zeros((n, o, h - kh + 1, wd - kw + 1))
    for i in range(h - kh + 1):
        for j in range(wd - kw + 1):
            out[:, :, i, j] = np.einsum("ncab,ocab->no", x[:, :, i:i + kh, j:j + kw], k)
    return out + b[None, :, None, None]


def test_cnn_loss_input_gradient_matches_central_differences(rng):
    dl.set_seed(2)
    m = dl.Sequential([L.Conv2D(2, 3, activation="relu", input_shape=(1, 6, 6), name="conv"),
                       L.MaxPooling2D(2), L.Flatten(), L.Dense(3, activation="softmax")])
    m.compile(optimizer="sgd", loss="categorical_crossentropy")
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[[1, 2]]
    K, kb, W, b = (a.astype(np.float64) for a in m.get_weights())

    def probs(xv):
        z = np.maximum(conv_valid(xv, K, kb), 0)
        pooled = z.reshape(len(xv), 2, 2, 2, 2, 2).max(axis=(3, 5))
        return softmax(pooled.reshape(len(xv), -1) @ W + b)

    def loss(xv):
        return -np.sum(y * np.log(probs(xv))) / len(xv)

    x64 = x.astype(np.float64)
    np.testing.assert_allclose(m.predict(x), probs(x64), rtol=1e-5, atol=1e-6)
    close_to(dl.gradients(m, x, y), central_differences(loss, x64))
    # one unit of the conv layer's output: d relu(z[n, o, i, j]) / d x is its kernel
    # window where z > 0, and zero elsewhere
    g = dl.gradients(m, x, layer="conv", output=(1, 2, 3))
    z = conv_valid(x64, K, kb)[:, 1, 2, 3]
    want = np.zeros_like(x64)
    want[:, :, 2:5, 3:6] = K[1][None] * (z > 0)[:, None, None, None]
    np.testing.assert_allclose(g, want, rtol=1e-6)


# -- the loss's gradient with respect to the weights --------------------------------------
@pytest.mark.parametrize("frozen", [False, True])
def test_weight_gradients_are_what_one_sgd_step_subtracts(rng, frozen):
    """w_before - w_after = lr * g for plain SGD, penalties and sample weights included;
    a frozen layer's weights get their gradient too (and do not move)."""
    m = mlp(kernel_regularizer=dl.regularizers.l2(0.1))
    m.layers[0].trainable = not frozen
    lr = 0.5
    m.compile(optimizer=dl.optimizers.SGD(lr=lr), loss="sparse_categorical_crossentropy")
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    w = rng.uniform(0, 2, 8).astype(np.float32)
    g = dl.gradients(m, x, y, wrt="weights", sample_weight=w)
    before = m.get_weights()
    assert [a.shape for a in g] == [a.shape for a in before]
    m.train_on_batch(x, y, sample_weight=w)
    after = m.get_weights()
    for i, (gi, b, a) in enumerate(zip(g, before, after)):
        assert np.abs(gi).max() > 1e-3, f"weight {i} has no gradient"
        if frozen and i < 2:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose((b - a) / lr, gi, rtol=1e-4, atol=1e-6)


# -- one output unit; a layer's mean ------------------------------------------------------
def test_linear_unit_gradient_is_the_weight_column_and_follows_set_weights(rng):
    dl.set_seed(3)
    m = dl.Sequential([L.Dense(3, input_shape=(4,))])       # not compiled: no y needed
    x = rng.standard_normal((5, 4)).astype(np.float32)
    W, b = m.get_weights()
    np.testing.assert_allclose(dl.gradients(m, x, output=2), np.tile(W[:, 2], (5, 1)))
    dW, db = dl.gradients(m, x, output=2, wrt="weights")
    want = np.zeros_like(W)
    want[:, 2] = x.sum(0)                    # d sum_i out[i, 2] / d W
    np.testing.assert_allclose(dW, want, rtol=1e-6)
    np.testing.assert_array_equal(db, [0, 0, 5])
    m.set_weights([W * 3, b])
    np.testing.assert_allclose(dl.gradients(m, x, output=0), np.tile(3 * W[:, 0], (5, 1)),
                               rtol=1e-6)


def test_layer_mean_and_layer_unit(rng):
    m = mlp()
    x = rng.standard_normal((6, 4)).astype(np.float32)
    W1, b1 = (a.astype(np.float64) for a in m.get_weights()[:2])
    d = 1 - np.tanh(x @ W1 + b1) ** 2
    g = dl.gradients(m, x, layer="h")                    # d mean(h) / d x
    np.testing.assert_allclose(g, d / d.size @ W1.T, rtol=1e-5)
    g = dl.gradients(m, x, layer="h", output=1)          # d sum_i h[i, 1] / d x
    np.testing.assert_allclose(g, d[:, 1:2] * W1[:, 1], rtol=1e-5)
    # the softmax output: d p[i, c] / d x[i] = p_c (W2[:, c] - W2 p_i) through tanh
    W2, b2 = (a.astype(np.float64) for a in m.get_weights()[2:])
    p = softmax(np.tanh(x @ W1 + b1) @ W2 + b2)
    dz = p[:, :1] * (np.eye(3)[0] - p)                    # d p_0 / d logits
    np.testing.assert_allclose(dl.gradients(m, x, output=0), (dz @ W2.T * d) @ W1.T,
                               rtol=1e-4, atol=1e-7)


def test_several_inputs_and_outputs(rng):
    dl.set_seed(4)
    a, b = dl.Input(shape=(3,), name="a"), dl.Input(shape=(2,), name="b")
    c = L.Concatenate()([a, b])
    m = dl.Model([a, b], [L.Dense(2, name="first")(c), L.Dense(1, name="second")(c)])
    xa = rng.standard_normal((4, 3)).astype(np.float32)
    xb = rng.standard_normal((4, 2)).astype(np.float32)
    W = m.get_weights()[2]
    ga, gb = dl.gradients(m, [xa, xb], output=("second", 0))
    np.testing.assert_allclose(ga, np.tile(W[:3, 0], (4, 1)))
    np.testing.assert_allclose(gb, np.tile(W[3:, 0], (4, 1)))
    ga, gb = dl.gradients(m, {"b": xb, "a": xa}, output=(0, 1))
    np.testing.assert_allclose(gb, np.tile(m.get_weights()[0][3:, 1], (4, 1)))
    with pytest.raises(ConfigError, match="output=\\(output index or name, unit\\)"):
        dl.gradients(m, [xa, xb], output=1)
    with pytest.raises(ConfigError, match="'third'"):
        dl.gradients(m, [xa, xb], output=("third", 0))


# -- errors -------------------------------------------------------------------------------
def test_errors_name_what_was_given(rng):
    m = mlp()
    x = rng.standard_normal((2, 4)).astype(np.float32)
    with pytest.raises(ShapeError, match=r"\(2, 5\)"):
        dl.gradients(m, np.zeros((2, 5), np.float32), output=0)
    with pytest.raises(ConfigError, match="output unit 3 .*shape \\(batch, 3\\)"):
        dl.gradients(m, x, output=3)
    with pytest.raises(ConfigError, match="output unit \\(0, 1\\)"):
        dl.gradients(m, x, output=(0, 1))
    with pytest.raises(ConfigError, match="no layer named 'nope'.*'h'"):
        dl.gradients(m, x, layer="nope")
    with pytest.raises(ConfigError, match="not compiled"):
        dl.gradients(m, x, np.zeros(2, np.int64))
    with pytest.raises(ConfigError, match="'input'"):
        dl.gradients(m, x, output=0, wrt="input")
    with pytest.raises(ConfigError, match="needs y"):
        dl.gradients(m, x)
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ConfigError, match="not both"):
        dl.gradients(m, x, np.zeros(2, np.int64), output=0)
    with pytest.raises(dl.errors.DataError, match="label 7"):
        dl.gradients(m, x, np.array([0, 7]))
