"""Keras' functional API on the layer side: ``dl.Input``, the symbolic tensors layers are
called on, and what a call records.

Calling a layer on a :class:`SymbolicTensor` builds the layer (its weights are drawn then,
as in Keras), works out the output shape by tracing the layer once on a batch of one, and
records the call. :class:`dlrun.engine.models.functional.Functional` collects the calls
between a model's inputs and outputs."""
from __future__ import annotations

import numpy as np

from dlrun.engine.core.graph import Placeholder
from dlrun.engine.layers.base import Layer
from dlrun.errors import ConfigError
from dlrun.ops import Spec


class SymbolicTensor:
    """What ``dl.Input`` and a layer called on symbolic tensors return: a shape (``None``
    for the batch axis, as in Keras) and the call that made it; no values."""

    def __init__(self, sample_shape: tuple, call: "Call", dtype="float32"):
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self.dtype = np.dtype(dtype)
        self.call = call

    @property
    def shape(self) -> tuple:
        return (None, *self.sample_shape)

    @property
    def name(self) -> str:
        return self.call.layer.name

    def __repr__(self):
        return f"<SymbolicTensor shape={self.shape} from {self.call.layer.name!r}>"


class Call:
    """One call of a layer: the tensors it was given (a list when ``as_list``), and the
    tensor it returned; ``index`` counts the layer's calls."""

    def __init__(self, layer: Layer, inputs: list, as_list: bool, index: int):
        self.layer, self.inputs, self.as_list, self.index = layer, inputs, as_list, index
        self.output: SymbolicTensor | None = None


class InputLayer(Layer):
    """The source of one model input: samples of ``shape`` (no batch axis)."""

    def __init__(self, shape, name: str | None = None, dtype="float32", **kw):
        super().__init__(name=name, dtype=dtype, **kw)
        try:
            self.shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ConfigError(f"Input shape must be a tuple of positive sizes without the "
                              f"batch axis, e.g. shape=(784,); got {shape!r}") from None
        if not self.shape or any(d < 1 for d in self.shape):
            raise ConfigError(f"Input shape must be a tuple of positive sizes without the "
                              f"batch axis, e.g. shape=(784,); got {shape!r}")
        self.built, self.built_input_shape = True, self.shape
        call = Call(self, [], False, 0)
        call.output = SymbolicTensor(self.shape, call, dtype)
        self._calls = [call]
        self.output = call.output

    def call(self, x, training):
        return x

    def get_config(self):
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.name}


def Input(shape, name: str | None = None, dtype="float32") -> SymbolicTensor:  # noqa: N802
    """A model input: samples of ``shape`` (without the batch axis), e.g.
    ``dl.Input(shape=(784,))``; call layers on it, then ``dl.Model(inputs, outputs)``.
    The model feeds an input as the layers reading it take it: float32, or int32 indices
    to an Embedding (``dtype='int32'``, as Keras code writes it there, is accepted)."""
    if np.dtype(dtype) != np.float32 and np.dtype(dtype).kind not in "iu":
        raise ConfigError(f"dl.Input takes dtype 'float32', or an integer dtype for the "
                          f"indices an Embedding reads; got dtype={dtype!r}")
    return InputLayer(shape, name=name, dtype=dtype).output


def call_layer(layer: Layer, inputs) -> SymbolicTensor:
    """``layer(inputs)`` on symbolic tensors: build the layer, infer the output shape,
    record the call (see the module docstring)."""
    as_list = isinstance(inputs, (list, tuple))
    tensors = list(inputs) if as_list else [inputs]
    for t in tensors:
        if not isinstance(t, SymbolicTensor):
            what = f"a {type(t).__module__}.{type(t).__name__}"
            raise ConfigError(f"layer {layer.name!r} was called on {what}; call layers on "
                              "dl.Input(...) tensors or on what other layers returned "
                              "(to compute on arrays, build a model and use predict)")
    if isinstance(layer, InputLayer):
        raise ConfigError("an InputLayer cannot be called; use dl.Input(shape=...)")
    shapes = [t.sample_shape for t in tensors]
    layer.ensure_built(shapes if as_list else shapes[0])
    # a trace on a batch of one runs the ops' shape rules, so a bad shape shows here; a
    # layer reading a model input gets what it takes (int32 indices for an Embedding)
    xs = [Placeholder(Spec((1, *t.sample_shape), layer.input_dtype
                           if isinstance(t.call.layer, InputLayer) else np.float32))
          for t in tensors]
    out = layer.call(xs if as_list else xs[0], training=False)
    call = Call(layer, tensors, as_list, len(layer.calls))
    call.output = SymbolicTensor(out.shape[1:], call)
    layer._calls.append(call)
    return call.output
