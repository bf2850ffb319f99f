"""Rewrite a dataset for fast streaming: pre-shuffled, chunks of about 1 MB, optionally uint8.

A packed dataset holds the same samples in a random order fixed by a seed, so even a
loader reading chunks in order (or a window of a few chunks) sees well-mixed classes; its
chunks hold ``chunk_bytes`` or more of ``x`` each (zarr's advice: >= 1 MB), optionally
grouped ``shard_chunks`` to a file (zarr 3 sharding) to keep the file count small. With
``uint8=True`` the samples are stored as one byte each, 4x smaller than float32, and the
dataset's ``normalization`` attribute maps them back: ``value = raw * scale + offset``,
within half a quantization step (``scale / 2``) of the original value.
"""

from __future__ import annotations

import os
from math import ceil
from pathlib import Path

import numpy as np

from dlrun.datasets.reader import open_dataset
from dlrun.datasets.writer import CHUNK_BYTES, write_dataset
from dlrun.errors import ConfigError


def pack_dataset(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str | None = None,
    seed: int = 0,
    uint8: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    shard_chunks: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a packed copy of dataset ``source`` (a name or a path) to ``out``.

    Every split is shuffled with ``np.random.default_rng([seed, i])`` (``i``: the split's
    position); the source is read through its checksums, so a damaged one is refused.
    Returns the path written.
    """
    if chunk_bytes < 1:
        raise ConfigError(f"chunk_bytes={chunk_bytes}; pass a positive number of bytes")
    ds = open_dataset(source)
    scale, offset = ds.normalization
    splits = {}
    new_norm = {"scale": scale, "offset": offset}
    raws = {s: ds.raw(s) for s in (ds.splits or [None])}
    if uint8:
        raws, new_norm = _to_uint8(raws, scale, offset)
    for i, (split, (x, y)) in enumerate(raws.items()):
        p = np.random.default_rng([seed, i]).permutation(len(x))
        splits[split] = (x[p], y[p])
    sample_bytes = next(iter(splits.values()))[0][0].nbytes or 1
    chunk_samples = ceil(chunk_bytes / sample_bytes)
    attrs = ds.attrs
    note = f"packed from {ds.name}: shuffled (seed {seed})" + (", stored as uint8" if uint8 else "")
    return write_dataset(
        out,
        splits if ds.splits else splits[None],
        name=name or ds.name,
        classes=ds.classes,
        class_names=attrs.get("class_names"),
        normalization=new_norm,
        source=attrs.get("source", ""),
        license=attrs.get("license", ""),
        description="; ".join(d for d in (attrs.get("description", ""), note) if d),
        chunk_samples=chunk_samples,
        shard_chunks=shard_chunks,
        overwrite=overwrite,
    )


def _to_uint8(raws: dict, scale: float, offset: float) -> tuple[dict, dict]:
    """The samples as uint8 and the normalization that maps them back to their values."""
    xs = [x for x, _ in raws.values()]
    if all(x.dtype == np.uint8 for x in xs):
        return raws, {"scale": scale, "offset": offset}
    if all(x.dtype.kind in "iu" for x in xs):
        lo, hi = min(int(x.min()) for x in xs), max(int(x.max()) for x in xs)
        if hi - lo <= 255:  # exact: shift the integers into 0..255
            shifted = {s: ((x - lo).astype(np.uint8), y) for s, (x, y) in raws.items()}
            return shifted, {"scale": scale, "offset": offset + lo * scale}
    # Quantize the values (after normalization) into 256 levels spanning their range.
    values = {s: x.astype(np.float64) * scale + offset for s, (x, _) in raws.items()}
    lo = min(float(v.min()) for v in values.values())
    hi = max(float(v.max()) for v in values.values())
    step = (hi - lo) / 255 or 1.0
    packed = {
        s: (np.clip(np.rint((values[s] - lo) / step), 0, 255).astype(np.uint8), y)
        for s, (_, y) in raws.items()
    }
    return packed, {"scale": step, "offset": lo}
