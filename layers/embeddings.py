"""Keras' ``keras.layers.embeddings``: the same class as :mod:`dlrun.layers`."""
from dlrun.engine.layers.embedding import Embedding

__all__ = ["Embedding"]
