"""Built-in models for ``dlrun train --model NAME`` (the lectures' reference networks)."""
from __future__ import annotations

from dlrun.engine import layers as L
from dlrun.engine import regularizers
from dlrun.engine.models.model import Sequential
from dlrun.errors import ConfigError


def mlp(input_shape, classes, activation="relu", hidden=500, l2=0.0, dropout=0.0,
        shift=0.0):
    """784-500-500-10 (for MNIST): two hidden Dense layers and a softmax output.

    The recipe's options: ``l2`` penalises every Dense kernel (``l2 * sum w^2``),
    ``dropout`` follows each hidden layer, ``shift`` moves training images by up to that
    fraction of their size (images only).
    """
    input_shape = tuple(input_shape)
    reg = regularizers.l2(l2) if l2 else None
    first = []
    if shift:
        if len(input_shape) != 3:
            raise ConfigError(f"shift augmentation needs images (channels, height, width); "
                              f"these samples have shape {input_shape}")
        first = [L.RandomTranslation(shift, input_shape=input_shape)]
    body = [L.Flatten(input_shape=None if first else input_shape)]
    for _ in range(2):
        body.append(L.Dense(hidden, activation=activation, kernel_regularizer=reg))
        if dropout:
            body.append(L.Dropout(dropout))
    body.append(L.Dense(classes, activation="softmax", kernel_regularizer=reg))
    return Sequential(first + body, name="mlp")


def mlp_sigmoid(input_shape, classes, **recipe):
    """The lectures' sigmoid MLP: the same net with sigmoid units (vanishing gradients)."""
    m = mlp(input_shape, classes, activation="sigmoid", **recipe)
    m.name = "mlp-sigmoid"
    return m


def _image_input(input_shape, shift):
    """The layers that take samples to (channels, height, width) images: a Reshape for
    flat square images, and the shift augmentation when asked for."""
    input_shape = tuple(input_shape)
    first = []
    if len(input_shape) == 1:
        side = int(round(input_shape[0] ** 0.5))
        if side * side != input_shape[0]:
            raise ConfigError(f"a convolutional model needs images (channels, height, "
                              f"width) or flat square ones; these samples have shape "
                              f"{input_shape}")
        first.append(L.Reshape((1, side, side), input_shape=input_shape))
    if shift:
        first.append(L.RandomTranslation(shift, input_shape=None if first else input_shape))
    return first, (None if first else input_shape)


def cnn(input_shape, classes, l2=0.0, dropout=0.0, shift=0.0):
    """The classic Keras MNIST CNN: Conv 32 3x3 ReLU, Conv 64 3x3 ReLU, MaxPool 2,
    Dropout .25, Flatten, Dense 128 ReLU, Dropout .5, Dense 10 softmax.

    ``dropout`` above 0 replaces both dropout rates; ``l2`` penalises every kernel.
    """
    reg = regularizers.l2(l2) if l2 else None
    first, shape = _image_input(input_shape, shift)
    d1, d2 = (dropout, dropout) if dropout else (0.25, 0.5)
    body = [L.Conv2D(32, 3, activation="relu", kernel_regularizer=reg, input_shape=shape),
            L.Conv2D(64, 3, activation="relu", kernel_regularizer=reg),
            L.MaxPooling2D(2)]
    body += [L.Dropout(d1)] if d1 else []
    body += [L.Flatten(), L.Dense(128, activation="relu", kernel_regularizer=reg)]
    body += [L.Dropout(d2)] if d2 else []
    body.append(L.Dense(classes, activation="softmax", kernel_regularizer=reg))
    return Sequential(first + body, name="cnn")


def lenet(input_shape, classes, l2=0.0, dropout=0.0, shift=0.0):
    """LeNet-5's shapes with ReLU: Conv 6 5x5 (same), AvgPool 2, Conv 16 5x5, AvgPool 2,
    Flatten, Dense 120, Dense 84, Dense 10 softmax; ``dropout`` after each hidden Dense."""
    reg = regularizers.l2(l2) if l2 else None
    first, shape = _image_input(input_shape, shift)
    body = [L.Conv2D(6, 5, padding="same", activation="relu", kernel_regularizer=reg,
                     input_shape=shape),
            L.AveragePooling2D(2),
            L.Conv2D(16, 5, activation="relu", kernel_regularizer=reg),
            L.AveragePooling2D(2),
            L.Flatten()]
    for units in (120, 84):
        body.append(L.Dense(units, activation="relu", kernel_regularizer=reg))
        body += [L.Dropout(dropout)] if dropout else []
    body.append(L.Dense(classes, activation="softmax", kernel_regularizer=reg))
    return Sequential(first + body, name="lenet")


