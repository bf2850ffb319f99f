"""engine/losses.py on sequences: cross entropy per step after a per-step softmax (Dense on
sequences, TimeDistributed(Dense), a softmax Activation on sequences) against numpy, with
labels (samples, time) or one-hot targets (samples, time, classes); sample weights per
sequence; accuracy counted per step; one SGD step against numpy's gradient; the errors; and
a small tagger that learns."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, DataError

L = dl.layers
B, T, F, K = 6, 4, 5, 3


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    labels = rng.integers(0, K, (B, T))
    weights = rng.uniform(0.0, 2.0, B).astype(np.float32)
    weights[1] = 0.0                                      # a sequence that must not count
    return x, labels, weights


def probabilities(x, w, b):
    z = x.astype(np.float64) @ w + b
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def per_step_loss(p, labels, weights):
    """Keras: each sequence's loss is the mean over its steps; sum_i w_i loss_i / batch."""
    steps = -np.log(np.take_along_axis(p, labels[..., None], axis=-1)[..., 0])
    return float(np.sum(weights * steps.mean(axis=1)) / len(labels))


MODELS = {
    "dense": lambda: [L.Dense(K, activation="softmax", input_shape=(T, F))],
    "time_distributed": lambda: [L.TimeDistributed(L.Dense(K, activation="softmax"),
                                                   input_shape=(T, F))],
    "activation": lambda: [L.Dense(K, input_shape=(T, F)), L.Activation("softmax")],
}


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_loss_and_accuracy_per_step_match_numpy(kind, loss):
    dl.set_seed(0)
    x, labels, weights = data()
    model = dl.Sequential(MODELS[kind]())
    model.compile(loss=loss, metrics=["accuracy"])
    p = probabilities(x, *model.get_weights())
    np.testing.assert_allclose(model.predict(x), p, rtol=1e-5, atol=1e-6)
    y = labels if loss.startswith("sparse") else np.eye(K)[labels]
    logs = model.evaluate(x, y, sample_weight=weights, batch_size=4, return_dict=True)
    assert logs["loss"] == pytest.approx(per_step_loss(p, labels, weights), rel=1e-5)
    # every step of every sequence counts once (the weights weigh the loss only)
    assert logs["accuracy"] == pytest.approx(np.mean(p.argmax(-1) == labels))
    unweighted = model.evaluate(x, y, return_dict=True)["loss"]
    assert unweighted == pytest.approx(per_step_loss(p, labels, np.ones(B)), rel=1e-5)


def test_sequences_of_one_step():
    """(batch, 1, classes): per step still, labels (samples, 1)."""
    dl.set_seed(2)
    x, labels, weights = data(2)
    x, labels = x[:, :1], labels[:, :1]
    model = dl.Sequential([L.Dense(K, activation="softmax", input_shape=(1, F))])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    p = probabilities(x, *model.get_weights())
    logs = model.evaluate(x, labels, sample_weight=weights, return_dict=True)
    assert logs["loss"] == pytest.approx(per_step_loss(p, labels, weights), rel=1e-5)
    assert logs["accuracy"] == pytest.approx(np.mean(p.argmax(-1) == labels))


def test_one_sgd_step_against_numpy():
    """dL/dW = sum_{i,t} w_i x_it^T (p_it - onehot(y_it)) / (batch * time)"""
    dl.set_seed(1)
    x, labels, weights = data(1)
    model = dl.Sequential(MODELS["dense"]())
    model.compile(optimizer=dl.optimizers.SGD(lr=0.5), loss="sparse_categorical_crossentropy")
    w, b = (a.astype(np.float64) for a in model.get_weights())
    g = (probabilities(x, w, b) - np.eye(K)[labels]) * weights[:, None, None] / (B * T)
    model.train_on_batch(x, labels, sample_weight=weights)
    w2, b2 = model.get_weights()
    np.testing.assert_allclose(w2, w - 0.5 * np.einsum("itf,itk->fk", x, g), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(b2, b - 0.5 * g.sum(axis=(0, 1)), rtol=1e-5, atol=1e-6)


def test_targets_of_the_wrong_shape_or_range_are_refused():
    x, labels, _ = data()
    model = dl.Sequential(MODELS["dense"]())
    model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(DataError, match=r"labels of shape \(samples, 4\), got .* \(6,\)"):
        model.evaluate(x, labels[:, 0])
    model.evaluate(x, labels[..., None])                  # (samples, time, 1) is taken
    bad = labels.copy()
    bad[2, 3] = K
    with pytest.raises(DataError, match="label 3 at sample 2, step 3 is out of range"):
        model.evaluate(x, bad)
    with pytest.raises(ConfigError, match="class per step.*sample_weight"):
        model.fit(x, labels, class_weight={0: 2.0}, verbose=0)
    plain = dl.Sequential([L.Dense(K, input_shape=(T, F))])
    with pytest.raises(ConfigError, match="needs a softmax output"):
        plain.compile(loss="sparse_categorical_crossentropy")
        plain.evaluate(x, labels)


def test_a_tagger_learns_the_parity_of_each_token():
    """Embedding -> SimpleRNN(return_sequences) -> a per-step softmax, the tag of each
    token its parity: per-step accuracy far above the chance of 0.5."""
    dl.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (256, 6))
    model = dl.Sequential([L.Embedding(10, 8, input_shape=(6,)),
                           L.SimpleRNN(16, return_sequences=True),
                           L.Dense(2, activation="softmax")])
    model.compile(optimizer=dl.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    h = model.fit(x, x % 2, batch_size=32, epochs=10, verbose=0).history
    test = rng.integers(0, 10, (64, 6))
    assert h["accuracy"][-1] > 0.95
    assert np.mean(model.predict(test).argmax(-1) == test % 2) > 0.95
