"""Keras-style layers: ``build(input_shape)`` makes weights, ``call(x, training)`` traces.

One module per family; this package lists every built-in layer once, in :data:`LAYERS`,
which ``load_model`` reads (a user's layer class joins it through :func:`register_layer`).
"""
from dlrun.engine.layers.activations import ELU, PReLU, LeakyReLU, Maxout, Softmax
from dlrun.engine.layers.augment import RandomRotation, RandomTranslation, RandomZoom
from dlrun.engine.layers.base import (ACTIVATIONS, LAYERS, KernelLayer, Layer, activation_op,
                                      layer_from_config, register_layer)
from dlrun.engine.layers.conv import (AveragePooling2D, Conv2D, GlobalAveragePooling2D,
                                      MaxPooling2D)
from dlrun.engine.layers.core import Activation, Dense, Dropout, Flatten, Highway, Reshape
from dlrun.engine.layers.merge import Add, Concatenate
from dlrun.engine.layers.normalization import BatchNormalization
from dlrun.engine.layers.recurrent import LSTM, SimpleRNN
from dlrun.engine.layers.symbolic import Input, InputLayer

BUILT_IN = (Dense, Highway, Activation, Dropout, Flatten, Reshape,
            Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
            BatchNormalization, LeakyReLU, ELU, PReLU, Softmax, Maxout,
            SimpleRNN, LSTM, Add, Concatenate,
            RandomTranslation, RandomRotation, RandomZoom)
LAYERS.update({cls.__name__: cls for cls in BUILT_IN + (InputLayer,)})

__all__ = ["ACTIVATIONS", "LAYERS", "Layer", "KernelLayer", "activation_op", "layer_from_config",
           "register_layer", "Input", "InputLayer"] + [cls.__name__ for cls in BUILT_IN]