def lstm(input_shape, classes, l2=0.0, dropout=0.0, shift=0.0):
    """The rows of an image as a sequence (MNIST: 28 steps of 28 pixels), LSTM 128, Dense
    softmax. Flat square images and (channels, height, width) ones are read row by row,
    a channel after another; (time, features) samples are taken as they are.
    ``dropout`` follows the LSTM; ``l2`` penalises its input kernel and the Dense's."""
    input_shape = tuple(input_shape)
    reg = regularizers.l2(l2) if l2 else None
    image = input_shape if len(input_shape) == 3 else None
    if len(input_shape) == 1:
        side = int(round(input_shape[0] ** 0.5))
        image = (1, side, side) if side * side == input_shape[0] else None
    if len(input_shape) == 2 and not shift:
        first = []
        rnn = L.LSTM(128, kernel_regularizer=reg, input_shape=input_shape)
    elif image is None:
        raise ConfigError(f"the lstm model takes images (channels, height, width), flat "
                          f"square ones, or (time, features) sequences without shift "
                          f"augmentation; these samples have shape {input_shape}")
    else:
        first = _image_input(input_shape, shift)[0] if shift else []
        first.append(L.Reshape((image[0] * image[1], image[2]),
                               input_shape=None if first else input_shape))
        rnn = L.LSTM(128, kernel_regularizer=reg)
    body = [rnn] + ([L.Dropout(dropout)] if dropout else [])
    body.append(L.Dense(classes, activation="softmax", kernel_regularizer=reg))
    return Sequential(first + body, name="lstm")


def resnet_small(input_shape, classes, l2=0.0, dropout=0.0, shift=0.0):
    """A small residual CNN (He et al. 2016), built with the functional API: Conv 16 3x3
    + BatchNorm + ReLU, MaxPool 2, three residual blocks (16 channels; 32 entered with
    stride 2, its shortcut a 1x1 stride-2 projection; 32), GlobalAveragePooling2D, Dense
    softmax. Each block is two 3x3 convolutions with BatchNorm, added to its input before
    the last ReLU. On MNIST: 39k weights and 2.6M multiply-adds a sample, a fifth of the
    cnn's. ``l2`` penalises every kernel, ``dropout`` comes before the Dense."""
    from dlrun.engine.layers import Input
    from dlrun.engine.models.functional import Functional

    reg = regularizers.l2(l2) if l2 else None
    first, _ = _image_input(input_shape, shift)
    inp = Input(shape=tuple(input_shape))
    x = inp
    for layer in first:
        x = layer(x)
    if len(x.sample_shape) != 3:
        raise ConfigError(f"resnet-small needs images (channels, height, width) or flat "
                          f"square ones; these samples have shape {tuple(input_shape)}")
    x = _conv_bn(x, 16, 1, reg, relu=True)
    x = L.MaxPooling2D(2)(x)
    for filters, stride in ((16, 1), (32, 2), (32, 1)):
        y = _conv_bn(x, filters, stride, reg, relu=True)
        y = _conv_bn(y, filters, 1, reg, relu=False)
        if stride != 1 or x.sample_shape[0] != filters:       # project the shortcut
            x = _conv_bn(x, filters, stride, reg, relu=False, size=1)
        x = L.Activation("relu")(L.Add()([y, x]))
    x = L.GlobalAveragePooling2D()(x)
    if dropout:
        x = L.Dropout(dropout)(x)
    out = L.Dense(classes, activation="softmax", kernel_regularizer=reg)(x)
    return Functional(inp, out, name="resnet-small")


def _conv_bn(x, filters, stride, reg, relu, size=3):
    """Conv (same padding, no bias: BatchNorm's beta is the bias) + BatchNorm (+ ReLU)."""
    x = L.Conv2D(filters, size, strides=stride, padding="same", use_bias=False,
                 kernel_initializer="he_normal", kernel_regularizer=reg)(x)
    # momentum 0.9, not Keras' 0.99: the moving statistics that inference uses settle
    # within the few hundred steps of a short run on a small dataset
    x = L.BatchNormalization(momentum=0.9)(x)
    return L.Activation("relu")(x) if relu else x


MODELS = {"mlp": mlp, "mlp-sigmoid": mlp_sigmoid, "cnn": cnn, "lenet": lenet, "lstm": lstm,
          "resnet-small": resnet_small}
# The optimizer `dlrun train` uses for a model unless told otherwise (others: sgd).
OPTIMIZERS = {"lstm": "adam"}


def build(name: str, input_shape, classes: int, **recipe):
    """A zoo model by name, for samples of ``input_shape`` and ``classes`` outputs;
    ``recipe`` holds the model's regularisation options (``l2``, ``dropout``, ``shift``)."""
    try:
        fn = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; built-in models: "
                          f"{', '.join(sorted(MODELS))}") from None
    return fn(input_shape, classes, **recipe)
