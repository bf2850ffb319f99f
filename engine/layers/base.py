"""The :class:`Layer` base class, and what the layer families share: the ``activation=``
names, :class:`KernelLayer` (a kernel, a bias and an activation) and the checks of
arguments and input shapes that several families make.

Shapes given to and returned by ``build``/``compute_output_shape`` exclude the batch axis.
``call`` receives and returns symbolic tensors (with the batch axis) and adds nodes with
:func:`dlrun.engine.core.graph.apply`. ``get_config()`` is enough to rebuild a layer, which
is what a saved model and a Ray worker receive.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np

from dlrun.engine import initializers, regularizers
from dlrun.engine.core.graph import Parameter, apply
from dlrun.errors import ConfigError, ShapeError

_counts = itertools.count()


class _ForwardOnly:
    """The type of :data:`FORWARD_ONLY`."""

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "FORWARD_ONLY"


# What ``call`` receives as ``training`` in ``predict(x, training=True)`` (Monte-Carlo
# dropout): training behaviour (dropout and the other random layers draw, batch
# normalisation uses the batch's statistics, as Keras' ``model(x, training=True)``), but a
# forward pass only, so a layer must leave its state as it is (BatchNormalization keeps its
# moving statistics). It is true, so a layer that only asks ``if training`` needs no change.
FORWARD_ONLY = _ForwardOnly()

ACTIVATIONS = {"linear": None, "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
               "softmax": "softmax", "leaky_relu": "leaky_relu", "elu": "elu"}


def activation_op(name):
    """Op name for an ``activation=`` string; ``None`` means linear. Besides the built-in
    names, any registered elementwise op of one input is an activation (a user's
    ``@dl.ops.elementwise`` formula, with its attributes' defaults)."""
    if name is None:
        return None
    if isinstance(name, str) and name not in ACTIVATIONS:
        from dlrun.ops import OpError, get

        try:
            op = get(name)
        except OpError:
            op = None
        if op is not None and op.pointwise is not None and len(op.inputs) == 1:
            return name
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown activation {name!r}; expected one of "
                          f"{sorted(ACTIVATIONS)} or the name of an elementwise op of one "
                          "input (dl.ops.elementwise)") from None


def activate(x, op: str | None):
    """``x`` through the activation op ``op`` (from :func:`activation_op`; None: ``x``)."""
    return apply(op, x) if op else x


# Keras 1 argument names -> today's (Keras 2's), for the layers that took them
KERAS1_NAMES = {"output_dim": "units", "init": "kernel_initializer",
                "W_regularizer": "kernel_regularizer", "b_regularizer": "bias_regularizer",
                "bias": "use_bias", "nb_filter": "filters", "border_mode": "padding",
                "subsample": "strides", "p": "rate"}


def keras1(layer: str, kw: dict, *names: str) -> dict:
    """``kw`` with the Keras 1 spellings ``names`` (keys of :data:`KERAS1_NAMES`) renamed
    to today's, each with a DeprecationWarning; giving both spellings is refused."""
    for old in names:
        if old not in kw:
            continue
        new = KERAS1_NAMES[old]
        if new in kw:
            raise ConfigError(f"{layer} got both {old}= (the Keras 1 spelling) and {new}=; "
                              f"give {new}= only")
        warnings.warn(f"{layer}({old}=...) is the Keras 1 spelling; use {new}=",
                      DeprecationWarning, stacklevel=3)
        kw[new] = kw.pop(old)
    return kw


def deprecated_dim_ordering(layer: str, kw: dict) -> None:
    """Keras 1's ``dim_ordering``: 'th' is dlrun's channels-first layout; 'tf' is refused."""
    if "dim_ordering" not in kw:
        return
    value = kw.pop("dim_ordering")
    if value not in ("th", "default"):
        raise ConfigError(f"{layer}(dim_ordering={value!r}): dlrun's images are channels "
                          "first (batch, channels, height, width), Keras 1's 'th'; reshape "
                          "or transpose the data to that layout")
    warnings.warn(f"{layer}(dim_ordering=...) is Keras 1's; dlrun's images are always "
                  "channels first", DeprecationWarning, stacklevel=3)


