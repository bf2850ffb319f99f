"""Metric semantics as Keras: what 'accuracy' counts for each loss and output shape, the
named accuracies, and their refusals; each checked against numpy on a model's outputs."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError


def model_for(loss, k, activation):
    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Dense(k, activation=activation, input_shape=(6,))])
    return model


def data(k, kind, n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    labels = rng.integers(0, k, n)
    if kind == "labels":
        return x, labels
    if kind == "binary":
        return x, rng.integers(0, 2, (n, k)).astype(np.float32)
    return x, np.eye(k, dtype=np.float32)[labels]


def np_argmax_acc(p, y):
    return np.mean(p.argmax(1) == (y if y.ndim == 1 else y.argmax(1)))


CASES = [  # loss, outputs, activation, targets, Keras' 'accuracy'
    ("sparse_categorical_crossentropy", 10, "softmax", "labels", "argmax"),
    ("categorical_crossentropy", 10, "softmax", "onehot", "argmax"),
    ("mean_squared_error", 10, "softmax", "onehot", "argmax"),
    ("mean_squared_error", 1, "sigmoid", "binary", "binary"),
    ("binary_crossentropy", 4, "sigmoid", "binary", "binary"),
]


@pytest.mark.parametrize("loss,k,act,kind,rule", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_accuracy_follows_keras_whatever_the_loss(loss, k, act, kind, rule):
    x, y = data(k, kind)
    model = model_for(loss, k, act)
    model.compile(optimizer="sgd", loss=loss, metrics=["accuracy"])
    _, acc = model.evaluate(x, y, batch_size=16)
    p = model.predict(x)
    want = np_argmax_acc(p, y) if rule == "argmax" else np.mean((p > 0.5) == (y > 0.5))
    assert acc == pytest.approx(want)


def test_square_error_on_a_softmax_reports_argmax_accuracy_not_elementwise():
    """The lecture's case: an untrained 10-way softmax under mse. Counted element by
    element it would be about 0.9 (nine of ten outputs are rightly below 0.5)."""
    x, y = data(10, "onehot", n=200)
    model = model_for("mse", 10, "softmax")
    model.compile(optimizer=dl.optimizers.SGD(learning_rate=0.1), loss="mse",
                  metrics=["acc"])
    _, acc = model.evaluate(x, y)
    assert acc == pytest.approx(np_argmax_acc(model.predict(x), y))
    assert acc < 0.5


NAMED = [  # metric, loss, targets, numpy
    ("categorical_accuracy", "categorical_crossentropy", "onehot",
     lambda p, y: np.mean(p.argmax(1) == y.argmax(1))),
    ("sparse_categorical_accuracy", "sparse_categorical_crossentropy", "labels",
     lambda p, y: np.mean(p.argmax(1) == y)),
    ("binary_accuracy", "categorical_crossentropy", "onehot",
     lambda p, y: np.mean((p > 0.5) == (y > 0.5))),
    ("top_k_categorical_accuracy", "categorical_crossentropy", "onehot",
     lambda p, y: np.mean((p > p[np.arange(len(y)), y.argmax(1)][:, None]).sum(1) < 5)),
    ("sparse_top_k_categorical_accuracy", "sparse_categorical_crossentropy", "labels",
     lambda p, y: np.mean((p > p[np.arange(len(y)), y][:, None]).sum(1) < 5)),
]


@pytest.mark.parametrize("metric,loss,kind,ref", NAMED, ids=[n[0] for n in NAMED])
def test_named_accuracies_count_as_numpy(metric, loss, kind, ref):
    x, y = data(10, kind)
    model = model_for(loss, 10, "softmax")
    model.compile(optimizer="sgd", loss=loss, metrics=[metric])
    logs = model.evaluate(x, y, return_dict=True)
    want = ref(model.predict(x), y)
    assert 0 < want < 1
    assert logs[metric] == pytest.approx(want)


def test_metric_functions_of_dlrun_metrics_are_taken_by_name():
    from dlrun.metrics import categorical_accuracy

    x, y = data(10, "onehot")
    model = model_for("categorical_crossentropy", 10, "softmax")
    model.compile(optimizer="sgd", loss="categorical_crossentropy",
                  metrics=[categorical_accuracy])
    logs = model.evaluate(x, y, return_dict=True)
    p = model.predict(x)
    assert logs["categorical_accuracy"] == pytest.approx(categorical_accuracy(y, p).mean())


def test_a_sparse_metric_on_one_hot_targets_is_refused_with_the_alternative():
    model = model_for("categorical_crossentropy", 10, "softmax")
    with pytest.raises(ConfigError, match="'categorical_accuracy'"):
        model.compile(loss="categorical_crossentropy",
                      metrics=["sparse_categorical_accuracy"])
    with pytest.raises(ConfigError, match="unknown metric 'f1'.*binary_accuracy"):
        model.compile(loss="categorical_crossentropy", metrics=["f1"])
