"""Keras-style layers: ``build(input_shape)`` makes weights, ``call(x, training)`` traces.

Shapes given to and returned by ``build``/``compute_output_shape`` exclude the batch axis.
``call`` receives and returns symbolic tensors (with the batch axis) and adds nodes with
:func:`dlrun.engine.graph.apply`. ``get_config()`` is enough to rebuild a layer, which is
what a saved model and a Ray worker receive.
"""
from __future__ import annotations

import itertools

import numpy as np

from dlrun.engine import initializers, regularizers
from dlrun.engine.graph import Parameter, apply
from dlrun.errors import ConfigError, ShapeError

_counts = itertools.count()

# activation name -> op name (None: identity)
ACTIVATIONS = {"linear": None, "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
               "softmax": "softmax", "leaky_relu": "leaky_relu", "elu": "elu"}


def activation_op(name):
    """Op name for an ``activation=`` string; ``None`` means linear."""
    if name is None:
        return None
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown activation {name!r}; expected one of "
                          f"{sorted(ACTIVATIONS)}") from None


class Layer:
    """Base class: a named collection of weights and a ``call`` that traces the forward."""

    def __init__(self, name: str | None = None, trainable: bool = True,
                 input_shape: tuple | None = None, dtype="float32"):
        self.name = name or f"{_snake(type(self).__name__)}_{next(_counts)}"
        self.trainable = trainable
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.dtype = np.dtype(dtype)
        self.built = False
        self.built_input_shape = None
        self._weights: list[Parameter] = []

    # -- to override -----------------------------------------------------------------------
    def build(self, input_shape: tuple) -> None:
        """Create the weights for inputs of ``input_shape`` (no batch axis)."""

    def call(self, x, training: bool):
        raise NotImplementedError

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)

    def get_config(self) -> dict:
        cfg = {"name": self.name, "trainable": self.trainable}
        if self.input_shape is not None:
            cfg["input_shape"] = list(self.input_shape)
        return cfg

    # -- shared ----------------------------------------------------------------------------
    def __call__(self, inputs):
        """The functional API: call the layer on ``dl.Input(...)`` tensors (a list of them
        for Add, Concatenate) or what other layers returned; returns a symbolic tensor.
        Calling one layer twice shares its weights."""
        from dlrun.engine.functional import call_layer

        return call_layer(self, inputs)

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        return cls(**config)

    def add_weight(self, name, shape, initializer="glorot_uniform", trainable=True,
                   regularizer=None):
        """A new weight; ``regularizer`` (a :mod:`dlrun.regularizers` penalty) adds its
        penalty to the loss while the weight is trainable."""
        value = initializers.get(initializer)(tuple(shape), self.dtype)
        value = np.ascontiguousarray(value, self.dtype)
        p = Parameter(value, f"{self.name}/{name}", trainable and self.trainable,
                      regularizers.get(regularizer))
        self._weights.append(p)
        return p

    def ensure_built(self, input_shape: tuple) -> None:
        input_shape = tuple(input_shape)
        if not self.built:
            self.build(input_shape)
            self.built, self.built_input_shape = True, input_shape
        elif input_shape != self.built_input_shape:
            raise ShapeError(f"layer {self.name!r} was built for inputs of shape "
                             f"{self.built_input_shape} (without the batch axis) but now "
                             f"receives {input_shape}")

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        """Freezing a layer freezes its weights: no gradient work, no update."""
        self._trainable = bool(value)
        for p in getattr(self, "_weights", ()):
            p.trainable = self._trainable

    @property
    def weights(self) -> list:
        """Every weight parameter, in the documented layout order."""
        return list(self._weights)

    def get_weights(self) -> list:
        return [p.value.copy() for p in self._weights]

    def set_weights(self, arrays: list) -> None:
        if len(arrays) != len(self._weights):
            raise ShapeError(f"layer {self.name!r} has {len(self._weights)} weight arrays, "
                             f"got {len(arrays)}")
        for p, a in zip(self._weights, arrays):
            a = np.asarray(a)
            if a.shape != p.value.shape:
                raise ShapeError(f"weight {p.name!r} has shape {p.value.shape}, got {a.shape}")
            np.copyto(p.value, a, casting="same_kind")

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"


