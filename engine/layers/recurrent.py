"""Recurrent layers: SimpleRNN, LSTM and GRU, trained by backpropagation through time.

Inputs are sequences (batch, time, features); the initial state is zero. Weights are laid
out as in Keras, so they move to and from it unchanged: ``kernel (features, units)``,
``recurrent_kernel (units, units)``, ``bias (units,)``, each four times as wide for the
LSTM, whose gates are in the order i, f, c, o, and three times for the GRU (z, r, h; its
bias ``(2, 3 units)``, the input bias then the recurrent one)."""
from __future__ import annotations

from dlrun.engine import initializers, regularizers
from dlrun.engine.core.graph import apply
from dlrun.engine.layers.base import Layer, positive_int
from dlrun.errors import ConfigError, ShapeError


class _Recurrent(Layer):
    """What SimpleRNN, LSTM and GRU share: units, initialisers and regularisers, the three
    weights, the output (every step's state, or the last one's) and their config."""

    gates = 1

    def __init__(self, units: int, return_sequences: bool = False,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 **kw):
        super().__init__(**kw)
        self.units = positive_int(units, f"{type(self).__name__} units")
        self.return_sequences = bool(return_sequences)
        for init in (kernel_initializer, recurrent_initializer, bias_initializer):
            initializers.get(init)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)

    def build(self, input_shape):
        self.compute_output_shape(input_shape)
        width = self.gates * self.units
        self.kernel = self.add_weight("kernel", (input_shape[1], width), self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)
        self.recurrent_kernel = self.add_weight("recurrent_kernel", (self.units, width),
                                                self.recurrent_initializer,
                                                regularizer=self.recurrent_regularizer)
        self.bias = self.add_weight("bias", self.bias_shape(), self.bias_initializer)

    def bias_shape(self) -> tuple:
        return (self.gates * self.units,)

    def sequence(self, x):
        """The symbolic (batch, time, units) states of every step."""
        raise NotImplementedError

    def call(self, x, training):
        h = self.sequence(x)
        return h if self.return_sequences else apply("last_step", h)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ShapeError(f"{type(self).__name__} layer {self.name!r} expects sequences "
                             f"of shape (batch, time, features), got (batch, "
                             f"{', '.join(map(str, input_shape))}); put a Reshape layer "
                             "before it")
        return (input_shape[0], self.units) if self.return_sequences else (self.units,)

    def get_config(self):
        return super().get_config() | {
            "units": self.units, "return_sequences": self.return_sequences,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer)}


class SimpleRNN(_Recurrent):
    """``h_t = activation(x_t @ W + h_{t-1} @ U + b)`` (tanh or relu), ``h_{-1} = 0``;
    weights ``W (features, units)``, ``U (units, units)``, ``b (units,)``."""

    def __init__(self, units: int, activation: str = "tanh", return_sequences: bool = False,
                 **kw):
        super().__init__(units, return_sequences, **kw)
        if activation not in ("tanh", "relu"):
            raise ConfigError(f"SimpleRNN activation must be 'tanh' or 'relu', got "
                              f"{activation!r}")
        self.activation = activation

    def sequence(self, x):
        return apply("simple_rnn", x, self.kernel, self.recurrent_kernel, self.bias,
                     activation=self.activation)

    def get_config(self):
        return super().get_config() | {"activation": self.activation}


class LSTM(_Recurrent):
    """Long short-term memory: ``z = x_t @ W + h_{t-1} @ U + b`` split into gates i, f,
    c, o; ``c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(c)``, ``h_t = sigmoid(o)
    tanh(c_t)``, zero initial state; weights ``W (features, 4 units)``, ``U (units, 4
    units)``, ``b (4 units,)``. ``unit_forget_bias`` starts the forget gate's bias at 1,
    as Keras does, so the cell remembers from the first step."""

    gates = 4

    def __init__(self, units: int, return_sequences: bool = False,
                 unit_forget_bias: bool = True, **kw):
        super().__init__(units, return_sequences, **kw)
        self.unit_forget_bias = bool(unit_forget_bias)

    def build(self, input_shape):
        super().build(input_shape)
        if self.unit_forget_bias:
            self.bias.value[self.units:2 * self.units] = 1.0

    def sequence(self, x):
        return apply("lstm", x, self.kernel, self.recurrent_kernel, self.bias)

    def get_config(self):
        return super().get_config() | {"unit_forget_bias": self.unit_forget_bias}


class GRU(_Recurrent):
    """Gated recurrent unit, as Keras 2 with ``reset_after=True`` (and cuDNN, PyTorch):
    ``x_t @ W + b[0]`` and ``h_{t-1} @ U + b[1]`` are split into the gates z (update), r
    (reset) and h (candidate), in that order along the last axis;
    ``z = sigmoid(x_z + u_z)``, ``r = sigmoid(x_r + u_r)``,
    ``hh = tanh(x_h + r * u_h)``, ``h_t = z * h_{t-1} + (1 - z) * hh``, ``h_{-1} = 0``.
    Weights ``W (features, 3 units)``, ``U (units, 3 units)``, ``b (2, 3 units)`` (the
    input bias, then the recurrent one). ``activation`` and ``recurrent_activation`` are
    Keras' defaults, the only ones the compiled time loop has; ``reset_after=False`` (r
    applied before the recurrent product, Keras 2's older default) is not available."""

    gates = 3

    def __init__(self, units: int, activation: str = "tanh",
                 recurrent_activation: str = "sigmoid", return_sequences: bool = False,
                 reset_after: bool = True, **kw):
        super().__init__(units, return_sequences, **kw)
        if activation != "tanh" or recurrent_activation != "sigmoid":
            raise ConfigError(f"GRU computes activation='tanh' and recurrent_activation="
                              f"'sigmoid' only; got {activation!r} and "
                              f"{recurrent_activation!r}")
        if reset_after is not True:
            raise ConfigError(f"GRU computes reset_after=True only (the reset gate applied "
                              f"after the recurrent product, as cuDNN and PyTorch do); got "
                              f"reset_after={reset_after!r}")
        self.activation, self.recurrent_activation = activation, recurrent_activation
        self.reset_after = True

    def bias_shape(self) -> tuple:
        return (2, self.gates * self.units)

    def sequence(self, x):
        return apply("gru", x, self.kernel, self.recurrent_kernel, self.bias)

    def get_config(self):
        return super().get_config() | {"activation": self.activation,
                                       "recurrent_activation": self.recurrent_activation,
                                       "reset_after": self.reset_after}