class Layer:
    """Base class: a named collection of weights and a ``call`` that traces the forward.

    ``input_dim=n`` (Keras 2's shorthand) means ``input_shape=(n,)``.

    ``input_dtype`` is what a model feeds the layer when it reads a model input directly
    (float32; integer indices for an Embedding), and :meth:`check_data` refuses input
    samples it cannot take then, on the host, before any kernel runs.
    """

    input_dtype = np.dtype(np.float32)

    def __init__(self, name: str | None = None, trainable: bool = True,
                 input_shape: tuple | None = None, dtype="float32", input_dim=None):
        self.name = name or f"{_snake(type(self).__name__)}_{next(_counts)}"
        self.trainable = trainable
        if input_dim is not None:
            if input_shape is not None:
                raise ConfigError(f"give {type(self).__name__} input_shape= or input_dim=, "
                                  f"not both (got {input_shape!r} and {input_dim!r})")
            input_shape = (positive_int(input_dim, f"{type(self).__name__} input_dim"),)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.dtype = np.dtype(dtype)
        self.built = False
        self.built_input_shape = None
        self._weights: list[Parameter] = []
        self._fixed: set[str] = set()     # names of weights that are never trainable
        self._calls: list = []            # symbolic calls, recorded by symbolic.call_layer

    # -- to override -----------------------------------------------------------------------
    def build(self, input_shape: tuple) -> None:
        """Create the weights for inputs of ``input_shape`` (no batch axis)."""

    def call(self, x, training: bool):
        """Trace the forward of symbolic ``x``; ``training`` is True, False, or
        :data:`FORWARD_ONLY` (true: training behaviour, changing no state)."""
        raise NotImplementedError

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)

    def check_data(self, x: np.ndarray) -> None:
        """Raise a DataError for model input samples ``x`` that this layer, reading them
        directly, cannot take (``x`` is float32, or int64 for an integer ``input_dtype``:
        values are checked before they are narrowed)."""

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
        # imported here: symbolic.py imports this module (an InputLayer is a Layer)
        from dlrun.engine.layers.symbolic import call_layer

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
        if not trainable:                 # never trained (moving statistics), frozen or not
            self._fixed.add(p.name)
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
        """Freezing a layer freezes its weights: no gradient work, no update. It takes
        effect at the next step (``fit``, ``train_on_batch``), compiled again or not;
        unfreezing leaves weights that are never trained (moving statistics) frozen."""
        self._trainable = bool(value)
        fixed = getattr(self, "_fixed", ())
        for p in getattr(self, "_weights", ()):
            p.trainable = self._trainable and p.name not in fixed

    @property
    def calls(self) -> list:
        """The calls of this layer on symbolic tensors (:class:`~dlrun.engine.layers.
        symbolic.Call`), in the order they were made; a functional model keeps those
        between its inputs and outputs."""
        return list(self._calls)

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


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower()
                   for i, c in enumerate(name))


# -- checks several families make --------------------------------------------------------------
def positive_int(value, what: str) -> int:
    """``value`` as an int, or a ConfigError naming ``what`` (e.g. "Dense units")."""
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def require_features(layer: Layer, input_shape: tuple, sequences: bool = False) -> None:
    """Refuse inputs other than (batch, features), as layers of one weight matrix need;
    with ``sequences``, (batch, time, features) too (the layer acts on the last axis)."""
    if len(input_shape) != 1 and not (sequences and len(input_shape) == 2):
        expected = "(batch, features) or (batch, time, features)" if sequences else \
            "(batch, features)"
        raise ShapeError(f"{type(layer).__name__} layer {layer.name!r} expects inputs of "
                         f"shape {expected}, got (batch, "
                         f"{', '.join(map(str, input_shape))}); put a Flatten layer before it")


def require_images(layer: Layer, input_shape: tuple) -> None:
    """Refuse inputs other than NCHW images (batch, channels, height, width)."""
    if len(input_shape) != 3:
        raise ShapeError(f"{type(layer).__name__} layer {layer.name!r} expects images of "
                         f"shape (batch, channels, height, width), got "
                         f"(batch, {', '.join(map(str, input_shape))})")


class KernelLayer(Layer):
    """Base of layers with a kernel, an optional bias and an activation (Dense, Conv2D):
    the shared arguments, their checks, the two weights and their config."""

    def __init__(self, activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, **kw):
        super().__init__(**kw)
        self.activation = activation
        self.activation_op = activation_op(activation)
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
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer)}
