"""Keras' ``keras.layers.pooling``: the same classes as :mod:`dlrun.layers`."""
from dlrun.engine.layers.conv import AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D

__all__ = ["AveragePooling2D", "GlobalAveragePooling2D", "MaxPooling2D"]
