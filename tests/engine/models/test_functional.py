"""The functional API: merge layers and Highway against numpy, residual / highway /
multi-input / multi-output / shared-layer models against numpy and in training, the model
config and save/load, and the errors users cause."""
from __future__ import annotations

import json

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, DataError, DlrunError, ShapeError

L = dl.layers
EPS = 1e-7   # binary cross entropy clips probabilities into [EPS, 1 - EPS], as Keras does


def np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_sparse_ce(p, labels):
    return -np.log(p[np.arange(len(p)), labels]).mean()


def np_bce(p, t):
    p = np.clip(p, EPS, 1 - EPS)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()


def run(layer, *shapes, seed=0):
    """``layer`` in a one-layer functional model on random inputs: (inputs, output)."""
    rng = np.random.default_rng(seed)
    ins = [dl.Input(shape=s) for s in shapes]
    out = layer(ins if len(ins) > 1 else ins[0])
    model = dl.Model(ins if len(ins) > 1 else ins[0], out)
    xs = [rng.standard_normal((4, *s)).astype(np.float32) for s in shapes]
    return xs, model.predict(xs if len(xs) > 1 else xs[0])


# -- layers against numpy ------------------------------------------------------------------
def test_add_sums_its_inputs():
    xs, y = run(L.Add(), (5,), (5,), (5,))
    np.testing.assert_allclose(y, xs[0] + xs[1] + xs[2], rtol=1e-6)


@pytest.mark.parametrize("axis, shapes", [(-1, [(3,), (5,)]), (1, [(2, 3, 3), (4, 3, 3)]),
                                          (-1, [(2, 3, 1), (2, 3, 4), (2, 3, 2)]),
                                          (2, [(2, 1, 3), (2, 5, 3)])])
def test_concatenate_joins_along_the_axis(axis, shapes):
    layer = L.Concatenate(axis=axis)
    xs, y = run(layer, *shapes)
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=axis))
    assert layer.compute_output_shape(shapes) == y.shape[1:]


@pytest.mark.parametrize("activation", ["relu", "tanh", "linear"])
def test_highway_forward_matches_numpy(activation):
    dl.set_seed(1)
    layer = L.Highway(activation=activation)
    xs, y = run(layer, (6,))
    W, b, Wt, bt = (w.astype(np.float64) for w in layer.get_weights())
    np.testing.assert_array_equal(bt, -2.0)            # the transform bias starts at -2
    x = xs[0].astype(np.float64)
    h = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "linear": lambda z: z}[
        activation](x @ W + b)
    t = np_sigmoid(x @ Wt + bt)
    np.testing.assert_allclose(y, t * h + (1 - t) * x, rtol=1e-5, atol=1e-6)


def test_highway_weights_layout_and_transform_bias():
    layer = L.Highway(transform_bias=-1.0)
    run(layer, (4,))
    assert [w.shape for w in layer.get_weights()] == [(4, 4), (4,), (4, 4), (4,)]
    np.testing.assert_array_equal(layer.get_weights()[3], -1.0)
    assert layer.compute_output_shape((4,)) == (4,)


@pytest.mark.parametrize("layer", [L.Add(name="a1"), L.Concatenate(axis=1, name="c1"),
                                   L.Highway(activation="tanh", transform_bias=-3.0,
                                             name="h1")])
def test_config_round_trip(layer):
    cfg = json.loads(json.dumps(layer.get_config()))
    again = type(layer).from_config(cfg)
    assert again.get_config() == layer.get_config()


def test_merge_shape_errors_say_what_was_received():
    a, b = dl.Input(shape=(4,)), dl.Input(shape=(3,))
    with pytest.raises(ShapeError, match=r"one shape.*\(None, 4\) and \(None, 3\)"):
        L.Add()([a, b])
    with pytest.raises(ShapeError, match="list of at least two"):
        L.Add()(a)
    with pytest.raises(ShapeError, match="every other axis must match"):
        L.Concatenate(axis=1)([dl.Input(shape=(2, 3)), dl.Input(shape=(2, 4))])
    with pytest.raises(ShapeError, match="axis 3"):
        L.Concatenate(axis=3)([dl.Input(shape=(2, 3)), dl.Input(shape=(2, 3))])
    with pytest.raises(ShapeError, match="Flatten"):
        L.Highway()(dl.Input(shape=(2, 3)))


