"""Keras' ``keras.layers.wrappers``: the same class as :mod:`dlrun.layers`."""
from dlrun.engine.layers.wrappers import TimeDistributed

__all__ = ["TimeDistributed"]
