"""``Lambda``: a layer that is a Python function of symbolic tensors, written with
``dlrun.backend`` (Keras' ``K.``) functions."""
from __future__ import annotations

from dlrun.engine import custom_objects
from dlrun.engine.core.graph import Placeholder, Tensor
from dlrun.engine.layers.base import Layer
from dlrun.errors import ConfigError, ShapeError
from dlrun.ops import Spec


class Lambda(Layer):
    """``function(x, **arguments)`` as a layer, without weights (Keras' ``Lambda``)::

        from dlrun import backend as K
        Lambda(lambda x: K.square(x) - 1.0)

    The function receives a symbolic tensor (a list of them when the layer is called on a
    list) with the batch axis first, and returns one of the same batch size; every
    ``dlrun.backend`` function and the tensors' arithmetic trains (each is an op with a
    gradient). ``output_shape`` (without the batch axis, or a function of the input
    shape) is checked against what the function gives; by default that is found by
    tracing the function on a batch of one.

    A saved model names the function (a model holds no code): load it with
    ``load_model(path, custom_objects={"fn": fn})``. A ``lambda`` expression has no name,
    so a model holding one cannot be saved (define the function with ``def``).
    """

    def __init__(self, function, output_shape=None, arguments: dict | None = None, **kw):
        super().__init__(**kw)
        if isinstance(function, str):             # from a saved config: look the name up
            found = custom_objects.lookup(function)
            if not callable(found):
                raise ConfigError(f"Lambda layer {self.name!r} calls the function "
                                  f"{function!r}, which a saved model names but does not "
                                  f"hold: {custom_objects.hint(function)}")
            function = found
        if not callable(function):
            raise ConfigError(f"Lambda takes a function of symbolic tensors, got "
                              f"{type(function).__name__} {function!r:.60}")
        if output_shape is not None and not callable(output_shape):
            try:
                output_shape = tuple(int(d) for d in output_shape)
            except (TypeError, ValueError):
                raise ConfigError(f"Lambda output_shape must be a tuple of sizes without the "
                                  f"batch axis, or a function; got {output_shape!r}") from None
        if arguments is not None and not isinstance(arguments, dict):
            raise ConfigError(f"Lambda arguments must be a dict of keyword arguments, got "
                              f"{arguments!r}")
        self.function, self.output_shape = function, output_shape
        self.arguments = dict(arguments or {})

    def _run(self, x):
        """The function's result on ``x``, checked: a tensor of the same batch size."""
        y = self.function(x, **self.arguments)
        first = x[0] if isinstance(x, (list, tuple)) else x
        if not isinstance(y, Tensor):
            raise ConfigError(f"the function of Lambda layer {self.name!r} returned "
                              f"{type(y).__name__}; it must return a tensor computed from "
                              "its input with dlrun.backend functions")
        if not y.shape or y.shape[0] != first.shape[0]:
            raise ShapeError(f"the function of Lambda layer {self.name!r} returned a tensor "
                             f"of shape {y.shape} for a batch of {first.shape[0]}; it must "
                             "keep the batch axis first")
        return y

    def compute_output_shape(self, input_shape):
        if self.output_shape is None:             # trace the function on a batch of one
            many = isinstance(input_shape, list)
            xs = [Placeholder(Spec((1, *s), self.dtype))
                  for s in (input_shape if many else [input_shape])]
            return tuple(self._run(xs if many else xs[0]).shape[1:])
        if callable(self.output_shape):
            return tuple(int(d) for d in self.output_shape(input_shape))
        return self.output_shape

    def call(self, x, training):
        y = self._run(x)
        if self.output_shape is not None:
            shapes = [t.shape[1:] for t in x] if isinstance(x, (list, tuple)) else x.shape[1:]
            want = self.compute_output_shape(shapes)
            if tuple(y.shape[1:]) != tuple(want):
                raise ShapeError(f"Lambda layer {self.name!r} was given output_shape "
                                 f"{want}, but its function returns samples of shape "
                                 f"{y.shape[1:]}")
        return y

    def get_config(self):
        name = getattr(self.function, "__name__", "")
        if not name.isidentifier():
            raise ConfigError(f"Lambda layer {self.name!r} holds a lambda expression, which a "
                              "saved model cannot name: define the function with def (then "
                              "load with load_model(path, custom_objects={name: function}))")
        cfg = super().get_config() | {"function": name, "arguments": self.arguments}
        if self.output_shape is not None and not callable(self.output_shape):
            cfg["output_shape"] = list(self.output_shape)
        return cfg
