"""Parameter averaging: the workers' arrays, weighted by the samples each one trained on.

One function for everything the workers exchange (weights, optimizer state such as
momentum or Adam's moments, BatchNormalization moving statistics): each is a named array,
and the average of worker ``i``'s arrays ``a_i`` with ``n_i`` samples seen is

    out = sum_i (n_i / sum_j n_j) * a_i

written in place into the driver's own buffers (no allocation per round beyond one
scratch array). A contribution holding a NaN or an infinity is refused: it would poison
the average of every worker from then on.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from dlrun.errors import ConfigError


def is_finite(a: np.ndarray) -> bool:
    """True when ``a`` holds no NaN and no infinity (one pass, no boolean temporary:
    a NaN or an infinity anywhere makes the sum non-finite)."""
    if a.dtype.kind not in "fc":
        return True
    return math.isfinite(float(np.add.reduce(a, axis=None)))


def nonfinite_workers(contributions: Sequence[Mapping[str, np.ndarray]]) -> list[int]:
    """Indices of the contributions that hold a NaN or an infinity in any array."""
    return [i for i, c in enumerate(contributions)
            if not all(is_finite(np.asarray(a)) for a in c.values())]


def average_into(out: Mapping[str, np.ndarray],
                 contributions: Sequence[Mapping[str, np.ndarray]],
                 samples: Sequence[int], scratch: np.ndarray | None = None) -> list[int]:
    """Average the workers' named arrays, weighted by ``samples``, into ``out`` in place.

    Parameters
    ----------
    out : name -> array, the buffers that receive the average (the driver's weights).
    contributions : one name -> array mapping per worker, with the names and shapes of
        ``out`` (arrays from the object store may be read-only: they are only read).
    samples : samples each worker trained on since the last average; a worker with 0
        contributes nothing.
    scratch : optional float buffer of at least the largest array's size, reused to
        avoid allocating while accumulating.

    Returns
    -------
    The indices of the workers whose arrays hold a NaN or an infinity. When there is any,
    ``out`` is left untouched: the caller rejects the round (and retries or stops).
    Integer arrays (counters) are not averaged; they are taken from the first worker.
    """
    if len(contributions) != len(samples):
        raise ConfigError(f"{len(contributions)} contributions but {len(samples)} sample "
                          "counts; give one count per worker")
    if not contributions:
        raise ConfigError("nothing to average: no worker contributed")
    if any(int(n) < 0 for n in samples):
        raise ConfigError(f"sample counts must be >= 0, got {list(samples)}")
    for i, c in enumerate(contributions):
        if c.keys() != out.keys():
            missing = sorted(set(out) - set(c))[:3]
            extra = sorted(set(c) - set(out))[:3]
            raise ConfigError(f"worker {i} sent arrays that do not match the model's "
                              f"(missing {missing}, unexpected {extra})")
    bad = nonfinite_workers(contributions)
    if bad:
        return bad
    total = sum(int(n) for n in samples)
    # nobody trained (an epoch's tail): keep the plain mean, which is what they were sent
    weights = ([int(n) / total for n in samples] if total
               else [1.0 / len(samples)] * len(samples))
    for name, dst in out.items():
        srcs = [np.asarray(c[name]) for c in contributions]
        for i, s in enumerate(srcs):
            if s.shape != dst.shape:
                raise ConfigError(f"worker {i} sent {name!r} of shape {s.shape}; the model's "
                                  f"is {dst.shape}")
        if dst.dtype.kind not in "fc":
            np.copyto(dst, srcs[0])
            continue
        _weighted_sum(dst, srcs, weights, scratch)
    return []


def _weighted_sum(dst, srcs, weights, scratch) -> None:
    """``dst = sum_i weights[i] * srcs[i]``, accumulating through one scratch buffer."""
    first = next((i for i, w in enumerate(weights) if w), 0)
    if len(srcs) == 1 or weights[first] == 1.0:
        np.copyto(dst, srcs[first])               # exact: one worker changes nothing
        return
    if scratch is None or scratch.size < dst.size or scratch.dtype != dst.dtype:
        scratch = np.empty(dst.size, dst.dtype)
    tmp = scratch[:dst.size].reshape(dst.shape)
    np.multiply(srcs[first], dst.dtype.type(weights[first]), out=dst)
    for s, w in zip(srcs[first + 1:], weights[first + 1:]):
        if w:
            np.multiply(s, dst.dtype.type(w), out=tmp)
            dst += tmp


def scratch_for(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """A scratch buffer :func:`average_into` can reuse for these arrays."""
    floats = [a for a in arrays.values() if a.dtype.kind == "f"]
    size = max((a.size for a in floats), default=0)
    dtype = np.result_type(*floats) if floats else np.float32
    return np.empty(size, dtype)
