"""Layers that join several tensors: Add (residual connections) and Concatenate.

Called on a list of tensors in the functional API (``dl.layers.Add()([h, r])``); their
``build``, ``call`` and ``compute_output_shape`` take lists."""
from __future__ import annotations

import numpy as np

from dlrun.engine.core.graph import apply
from dlrun.engine.layers.base import Layer
from dlrun.errors import ConfigError, ShapeError


class _Merge(Layer):
    """Base of the layers that take a list of at least two tensors."""

    def _shapes(self, input_shapes) -> list:
        shapes = list(input_shapes) if isinstance(input_shapes, (list, tuple)) and \
            input_shapes and isinstance(input_shapes[0], (list, tuple)) else None
        if shapes is None or len(shapes) < 2:
            raise ShapeError(f"{type(self).__name__} layer {self.name!r} takes a list of at "
                             f"least two tensors, e.g. {type(self).__name__}()([a, b])")
        return [tuple(s) for s in shapes]

    def build(self, input_shapes):
        self.compute_output_shape(input_shapes)


class Add(_Merge):
    """The elementwise sum of its inputs, all of one shape: ``Add()([x, f(x)])`` is a
    residual connection."""

    def compute_output_shape(self, input_shapes):
        shapes = self._shapes(input_shapes)
        if len(set(shapes)) > 1:
            raise ShapeError(f"Add layer {self.name!r} needs inputs of one shape, got "
                             f"{' and '.join(str((None, *s)) for s in shapes)}")
        return shapes[0]

    def call(self, xs, training):
        y = xs[0]
        for x in xs[1:]:
            y = apply("add", y, x)
        return y


class Concatenate(_Merge):
    """Its inputs joined along ``axis`` (counted with the batch axis first, as in Keras;
    -1, the default, is the last; the batch axis itself cannot be joined). Every other
    axis must match."""

    def __init__(self, axis: int = -1, **kw):
        super().__init__(**kw)
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise ConfigError(f"Concatenate axis must be an integer, got {axis!r}")
        self.axis = int(axis)

    def _sample_axis(self, ndim: int) -> int:
        """The axis among a sample's ``ndim`` axes (no batch axis)."""
        k = self.axis + ndim + 1 if self.axis < 0 else self.axis
        if not 1 <= k <= ndim:
            raise ShapeError(f"Concatenate layer {self.name!r}: axis {self.axis} does not "
                             f"name an axis of inputs of shape (batch, {ndim} more axes) "
                             "other than the batch axis")
        return k - 1

    def compute_output_shape(self, input_shapes):
        shapes = self._shapes(input_shapes)
        if len({len(s) for s in shapes}) > 1:
            raise ShapeError(f"Concatenate layer {self.name!r} needs inputs with the same "
                             f"number of axes, got {', '.join(str((None, *s)) for s in shapes)}")
        k = self._sample_axis(len(shapes[0]))
        rest = {s[:k] + s[k + 1:] for s in shapes}
        if len(rest) > 1:
            raise ShapeError(f"Concatenate layer {self.name!r} joins along axis {self.axis}; "
                             f"every other axis must match, got "
                             f"{', '.join(str((None, *s)) for s in shapes)}")
        s = shapes[0]
        return s[:k] + (sum(t[k] for t in shapes),) + s[k + 1:]

    def call(self, xs, training):
        axis = self._sample_axis(len(xs[0].shape) - 1) + 1
        y = xs[0]
        for x in xs[1:]:
            y = apply("concat", y, x, axis=axis)
        return y

    def get_config(self):
        return super().get_config() | {"axis": self.axis}
