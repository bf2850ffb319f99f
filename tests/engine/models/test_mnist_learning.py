"""End to end: the reference MLP learns the shipped MNIST subset as PyTorch does.

Reference figures (shared/bench, PyTorch, same data split and Keras-style init): ReLU +
SGD momentum 0.9, lr 0.05, batch 100, 20 epochs: 0.933 test accuracy; sigmoid + plain SGD
lr 0.1: 0.856 after 20 epochs and near chance in the first epoch.
"""
import pytest

import dlrun as dl
from dlrun.datasets import open_dataset
from dlrun.engine.models import zoo


def _train(activation, lr, momentum, epochs=20):
    dl.set_seed(0)
    ds = open_dataset("mnist-5k")
    x, y = ds.split("train")
    xt, yt = ds.split("test")
    model = zoo.mlp(x.shape[1:], 10, activation=activation)
    model.compile(optimizer=dl.optimizers.SGD(learning_rate=lr, momentum=momentum),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, y, batch_size=100, epochs=epochs, validation_data=(xt, yt), verbose=0)
    return hist.history["val_accuracy"]


@pytest.mark.slow
def test_relu_momentum_reaches_reference_accuracy():
    acc = _train("relu", 0.05, 0.9)
    assert acc[-1] >= 0.925


@pytest.mark.slow
def test_sigmoid_plain_sgd_learns_slower_than_relu():
    sig = _train("sigmoid", 0.1, 0.0, epochs=5)
    relu = _train("relu", 0.1, 0.0, epochs=5)
    assert sig[0] < 0.5 < relu[0]                  # sigmoid starts near chance
    assert all(s < r for s, r in zip(sig, relu))   # and stays behind every epoch
