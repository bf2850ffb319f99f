"""Keras' ``keras.datasets.mnist``: ``(x_train, y_train), (x_test, y_test) = load_data()``
as lecture code calls it, from the datasets dlrun has (no download here).

The full MNIST (60,000 / 10,000) when it was fetched (``dlrun data fetch mnist``), else
the 5,000 digits shipped with the package (4,000 / 1,000); a warning says which.
"""
from __future__ import annotations

import warnings

import numpy as np

from dlrun.datasets.reader import open_dataset
from dlrun.datasets.store import user_datasets


def load_data():
    """``((x_train, y_train), (x_test, y_test))`` as Keras returns them: ``x`` uint8 of
    shape (samples, 28, 28) in 0..255, ``y`` uint8 labels 0..9."""
    if "mnist" in user_datasets():
        ds = open_dataset("mnist")
    else:
        warnings.warn("dlrun.datasets.mnist.load_data: the full MNIST was not fetched "
                      "(`dlrun data fetch mnist` downloads it); returning the 5,000 "
                      "digits shipped with dlrun (4,000 train, 1,000 test)", stacklevel=2)
        ds = open_dataset("mnist-5k")
    return tuple(_keras_form(*ds.raw(split)) for split in ("train", "test"))


def _keras_form(x: np.ndarray, y: np.ndarray):
    """Keras' layout: (samples, 28, 28) uint8 images, uint8 labels."""
    x = x.reshape(len(x), 28, 28)
    if x.dtype != np.uint8:                  # a store of floats in [0, 1]
        x = np.rint(np.clip(x, 0, 1) * 255 if x.max() <= 1 else x).astype(np.uint8)
    return x, y.astype(np.uint8)
