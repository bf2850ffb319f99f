"""Keras' import paths and spellings: lecture code runs with ``keras`` replaced by
``dlrun`` in its import lines (issue 13: the hello world of the first lecture, and the
Keras 1 and Keras 2 spellings it and its successors use)."""
from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, DataError

PATHS = [  # module, names lecture code imports from it
    ("dlrun.models", ["Sequential", "Model", "load_model"]),
    ("dlrun.layers", ["Dense", "Dropout", "Activation", "Conv2D", "MaxPooling2D", "Flatten",
                      "LSTM", "SimpleRNN", "BatchNormalization", "Input", "Convolution2D"]),
    ("dlrun.layers.core", ["Dense", "Dropout", "Activation", "Flatten", "Reshape"]),
    ("dlrun.layers.convolutional", ["Conv2D", "Convolution2D", "MaxPooling2D"]),
    ("dlrun.layers.pooling", ["MaxPooling2D", "AveragePooling2D"]),
    ("dlrun.layers.recurrent", ["SimpleRNN", "LSTM", "GRU"]),
    ("dlrun.layers.embeddings", ["Embedding"]),
    ("dlrun.layers.wrappers", ["TimeDistributed"]),
    ("dlrun.layers.normalization", ["BatchNormalization"]),
    ("dlrun.layers.advanced_activations", ["LeakyReLU", "PReLU", "ELU"]),
    ("dlrun.layers.merge", ["Add", "Concatenate"]),
    ("dlrun.optimizers", ["SGD", "Adam", "RMSprop", "Adagrad"]),
    ("dlrun.losses", ["LOSSES"]),
    ("dlrun.metrics", ["categorical_accuracy", "binary_accuracy"]),
    ("dlrun.callbacks", ["EarlyStopping", "ModelCheckpoint", "Callback"]),
    ("dlrun.regularizers", ["l1", "l2", "l1_l2"]),
    ("dlrun.utils", ["to_categorical", "normalize", "np_utils", "get_custom_objects"]),
    ("dlrun.utils.np_utils", ["to_categorical"]),
    ("dlrun.backend", ["mean", "square", "abs", "sqrt", "exp", "log", "maximum", "clip",
                       "pow", "dot", "softmax"]),
    ("dlrun.datasets.mnist", ["load_data"]),
]


