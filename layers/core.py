"""Keras' ``keras.layers.core``: the same classes as :mod:`dlrun.layers`."""
from dlrun.engine.layers.core import Activation, Dense, Dropout, Flatten, Highway, Reshape

__all__ = ["Activation", "Dense", "Dropout", "Flatten", "Highway", "Reshape"]
