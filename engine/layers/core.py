"""The plain layers: Dense, DropConnect, Highway, Activation, Dropout, AnnealedDropout,
Flatten and Reshape."""
from __future__ import annotations

import numpy as np

from dlrun.engine import initializers, regularizers
from dlrun.engine.core.graph import StateFeed, apply
from dlrun.engine.layers.base import (KernelLayer, Layer, activate, activation_op, keras1,
                                     positive_int, require_features)
from dlrun.errors import ConfigError, ShapeError
from dlrun.ops import Spec


class Dense(KernelLayer):
    """``y = activation(x @ W + b)``; weights ``W (in, units)`` then ``b (units,)``. On
    sequences (batch, time, features) it acts on the last axis, every step with the same
    weights, as Keras 2's Dense does: (batch, time, units).

    Keras 1's spellings are taken, with a DeprecationWarning: ``output_dim`` (units),
    ``init`` (kernel_initializer), ``W_regularizer``, ``b_regularizer``, ``bias``."""

    def __init__(self, units: int | None = None, activation=None, **kw):
        kw = keras1("Dense", kw, "output_dim", "init", "W_regularizer", "b_regularizer",
                    "bias")
        if "units" in kw:
            if units is not None:
                raise ConfigError(f"Dense got units twice ({units!r} and output_dim="
                                  f"{kw['units']!r}); give units only")
            units = kw.pop("units")
        if units is None:
            raise ConfigError("Dense needs the number of units: Dense(units, ...)")
        super().__init__(activation=activation, **kw)
        self.units = positive_int(units, "Dense units")

    def build(self, input_shape):
        require_features(self, input_shape, sequences=True)
        self.add_kernel_and_bias((input_shape[-1], self.units), (self.units,))

    def call(self, x, training):
        # a sequence's steps as rows of one matrix, and back after the activation (the
        # planner fuses it with the bias; a softmax there is per step, and the losses find
        # it under the reshape)
        rows = apply("reshape", x, shape=(-1, x.shape[-1])) if len(x.shape) == 3 else x
        y = apply("matmul", rows, self.kernel)
        if self.use_bias:
            y = apply("bias_add", y, self.bias)
        y = activate(y, self.activation_op)
        return apply("reshape", y, shape=(*x.shape[:2], self.units)) if rows is not x else y

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return super().get_config() | {"units": self.units}


def _rate(value, what: str) -> float:
    """A dropout rate: a number in [0, 1), or a ConfigError naming ``what``."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{what} must be in [0, 1), got {value!r}")
    return rate


class DropConnect(Dense):
    """A Dense layer whose weights, not activations, are dropped while training (Wan et
    al. 2013): every step draws one mask over the kernel ``W (in, units)``, shared by all
    the samples of the batch, keeps each entry with probability ``1 - rate`` and scales
    the kept ones by ``1 / (1 - rate)``; at inference the layer is the plain Dense with
    ``W``. That is the inverted convention of Dropout, which most frameworks implement;
    the paper instead trains with an unscaled mask and, at inference, approximates each
    unit's expected output by moment matching (a Gaussian, sampled). The bias is not
    dropped. Weights as Dense's."""

    def __init__(self, units: int, rate: float = 0.5, activation=None, **kw):
        super().__init__(units, activation=activation, **kw)
        self.rate = _rate(rate, "DropConnect rate")

    def call(self, x, training):
        if not training or self.rate == 0.0:
            return super().call(x, training)
        # Dense.call reads self.kernel: for this trace it reads the masked kernel instead
        kernel = self.kernel
        self.kernel = apply("dropout", kernel, rate=self.rate)
        try:
            return super().call(x, training)
        finally:
            self.kernel = kernel

    def get_config(self):
        return super().get_config() | {"rate": self.rate}


class Highway(Layer):
    """A dense highway layer (Srivastava et al. 2015): ``y = T * H + (1 - T) * x`` with
    ``H = activation(x @ W + b)`` and the transform gate ``T = sigmoid(x @ W_T + b_T)``;
    the output has the input's width. Weights ``W (n, n)``, ``b (n,)``, ``W_T (n, n)``,
    ``b_T (n,)``.

    ``b_T`` starts at ``transform_bias`` (-2, as in Keras 1 and the paper's advice of a
    negative value: T is about 0.12 at first, so the layer starts close to the identity and
    deep stacks of it still pass gradients). ``activation`` defaults to ReLU (Keras 1's
    ``'linear'`` makes H affine).
    """

    def __init__(self, activation="relu", transform_bias: float = -2.0,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None, **kw):
        super().__init__(**kw)
        self.activation = activation
        self.activation_op = activation_op(activation)
        try:
            self.transform_bias = float(transform_bias)
        except (TypeError, ValueError):
            raise ConfigError(f"Highway transform_bias must be a number, got "
                              f"{transform_bias!r}") from None
        initializers.get(kernel_initializer)
        self.kernel_initializer = kernel_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        require_features(self, input_shape)
        n = input_shape[0]
        self.kernel = self.add_weight("kernel", (n, n), self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)
        self.bias = self.add_weight("bias", (n,), "zeros")
        self.gate_kernel = self.add_weight("gate_kernel", (n, n), self.kernel_initializer,
                                           regularizer=self.kernel_regularizer)
        self.gate_bias = self.add_weight("gate_bias", (n,), "zeros")
        self.gate_bias.value[...] = self.transform_bias

    def call(self, x, training):
        h = apply("bias_add", apply("matmul", x, self.kernel), self.bias)
        h = activate(h, self.activation_op)
        t = apply("sigmoid", apply("bias_add", apply("matmul", x, self.gate_kernel),
                                   self.gate_bias))
        return apply("gate_mix", t, h, x)

    def get_config(self):
        return super().get_config() | {
            "activation": self.activation, "transform_bias": self.transform_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer)}