@pytest.mark.parametrize("module,names", PATHS, ids=[p[0] for p in PATHS])
def test_keras_module_paths_are_real_modules(module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert getattr(mod, name) is not None, f"{module}.{name}"
    if hasattr(mod, "__all__"):
        assert set(names) <= set(mod.__all__) | {"np_utils"}


def test_the_root_reaches_the_same_objects():
    from dlrun.layers import Dense
    from dlrun.models import Sequential

    assert dl.layers.Dense is Dense is dl.layers.core.Dense
    assert dl.models.Sequential is Sequential is dl.Sequential
    assert dl.optimizers.SGD is dl.engine.optimizers.SGD


def test_to_categorical_and_normalize_match_numpy():
    from dlrun.utils import normalize, to_categorical

    y = np.array([[2], [0], [1], [2]])
    np.testing.assert_array_equal(to_categorical(y), np.eye(3)[[2, 0, 1, 2]])
    assert to_categorical([1, 0], 4).shape == (2, 4)
    assert to_categorical(np.array([[1, 0], [2, 2]]), 3).shape == (2, 2, 3)
    with pytest.raises(DataError, match="out of range for num_classes=2"):
        to_categorical([0, 2], 2)
    with pytest.raises(DataError, match="integer class labels"):
        to_categorical([0.5])
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(normalize(x), [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_allclose(normalize(x, axis=0, order=1), [[1.0, 1.0], [0.0, 0.0]])


def keras1(build):
    """What ``build()`` returns, and the DeprecationWarnings it raised."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        layer = build()
    return layer, [w for w in seen if issubclass(w.category, DeprecationWarning)]


def test_dense_keras1_and_keras2_spellings():
    layer, warned = keras1(lambda: dl.layers.Dense(input_dim=28 * 28, output_dim=500,
                                                   init="he_normal"))
    assert (layer.units, layer.input_shape, layer.kernel_initializer) == \
        (500, (784,), "he_normal")
    assert len(warned) == 2 and "output_dim" in str(warned[0].message)
    layer, warned = keras1(lambda: dl.layers.Dense(500, input_dim=784))
    assert (layer.units, layer.input_shape, warned) == (500, (784,), [])
    layer, warned = keras1(lambda: dl.layers.Dense(output_dim=10))
    assert layer.units == 10 and len(warned) == 1
    assert dl.layers.Dense.from_config(layer.get_config()).units == 10
    with pytest.raises(ConfigError, match="units twice"), pytest.warns(DeprecationWarning):
        dl.layers.Dense(5, output_dim=6)
    with pytest.raises(ConfigError, match="needs the number of units"):
        dl.layers.Dense()
    with pytest.raises(ConfigError, match="input_shape= or input_dim="):
        dl.layers.Dense(5, input_dim=3, input_shape=(3,))


def test_convolution2d_pooling_and_dropout_keras1_spellings():
    conv, warned = keras1(lambda: dl.layers.Convolution2D(
        25, 3, 3, border_mode="same", subsample=(2, 2), input_shape=(1, 28, 28)))
    assert type(conv) is dl.layers.Conv2D and len(warned) == 1
    assert (conv.filters, conv.kernel_size, conv.padding, conv.strides) == \
        (25, (3, 3), "same", (2, 2))
    conv, warned = keras1(lambda: dl.layers.Conv2D(8, 3, 2))
    assert (conv.kernel_size, conv.strides, len(warned)) == ((3, 2), (1, 1), 1)
    conv, warned = keras1(lambda: dl.layers.Conv2D(8, (3, 3), (2, 2), "same"))
    assert (conv.strides, conv.padding, warned) == ((2, 2), "same", [])
    conv, warned = keras1(lambda: dl.layers.Conv2D(nb_filter=4, nb_row=2, nb_col=3,
                                                   dim_ordering="th"))
    assert (conv.filters, conv.kernel_size, len(warned)) == (4, (2, 3), 3)
    with pytest.raises(ConfigError, match="channels first"):
        dl.layers.Conv2D(4, 3, dim_ordering="tf")
    pool, warned = keras1(lambda: dl.layers.MaxPooling2D((2, 2), border_mode="same"))
    assert (pool.pool_size, pool.padding, len(warned)) == ((2, 2), "same", 1)
    drop, warned = keras1(lambda: dl.layers.Dropout(p=0.25))
    assert drop.rate == 0.25 and len(warned) == 1
    assert dl.layers.Dropout(0.5).rate == 0.5


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_hello_world() -> str:
    """The README's first Python block: the lecture's hello world."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return next(b for b in blocks if "from dlrun.models import Sequential" in b)


def test_the_lectures_hello_world_runs_as_written(tmp_path, monkeypatch):
    """The first lecture's script, as the README shows it (only ``keras`` replaced by
    ``dlrun``): it runs, learns a little, and the accuracy ``evaluate`` returns is the
    argmax accuracy of ``predict``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLRUN_DATA", str(tmp_path))      # the shipped digits, not a fetch
    scope = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(readme_hello_world(), "hello_world.py", "exec"), scope)
    loss, acc = scope["score"]
    result, y_test = scope["result"], scope["y_test"]
    assert acc == pytest.approx(np.mean(result.argmax(1) == y_test.argmax(1)))
    assert loss == pytest.approx(np.mean((result - y_test) ** 2), rel=1e-4)
    assert acc > 0.15                    # ten classes: chance is 0.1


def test_optimizer_lr_is_the_keras1_spelling_of_learning_rate():
    with pytest.warns(DeprecationWarning, match="learning_rate="):
        opt = dl.optimizers.SGD(lr=0.1)
    assert opt.learning_rate == 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert dl.optimizers.Adam(learning_rate=0.01).learning_rate == 0.01
