"""Keras' ``keras.layers.pooling``: the same classes as :mod:`dlrun.layers`."""
from dlrun.engine.layers.conv import (AdaptiveAveragePooling2D, AdaptiveMaxPooling2D,
                                      AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D,
                                      SpatialPyramidPooling2D, StochasticPooling2D)

__all__ = ["AdaptiveAveragePooling2D", "AdaptiveMaxPooling2D", "AveragePooling2D",
           "GlobalAveragePooling2D", "MaxPooling2D", "SpatialPyramidPooling2D",
           "StochasticPooling2D"]
