"""engine/layers/embedding.py: Embedding through the harness against numpy's indexing (a
repeated index's gradient adds up), and as a model's first layer: integer inputs fed as
int32 from integer or whole float arrays, indices out of range or not whole refused before
any kernel runs, functional inputs, the errors users cause."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, DataError, ShapeError

L = dl.layers


def lookup(x, table):
    """Row x[s, t] of the table for every index, one at a time."""
    out = np.zeros((*x.shape, table.shape[1]))
    for s in range(x.shape[0]):
        for t in range(x.shape[1]):
            out[s, t] = table[x[s, t]]
    return out


def test_embedding(check_layer):
    # 3 x 6 indices out of 5 rows: rows repeat, so their gradients must add up
    check_layer(L.Embedding, (6,), lookup, indices=5, input_dim=5, output_dim=3)


def test_embedding_other_arguments(check_layer):
    layer = check_layer(L.Embedding, (4,), lookup, indices=9, input_dim=9, output_dim=2,
                        input_length=4, embeddings_initializer="glorot_uniform",
                        embeddings_regularizer=dl.regularizers.l2(0.01), name="words")
    assert layer.input_shape == (4,) and [p.shape for p in layer.weights] == [(9, 2)]


def test_default_weights_are_keras_uniform():
    dl.set_seed(0)
    (table,) = dl.Sequential([L.Embedding(500, 8, input_length=3)]).get_weights()
    assert table.shape == (500, 8) and table.dtype == np.float32
    assert np.abs(table).max() <= 0.05 and np.abs(table).max() > 0.045


def test_a_model_feeds_integers_whatever_their_array_type():
    dl.set_seed(1)
    model = dl.Sequential([L.Embedding(6, 2, input_shape=(3,))])
    (table,) = model.get_weights()
    x = np.array([[0, 5, 5], [3, 2, 0]])
    for given in (x, x.astype(np.int32), x.astype(np.uint8), x.astype(np.float32),
                  x.tolist()):
        np.testing.assert_array_equal(model.predict(given), table[x])
    placeholder = model.program("predict", 2).xs[0]
    assert placeholder.dtype == np.int32


@pytest.mark.parametrize("bad, match", [
    (6, r"indices in \[0, 6\).*got 6 at sample 1, position 2.*input_dim"),
    (-1, r"got -1 at sample 1, position 2"),
])
def test_indices_out_of_range_are_refused_on_the_host(bad, match):
    model = dl.Sequential([L.Embedding(6, 2, input_shape=(3,)), L.Flatten(),
                           L.Dense(2, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    x = np.array([[0, 5, 5], [3, 2, bad]])
    for run in (lambda: model.predict(x), lambda: model.evaluate(x, [0, 1]),
                lambda: model.fit(x, [0, 1], verbose=0),
                lambda: model.train_on_batch(x, [0, 1])):
        with pytest.raises(DataError, match=match):
            run()


def test_indices_must_be_whole_numbers():
    model = dl.Sequential([L.Embedding(6, 2, input_shape=(2,))])
    with pytest.raises(DataError, match=r"whole numbers; got 2.5 at sample 1, position 0"):
        model.predict(np.array([[1.0, 2.0], [2.5, 0.0]]))
    with pytest.raises(DataError, match="whole numbers; got nan"):
        model.predict(np.array([[1.0, np.nan]]))


@pytest.mark.parametrize("dtype", ["float32", "int32", "int64"])
def test_functional_input_read_by_an_embedding(dtype):
    dl.set_seed(2)
    inp = dl.Input(shape=(3,), dtype=dtype)
    out = L.Dense(1)(L.Flatten()(L.Embedding(4, 2)(inp)))
    model = dl.Model(inp, out)
    table, w, b = model.get_weights()
    x = np.array([[3, 0, 1], [2, 2, 3]])
    want = table[x].reshape(2, -1) @ w + b
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-6)
    with pytest.raises(DataError, match="got 4 at sample 0"):
        model.predict(np.array([[4, 0, 0]]))


def test_an_input_read_as_indices_and_as_floats_is_refused():
    inp = dl.Input(shape=(3,))
    with pytest.raises(ConfigError, match="different dtypes.*own dl.Input"):
        dl.Model(inp, L.Concatenate()([L.Flatten()(L.Embedding(4, 2)(inp)), L.Dense(2)(inp)]))


def test_errors():
    with pytest.raises(ConfigError, match="input_dim.*0"):
        L.Embedding(0, 3)
    with pytest.raises(ConfigError, match="output_dim.*'8'"):
        L.Embedding(10, "8")
    with pytest.raises(ConfigError, match="'ones_please'"):
        L.Embedding(10, 8, embeddings_initializer="ones_please")
    with pytest.raises(ShapeError, match="input_length=4.*\\(batch, 5\\)"):
        L.Embedding(10, 8, input_length=4)(dl.Input(shape=(5,)))
    with pytest.raises(ConfigError, match="dtype 'float32', or an integer"):
        dl.Input(shape=(3,), dtype="complex64")
    # an Embedding reads a model's input: after another layer it gets floats
    with pytest.raises(ShapeError, match="integer indices"):
        dl.Sequential([L.Dense(3, input_shape=(2,)), L.Embedding(10, 8)])
