"""Models against an independent numpy implementation of the forward pass, the backward
pass and Keras' SGD update; fit/evaluate/predict semantics; the errors users cause."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, DataError, DlrunError, ShapeError

EPS = 1e-7   # Keras clips probabilities into [EPS, 1 - EPS] for binary cross entropy


# -- the numpy reference: a 2-layer MLP with a ReLU hidden layer, in float64 --------------
def np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# loss name -> (output activation, what the targets are)
SETUPS = {
    "sparse_categorical_crossentropy": ("softmax", "labels"),
    "categorical_crossentropy": ("softmax", "onehot"),
    "mean_squared_error": ("linear", "values"),
    "binary_crossentropy": ("sigmoid", "binary"),
}


def np_forward(ws, x, out_act):
    W1, b1, W2, b2 = ws
    z1 = x @ W1 + b1
    h = np.maximum(z1, 0)
    z2 = h @ W2 + b2
    out = {"softmax": np_softmax, "linear": lambda z: z, "sigmoid": np_sigmoid}[out_act](z2)
    return z1, h, out


def np_loss_and_dz(loss, out, t):
    """The loss, and its gradient with respect to the output layer's pre-activation."""
    n = len(out)
    if loss == "sparse_categorical_crossentropy":
        onehot = np.eye(out.shape[1])[t]
        return -np.log(out[np.arange(n), t]).mean(), (out - onehot) / n
    if loss == "categorical_crossentropy":
        return -(t * np.log(out)).sum(axis=1).mean(), (out - t) / n
    if loss == "mean_squared_error":
        return ((out - t) ** 2).mean(), 2 * (out - t) / out.size
    if loss == "binary_crossentropy":
        p = np.clip(out, EPS, 1 - EPS)
        value = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
        dp = (p - t) / (p * (1 - p)) / out.size          # through the clip: p is inside
        return value, dp * out * (1 - out)                # and through the sigmoid
    raise AssertionError(loss)


def np_grads(ws, x, t, loss, out_act):
    W1, b1, W2, b2 = ws
    z1, h, out = np_forward(ws, x, out_act)
    value, dz2 = np_loss_and_dz(loss, out, t)
    dh = dz2 @ W2.T * (z1 > 0)
    return value, out, [x.T @ dh, dh.sum(0), h.T @ dz2, dz2.sum(0)]


def np_sgd(ws, gs, vs, lr, momentum=0.0, nesterov=False):
    """Keras: v = m v - lr g; w += v  (Nesterov: w += m v - lr g); plain: w -= lr g."""
    for w, g, v in zip(ws, gs, vs):
        if momentum:
            v[...] = momentum * v - lr * g
            w += momentum * v - lr * g if nesterov else v
        else:
            w -= lr * g


def np_accuracy(loss, out, t):
    """Keras' 'accuracy': sparse for labels, binary for binary cross entropy or one
    output unit, else argmax against argmax, whatever the loss."""
    if loss == "sparse_categorical_crossentropy":
        return np.mean(out.argmax(1) == t)
    if loss == "binary_crossentropy" or out.shape[1] == 1:
        return np.mean((out > 0.5) == (t > 0.5))
    return np.mean(out.argmax(1) == t.argmax(1))


