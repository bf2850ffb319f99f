"""The Embedding layer: integer indices (word numbers) to rows of a trained matrix."""
from __future__ import annotations

import numpy as np

from dlrun.engine import initializers, regularizers
from dlrun.engine.core.graph import apply
from dlrun.engine.layers.base import Layer, positive_int
from dlrun.errors import DataError, ShapeError


class Embedding(Layer):
    """``y[..., :] = E[x[...], :]``: each integer index in ``[0, input_dim)`` becomes row
    ``x`` of the matrix ``E (input_dim, output_dim)`` (its one weight, ``embeddings``), so
    (batch, time) indices give (batch, time, output_dim) vectors, as in Keras.

    It reads a model's input directly (the first layer of a Sequential, or called on a
    ``dl.Input``): the model then feeds int32 indices, and refuses samples holding an
    index outside ``[0, input_dim)`` (or one that is not a whole number) with a DataError
    before any kernel runs. The gradient adds into the rows of the indices met, twice for
    an index met twice; the indices have none. ``input_length`` gives the sequence length
    (the input shape ``(input_length,)``), as Keras' does.
    """

    input_dtype = np.dtype(np.int32)

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer="uniform",
                 embeddings_regularizer=None, input_length: int | None = None, **kw):
        if input_length is not None and kw.get("input_shape") is None:
            kw["input_shape"] = (positive_int(input_length, "Embedding input_length"),)
        super().__init__(**kw)
        self.input_dim = positive_int(input_dim, "Embedding input_dim")
        self.output_dim = positive_int(output_dim, "Embedding output_dim")
        self.input_length = None if input_length is None else int(input_length)
        initializers.get(embeddings_initializer)
        self.embeddings_initializer = embeddings_initializer
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)

    def build(self, input_shape):
        self.compute_output_shape(input_shape)
        self.embeddings = self.add_weight("embeddings", (self.input_dim, self.output_dim),
                                          self.embeddings_initializer,
                                          regularizer=self.embeddings_regularizer)

    def call(self, x, training):
        return apply("embedding", x, self.embeddings)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if not input_shape:
            raise ShapeError(f"Embedding layer {self.name!r} expects indices of shape "
                             "(batch, time), got (batch,)")
        if self.input_length is not None and input_shape[0] != self.input_length:
            raise ShapeError(f"Embedding layer {self.name!r} has input_length="
                             f"{self.input_length} but receives sequences of shape (batch, "
                             f"{', '.join(map(str, input_shape))})")
        return (*input_shape, self.output_dim)

    def check_data(self, x):
        bad = np.flatnonzero((x < 0) | (x >= self.input_dim))
        if bad.size:
            where = np.unravel_index(bad[0], x.shape)
            position = ", ".join(str(int(i)) for i in where[1:])
            raise DataError(f"Embedding layer {self.name!r} takes indices in [0, "
                            f"{self.input_dim}) (input_dim={self.input_dim}); got "
                            f"{x[where].item()} at sample {where[0]}, position {position}: "
                            "make input_dim larger than the largest index")

    def get_config(self):
        return super().get_config() | {
            "input_dim": self.input_dim, "output_dim": self.output_dim,
            "embeddings_initializer": initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": regularizers.serialize(self.embeddings_regularizer),
            "input_length": self.input_length}
