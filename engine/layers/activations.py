"""The lectures' activation zoo as layers: LeakyReLU, ELU, PReLU (a learned slope), RReLU
(a random slope), Softmax and Maxout (a learned piecewise-linear unit)."""
from __future__ import annotations

from dlrun.engine import initializers, regularizers
from dlrun.engine.core.graph import apply
from dlrun.engine.layers.base import Layer, positive_int, require_features
from dlrun.errors import ConfigError


class _WithAlpha(Layer):
    """An elementwise op with a fixed ``alpha`` (LeakyReLU, ELU: only the op differs)."""

    op = ""

    def __init__(self, alpha: float, **kw):
        super().__init__(**kw)
        self.alpha = float(alpha)

    def call(self, x, training):
        return apply(self.op, x, alpha=self.alpha)

    def get_config(self):
        return super().get_config() | {"alpha": self.alpha}


class LeakyReLU(_WithAlpha):
    """``y = x if x > 0 else alpha * x``."""

    op = "leaky_relu"

    def __init__(self, alpha: float = 0.3, **kw):
        super().__init__(alpha, **kw)


class ELU(_WithAlpha):
    """``y = x if x > 0 else alpha * (exp(x) - 1)``."""

    op = "elu"

    def __init__(self, alpha: float = 1.0, **kw):
        super().__init__(alpha, **kw)


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
        return super().get_config() | {
            "alpha_initializer": initializers.serialize(self.alpha_initializer)}


class RReLU(Layer):
    """Randomized leaky ReLU (Xu et al. 2015): ``y = x if x > 0 else a * x``. While
    training, ``a`` is drawn uniformly from ``[lower, upper]`` for every element at every
    step (the gradient uses the drawn slope); at inference it is the fixed mean slope
    ``(lower + upper) / 2``. The defaults are the paper's (and PyTorch's) 1/8 and 1/3."""

    def __init__(self, lower: float = 1 / 8, upper: float = 1 / 3, **kw):
        super().__init__(**kw)
        try:
            self.lower, self.upper = float(lower), float(upper)
        except (TypeError, ValueError):
            self.lower = self.upper = float("nan")
        if not 0.0 <= self.lower <= self.upper:
            raise ConfigError(f"RReLU needs numbers 0 <= lower <= upper, got lower={lower!r}, "
                              f"upper={upper!r}")

    def call(self, x, training):
        if training:
            return apply("rrelu", x, lower=self.lower, upper=self.upper)
        return apply("leaky_relu", x, alpha=(self.lower + self.upper) / 2)

    def get_config(self):
        return super().get_config() | {"lower": self.lower, "upper": self.upper}


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
        self.units = positive_int(units, "Maxout units")
        self.pieces = positive_int(pieces, "Maxout pieces")
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
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer)}
