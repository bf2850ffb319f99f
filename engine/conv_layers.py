"""Layers for images and the lectures' activation zoo: Conv2D, pooling, Reshape,
BatchNormalization, LeakyReLU, PReLU, ELU, Softmax and Maxout.

Images are NCHW: a layer's input shape (without the batch axis) is (channels, height,
width). Re-exported by :mod:`dlrun.engine.layers`, where they are registered for
``load_model``.
"""
from __future__ import annotations

import numpy as np

from dlrun.engine import initializers, regularizers
from dlrun.engine.graph import apply
from dlrun.engine.layers import (LAYERS, KernelLayer, Layer, _name, activation_op,
                                  require_features)
from dlrun.errors import ConfigError, ShapeError
from dlrun.ops.conv import window_geometry


def _pair(value, what: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair of positive ints."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ConfigError(f"{what} must be a positive integer or a pair of them, got "
                          f"{value!r}")
    return int(pair[0]), int(pair[1])


def _padding(value) -> str:
    if value not in ("valid", "same"):
        raise ConfigError(f"padding must be 'valid' or 'same', got {value!r}")
    return value


def _images(layer, input_shape) -> None:
    if len(input_shape) != 3:
        raise ShapeError(f"{type(layer).__name__} layer {layer.name!r} expects images of "
                         f"shape (batch, channels, height, width), got "
                         f"(batch, {', '.join(map(str, input_shape))})")


def _window_output(layer, input_shape, window, strides, padding) -> tuple[int, int]:
    oh, _ = window_geometry(input_shape[1], window[0], strides[0], padding)
    ow, _ = window_geometry(input_shape[2], window[1], strides[1], padding)
    if oh < 1 or ow < 1:
        raise ShapeError(f"{type(layer).__name__} layer {layer.name!r}: a {window[0]}x"
                         f"{window[1]} window does not fit images of {input_shape[1]}x"
                         f"{input_shape[2]} with padding {padding!r}; use padding='same'")
    return oh, ow


class Conv2D(KernelLayer):
    """2-D convolution of NCHW images: ``y = activation(conv(x, W) + b)``; weights
    ``W (filters, channels, kh, kw)`` then ``b (filters,)``."""

    def __init__(self, filters: int, kernel_size, strides=1, padding: str = "valid",
                 activation=None, **kw):
        super().__init__(activation=activation, **kw)
        if not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ConfigError(f"Conv2D filters must be a positive integer, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "Conv2D kernel_size")
        self.strides = _pair(strides, "Conv2D strides")
        self.padding = _padding(padding)

    def build(self, input_shape):
        _images(self, input_shape)
        self.compute_output_shape(input_shape)
        self.add_kernel_and_bias((self.filters, input_shape[0], *self.kernel_size),
                                 (self.filters,))

    def call(self, x, training):
        if not self.use_bias:
            y = apply("conv2d", x, self.kernel, strides=self.strides, padding=self.padding)
            return apply(self._act, y) if self._act else y
        # bias, and ReLU, fused into the convolution: applied to each sample's product
        # while it is in cache rather than in passes over the whole batch
        relu = self._act == "relu"
        y = apply("conv2d_bias", x, self.kernel, self.bias, strides=self.strides,
                  padding=self.padding, relu=relu)
        return apply(self._act, y) if self._act and not relu else y

    def compute_output_shape(self, input_shape):
        _images(self, input_shape)
        return (self.filters, *_window_output(self, input_shape, self.kernel_size,
                                              self.strides, self.padding))

    def get_config(self):
        return super().get_config() | {
            "filters": self.filters, "kernel_size": list(self.kernel_size),
            "strides": list(self.strides), "padding": self.padding}


class _Pooling2D(Layer):
    op = ""

    def __init__(self, pool_size=2, strides=None, padding: str = "valid", **kw):
        super().__init__(**kw)
        self.pool_size = _pair(pool_size, f"{type(self).__name__} pool_size")
        self.strides = self.pool_size if strides is None else \
            _pair(strides, f"{type(self).__name__} strides")
        self.padding = _padding(padding)

    def call(self, x, training):
        return apply(self.op, x, pool=self.pool_size, strides=self.strides,
                     padding=self.padding)

    def compute_output_shape(self, input_shape):
        _images(self, input_shape)
        return (input_shape[0], *_window_output(self, input_shape, self.pool_size,
                                                self.strides, self.padding))

    def get_config(self):
        return super().get_config() | {"pool_size": list(self.pool_size),
                                       "strides": list(self.strides), "padding": self.padding}


class MaxPooling2D(_Pooling2D):
    """The maximum of each ``pool_size`` window (strides default to the pool size); the
    gradient goes to the first maximum of each window."""

    op = "max_pool2d"


class AveragePooling2D(_Pooling2D):
    """The mean of each ``pool_size`` window (of its real pixels, with ``same`` padding)."""

    op = "avg_pool2d"


class GlobalAveragePooling2D(Layer):
    """(batch, channels, height, width) -> (batch, channels): the mean of each channel."""

    def call(self, x, training):
        return apply("global_avg_pool2d", x)

    def compute_output_shape(self, input_shape):
        _images(self, input_shape)
        return (input_shape[0],)


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


class BatchNormalization(Layer):
    """Normalise each feature (2-D input) or channel (NCHW input) by the batch statistics
    while training, by moving averages of them at inference; then scale by ``gamma`` and
    shift by ``beta``. Weights: gamma, beta, moving_mean, moving_variance (the last two
    never trained: the training forward updates them, ``moving = momentum * moving +
    (1 - momentum) * batch statistic``). A frozen layer (``trainable=False``) runs in
    inference mode, as in Keras."""

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, **kw):
        super().__init__(**kw)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        if not 0.0 <= self.momentum <= 1.0 or self.epsilon <= 0.0:
            raise ConfigError(f"BatchNormalization needs 0 <= momentum <= 1 and epsilon > 0, "
                              f"got momentum={momentum!r}, epsilon={epsilon!r}")

    def build(self, input_shape):
        if len(input_shape) not in (1, 3):
            raise ShapeError(f"BatchNormalization layer {self.name!r} expects (batch, "
                             f"features) or (batch, channels, height, width), got "
                             f"(batch, {', '.join(map(str, input_shape))})")
        c = (input_shape[0],)
        self.gamma = self.add_weight("gamma", c, "ones")
        self.beta = self.add_weight("beta", c, "zeros")
        self.moving_mean = self.add_weight("moving_mean", c, "zeros", trainable=False)
        self.moving_variance = self.add_weight("moving_variance", c, "ones", trainable=False)

    @Layer.trainable.setter
    def trainable(self, value: bool) -> None:
        Layer.trainable.fset(self, value)
        for p in (getattr(self, "moving_mean", None), getattr(self, "moving_variance", None)):
            if p is not None:
                p.trainable = False       # statistics, never trained

    def call(self, x, training):
        state = (self.gamma, self.beta, self.moving_mean, self.moving_variance)
        if training and self.trainable:
            return apply("batch_norm", x, *state, momentum=self.momentum, epsilon=self.epsilon)
        return apply("batch_norm_inference", x, *state, epsilon=self.epsilon)

    def get_config(self):
        return super().get_config() | {"momentum": self.momentum, "epsilon": self.epsilon}


