"""Layers for images: Conv2D and pooling (max, average, global average, stochastic,
adaptive, spatial pyramid).

Images are NCHW: a layer's input shape (without the batch axis) is (channels, height,
width)."""
from __future__ import annotations

import warnings

import numpy as np

from dlrun.engine.core.graph import apply
from dlrun.engine.layers.base import (KernelLayer, Layer, activate, deprecated_dim_ordering,
                                     keras1, positive_int, require_images)
from dlrun.errors import ConfigError, ShapeError
from dlrun.ops.conv import window_geometry


def _pair(value, what: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair of positive ints."""
    try:
        pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    except TypeError:                     # neither an int nor a sequence
        pair = ()
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ConfigError(f"{what} must be a positive integer or a pair of them, got "
                          f"{value!r}")
    return int(pair[0]), int(pair[1])


def _padding(value) -> str:
    if value not in ("valid", "same"):
        raise ConfigError(f"padding must be 'valid' or 'same', got {value!r}")
    return value


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
    ``W (filters, channels, kh, kw)`` then ``b (filters,)``.

    Keras 1's spellings are taken, with a DeprecationWarning: ``Conv2D(32, 3, 3)`` (the
    kernel's rows and columns as two integers, as Keras 2 still read them),
    ``nb_filter``, ``nb_row``/``nb_col``, ``border_mode``, ``subsample``, ``init``,
    ``W_regularizer``, ``b_regularizer``, ``bias``, ``dim_ordering='th'``."""

    def __init__(self, filters: int | None = None, kernel_size=None, *positional,
                 strides=1, padding: str = "valid", activation=None, **kw):
        kw = keras1("Conv2D", kw, "nb_filter", "border_mode", "subsample", "init",
                    "W_regularizer", "b_regularizer", "bias")
        deprecated_dim_ordering("Conv2D", kw)
        filters = kw.pop("filters", filters)
        padding, strides = kw.pop("padding", padding), kw.pop("strides", strides)
        kernel_size, strides, padding = _conv_arguments(kernel_size, positional, strides,
                                                        padding, kw)
        super().__init__(activation=activation, **kw)
        self.filters = positive_int(filters, "Conv2D filters")
        self.kernel_size = _pair(kernel_size, "Conv2D kernel_size")
        self.strides = _pair(strides, "Conv2D strides")
        self.padding = _padding(padding)

    def build(self, input_shape):
        require_images(self, input_shape)
        self.compute_output_shape(input_shape)
        self.add_kernel_and_bias((self.filters, input_shape[0], *self.kernel_size),
                                 (self.filters,))

    def call(self, x, training):
        if not self.use_bias:
            y = apply("conv2d", x, self.kernel, strides=self.strides, padding=self.padding)
            return activate(y, self.activation_op)
        # bias, and ReLU, fused into the convolution: applied to each sample's product
        # while it is in cache rather than in passes over the whole batch
        relu = self.activation_op == "relu"
        y = apply("conv2d_bias", x, self.kernel, self.bias, strides=self.strides,
                  padding=self.padding, relu=relu)
        return y if relu else activate(y, self.activation_op)

    def compute_output_shape(self, input_shape):
        require_images(self, input_shape)
        return (self.filters, *_window_output(self, input_shape, self.kernel_size,
                                              self.strides, self.padding))

    def get_config(self):
        return super().get_config() | {
            "filters": self.filters, "kernel_size": list(self.kernel_size),
            "strides": list(self.strides), "padding": self.padding}


def _conv_arguments(kernel_size, positional: tuple, strides, padding, kw: dict):
    """(kernel_size, strides, padding) from Conv2D's arguments: Keras 2's positional
    ``strides, padding`` after the kernel size, or Keras 1's kernel rows and columns
    (``Conv2D(32, 3, 3)``, as Keras 2 still read it, or ``nb_row=``/``nb_col=``)."""
    rows, cols = kw.pop("nb_row", None), kw.pop("nb_col", None)
    if isinstance(kernel_size, (int, np.integer)) and len(positional) == 1 \
            and isinstance(positional[0], (int, np.integer)):
        rows, cols, kernel_size, positional = kernel_size, positional[0], None, ()
    if len(positional) > 2:
        raise ConfigError(f"Conv2D takes at most 4 positional arguments (filters, "
                          f"kernel_size, strides, padding), got {2 + len(positional)}")
    if positional:
        strides, padding = (positional + (padding,))[:2]
    if rows is None and cols is None:
        return kernel_size, strides, padding
    if kernel_size is not None:
        raise ConfigError("Conv2D got kernel_size and Keras 1's nb_row/nb_col; give "
                          "kernel_size=(rows, cols) only")
    warnings.warn("Conv2D(filters, nb_row, nb_col) is the Keras 1 spelling; use "
                  "Conv2D(filters, (rows, cols))", DeprecationWarning, stacklevel=4)
    return (rows, cols), strides, padding


def Convolution2D(nb_filter: int, nb_row: int, nb_col: int, **kw) -> Conv2D:
    """Keras 1's ``Convolution2D(nb_filter, nb_row, nb_col, border_mode=, subsample=)``:
    a :class:`Conv2D` (deprecated; saved models hold the Conv2D)."""
    warnings.warn("Convolution2D(nb_filter, nb_row, nb_col) is Keras 1's; use "
                  "Conv2D(filters, (rows, cols))", DeprecationWarning, stacklevel=2)
    with warnings.catch_warnings():        # one warning for the call, not one per name
        warnings.simplefilter("ignore", DeprecationWarning)
        return Conv2D(nb_filter, (nb_row, nb_col), **kw)


class _Pooling2D(Layer):
    op = ""

    def __init__(self, pool_size=2, strides=None, padding: str = "valid", **kw):
        kw = keras1(type(self).__name__, kw, "border_mode")
        deprecated_dim_ordering(type(self).__name__, kw)
        padding = kw.pop("padding", padding)
        super().__init__(**kw)
        self.pool_size = _pair(pool_size, f"{type(self).__name__} pool_size")
        self.strides = self.pool_size if strides is None else \
            _pair(strides, f"{type(self).__name__} strides")
        self.padding = _padding(padding)

    def call(self, x, training):
        return apply(self.op, x, pool=self.pool_size, strides=self.strides,
                     padding=self.padding)

    def compute_output_shape(self, input_shape):
        require_images(self, input_shape)
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
        require_images(self, input_shape)
        return (input_shape[0],)


class StochasticPooling2D(_Pooling2D):
    """Stochastic pooling (Zeiler & Fergus 2013), for non-negative inputs (after a ReLU).
    While training, each window gives one of its elements, drawn with probability
    proportional to its value (a fresh draw every step; a window of zeros gives 0), and the
    gradient goes to that element; at inference, the probability-weighted average
    ``sum a_i^2 / sum a_i``. A negative element counts as 0 (never drawn, weight 0).
    Windows as MaxPooling2D's."""

    def call(self, x, training):
        op = "stochastic_pool2d" if training else "stochastic_pool2d_inference"
        return apply(op, x, pool=self.pool_size, strides=self.strides, padding=self.padding)


class _AdaptivePooling2D(Layer):
    op = ""

    def __init__(self, output_size, **kw):
        super().__init__(**kw)
        self.output_size = _pair(output_size, f"{type(self).__name__} output_size")

    def call(self, x, training):
        return apply(self.op, x, size=self.output_size)

    def compute_output_shape(self, input_shape):
        require_images(self, input_shape)
        return (input_shape[0], *self.output_size)

    def get_config(self):
        return super().get_config() | {"output_size": list(self.output_size)}


class AdaptiveMaxPooling2D(_AdaptivePooling2D):
    """Images of any size to ``output_size`` (an int or (height, width)): the maximum of
    each bin, output row ``p`` covering input rows ``floor(p H / out_h)`` to ``ceil((p + 1)
    H / out_h)`` (exclusive), as PyTorch's adaptive pooling (columns likewise)."""

    op = "adaptive_max_pool2d"


class AdaptiveAveragePooling2D(_AdaptivePooling2D):
    """Images of any size to ``output_size``: the mean of each bin (bins as
    AdaptiveMaxPooling2D's)."""

    op = "adaptive_avg_pool2d"


class SpatialPyramidPooling2D(Layer):
    """Spatial pyramid pooling (He et al. 2014): for each level ``l`` of ``levels``, the
    images pooled adaptively to ``l x l`` bins (``mode`` 'max' or 'avg'), flattened per
    sample in (channels, l, l) order, the levels concatenated in the order given:
    ``(batch, channels * sum(l * l))`` whatever the images' height and width, so a Dense
    can follow convolutions of images of any size (a model's input shape is still fixed
    when it is built; another size needs another model sharing the weights)."""

    def __init__(self, levels=(1, 2, 4), mode: str = "max", **kw):
        super().__init__(**kw)
        try:
            self.levels = tuple(positive_int(v, "SpatialPyramidPooling2D level")
                                for v in levels)
        except TypeError:
            raise ConfigError(f"SpatialPyramidPooling2D levels must be positive integers, "
                              f"got {levels!r}") from None
        if not self.levels:
            raise ConfigError("SpatialPyramidPooling2D needs at least one level, got ()")
        if mode not in ("max", "avg"):
            raise ConfigError(f"SpatialPyramidPooling2D mode must be 'max' or 'avg', got "
                              f"{mode!r}")
        self.mode = mode

    def call(self, x, training):
        op = "adaptive_max_pool2d" if self.mode == "max" else "adaptive_avg_pool2d"
        out = None
        for level in self.levels:
            y = apply("reshape", apply(op, x, size=(level, level)), shape=(x.shape[0], -1))
            out = y if out is None else apply("concat", out, y, axis=1)
        return out

    def compute_output_shape(self, input_shape):
        require_images(self, input_shape)
        return (input_shape[0] * sum(v * v for v in self.levels),)

    def get_config(self):
        return super().get_config() | {"levels": list(self.levels), "mode": self.mode}