class Activation(Layer):
    """Applies an activation function by name."""

    def __init__(self, activation, **kw):
        super().__init__(**kw)
        self.activation = activation
        self.activation_op = activation_op(activation)

    def call(self, x, training):
        return activate(x, self.activation_op)

    def get_config(self):
        return super().get_config() | {"activation": self.activation}


class Dropout(Layer):
    """Zeroes a fraction ``rate`` of its inputs while training (scaling the rest by
    ``1 / (1 - rate)``); the identity at inference."""

    def __init__(self, rate: float | None = None, **kw):
        kw = keras1("Dropout", kw, "p")
        if "rate" in kw:
            if rate is not None:
                raise ConfigError(f"Dropout got its rate twice ({rate!r} and p="
                                  f"{kw['rate']!r}); give rate only")
            rate = kw.pop("rate")
        super().__init__(**kw)
        self.rate = _rate(rate, "Dropout rate")

    def call(self, x, training):
        if not training or self.rate == 0.0:
            return x
        return apply("dropout", x, rate=self.rate)

    def get_config(self):
        return super().get_config() | {"rate": self.rate}


class AnnealedDropout(Layer):
    """Dropout whose rate is annealed (Rennie et al. 2014): ``initial_rate`` in epoch 0,
    changing linearly to ``final_rate`` at epoch ``epochs`` and staying there after:
    ``rate(e) = initial_rate + (final_rate - initial_rate) * min(e, epochs) / epochs``,
    ``e`` being the epoch ``fit`` trains (its index as callbacks see it, from
    ``initial_epoch``). Inverted, as Dropout; the identity at inference.

    The rate is an input of the training program, fed before every step from the model's
    training state, not a constant traced into it: changing it makes no new plan.
    ``predict(x, training=True)`` drops at the rate of the model's current epoch (saved
    with the model)."""

    def __init__(self, initial_rate: float, final_rate: float = 0.0, *, epochs: int, **kw):
        super().__init__(**kw)
        self.initial_rate = _rate(initial_rate, "AnnealedDropout initial_rate")
        self.final_rate = _rate(final_rate, "AnnealedDropout final_rate")
        self.epochs = positive_int(epochs, "AnnealedDropout epochs")

    def rate_at(self, epoch: int) -> float:
        """The dropout rate while epoch ``epoch`` (from 0) trains."""
        done = min(max(int(epoch), 0), self.epochs) / self.epochs
        return self.initial_rate + (self.final_rate - self.initial_rate) * done

    def call(self, x, training):
        if not training:
            return x
        rate = StateFeed(Spec((1,), np.float64), lambda state: self.rate_at(state.epoch),
                         name=f"{self.name}/rate")
        return apply("scheduled_dropout", x, rate)

    def get_config(self):
        return super().get_config() | {"initial_rate": self.initial_rate,
                                       "final_rate": self.final_rate, "epochs": self.epochs}


class Flatten(Layer):
    """(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)."""

    def call(self, x, training):
        if len(x.shape) == 2:
            return x
        return apply("reshape", x, shape=(x.shape[0], -1))

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)


class Reshape(Layer):
    """(batch, ...) -> (batch, *target_shape); one entry of ``target_shape`` may be -1."""

    def __init__(self, target_shape, **kw):
        super().__init__(**kw)
        self.target_shape = tuple(int(d) for d in target_shape)
        if self.target_shape.count(-1) > 1 or any(d < 1 and d != -1 for d in self.target_shape):
            raise ConfigError(f"Reshape target_shape must hold positive sizes and at most "
                              f"one -1, got {target_shape!r}")

    def compute_output_shape(self, input_shape):
        size = int(np.prod(input_shape))
        known = int(np.prod([d for d in self.target_shape if d != -1]))
        if size % known or (-1 not in self.target_shape and known != size):
            raise ShapeError(f"Reshape layer {self.name!r} cannot reshape samples of shape "
                             f"{tuple(input_shape)} into {self.target_shape}")
        return tuple(size // known if d == -1 else d for d in self.target_shape)

    def call(self, x, training):
        return apply("reshape", x, shape=(x.shape[0], *self.compute_output_shape(x.shape[1:])))

    def get_config(self):
        return super().get_config() | {"target_shape": list(self.target_shape)}
