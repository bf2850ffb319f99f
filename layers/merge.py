"""Keras' ``keras.layers.merge``: the same classes as :mod:`dlrun.layers`."""
from dlrun.engine.layers.merge import Add, Concatenate

__all__ = ["Add", "Concatenate"]
