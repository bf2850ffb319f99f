"""engine/layers/lambdas.py: Lambda layers made of dlrun.backend functions, against numpy
(through the harness: values, config round trip, gradients); their errors."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun import backend as K
from dlrun.engine.custom_objects import get_custom_objects
from dlrun.engine.layers import Lambda
from dlrun.errors import ConfigError, ModelFileError, ShapeError


def shifted_squares(x):
    return K.square(x) - x * 0.5 + 1.0


def tempered_softmax(x, temperature=1.0):
    return K.softmax(x / temperature)


def pair_max(x):
    return K.max(K.reshape(x, (-1, 2, 3)), axis=-1)


def product(xs):
    return xs[0] * K.tanh(xs[1])


@pytest.fixture
def registered():
    """The functions above as custom objects (what a loader needs to rebuild a Lambda)."""
    names = {f.__name__: f for f in (shifted_squares, tempered_softmax, pair_max, product)}
    get_custom_objects().update(names)
    yield
    for name in names:
        get_custom_objects().pop(name, None)


def test_lambda_of_elementwise_math(check_layer, registered):
    check_layer(Lambda, (4,), lambda x: x * x - 0.5 * x + 1.0, function=shifted_squares)


def test_lambda_with_arguments(check_layer, registered):
    def reference(x):
        e = np.exp(x / 2.0 - (x / 2.0).max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    check_layer(Lambda, (5,), reference, function=tempered_softmax,
                arguments={"temperature": 2.0})


def test_lambda_with_an_output_shape(check_layer, registered):
    layer = check_layer(Lambda, (6,), lambda x: x.reshape(-1, 2, 3).max(axis=-1),
                        function=pair_max, output_shape=(2,))
    assert layer.compute_output_shape((6,)) == (2,)


def test_lambda_on_a_list(check_layer, registered):
    check_layer(Lambda, [(3,), (3,)], lambda xs: xs[0] * np.tanh(xs[1]), function=product)


def test_a_lambda_expression_cannot_be_saved_but_trains(tmp_path):
    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Dense(2, input_shape=(3,)), Lambda(lambda x: x * 3.0)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 3), np.float32)
    W, b = model.get_weights()
    np.testing.assert_allclose(model.predict(x), 3.0 * (x @ W + b), rtol=1e-6)
    model.train_on_batch(x, np.zeros((4, 2), np.float32))
    assert not np.array_equal(model.get_weights()[0], W)
    with pytest.raises(ConfigError, match="lambda expression.*def"):
        model.save(tmp_path / "m")


def test_loading_a_lambda_needs_its_function(tmp_path):
    model = dl.Sequential([dl.layers.Dense(4, input_shape=(3,)), Lambda(shifted_squares)])
    model.save(tmp_path / "m")
    with pytest.raises(ModelFileError, match=r"function 'shifted_squares'.*custom_objects="
                                             r"\{'shifted_squares': shifted_squares\}"):
        dl.load_model(tmp_path / "m")
    again = dl.load_model(tmp_path / "m", custom_objects={"shifted_squares": shifted_squares})
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def test_lambda_errors():
    with pytest.raises(ConfigError, match="function of symbolic tensors, got int 3"):
        Lambda(3)
    with pytest.raises(ConfigError, match="output_shape must be a tuple.*'a'"):
        Lambda(shifted_squares, output_shape="a")
    # reported where the model is built, as a bad shape of any layer is
    with pytest.raises(ConfigError, match="returned float"):
        dl.Sequential([Lambda(lambda x: 1.0, input_shape=(3,))])
    with pytest.raises(ShapeError, match=r"shape \(\) for a batch of 1.*batch axis"):
        dl.Sequential([Lambda(lambda x: K.sum(x), input_shape=(3,))])
    with pytest.raises(ShapeError, match=r"output_shape \(4,\).*\(3,\)"):
        dl.Sequential([Lambda(shifted_squares, output_shape=(4,), input_shape=(3,))])
