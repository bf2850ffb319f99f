"""What the lectures' gradient pictures are made of, with ``dl.gradients``: saliency maps
(how much each pixel moves a class score) and Deep Dream (gradient ascent on the input),
and the figures that show them (matplotlib, drawn without pyplot's global state).

The experiments ``saliency`` and ``deep-dream`` of :mod:`dlrun.cli.lectures` use these on
a small CNN trained on a shipped dataset; the functions work on any model whose layers
are named.
"""
from __future__ import annotations

import numpy as np


def small_cnn(input_shape, classes: int):
    """(a CNN ending in class scores ``logits`` and a softmax, a model of the same layers
    whose outputs are the last convolution's activations and the logits). Layer names:
    ``conv1``, ``conv2``, ``logits``, ``probs``."""
    import dlrun as dl

    L = dl.layers
    inp = dl.Input(shape=input_shape)
    h = L.MaxPooling2D(2)(L.Conv2D(8, 3, activation="relu", name="conv1")(inp))
    features = L.Conv2D(16, 3, activation="relu", name="conv2")(h)
    logits = L.Dense(classes, name="logits")(L.Flatten()(L.MaxPooling2D(2)(features)))
    probs = L.Activation("softmax", name="probs")(logits)
    return dl.Model(inp, probs, name="cnn"), dl.Model(inp, [features, logits], name="probe")


def saliency_maps(model, x: np.ndarray, classes, layer: str = "logits") -> np.ndarray:
    """``|d score_c / d x|``, the largest over the channels, for each image of ``x`` (NCHW)
    and its class ``c``: shape (images, height, width). The score is unit ``c`` of
    ``layer``'s output (the class scores before the softmax, as Simonyan et al. 2014 use:
    a softmax output's gradient also moves with the other classes' scores)."""
    import dlrun as dl

    maps = np.empty((len(x), *x.shape[2:]), np.float32)
    for i, c in enumerate(classes):
        g = dl.gradients(model, x[i:i + 1], layer=layer, output=int(c))
        maps[i] = np.abs(g[0]).max(axis=0)
    return maps


def dream(model, start: np.ndarray, layer: str, unit=None, steps: int = 100,
          step: float = 0.005, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Gradient ascent on the input from ``start``: the mean of ``layer``'s output (Deep
    Dream), or its unit ``unit`` (a class, for the logits). Each step moves every pixel by
    ``step`` times the gradient over its mean magnitude (steps of the same size whatever
    the gradient's scale), then clips to the data's range ``[low, high]``."""
    import dlrun as dl

    x = np.array(start, np.float32)
    for _ in range(steps):
        g = dl.gradients(model, x, layer=layer, output=unit)
        x += step * g / (np.abs(g).mean() + 1e-12)
        np.clip(x, low, high, out=x)
    return x


def inside_outside(maps: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Per image: the mean saliency on the object's pixels (nonzero in any channel) over
    the mean on the background."""
    ratios = []
    for s, img in zip(maps, images):
        inside = (img != 0).any(axis=0)
        ratios.append(s[inside].mean() / max(s[~inside].mean(), 1e-30))
    return np.array(ratios)


def _image(ax, picture, title: str, cmap: str) -> None:
    ax.imshow(picture, cmap=cmap, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def _picture(x: np.ndarray) -> np.ndarray:
    """An image as a picture: one channel as it is, several as RGB (channels last)."""
    return x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)


def draw_saliency(path, images: np.ndarray, maps: np.ndarray, titles: list) -> None:
    """Each image above its saliency map, written to ``path`` as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.3 * len(images), 3.0))
    axes = fig.subplots(2, len(images), squeeze=False)
    for k, (img, s, title) in enumerate(zip(images, maps, titles)):
        _image(axes[0, k], _picture(img), title, "gray")
        _image(axes[1, k], s, "saliency", "hot")
    fig.suptitle("saliency: |d class score / d pixel|", fontsize=9)
    fig.savefig(path, dpi=100)


def draw_pictures(path, pictures: dict, title: str, columns: int = 6) -> None:
    """Images by title in a grid, written to ``path`` as PNG."""
    from matplotlib.figure import Figure

    rows = -(-len(pictures) // columns)
    fig = Figure(figsize=(1.4 * columns, 1.6 * rows + 0.4))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (name, img) in zip(axes.flat, pictures.items()):
        _image(ax, _picture(img[0]), name, "gray")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
