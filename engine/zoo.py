"""Built-in models for ``dlrun train --model NAME`` (the lectures' reference networks)."""
from __future__ import annotations

from dlrun.engine import layers as L
from dlrun.engine import regularizers
from dlrun.engine.model import Sequential
from dlrun.errors import ConfigError


def mlp(input_shape, classes, activation="relu", hidden=500, l2=0.0, dropout=0.0,
        shift=0.0):
    """784-500-500-10 (for MNIST): two hidden Dense layers and a softmax output.

    The recipe's options: ``l2`` penalises every Dense kernel (``l2 * sum w^2``),
    ``dropout`` follows each hidden layer, ``shift`` moves training images by up to that
    fraction of their size (images only).
    """
    input_shape = tuple(input_shape)
    reg = regularizers.l2(l2) if l2 else None
    first = []
    if shift:
        if len(input_shape) != 3:
            raise ConfigError(f"shift augmentation needs images (channels, height, width); "
                              f"these samples have shape {input_shape}")
        first = [L.RandomTranslation(shift, input_shape=input_shape)]
    body = [L.Flatten(input_shape=None if first else input_shape)]
    for _ in range(2):
        body.append(L.Dense(hidden, activation=activation, kernel_regularizer=reg))
        if dropout:
            body.append(L.Dropout(dropout))
    body.append(L.Dense(classes, activation="softmax", kernel_regularizer=reg))
    return Sequential(first + body, name="mlp")


def mlp_sigmoid(input_shape, classes, **recipe):
    """The lectures' sigmoid MLP: the same net with sigmoid units (vanishing gradients)."""
    m = mlp(input_shape, classes, activation="sigmoid", **recipe)
    m.name = "mlp-sigmoid"
    return m


MODELS = {"mlp": mlp, "mlp-sigmoid": mlp_sigmoid}


def build(name: str, input_shape, classes: int, **recipe):
    """A zoo model by name, for samples of ``input_shape`` and ``classes`` outputs;
    ``recipe`` holds the model's regularisation options (``l2``, ``dropout``, ``shift``)."""
    try:
        fn = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; built-in models: "
                          f"{', '.join(sorted(MODELS))}") from None
    return fn(input_shape, classes, **recipe)
