"""Built-in models for ``dlrun train --model NAME`` (the lectures' reference networks)."""
from __future__ import annotations

from dlrun.engine import layers as L
from dlrun.engine.model import Sequential
from dlrun.errors import ConfigError


def mlp(input_shape, classes, activation="relu", hidden=500):
    """784-500-500-10 (for MNIST): two hidden Dense layers and a softmax output."""
    return Sequential([
        L.Flatten(input_shape=tuple(input_shape)),
        L.Dense(hidden, activation=activation),
        L.Dense(hidden, activation=activation),
        L.Dense(classes, activation="softmax"),
    ], name="mlp")


def mlp_sigmoid(input_shape, classes):
    """The lectures' sigmoid MLP: the same net with sigmoid units (vanishing gradients)."""
    m = mlp(input_shape, classes, activation="sigmoid")
    m.name = "mlp-sigmoid"
    return m


MODELS = {"mlp": mlp, "mlp-sigmoid": mlp_sigmoid}


def build(name: str, input_shape, classes: int):
    """A zoo model by name, for samples of ``input_shape`` and ``classes`` outputs."""
    try:
        fn = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; built-in models: "
                          f"{', '.join(sorted(MODELS))}") from None
    return fn(input_shape, classes)