def test_calling_a_layer_on_an_array_is_a_clear_error():
    with pytest.raises(ConfigError, match="dl.Input"):
        L.Dense(3)(np.zeros((2, 4), np.float32))


# -- models ----------------------------------------------------------------------------------
def residual_model(d=8, k=3, seed=0):
    dl.set_seed(seed)
    inp = dl.Input(shape=(d,))
    h = L.Dense(16, activation="relu")(inp)
    r = L.Dense(16, activation="relu")(h)
    r = L.Dense(16)(r)
    h = L.Activation("relu")(L.Add()([h, r]))
    return dl.Model(inp, L.Dense(k, activation="softmax")(h))


def blobs(n=96, d=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 2
    y = np.arange(n) % k
    x = centres[y] + rng.standard_normal((n, d))
    return x.astype(np.float32), y


@pytest.mark.parametrize("build", ["residual", "highway"])
def test_residual_and_highway_models_learn(build):
    x, y = blobs()
    if build == "residual":
        model = residual_model()
    else:
        dl.set_seed(0)
        inp = dl.Input(shape=(8,))
        h = L.Dense(12, activation="relu")(inp)
        for _ in range(3):
            h = L.Highway(activation="relu")(h)
        model = dl.Model(inp, L.Dense(3, activation="softmax")(h))
    model.compile(dl.optimizers.Adam(learning_rate=0.01), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    hist = model.fit(x, y, batch_size=16, epochs=8, verbose=0).history
    assert list(hist) == ["loss", "accuracy"]
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["accuracy"][-1] > 0.9


def test_single_input_output_model_behaves_as_sequential():
    x, y = blobs(n=40)
    dl.set_seed(3)
    seq = dl.Sequential([L.Dense(6, activation="relu", input_shape=(8,)),
                         L.Dense(3, activation="softmax")])
    inp = dl.Input(shape=(8,))
    fun = dl.Model(inp, L.Dense(3, activation="softmax")(L.Dense(6, activation="relu")(inp)))
    fun.set_weights(seq.get_weights())
    hists = []
    for m in (seq, fun):
        m.compile(dl.optimizers.SGD(learning_rate=0.1, momentum=0.9),
                  "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
        hists.append(m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                           validation_split=0.25).history)
    assert hists[0] == hists[1]
    for a, b in zip(seq.get_weights(), fun.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert fun.evaluate(x, y) == seq.evaluate(x, y)
    assert fun.train_on_batch(x, y) == seq.train_on_batch(x, y)
    assert fun.predict(x).shape == (40, 3)


def two_head_model(d=6, hidden=5, k=3, seed=0):
    dl.set_seed(seed)
    inp = dl.Input(shape=(d,), name="pixels")
    h = L.Dense(hidden, activation="relu", name="trunk")(inp)
    out1 = L.Dense(k, activation="softmax", name="digit")(h)
    out2 = L.Dense(1, activation="sigmoid", name="parity")(h)
    return dl.Model(inputs=inp, outputs=[out1, out2])


def two_head_data(n=10, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y1 = np.arange(n) % k
    y2 = (y1 % 2).astype(np.float32)[:, None]
    return x, y1, y2


def np_two_heads(ws, x, y1, y2, weights):
    """Loss terms and the head gradients of sum_i weights[i] * loss_i, in float64."""
    W, b, W1, b1, W2, b2 = (w.astype(np.float64) for w in ws)
    h = np.maximum(x @ W + b, 0)
    p1 = np_softmax(h @ W1 + b1)
    p2 = np_sigmoid(h @ W2 + b2)
    n = len(x)
    d1 = (p1 - np.eye(p1.shape[1])[y1]) / n * weights[0]         # d loss / d logits
    d2 = (p2 - y2) / p2.size * weights[1]
    return np_sparse_ce(p1, y1), np_bce(p2, y2), (h.T @ d1, d1.sum(0), h.T @ d2, d2.sum(0))


@pytest.mark.parametrize("loss_weights", [{"digit": 1.0, "parity": 0.5}, [0.3, 2.0], None])
def test_multi_output_loss_is_the_weighted_sum_and_trains_as_such(loss_weights):
    x, y1, y2 = two_head_data()
    model = two_head_model()
    model.compile(dl.optimizers.SGD(learning_rate=0.1), metrics=["accuracy"],
                  loss={"digit": "sparse_categorical_crossentropy",
                        "parity": "binary_crossentropy"}, loss_weights=loss_weights)
    w = {None: (1.0, 1.0), 0: (1.0, 0.5), 1: (0.3, 2.0)}[
        None if loss_weights is None else (0 if isinstance(loss_weights, dict) else 1)]
    ws = model.get_weights()
    l1, l2, grads = np_two_heads(ws, x.astype(np.float64), y1, y2, w)
    logs = model.evaluate(x, [y1, y2], return_dict=True)
    assert list(logs) == ["loss", "digit_loss", "parity_loss", "digit_accuracy",
                          "parity_accuracy"]
    assert logs["digit_loss"] == pytest.approx(l1, rel=1e-5)
    assert logs["parity_loss"] == pytest.approx(l2, rel=1e-5)
    assert logs["loss"] == pytest.approx(w[0] * l1 + w[1] * l2, rel=1e-5)
    # one SGD step: each head moves by -lr * its weighted loss's gradient
    got = model.train_on_batch(x, {"digit": y1, "parity": y2})
    assert got[0] == pytest.approx(w[0] * l1 + w[1] * l2, rel=1e-5)
    after = model.get_weights()
    for before, now, g in zip(ws[2:], after[2:], grads):
        np.testing.assert_allclose(now, before - 0.1 * g, rtol=1e-4, atol=1e-6)


def test_multi_output_fit_predict_and_log_keys():
    x, y1, y2 = two_head_data(n=40)
    model = two_head_model()
    model.compile("adam", loss=["sparse_categorical_crossentropy", "binary_crossentropy"],
                  metrics={"digit": "accuracy"})
    hist = model.fit(x, [y1, y2], batch_size=8, epochs=3, verbose=0,
                     validation_data=(x, {"digit": y1, "parity": y2})).history
    assert list(hist) == ["loss", "digit_loss", "parity_loss", "digit_accuracy", "val_loss",
                          "val_digit_loss", "val_parity_loss", "val_digit_accuracy"]
    assert hist["loss"][-1] < hist["loss"][0]
    p1, p2 = model.predict(x, batch_size=16)
    assert p1.shape == (40, 3) and p2.shape == (40, 1)
    np.testing.assert_allclose(p1.sum(1), 1, rtol=1e-5)


def test_several_inputs_and_a_shared_layer_match_numpy():
    """out = D(a) + D(b) with one Dense D: one weight set, whose gradient is the sum of
    both uses'."""
    dl.set_seed(2)
    a, b = dl.Input(shape=(4,), name="a"), dl.Input(shape=(4,), name="b")
    shared = L.Dense(3, name="shared")
    model = dl.Model([a, b], L.Add()([shared(a), shared(b)]))
    assert [layer.name for layer in model.layers] == ["a", "b", "shared", model.layers[3].name]
    assert len(model.get_weights()) == 2
    model.compile(dl.optimizers.SGD(learning_rate=0.1), loss="mse")
    rng = np.random.default_rng(0)
    xa, xb = (rng.standard_normal((6, 4)).astype(np.float32) for _ in range(2))
    t = rng.standard_normal((6, 3)).astype(np.float32)
    W, bias = (w.astype(np.float64) for w in model.get_weights())
    out = xa @ W + xb @ W + 2 * bias
    np.testing.assert_allclose(model.predict([xa, xb]), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict({"b": xb, "a": xa}), out, rtol=1e-5, atol=1e-6)
    d = 2 * (out - t) / out.size
    loss = model.train_on_batch([xa, xb], t)
    assert loss == pytest.approx(((out - t) ** 2).mean(), rel=1e-5)
    W2, b2 = model.get_weights()
    np.testing.assert_allclose(W2, W - 0.1 * (xa.T @ d + xb.T @ d), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b2, bias - 0.1 * 2 * d.sum(0), rtol=1e-5, atol=1e-6)
    hist = model.fit({"a": xa, "b": xb}, t, epochs=5, batch_size=3, verbose=0,
                     validation_split=0.5).history
    assert hist["loss"][-1] < hist["loss"][0]


def multi_model():
    """Two inputs, a shared layer, a residual Add, Concatenate, Highway, two outputs."""
    dl.set_seed(5)
    a, b = dl.Input(shape=(6,), name="a"), dl.Input(shape=(6,), name="b")
    shared = L.Dense(8, activation="relu", name="shared")
    ha, hb = shared(a), shared(b)
    r = L.Add()([ha, L.Dense(8, name="res")(ha)])
    c = L.Concatenate()([r, hb])
    c = L.Highway(activation="tanh", name="hw")(c)
    out1 = L.Dense(3, activation="softmax", name="digit")(c)
    out2 = L.Dense(1, activation="sigmoid", name="parity")(c)
    return dl.Model([a, b], [out1, out2], name="two_by_two")


def test_save_and_load_round_trip_gives_identical_predictions(tmp_path):
    model = multi_model()
    model.compile(dl.optimizers.Adam(learning_rate=0.01),
                  loss={"digit": "sparse_categorical_crossentropy",
                        "parity": "binary_crossentropy"},
                  loss_weights={"digit": 1.0, "parity": 0.25}, metrics=["accuracy"])
    rng = np.random.default_rng(1)
    xa, xb = (rng.standard_normal((12, 6)).astype(np.float32) for _ in range(2))
    y1 = np.arange(12) % 3
    y2 = (y1 % 2).astype(np.float32)[:, None]
    model.fit([xa, xb], [y1, y2], epochs=2, batch_size=4, verbose=0)
    model.save(tmp_path / "m")
    again = dl.load_model(tmp_path / "m")
    assert type(again) is type(model) and again.name == "two_by_two"
    assert again.output_names == ["digit", "parity"] and again.input_names == ["a", "b"]
    for p, q in zip(model.predict([xa, xb]), again.predict([xa, xb])):
        np.testing.assert_array_equal(p, q)
    assert again.loss_weights == {"digit": 1.0, "parity": 0.25}
    assert again.evaluate([xa, xb], [y1, y2]) == model.evaluate([xa, xb], [y1, y2])
    # training goes on identically (optimizer state restored)
    model.train_on_batch([xa, xb], [y1, y2])
    again.train_on_batch([xa, xb], [y1, y2])
    for p, q in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)
    # the config alone rebuilds the same graph, with fresh weights
    rebuilt = dl.Model.from_config(json.loads(json.dumps(model.get_config())))
    assert rebuilt.get_config() == model.get_config()
    rebuilt.set_weights(model.get_weights())
    for p, q in zip(model.predict([xa, xb]), rebuilt.predict([xa, xb])):
        np.testing.assert_array_equal(p, q)


def test_summary_lists_every_call(capsys):
    multi_model().summary()
    text = capsys.readouterr().out
    assert "shared (Dense)" in text and "hw (Highway)" in text and "concatenate" in text
    assert text.count("shared (Dense)") == 2          # called twice


def test_a_cluster_worker_rebuilds_a_functional_model():
    from dlrun.cluster.worker import build_model, model_spec

    model = residual_model()
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    replica = build_model(json.loads(json.dumps(model_spec(model))))
    replica.set_weights(model.get_weights())
    x, _ = blobs(n=5)
    np.testing.assert_array_equal(replica.predict(x), model.predict(x))


# -- errors --------------------------------------------------------------------------------
def test_an_output_that_needs_an_input_not_given_is_refused():
    a, b = dl.Input(shape=(3,), name="in_a"), dl.Input(shape=(3,), name="in_b")
    out = L.Add()([L.Dense(2)(a), L.Dense(2)(b)])
    with pytest.raises(ConfigError, match="Input 'in_b'.*not among its inputs"):
        dl.Model(a, out)
    with pytest.raises(ConfigError, match="no output of the model depends on input 'in_b'"):
        dl.Model([a, b], L.Dense(2)(a))
    with pytest.raises(ConfigError, match="must be dl.Input"):
        dl.Model(L.Dense(2)(a), out)


def test_duplicate_layer_names_are_refused():
    a = dl.Input(shape=(3,))
    h = L.Dense(3, name="same")(a)
    with pytest.raises(ConfigError, match="'same'"):
        dl.Model(a, L.Dense(3, name="same")(h))


def test_data_errors_name_the_input_or_output():
    model = multi_model()
    model.compile("sgd", loss=["sparse_categorical_crossentropy", "binary_crossentropy"])
    x = [np.zeros((4, 6), np.float32)] * 2
    y = [np.zeros(4, np.int64), np.zeros((4, 1), np.float32)]
    with pytest.raises(DataError, match=r"2 inputs \['a', 'b'\].*list of 2 arrays"):
        model.fit(x[0], y, verbose=0)
    with pytest.raises(DataError, match="no arrays for input 'b'"):
        model.fit({"a": x[0]}, y, verbose=0)
    with pytest.raises(DataError, match="unknown input 'c'"):
        model.predict({"a": x[0], "b": x[1], "c": x[1]})
    with pytest.raises(DataError, match=r"2 outputs \['digit', 'parity'\].*got 3 arrays"):
        model.fit(x, y + [y[1]], verbose=0)
    with pytest.raises(DataError, match="2 outputs"):
        model.fit(x, y[0], verbose=0)
    with pytest.raises(DataError, match="no arrays for output 'parity'"):
        model.fit(x, {"digit": y[0]}, verbose=0)
    with pytest.raises(DataError, match="output 'digit'.*out of range"):
        model.fit(x, [y[0] + 7, y[1]], verbose=0)
    with pytest.raises(DataError, match="targets of output 'parity' hold 3 samples"):
        model.fit(x, [y[0], y[1][:3]], verbose=0)
    with pytest.raises(ShapeError, match="input 'b'.*\\(batch, 6\\)"):
        model.predict([x[0], np.zeros((4, 5), np.float32)])


def test_compile_errors_name_the_output():
    model = two_head_model()
    with pytest.raises(ConfigError, match=r"unknown output 'digits'.*\['digit', 'parity'\]"):
        model.compile("sgd", loss={"digits": "mse", "parity": "mse"})
    with pytest.raises(ConfigError, match="no entry for output 'parity'"):
        model.compile("sgd", loss={"digit": "sparse_categorical_crossentropy"})
    with pytest.raises(ConfigError, match="3 values for 2 outputs"):
        model.compile("sgd", loss=["mse"] * 3)
    with pytest.raises(ConfigError, match="unknown output 'x'"):
        model.compile("sgd", loss="mse", loss_weights={"x": 1.0})
    with pytest.raises(ConfigError, match="loss_weights for output 'digit'"):
        model.compile("sgd", loss="mse", loss_weights=[-1, 1])
    assert model.loss is None                       # a refused compile changes nothing
    model.compile("sgd", loss="mse", loss_weights={"parity": 2.0})
    assert model.loss_weights == {"digit": 1.0, "parity": 2.0}


def test_errors_are_dlrun_errors():
    for exc in (ConfigError, DataError, ShapeError):
        assert issubclass(exc, DlrunError)


# -- the zoo's resnet-small ------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(784,), (1, 28, 28)])
def test_resnet_small_shapes_blocks_and_one_step(shape, tmp_path):
    from dlrun.engine.models import zoo

    dl.set_seed(0)
    model = zoo.build("resnet-small", shape, 10, l2=1e-4, dropout=0.1, shift=0.1)
    assert model.output_shape == (10,) and model.name == "resnet-small"
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Add") == 3 and kinds.count("GlobalAveragePooling2D") == 1
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, *shape)).astype(np.float32)
    y = np.arange(8) % 10
    first = model.evaluate(x, y)[0]
    for _ in range(3):
        model.train_on_batch(x, y)
    assert model.evaluate(x, y)[0] < first
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(dl.load_model(tmp_path / "m").predict(x), model.predict(x))


def test_resnet_small_refuses_samples_that_are_not_images():
    from dlrun.engine.models import zoo

    with pytest.raises(ConfigError, match="resnet-small needs images"):
        zoo.build("resnet-small", (10, 10), 10)
