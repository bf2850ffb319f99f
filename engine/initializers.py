"""Weight initialisers, named as in Keras: ``glorot_uniform`` (the default), ``orthogonal``
(recurrent kernels), ``zeros``..."""
from __future__ import annotations

import numpy as np

from dlrun.engine.random import generator
from dlrun.errors import ConfigError


def _fans(shape):
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    # convolution kernels (out, in, kh, kw): receptive field times channels
    field = int(np.prod(shape[2:]))
    return shape[1] * field, shape[0] * field


def glorot_uniform(shape, dtype=np.float32, rng=None):
    """U(-l, l), l = sqrt(6 / (fan_in + fan_out))"""
    fan_in, fan_out = _fans(shape)
    lim = np.sqrt(6.0 / (fan_in + fan_out))
    return (rng or generator()).uniform(-lim, lim, size=shape).astype(dtype)


def glorot_normal(shape, dtype=np.float32, rng=None):
    """N(0, 2 / (fan_in + fan_out)), truncated at 2 standard deviations as in Keras"""
    fan_in, fan_out = _fans(shape)
    std = np.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978
    return _truncated(shape, std, dtype, rng)


def he_normal(shape, dtype=np.float32, rng=None):
    """N(0, 2 / fan_in), truncated at 2 standard deviations"""
    fan_in, _ = _fans(shape)
    return _truncated(shape, np.sqrt(2.0 / fan_in) / 0.87962566103423978, dtype, rng)


def he_uniform(shape, dtype=np.float32, rng=None):
    """U(-l, l), l = sqrt(6 / fan_in)"""
    fan_in, _ = _fans(shape)
    lim = np.sqrt(6.0 / fan_in)
    return (rng or generator()).uniform(-lim, lim, size=shape).astype(dtype)


def orthogonal(shape, dtype=np.float32, rng=None, gain=1.0):
    """``gain`` times a random orthogonal matrix: the Q of a QR factorisation of a normal
    matrix, its columns' signs fixed by R's diagonal so that it is uniformly distributed.
    Shapes of more than two axes are flattened to (product of all but the last, last); of
    (rows, cols) with rows < cols, the rows are orthonormal, else the columns."""
    if len(shape) < 2:
        raise ConfigError(f"the orthogonal initializer needs a shape of at least 2 axes, "
                          f"got {tuple(shape)}")
    rows, cols = int(np.prod(shape[:-1])), int(shape[-1])
    a = (rng or generator()).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.where(np.diag(r) < 0, -1.0, 1.0)
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)


def uniform(shape, dtype=np.float32, rng=None):
    """U(-0.05, 0.05), Keras' ``'uniform'`` (RandomUniform's defaults; Embedding's)"""
    return (rng or generator()).uniform(-0.05, 0.05, size=shape).astype(dtype)


def zeros(shape, dtype=np.float32, rng=None):
    return np.zeros(shape, dtype)


def ones(shape, dtype=np.float32, rng=None):
    return np.ones(shape, dtype)


def _truncated(shape, std, dtype, rng):
    rng = rng or generator()
    x = rng.standard_normal(size=shape)
    bad = np.abs(x) > 2
    while bad.any():
        x[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(x) > 2
    return (x * std).astype(dtype)


INITIALIZERS = {f.__name__: f for f in (glorot_uniform, glorot_normal, he_normal, he_uniform,
                                        orthogonal, uniform, zeros, ones)}


def get(name_or_fn):
    """An initialiser by name, or a callable ``fn(shape, dtype) -> array`` as given."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return INITIALIZERS[name_or_fn]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown initializer {name_or_fn!r}; expected one of "
                          f"{sorted(INITIALIZERS)} or a callable(shape, dtype)") from None


def serialize(init) -> str:
    """What a config stores for an initializer: its name (a callable's ``__name__``)."""
    return init if isinstance(init, str) else getattr(init, "__name__", repr(init))