def make_data(loss, n=10, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    labels = np.arange(n) % k
    rng.shuffle(labels)
    kind = SETUPS[loss][1]
    if kind == "labels":
        t = labels
    elif kind == "onehot":
        t = np.eye(k, dtype=np.float32)[labels]
    elif kind == "values":
        t = rng.standard_normal((n, k)).astype(np.float32)
    else:
        t = (rng.uniform(size=(n, k)) > 0.5).astype(np.float32)
    return x, t


def make_model(loss="sparse_categorical_crossentropy", optimizer=None, metrics=None,
               d=6, hidden=5, k=3, seed=0):
    dl.set_seed(seed)
    model = dl.Sequential([
        dl.layers.Dense(hidden, activation="relu", input_shape=(d,)),
        dl.layers.Dense(k, activation=SETUPS[loss][0]),
    ])
    model.compile(optimizer=optimizer or dl.optimizers.SGD(learning_rate=0.1), loss=loss,
                  metrics=metrics)
    model.build((d,))                     # draw the weights now, while the seed is fresh
    return model


def f64(ws):
    return [w.astype(np.float64) for w in ws]


OPTIMIZERS = {
    "sgd": dict(lr=0.1),
    "momentum": dict(lr=0.1, momentum=0.9),
    "nesterov": dict(lr=0.05, momentum=0.8, nesterov=True),
}


# -- train_on_batch against numpy -----------------------------------------------------------
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("loss", list(SETUPS))
def test_train_on_batch_matches_numpy(loss, opt):
    x, t = make_data(loss)
    model = make_model(loss, dl.optimizers.SGD(**OPTIMIZERS[opt]), metrics=["accuracy"])
    ws = f64(model.get_weights())
    vs = [np.zeros_like(w) for w in ws]
    for step in range(4):
        value, out, gs = np_grads(ws, x.astype(np.float64), t, loss, SETUPS[loss][0])
        got_loss, got_acc = model.train_on_batch(x, t)
        assert got_loss == pytest.approx(value, rel=1e-5), f"loss at step {step}"
        assert got_acc == pytest.approx(np_accuracy(loss, out, t))
        np_sgd(ws, gs, vs, **OPTIMIZERS[opt])
        for w_got, w_ref in zip(model.get_weights(), ws):
            np.testing.assert_allclose(w_got, w_ref, rtol=1e-4, atol=1e-6,
                                       err_msg=f"weights after step {step}")
    # the test means something only if the weights moved
    assert not np.allclose(ws[0], f64(make_model(loss).get_weights())[0])


def test_train_on_batch_without_metrics_returns_the_loss():
    x, t = make_data("sparse_categorical_crossentropy")
    model = make_model()
    value = np_grads(f64(model.get_weights()), x.astype(np.float64), t,
                     "sparse_categorical_crossentropy", "softmax")[0]
    got = model.train_on_batch(x, t)
    assert isinstance(got, float) and got == pytest.approx(value, rel=1e-5)


def test_frozen_layer_is_not_updated():
    x, t = make_data("sparse_categorical_crossentropy")
    model = make_model()
    model.layers[0].trainable = False
    model.compile(optimizer=dl.optimizers.SGD(learning_rate=0.1, momentum=0.5),
                  loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    for _ in range(3):
        model.train_on_batch(x, t)
    after = model.get_weights()
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert not np.allclose(after[2], before[2])
    # unfreezing (and recompiling, as in Keras) trains it again
    model.layers[0].trainable = True
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.train_on_batch(x, t)
    assert not np.array_equal(model.get_weights()[0], before[0])


def test_trainable_set_after_fit_takes_effect_without_compiling():
    """The docstring's promise: the flag freezes the layer at the next step, whether or
    not the model is compiled again (its cached programs are remade)."""
    x, t = make_data("sparse_categorical_crossentropy")
    model = make_model()
    model.fit(x, t, epochs=1, batch_size=5, verbose=0)
    model.layers[0].trainable = False
    before = model.get_weights()
    model.fit(x, t, epochs=2, batch_size=5, verbose=0)
    model.train_on_batch(x, t)
    after = model.get_weights()
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert not np.allclose(after[2], before[2])
    model.layers[0].trainable = True
    model.train_on_batch(x, t)
    assert not np.array_equal(model.get_weights()[0], before[0])


def test_unfreezing_leaves_moving_statistics_untrained():
    layer = dl.layers.BatchNormalization()
    layer.ensure_built((4,))
    layer.trainable = False
    layer.trainable = True
    assert [p.trainable for p in layer.weights] == [True, True, False, False]


def test_seed_fixes_the_weights_of_a_model_built_after_it():
    """``set_seed(s)`` then constructing a model must fix its initial weights, however
    much else draws random numbers before the model is first used. (Keras builds a
    Sequential whose first layer has ``input_shape`` at construction.)"""
    def build():
        return dl.Sequential([dl.layers.Dense(4, input_shape=(3,)), dl.layers.Dense(2)])
    dl.set_seed(0)
    a = build()
    dl.set_seed(0)
    b = build()                                      # a's weights are not drawn yet...
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


# -- fit ------------------------------------------------------------------------------------
def test_fit_without_shuffle_matches_numpy_minibatches():
    """10 samples in batches of 4: two full batches and a last one of 2, for 2 epochs."""
    loss = "sparse_categorical_crossentropy"
    x, t = make_data(loss)
    model = make_model(loss, dl.optimizers.SGD(learning_rate=0.2, momentum=0.9), ["accuracy"])
    ws = f64(model.get_weights())
    vs = [np.zeros_like(w) for w in ws]
    ref_loss, ref_acc = [], []
    for _ in range(2):
        tot, correct = 0.0, 0
        for start in range(0, 10, 4):
            xb, tb = x[start:start + 4].astype(np.float64), t[start:start + 4]
            value, out, gs = np_grads(ws, xb, tb, loss, "softmax")
            tot += value * len(xb)
            correct += np.sum(out.argmax(1) == tb)
            np_sgd(ws, gs, vs, lr=0.2, momentum=0.9)
        ref_loss.append(tot / 10)
        ref_acc.append(correct / 10)

    hist = model.fit(x, t, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert hist.epoch == [0, 1]
    np.testing.assert_allclose(hist.history["loss"], ref_loss, rtol=1e-5)
    np.testing.assert_allclose(hist.history["accuracy"], ref_acc)
    for w_got, w_ref in zip(model.get_weights(), ws):
        np.testing.assert_allclose(w_got, w_ref, rtol=1e-4, atol=1e-6)


@pytest.fixture
def spy_batches(monkeypatch):
    """Records the sample indices of every training batch a model runs."""
    def attach(model):
        seen = []
        real = model.run_batch

        def run_batch(mode, x, y, idx, *weights):
            if mode == "train":
                seen.append(np.array(idx))
            return real(mode, x, y, idx, *weights)
        monkeypatch.setattr(model, "run_batch", run_batch)
        return seen
    return attach


def test_fit_reshuffles_every_epoch(spy_batches):
    x, t = make_data("sparse_categorical_crossentropy", n=10)
    model = make_model()
    seen = spy_batches(model)
    model.fit(x, t, batch_size=4, epochs=3, verbose=0)
    assert [len(b) for b in seen] == [4, 4, 2] * 3
    epochs = [np.concatenate(seen[i:i + 3]) for i in (0, 3, 6)]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(10))   # each sample once
    assert len({tuple(o) for o in epochs}) == 3                          # new order each
    assert not all(np.array_equal(o, np.arange(10)) for o in epochs)


def fit_from(w0, seed, x, t):
    model = make_model(seed=123)
    model.set_weights(w0)
    dl.set_seed(seed)
    model.fit(x, t, batch_size=3, epochs=3, verbose=0)
    return model.get_weights()


def test_shuffling_follows_the_seed():
    x, t = make_data("sparse_categorical_crossentropy", n=12)
    w0 = make_model(seed=7).get_weights()
    a, b, c = fit_from(w0, 1, x, t), fit_from(w0, 1, x, t), fit_from(w0, 2, x, t)
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
    assert not all(np.allclose(wa, wc) for wa, wc in zip(a, c))


@pytest.mark.parametrize("n,split,held", [(20, 0.25, 5), (10, 0.15, 2), (100, 0.07, 7)])
def test_validation_split_holds_out_the_last_fraction(spy_batches, n, split, held):
    x, t = make_data("sparse_categorical_crossentropy", n=n)
    model = make_model(metrics=["accuracy"])
    seen = spy_batches(model)
    hist = model.fit(x, t, batch_size=8, epochs=2, validation_split=split, verbose=0)
    used = np.concatenate(seen)
    assert used.max() == n - held - 1 and len(used) == 2 * (n - held)
    vloss, vacc = model.evaluate(x[n - held:], t[n - held:])
    assert hist.history["val_loss"][-1] == pytest.approx(vloss, rel=1e-6)
    assert hist.history["val_accuracy"][-1] == pytest.approx(vacc)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_validation_data():
    x, t = make_data("sparse_categorical_crossentropy", n=12)
    xv, tv = make_data("sparse_categorical_crossentropy", n=5, seed=9)
    model = make_model(metrics=["accuracy"])
    hist = model.fit(x, t, batch_size=5, epochs=2, validation_data=(xv, tv), verbose=0)
    assert len(hist.history["val_loss"]) == 2
    ws = f64(model.get_weights())
    _, _, out = np_forward(ws, xv.astype(np.float64), "softmax")
    assert hist.history["val_loss"][-1] == pytest.approx(
        -np.log(out[np.arange(5), tv]).mean(), rel=1e-5)
    assert hist.history["val_accuracy"][-1] == pytest.approx(np.mean(out.argmax(1) == tv))


def test_evaluate_matches_numpy_over_uneven_batches():
    x, t = make_data("sparse_categorical_crossentropy", n=11)
    model = make_model(metrics=["accuracy"])
    model.train_on_batch(x, t)                     # so that predictions are not uniform
    ws = f64(model.get_weights())
    _, _, out = np_forward(ws, x.astype(np.float64), "softmax")
    loss, acc = model.evaluate(x, t, batch_size=4)
    assert loss == pytest.approx(-np.log(out[np.arange(11), t]).mean(), rel=1e-5)
    assert acc == pytest.approx(np.mean(out.argmax(1) == t))
    d = model.evaluate(x, t, batch_size=4, return_dict=True)
    assert d == {"loss": loss, "accuracy": acc}
    # evaluation does not train
    for a, b in zip(model.get_weights(), ws):
        np.testing.assert_array_equal(a, b.astype(np.float32))


def test_predict_matches_numpy_and_softmax_rows_sum_to_one():
    x, _ = make_data("sparse_categorical_crossentropy", n=11)
    model = make_model()
    p = model.predict(x, batch_size=4)
    assert p.shape == (11, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    _, _, out = np_forward(f64(model.get_weights()), x.astype(np.float64), "softmax")
    np.testing.assert_allclose(p, out, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(model.predict(x, batch_size=32), p)


def test_partial_last_batch_counts_by_its_size():
    """Epoch loss = sample-weighted mean of batch losses; 7 samples in batches of 3."""
    x, t = make_data("sparse_categorical_crossentropy", n=7)
    model = make_model(optimizer=dl.optimizers.SGD(learning_rate=1e-9))   # weights barely move
    ws = f64(model.get_weights())
    hist = model.fit(x, t, batch_size=3, epochs=1, verbose=0)
    _, _, out = np_forward(ws, x.astype(np.float64), "softmax")
    assert hist.history["loss"][0] == pytest.approx(
        -np.log(out[np.arange(7), t]).mean(), rel=1e-5)


def test_nb_epoch_is_deprecated_but_works():
    x, t = make_data("sparse_categorical_crossentropy")
    model = make_model()
    with pytest.warns(DeprecationWarning, match="epochs"):
        hist = model.fit(x, t, nb_epoch=3, verbose=0)
    assert hist.epoch == [0, 1, 2]


def test_fit_without_nb_epoch_does_not_warn():
    x, t = make_data("sparse_categorical_crossentropy")
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(x, t, epochs=1, verbose=0)


def test_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    centers = np.array([[2.0, 0.0], [-1.0, 1.8], [-1.0, -1.8]])
    labels = np.arange(150) % 3
    x = (centers[labels] + 0.5 * rng.standard_normal((150, 2))).astype(np.float32)
    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Dense(16, activation="relu", input_shape=(2,)),
                           dl.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=dl.optimizers.SGD(learning_rate=0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, labels, batch_size=16, epochs=15, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0] / 3
    assert model.evaluate(x, labels)[1] > 0.95


def test_dropout_in_a_model_trains_with_fresh_masks_and_predicts_without():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.integers(0, 3, 16)

    def build():
        dl.set_seed(4)
        m = dl.Sequential([dl.layers.Dense(20, activation="relu", input_shape=(6,)),
                           dl.layers.Dropout(0.5),
                           dl.layers.Dense(3, activation="softmax")])
        m.compile(optimizer=dl.optimizers.SGD(learning_rate=1e-12),
                  loss="sparse_categorical_crossentropy")
        m.build((6,))
        return m

    a, b = build(), build()
    la = [a.train_on_batch(x, y) for _ in range(3)]
    lb = [b.train_on_batch(x, y) for _ in range(3)]
    assert la == lb                                  # same seed: same masks
    assert len(set(la)) == 3                         # a new mask every step
    # inference: no dropout, so predict equals the plain numpy forward
    W1, b1, W2, b2 = f64(a.get_weights())
    ref = np_softmax(np.maximum(x @ W1 + b1, 0) @ W2 + b2)
    np.testing.assert_allclose(a.predict(x), ref, rtol=1e-5, atol=1e-7)
    assert a.evaluate(x, y) == pytest.approx(-np.log(ref[np.arange(16), y]).mean(), rel=1e-5)


def test_weights_api():
    model = make_model()
    ws = model.get_weights()
    assert [w.shape for w in ws] == [(6, 5), (5,), (5, 3), (3,)]
    assert model.count_params() == 6 * 5 + 5 + 5 * 3 + 3
    ws[0][...] = 7                                   # get_weights returns copies
    assert not np.any(model.get_weights()[0] == 7)
    model.set_weights(ws)
    np.testing.assert_array_equal(model.get_weights()[0], 7)
    with pytest.raises(ShapeError, match="4 weight arrays, got 3"):
        model.set_weights(ws[:3])
    lines = []
    model.summary(print_fn=lines.append)
    assert any("53" in line for line in lines)


# -- errors ---------------------------------------------------------------------------------
def compiled():
    return make_model(metrics=["accuracy"])


def test_wrong_input_shape_names_it():
    model = compiled()
    with pytest.raises(ShapeError, match=r"\(batch, 6\).*\(4, 7\)"):
        model.predict(np.zeros((4, 7), np.float32))
    with pytest.raises(ShapeError, match=r"\(4, 7\)"):
        model.fit(np.zeros((4, 7)), np.zeros(4, int), verbose=0)
    with pytest.raises(ShapeError, match=r"\(6,\).*x\[None\]"):
        model.predict(np.zeros(6, np.float32))


@pytest.mark.parametrize("bad,index", [(5, 2), (-1, 0), (3, 3)])
def test_label_out_of_range_names_label_and_sample(bad, index):
    model = compiled()
    y = np.array([0, 1, 2, 0, 1, 2])
    y[index] = bad
    with pytest.raises(DataError) as err:
        model.fit(np.zeros((6, 6)), y, verbose=0)
    msg = str(err.value)
    assert f"label {bad} " in msg and f"sample {index}" in msg and "0..2" in msg, msg


def test_non_integer_labels():
    model = compiled()
    with pytest.raises(DataError, match="0.5"):
        model.train_on_batch(np.zeros((2, 6)), np.array([0.5, 1.0]))
    with pytest.raises(DataError, match=r"\(2, 3\).*categorical_crossentropy"):
        model.train_on_batch(np.zeros((2, 6)), np.eye(3)[[0, 1]])


def test_length_mismatch():
    with pytest.raises(DataError, match="10 and 9"):
        compiled().fit(np.zeros((10, 6)), np.zeros(9, int), verbose=0)


@pytest.mark.parametrize("kw,name", [
    (dict(loss="msee"), "msee"),
    (dict(loss="mse", optimizer="adamax"), "adamax"),
    (dict(loss="mse", metrics=["f1"]), "f1"),
    (dict(loss=None), "loss"),
])
def test_unknown_names_in_compile(kw, name):
    model = dl.Sequential([dl.layers.Dense(2, input_shape=(3,))])
    with pytest.raises(ConfigError, match=f"'?{name}'?"):
        model.compile(**kw)


def test_fit_before_compile():
    model = dl.Sequential([dl.layers.Dense(2, input_shape=(3,))])
    for call in (lambda: model.fit(np.zeros((2, 3)), np.zeros((2, 2)), verbose=0),
                 lambda: model.evaluate(np.zeros((2, 3)), np.zeros((2, 2))),
                 lambda: model.train_on_batch(np.zeros((2, 3)), np.zeros((2, 2)))):
        with pytest.raises(ConfigError, match="compile"):
            call()


@pytest.mark.parametrize("act", ["relu", "linear", "sigmoid"])
def test_sparse_ce_needs_softmax_output(act):
    model = dl.Sequential([dl.layers.Dense(3, activation=act, input_shape=(4,))])
    model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ConfigError, match="softmax.*" + {"linear": "bias_add"}.get(act, act)):
        model.fit(np.zeros((2, 4)), np.array([0, 1]), verbose=0)


def test_bad_targets_and_settings():
    model = dl.Sequential([dl.layers.Dense(2, activation="sigmoid", input_shape=(3,))])
    model.compile(loss="binary_crossentropy")
    with pytest.raises(DataError, match="2.0"):
        model.fit(np.zeros((2, 3)), np.array([[0, 1], [2, 0]]), verbose=0)
    with pytest.raises(DataError, match=r"\(2, 3\)"):
        model.fit(np.zeros((2, 3)), np.zeros((2, 3)), verbose=0)
    with pytest.raises(ConfigError, match="batch_size.*0"):
        model.fit(np.zeros((2, 3)), np.zeros((2, 2)), batch_size=0, verbose=0)
    with pytest.raises(ConfigError, match="validation_split.*1.0"):
        model.fit(np.zeros((2, 3)), np.zeros((2, 2)), validation_split=1.0, verbose=0)
    with pytest.raises(DataError, match="nan|NaN"):
        model.fit(np.zeros((2, 3)), np.array([[0, np.nan], [1, 0]]), verbose=0)
    with pytest.raises(ConfigError, match="momentum.*1.5"):
        dl.optimizers.SGD(momentum=1.5)
    with pytest.raises(ConfigError, match="learning_rate.*-1"):
        dl.optimizers.SGD(learning_rate=-1)


def test_weights_before_build():
    model = dl.Sequential([dl.layers.Dense(2)])
    with pytest.raises(ConfigError, match="input_shape"):
        model.get_weights()
    model.predict(np.zeros((1, 3)))                  # builds from the data
    assert [w.shape for w in model.get_weights()] == [(3, 2), (2,)]


def test_every_user_error_is_a_dlrun_error():
    for cls in (ConfigError, DataError, ShapeError, dl.errors.ModelFileError):
        assert issubclass(cls, DlrunError) and issubclass(cls, ValueError)
