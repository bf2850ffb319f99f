"""Data augmentation layers for training images: RandomTranslation, RandomRotation and
RandomZoom (seeded, the identity at evaluation)."""
from __future__ import annotations

from dlrun.engine.core.graph import apply
from dlrun.engine.layers.base import Layer, require_images
from dlrun.errors import ConfigError


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
        require_images(self, input_shape)

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
