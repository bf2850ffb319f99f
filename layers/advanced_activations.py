"""Keras' ``keras.layers.advanced_activations``: the same classes as :mod:`dlrun.layers`."""
from dlrun.engine.layers.activations import ELU, LeakyReLU, PReLU, Softmax

__all__ = ["ELU", "LeakyReLU", "PReLU", "Softmax"]