def require_features(layer: Layer, input_shape: tuple) -> None:
    """Refuse inputs other than (batch, features), as layers of one weight matrix need."""
    if len(input_shape) != 1:
        raise ShapeError(f"{type(layer).__name__} layer {layer.name!r} expects inputs of "
                         f"shape (batch, features), got (batch, "
                         f"{', '.join(map(str, input_shape))}); put a Flatten layer before it")


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower()
                   for i, c in enumerate(name))


# ---------------------------------------------------------------------------------------
class KernelLayer(Layer):
    """Base of layers with a kernel, an optional bias and an activation (Dense, Conv2D):
    the shared arguments, their checks, the two weights and their config."""

    def __init__(self, activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, **kw):
        super().__init__(**kw)
        self.activation = activation
        self._act = activation_op(activation)
        self.use_bias = use_bias
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        initializers.get(kernel_initializer), initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def add_kernel_and_bias(self, kernel_shape: tuple, bias_shape: tuple) -> None:
        self.kernel = self.add_weight("kernel", kernel_shape, self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.bias = self.add_weight("bias", bias_shape, self.bias_initializer,
                                        regularizer=self.bias_regularizer)

    def get_config(self):
        return super().get_config() | {
            "activation": self.activation, "use_bias": self.use_bias,
            "kernel_initializer": _name(self.kernel_initializer),
            "bias_initializer": _name(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer)}


class Dense(KernelLayer):
    """``y = activation(x @ W + b)``; weights ``W (in, units)`` then ``b (units,)``."""

    def __init__(self, units: int, activation=None, **kw):
        super().__init__(activation=activation, **kw)
        if not isinstance(units, (int, np.integer)) or units < 1:
            raise ConfigError(f"Dense units must be a positive integer, got {units!r}")
        self.units = int(units)

    def build(self, input_shape):
        require_features(self, input_shape)
        self.add_kernel_and_bias((input_shape[0], self.units), (self.units,))

    def call(self, x, training):
        y = apply("matmul", x, self.kernel)
        if self.use_bias:
            y = apply("bias_add", y, self.bias)
        return apply(self._act, y) if self._act else y

    def compute_output_shape(self, input_shape):
        return (self.units,)

    def get_config(self):
        return super().get_config() | {"units": self.units}


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
        self._act = activation_op(activation)
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
        h = apply(self._act, h) if self._act else h
        t = apply("sigmoid", apply("bias_add", apply("matmul", x, self.gate_kernel),
                                   self.gate_bias))
        return apply("gate_mix", t, h, x)

    def get_config(self):
        return super().get_config() | {
            "activation": self.activation, "transform_bias": self.transform_bias,
            "kernel_initializer": _name(self.kernel_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer)}


class Activation(Layer):
    """Applies an activation function by name."""

    def __init__(self, activation, **kw):
        super().__init__(**kw)
        self.activation = activation
        self._act = activation_op(activation)

    def call(self, x, training):
        return apply(self._act, x) if self._act else x

    def get_config(self):
        return super().get_config() | {"activation": self.activation}


class Dropout(Layer):
    """Zeroes a fraction ``rate`` of its inputs while training (scaling the rest by
    ``1 / (1 - rate)``); the identity at inference."""

    def __init__(self, rate: float, **kw):
        super().__init__(**kw)
        try:
            value = float(rate)
        except (TypeError, ValueError):
            raise ConfigError(f"Dropout rate must be a number in [0, 1), got {rate!r}") from None
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"Dropout rate must be in [0, 1), got {rate!r}")
        self.rate = value

    def call(self, x, training):
        if not training or self.rate == 0.0:
            return x
        return apply("dropout", x, rate=self.rate)

    def get_config(self):
        return super().get_config() | {"rate": self.rate}


class Flatten(Layer):
    """(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)."""

    def call(self, x, training):
        if len(x.shape) == 2:
            return x
        return apply("reshape", x, shape=(x.shape[0], -1))

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)


