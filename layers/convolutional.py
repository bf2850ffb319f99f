"""Keras' ``keras.layers.convolutional``: the same classes as :mod:`dlrun.layers`."""
from dlrun.engine.layers.conv import AveragePooling2D, Conv2D, Convolution2D, MaxPooling2D

__all__ = ["AveragePooling2D", "Conv2D", "Convolution2D", "MaxPooling2D"]
