"""Wrappers: layers that apply another layer. TimeDistributed applies one to every step
of a sequence."""
from __future__ import annotations

from dlrun.engine.core.graph import apply
from dlrun.engine.layers.base import Layer
from dlrun.errors import ConfigError, ShapeError


class TimeDistributed(Layer):
    """Applies ``layer`` to every time step of (batch, time, ...) inputs, with one set of
    weights (the inner layer's, which are this layer's weights): the steps become samples
    of one batch (batch * time, ...), the inner layer runs once on them, and its outputs
    are put back in sequences (batch, time, ...). Any layer whose ``call`` takes a batch
    works inside (Dense, Conv2D on (batch, time, channels, height, width), Flatten...).

    ``layer`` is a layer, or its config ``{"class_name": ..., "config": ...}`` as
    :meth:`get_config` writes it (what ``from_config`` passes).
    """

    def __init__(self, layer, **kw):
        super().__init__(**kw)
        if isinstance(layer, dict):
            # imported here: the registry (the package) imports this module
            from dlrun.engine.layers import layer_from_config

            try:
                cls, cfg = layer["class_name"], dict(layer["config"])
            except (KeyError, TypeError):
                raise ConfigError(f"TimeDistributed takes a layer or its config "
                                  f"{{'class_name': ..., 'config': ...}}; got {layer!r}") from None
            layer = layer_from_config(cls, cfg | {"dtype": self.dtype.name})
        if not isinstance(layer, Layer):
            raise ConfigError(f"TimeDistributed takes a dlrun layer, got {layer!r}")
        self.layer = layer
        if not self.trainable:
            layer.trainable = False

    @Layer.trainable.setter
    def trainable(self, value: bool) -> None:
        """Freezing the wrapper freezes the inner layer."""
        Layer.trainable.fset(self, value)
        if hasattr(self, "layer"):
            self.layer.trainable = value

    def build(self, input_shape):
        self.compute_output_shape(input_shape)
        self.layer.ensure_built(tuple(input_shape[1:]))
        self._weights = self.layer._weights          # one list: the inner layer's weights

    def call(self, x, training):
        steps = apply("reshape", x, shape=(-1, *x.shape[2:]))
        y = self.layer.call(steps, training)
        return apply("reshape", y, shape=(*x.shape[:2], *y.shape[1:]))

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 2:
            raise ShapeError(f"TimeDistributed layer {self.name!r} expects sequences of "
                             f"shape (batch, time, ...), got (batch, "
                             f"{', '.join(map(str, input_shape))})")
        return (input_shape[0], *self.layer.compute_output_shape(tuple(input_shape[1:])))

    def get_config(self):
        return super().get_config() | {"layer": {"class_name": type(self.layer).__name__,
                                                 "config": self.layer.get_config()}}
