"""End to end: the zoo's Keras MNIST CNN learns the shipped MNIST subset as PyTorch does.

Reference (shared/bench/torch_accuracy.py, same 4,000 / 1,000 split, Keras-style init): SGD
lr 0.01, momentum 0.9, batch 128, 10 epochs: 0.930 test accuracy. About a minute on one core.
"""
import pytest

import dlrun as dl
from dlrun.datasets import open_dataset
from dlrun.engine.models import zoo


@pytest.mark.slow
def test_cnn_reaches_reference_accuracy():
    dl.set_seed(0)
    ds = open_dataset("mnist-5k")
    x, y = ds.split("train")
    xt, yt = ds.split("test")
    model = zoo.cnn(x.shape[1:], 10)
    model.compile(optimizer=dl.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    acc = model.fit(x, y, batch_size=128, epochs=10, validation_data=(xt, yt),
                    verbose=0).history["val_accuracy"]
    assert acc[-1] >= 0.920                    # within 1 point of PyTorch's 0.930