class _RandomAffine(Layer):
    """Base of the augmentation layers: the ``random_affine`` op while training, the
    identity at inference. Inputs are images (channels, height, width); each sample gets
    its own draw, new every step, fixed by ``dl.set_seed`` as dropout is."""

    def __init__(self, shift_h=0.0, shift_w=0.0, rotation=0.0, zoom=0.0, fill_value=0.0,
                 **kw):
        super().__init__(**kw)
        self._attrs = {"shift_h": _fraction("height/width factor", shift_h),
                       "shift_w": _fraction("height/width factor", shift_w),
                       "rotation": _fraction("rotation factor", rotation),
                       "zoom": _fraction("zoom factor", zoom, below_one=True),
                       "fill": float(fill_value)}

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"{type(self).__name__} layer {self.name!r} expects images of "
                             f"shape (batch, channels, height, width), got "
                             f"(batch, {', '.join(map(str, input_shape))})")

    def call(self, x, training):
        if not training or not any(self._attrs[k] for k in ("shift_h", "shift_w",
                                                              "rotation", "zoom")):
            return x
        return apply("random_affine", x, **self._attrs)


def _fraction(name, value, below_one=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= v < 1.0 if below_one else 0.0 <= v <= 1.0):
        raise ConfigError(f"{name} must be in [0, {'1)' if below_one else '1]'}, got "
                          f"{value!r}")
    return v


class RandomTranslation(_RandomAffine):
    """Shift each training image by a whole number of pixels, up to ``height_factor *
    height`` vertically and ``width_factor * width`` horizontally either way (the
    lectures' "more training data by shifting"); ``fill_value`` where it uncovers."""

    def __init__(self, height_factor: float, width_factor: float | None = None,
                 fill_value: float = 0.0, **kw):
        width_factor = height_factor if width_factor is None else width_factor
        super().__init__(shift_h=height_factor, shift_w=width_factor,
                         fill_value=fill_value, **kw)

    def get_config(self):
        return super().get_config() | {"height_factor": self._attrs["shift_h"],
                                       "width_factor": self._attrs["shift_w"],
                                       "fill_value": self._attrs["fill"]}


class RandomRotation(_RandomAffine):
    """Rotate each training image about its centre by up to ``factor`` of a full turn
    either way (``factor=0.03``: about 11 degrees), nearest pixel."""

    def __init__(self, factor: float, fill_value: float = 0.0, **kw):
        super().__init__(rotation=factor, fill_value=fill_value, **kw)

    def get_config(self):
        return super().get_config() | {"factor": self._attrs["rotation"],
                                       "fill_value": self._attrs["fill"]}


class RandomZoom(_RandomAffine):
    """Zoom each training image about its centre by a factor in ``[1 - factor,
    1 + factor]`` (above 1 enlarges), nearest pixel."""

    def __init__(self, factor: float, fill_value: float = 0.0, **kw):
        super().__init__(zoom=factor, fill_value=fill_value, **kw)

    def get_config(self):
        return super().get_config() | {"factor": self._attrs["zoom"],
                                       "fill_value": self._attrs["fill"]}


def _name(init):
    return init if isinstance(init, str) else getattr(init, "__name__", repr(init))


LAYERS = {c.__name__: c for c in (Dense, Highway, Activation, Dropout, Flatten,
                                          RandomTranslation, RandomRotation, RandomZoom)}


def register_layer(cls):
    """Make a user's layer class loadable by ``dl.load_model``."""
    LAYERS[cls.__name__] = cls
    return cls


def layer_from_config(class_name: str, config: dict) -> Layer:
    try:
        cls = LAYERS[class_name]
    except KeyError:
        raise ConfigError(f"unknown layer class {class_name!r}; known: {sorted(LAYERS)} "
                          "(register your own with dlrun.layers.register_layer)") from None
    return cls.from_config(dict(config))

from dlrun.engine.conv_layers import *  # noqa: E402,F401,F403  (images and the activation zoo)
from dlrun.engine.recurrent_layers import *  # noqa: E402,F401,F403  (SimpleRNN, LSTM)
from dlrun.engine.merge_layers import *  # noqa: E402,F401,F403  (Add, Concatenate)


def __getattr__(name: str):
    """``Input`` and ``InputLayer`` live with the functional API (imported on first use:
    it imports the models, which import this module)."""
    if name in ("Input", "InputLayer"):
        from dlrun.engine import functional

        return getattr(functional, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
