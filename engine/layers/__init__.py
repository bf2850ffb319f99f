"""Keras-style layers: ``build(input_shape)`` makes weights, ``call(x, training)`` traces.

One module per family (:mod:`~dlrun.engine.layers.base` holds the base class and what the
families share). This package is the layer registry: :data:`LAYERS` maps every built-in
layer's class name to its class, which ``load_model`` reads through
:func:`layer_from_config`; a user's layer class joins it through :func:`register_layer`.
"""
from dlrun.engine.layers.activations import ELU, PReLU, LeakyReLU, Maxout, RReLU, Softmax
from dlrun.engine.layers.augment import RandomRotation, RandomTranslation, RandomZoom
from dlrun.engine.layers.base import ACTIVATIONS, KernelLayer, Layer, activation_op
from dlrun.engine.layers.conv import (AdaptiveAveragePooling2D, AdaptiveMaxPooling2D,
                                      AveragePooling2D, Conv2D, Convolution2D,
                                      GlobalAveragePooling2D, MaxPooling2D,
                                      SpatialPyramidPooling2D, StochasticPooling2D)
from dlrun.engine.layers.core import (Activation, AnnealedDropout, Dense, DropConnect, Dropout,
                                      Flatten, Highway, Reshape)
from dlrun.engine.layers.embedding import Embedding
from dlrun.engine.layers.lambdas import Lambda
from dlrun.engine.layers.merge import Add, Concatenate
from dlrun.engine.layers.normalization import BatchNormalization
from dlrun.engine.layers.recurrent import GRU, LSTM, SimpleRNN
from dlrun.engine.layers.symbolic import Input, InputLayer
from dlrun.engine.layers.wrappers import TimeDistributed
from dlrun.errors import ConfigError

BUILT_IN = (Dense, Highway, Activation, Dropout, Flatten, Reshape,
            Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
            BatchNormalization, LeakyReLU, ELU, PReLU, Softmax, Maxout,
            SimpleRNN, LSTM, GRU, Embedding, TimeDistributed, Add, Concatenate,
            RandomTranslation, RandomRotation, RandomZoom, InputLayer, Lambda,
            # the lectures' last layers (issue 13, part 6)
            RReLU, StochasticPooling2D, AdaptiveMaxPooling2D, AdaptiveAveragePooling2D,
            SpatialPyramidPooling2D, DropConnect, AnnealedDropout)

# class name -> layer class, for load_model
LAYERS: dict[str, type] = {cls.__name__: cls for cls in BUILT_IN}


def register_layer(cls: type) -> type:
    """Make a user's layer class loadable by ``dl.load_model`` (usable as a decorator)."""
    LAYERS[cls.__name__] = cls
    return cls


def layer_from_config(class_name: str, config: dict) -> Layer:
    """A new layer of the registered class ``class_name`` from its ``get_config()``."""
    try:
        cls = LAYERS[class_name]
    except KeyError:
        raise ConfigError(f"unknown layer class {class_name!r}; known: {sorted(LAYERS)} "
                          "(register your own with dlrun.layers.register_layer)") from None
    return cls.from_config(dict(config))


__all__ = ["ACTIVATIONS", "BUILT_IN", "LAYERS", "Layer", "KernelLayer", "activation_op",
           "layer_from_config", "register_layer", "Input", "Convolution2D"] + \
    [c.__name__ for c in BUILT_IN]
