"""engine/layers/recurrent.py: SimpleRNN, LSTM and GRU through the harness against numpy
references written here (one sample and one step at a time), Keras's weight layout, gate
order and initial weights, the errors, saving a stacked model, the zoo's lstm model, and a
small LSTM that learns."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, ShapeError

L = dl.layers
TOL = {"rtol": 1e-5, "atol": 1e-5}


def sequences(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- independent references: float64, one sample and one step at a time ---------------------
def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def rnn_ref(x, kernel, recurrent, bias, activation):
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0.0))
    out = np.zeros(x.shape[:2] + (kernel.shape[1],))
    for s in range(x.shape[0]):
        h = np.zeros(kernel.shape[1])
        for t in range(x.shape[1]):
            h = act(x[s, t].astype(np.float64) @ kernel + h @ recurrent + bias)
            out[s, t] = h
    return out


def lstm_ref(x, kernel, recurrent, bias):
    n = recurrent.shape[0]
    out = np.zeros(x.shape[:2] + (n,))
    for s in range(x.shape[0]):
        h, c = np.zeros(n), np.zeros(n)
        for t in range(x.shape[1]):
            z = x[s, t].astype(np.float64) @ kernel + h @ recurrent + bias
            i, f, g, o = (z[k * n:(k + 1) * n] for k in range(4))
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
            out[s, t] = h
    return out


def gru_ref(x, kernel, recurrent, bias):
    """Keras 2's GRU (reset_after): gates z, r, h; bias rows (input, recurrent)."""
    n = recurrent.shape[0]
    out = np.zeros(x.shape[:2] + (n,))
    for s in range(x.shape[0]):
        h = np.zeros(n)
        for t in range(x.shape[1]):
            xz, xr, xh = np.split(x[s, t].astype(np.float64) @ kernel + bias[0], 3)
            uz, ur, uh = np.split(h @ recurrent + bias[1], 3)
            z, r = sigmoid(xz + uz), sigmoid(xr + ur)
            h = z * h + (1 - z) * np.tanh(xh + r * uh)
            out[s, t] = h
    return out


def outputs(return_sequences):
    """The layer's output from every step's states: all of them, or the last."""
    return (lambda h: h) if return_sequences else (lambda h: h[:, -1])


# -- through the harness ---------------------------------------------------------------------
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_simple_rnn(check_layer, activation, return_sequences):
    out = outputs(return_sequences)
    check_layer(L.SimpleRNN, (4, 3), lambda x, *w: out(rnn_ref(x, *w, activation)),
                units=5, activation=activation, return_sequences=return_sequences)


@pytest.mark.parametrize("return_sequences", [True, False])
def test_lstm(check_layer, return_sequences):
    out = outputs(return_sequences)
    check_layer(L.LSTM, (4, 3), lambda x, *w: out(lstm_ref(x, *w)), units=2,
                return_sequences=return_sequences)


@pytest.mark.parametrize("return_sequences", [True, False])
def test_gru(check_layer, return_sequences):
    out = outputs(return_sequences)
    check_layer(L.GRU, (4, 3), lambda x, *w: out(gru_ref(x, *w)), units=2,
                return_sequences=return_sequences)


def test_gru_one_step_and_other_arguments(check_layer):
    check_layer(L.GRU, (1, 2), lambda x, *w: gru_ref(x, *w)[:, -1], units=3)  # no recurrence
    check_layer(L.GRU, (3, 2), lambda x, *w: gru_ref(x, *w), units=3, batch=1,
                return_sequences=True, activation="tanh", recurrent_activation="sigmoid",
                reset_after=True, kernel_regularizer=dl.regularizers.l2(0.01))


def test_lstm_one_step_one_sample_and_other_arguments(check_layer):
    check_layer(L.LSTM, (1, 2), lambda x, *w: lstm_ref(x, *w)[:, -1], units=3)  # no recurrence
    check_layer(L.LSTM, (3, 2), lambda x, *w: lstm_ref(x, *w)[:, -1], units=3, batch=1,
                unit_forget_bias=False, recurrent_initializer="glorot_uniform",
                recurrent_regularizer=dl.regularizers.l2(0.001))
    check_layer(L.SimpleRNN, (3, 2), lambda x, *w: rnn_ref(x, *w, "relu"), units=3,
                activation="relu", return_sequences=True, kernel_initializer="he_normal",
                kernel_regularizer=dl.regularizers.l2(0.01))


# -- Keras's layout ----------------------------------------------------------------------------
def test_lstm_weights_in_keras_layout_and_gate_order(run_layer):
    """W, U, b of shapes (in, 4u), (u, 4u), (4u,), gates i, f, c, o: with W = U = 0 each
    gate is a constant, and the cell follows c_t = f c_{t-1} + i g in closed form."""
    layer = L.LSTM(2, return_sequences=True)
    layer.ensure_built((4, 3))
    kernel, recurrent, bias = layer.get_weights()
    assert (kernel.shape, recurrent.shape, bias.shape) == ((3, 8), (2, 8), (8,))
    np.testing.assert_array_equal(bias, [0, 0, 1, 1, 0, 0, 0, 0])   # unit_forget_bias
    zi, zf, zc, zo = 0.3, 1.2, -0.7, 0.5
    layer.set_weights([np.zeros_like(kernel), np.zeros_like(recurrent),
                       np.repeat(np.float32([zi, zf, zc, zo]), 2)])
    y = run_layer(layer, sequences(1, 4, 3))
    i, f, g, o = sigmoid(zi), sigmoid(zf), np.tanh(zc), sigmoid(zo)
    c = i * g * (1 - f ** np.arange(1, 5)) / (1 - f)
    np.testing.assert_allclose(y[0], np.stack([o * np.tanh(c)] * 2, axis=1), **TOL)