class LeakyReLU(Layer):
    """``y = x if x > 0 else alpha * x``."""

    def __init__(self, alpha: float = 0.3, **kw):
        super().__init__(**kw)
        self.alpha = float(alpha)

    def call(self, x, training):
        return apply("leaky_relu", x, alpha=self.alpha)

    def get_config(self):
        return super().get_config() | {"alpha": self.alpha}


class ELU(Layer):
    """``y = x if x > 0 else alpha * (exp(x) - 1)``."""

    def __init__(self, alpha: float = 1.0, **kw):
        super().__init__(**kw)
        self.alpha = float(alpha)

    def call(self, x, training):
        return apply("elu", x, alpha=self.alpha)

    def get_config(self):
        return super().get_config() | {"alpha": self.alpha}


class PReLU(Layer):
    """``y = x if x > 0 else alpha * x`` with a learned slope per input element (weight
    ``alpha`` shaped like one sample, zeros at first, as in Keras)."""

    def __init__(self, alpha_initializer="zeros", **kw):
        super().__init__(**kw)
        initializers.get(alpha_initializer)
        self.alpha_initializer = alpha_initializer

    def build(self, input_shape):
        self.alpha = self.add_weight("alpha", input_shape, self.alpha_initializer)

    def call(self, x, training):
        return apply("prelu", x, self.alpha)

    def get_config(self):
        return super().get_config() | {"alpha_initializer": _name(self.alpha_initializer)}


class Softmax(Layer):
    """Softmax over the last axis."""

    def call(self, x, training):
        return apply("softmax", x)


class Maxout(Layer):
    """A learned piecewise-linear unit: ``units`` maxima, each over ``pieces`` linear
    pieces, ``y[:, u] = max_k (x @ W + b)[:, u * pieces + k]``; weights ``W (in, units *
    pieces)`` then ``b (units * pieces,)``."""

    def __init__(self, units: int, pieces: int = 2, kernel_initializer="glorot_uniform",
                 kernel_regularizer=None, **kw):
        super().__init__(**kw)
        for what, v in (("units", units), ("pieces", pieces)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"Maxout {what} must be a positive integer, got {v!r}")
        self.units, self.pieces = int(units), int(pieces)
        initializers.get(kernel_initializer)
        self.kernel_initializer = kernel_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        require_features(self, input_shape)
        n = self.units * self.pieces
        self.kernel = self.add_weight("kernel", (input_shape[0], n), self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)
        self.bias = self.add_weight("bias", (n,), "zeros")

    def call(self, x, training):
        z = apply("bias_add", apply("matmul", x, self.kernel), self.bias)
        return apply("maxout", z, pieces=self.pieces)

    def compute_output_shape(self, input_shape):
        return (self.units,)

    def get_config(self):
        return super().get_config() | {
            "units": self.units, "pieces": self.pieces,
            "kernel_initializer": _name(self.kernel_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer)}


__all__ = ["Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "Reshape",
           "BatchNormalization", "LeakyReLU", "PReLU", "ELU", "Softmax", "Maxout"]
LAYERS.update({name: globals()[name] for name in __all__})
