"""Keras' ``keras.layers.normalization``: the same classes as :mod:`dlrun.layers`."""
from dlrun.engine.layers.normalization import BatchNormalization

__all__ = ["BatchNormalization"]