def test_gru_weights_in_keras_layout_and_gate_order(run_layer):
    """W, U, b of shapes (in, 3u), (u, 3u), (2, 3u), gates z, r, h: with W = U = 0 each
    gate is a constant (the reset gate scaling the recurrent bias of h), and the state
    follows h_t = z h_{t-1} + (1 - z) hh in closed form."""
    layer = L.GRU(2, return_sequences=True)
    layer.ensure_built((4, 3))
    kernel, recurrent, bias = layer.get_weights()
    assert (kernel.shape, recurrent.shape, bias.shape) == ((3, 6), (2, 6), (2, 6))
    zz, zr, zh, uh = 0.4, -0.8, 0.3, 0.9
    b = np.zeros((2, 6), np.float32)
    b[0] = np.repeat(np.float32([zz, zr, zh]), 2)
    b[1, 4:] = uh
    layer.set_weights([np.zeros_like(kernel), np.zeros_like(recurrent), b])
    y = run_layer(layer, sequences(1, 4, 3))
    z, hh = sigmoid(zz), np.tanh(zh + sigmoid(zr) * uh)
    h = (1 - z ** np.arange(1, 5)) * hh
    np.testing.assert_allclose(y[0], np.stack([h] * 2, axis=1), **TOL)


def test_initial_weights_as_keras_makes_them():
    dl.set_seed(0)
    layer = L.LSTM(8)
    layer.ensure_built((5, 3))
    kernel, recurrent, bias = layer.get_weights()
    lim = np.sqrt(6.0 / (3 + 32))
    assert np.abs(kernel).max() <= lim                            # glorot_uniform
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(8), atol=1e-5)   # orthogonal
    np.testing.assert_array_equal(bias, np.r_[np.zeros(8), np.ones(8), np.zeros(16)])
    assert not L.LSTM(8, unit_forget_bias=False).get_config()["unit_forget_bias"]


def test_errors_name_the_problem(run_layer):
    with pytest.raises(ShapeError, match="sequences of shape"):
        run_layer(L.LSTM(4), sequences(2, 8))
    with pytest.raises(ConfigError, match="units"):
        L.LSTM(0)
    with pytest.raises(ConfigError, match="activation"):
        L.SimpleRNN(3, activation="sigmoid")
    with pytest.raises(ConfigError, match="initializer"):
        L.LSTM(3, recurrent_initializer="nope")
    with pytest.raises(ConfigError, match="recurrent_activation='sigmoid' only.*'hard_sig"):
        L.GRU(3, recurrent_activation="hard_sigmoid")
    with pytest.raises(ConfigError, match="reset_after=True only.*got reset_after=False"):
        L.GRU(3, reset_after=False)


# -- in models ---------------------------------------------------------------------------------
def test_stacked_recurrent_model_saves_and_loads(tmp_path):
    dl.set_seed(0)
    x = sequences(4, 5, 3)
    model = dl.Sequential([L.LSTM(6, return_sequences=True, input_shape=(5, 3)),
                           L.SimpleRNN(4), L.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, np.array([0, 1, 0, 1]), batch_size=2, epochs=1, verbose=0)
    model.save(tmp_path / "m")
    again = dl.load_model(tmp_path / "m")
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-6, atol=1e-6)


def test_zoo_lstm_reads_image_rows_as_a_sequence():
    from dlrun.engine.models import zoo

    dl.set_seed(0)
    images = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    for shape, x in (((1, 28, 28), images), ((784,), images.reshape(2, 784))):
        m = zoo.build("lstm", shape, 10)
        assert m.count_params() == 4 * 128 * (28 + 128 + 1) + 128 * 10 + 10   # as Keras
        lstm, dense = m.layers[-2:]
        h = lstm_ref(images.reshape(2, 28, 28), *lstm.get_weights())[:, -1]
        logits = h @ dense.get_weights()[0] + dense.get_weights()[1]
        want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(m.predict(x), want, rtol=1e-4, atol=1e-6)


def test_lstm_learns_the_sign_of_a_sum():
    dl.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 8, 1)).astype(np.float32)
    y = (x.sum(axis=(1, 2)) > 0).astype(np.int64)
    model = dl.Sequential([L.LSTM(8, input_shape=(8, 1)), L.Dense(2, activation="softmax")])
    model.compile(optimizer=dl.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    h = model.fit(x, y, batch_size=32, epochs=15, verbose=0).history
    assert h["loss"][-1] < 0.4 * h["loss"][0]
    assert h["accuracy"][-1] > 0.9


