"""Keras' ``keras.layers.advanced_activations``: the same classes as :mod:`dlrun.layers`."""
from dlrun.engine.layers.activations import ELU, LeakyReLU, PReLU, RReLU, Softmax

__all__ = ["ELU", "LeakyReLU", "PReLU", "RReLU", "Softmax"]
