"""Writing a dlrun dataset (the format: :mod:`dlrun.datasets.store`): checked first,
written to a temporary sibling and renamed into place, the ``complete`` marker last."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Mapping
from math import ceil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

from dlrun.datasets.store import (
    FORMAT_VERSION,
    SPLIT_NAMES,
    array_key,
    check_labels,
    checked_normalization,
    chunk_crc32,
    little_endian,
    sha256_of,
)
from dlrun.errors import ConfigError, DataError

CHUNK_BYTES = 1_000_000  # the smallest chunk of x worth a file of its own
SHARD_CHUNKS = 64  # arrays of more chunks than this store them 64 to a file (zarr sharding)


def write_dataset(
    path: str | os.PathLike,
    splits: Mapping[str, tuple[Any, Any]] | tuple[Any, Any],
    *,
    name: str,
    classes: int,
    class_names: list[str] | None = None,
    normalization: Mapping[str, float] | None = None,
    source: str = "",
    license: str = "",
    description: str = "",
    chunk_samples: int | None = None,
    shard_chunks: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a classification dataset as a dlrun zarr store.

    The store is written to a temporary sibling directory and renamed into place, so
    nothing half-written ever sits under ``path``.

    Parameters
    ----------
    path : path of the store to create, conventionally ending in ``.zarr``.
    splits : ``{"train": (x, y), "test": (x, y)}`` plus optionally ``"validation"``; or a
        single ``(x, y)`` pair for a dataset without splits. ``x`` is sample-first with an
        integer or floating dtype, stored as given; ``y`` holds integer labels in
        ``[0, classes)``.
    name, classes, class_names, source, license, description : attributes of the store;
        ``class_names`` defaults to ``["0", "1", ...]``.
    normalization : ``{"scale": s, "offset": o}``, float value = raw * s + o; default 1, 0.
    chunk_samples : samples per chunk; default: about 1 MB of ``x`` per chunk.
    shard_chunks : store this many chunks per file (zarr 3 sharding), to keep the file
        count of a large dataset small; default: 64 when an array has more than 64
        chunks, else one file per chunk (1: never shard).
    overwrite : replace an existing dlrun dataset at ``path`` (never anything else).

    Returns
    -------
    The path of the written store.
    """
    path = Path(path)
    if not isinstance(classes, (int, np.integer)) or classes < 1:
        raise DataError(f"{path}: classes={classes!r}; pass the number of classes, an int >= 1")
    classes = int(classes)
    arrays = _checked_arrays(splits, classes, path)
    if class_names is None:
        class_names = [str(c) for c in range(classes)]
    if len(class_names) != classes:
        raise DataError(
            f"{path}: {len(class_names)} class_names for {classes} classes; give one name per class"
        )
    if chunk_samples is not None and chunk_samples < 1:
        raise ConfigError(f"chunk_samples={chunk_samples}; pass a positive number or None")
    if shard_chunks is not None and shard_chunks < 1:
        raise ConfigError(f"shard_chunks={shard_chunks}; pass a positive number or None")
    scale, offset = checked_normalization(normalization or {}, path)
    _check_target(path, overwrite)
    first_x = next(iter(arrays.values()))[0]
    attrs = {
        "dlrun_format": FORMAT_VERSION,
        "name": name,
        "task": "classification",
        "classes": classes,
        "class_names": [str(n) for n in class_names],
        "input_shape": list(first_x.shape[1:]),
        "x_dtype": str(first_x.dtype),
        "normalization": {"scale": scale, "offset": offset},
        "source": source,
        "license": license,
        "description": description,
        "splits": [s for s in arrays if s],
        "checksums": _checksums(arrays),
    }
    _write_store(path, attrs, arrays, chunk_samples, shard_chunks)
    return path


def _check_target(path: Path, overwrite: bool) -> None:
    """Refuse to write over anything but a dlrun dataset, and over that without overwrite."""
    if path.exists():
        if not overwrite:
            raise DataError(f"{path} already exists; pass overwrite=True to replace it")
        if not _is_dataset(path):
            raise DataError(
                f"{path} exists and is not a dlrun dataset; refusing to replace it: "
                "remove it yourself or choose another path"
            )


def _checksums(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, str]:
    """The ``checksums`` attribute: each array's sha256, keyed by its path in the store."""
    return {
        array_key(split, key): sha256_of(a)
        for split, xy in arrays.items()
        for key, a in zip(("x", "y"), xy, strict=True)
    }


def _write_store(
    path: Path,
    attrs: dict,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    chunk_samples: int | None,
    shard_chunks: int | None,
) -> None:
    """Write the store under a temporary name and rename it to ``path``; a failure leaves
    nothing behind (and an existing dataset at ``path`` as it was)."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        # The attributes first, the arrays, then the `complete` marker: a store whose
        # write stopped half way (even one copied elsewhere) says so on open.
        root = zarr.open_group(tmp, mode="w-", zarr_format=3, attributes=attrs)
        for split, (x, y) in arrays.items():
            group = root.create_group(split) if split else root
            k = min(chunk_samples or _default_chunk_samples(x), len(x))
            for key, a in (("x", x), ("y", y)):
                _write_array(group, key, a, k, shard_chunks)
        root.attrs["complete"] = True
        _replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _checked_arrays(splits, classes: int, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (x, y)}`` as little-endian numpy arrays (split ``""``: arrays at the root)."""
    if not isinstance(splits, Mapping):
        if len(splits) != 2:
            raise DataError(
                f"{path}: splits is a {type(splits).__name__} of {len(splits)} items; give "
                "{'train': (x, y), 'test': (x, y)}, or a single (x, y) pair"
            )
        splits = {"": tuple(splits)}
    else:
        unknown = [s for s in splits if s not in SPLIT_NAMES]
        if unknown or "train" not in splits or "test" not in splits:
            raise DataError(
                f"{path}: splits {list(splits)}; give 'train' and 'test' (and optionally "
                "'validation'), or a single (x, y) pair for a dataset without splits"
            )
    arrays = {}
    for split, (x, y) in splits.items():
        where = f"{path}, split '{split}'" if split else str(path)
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 1 or len(x) == 0:
            raise DataError(f"{where}: x has shape {x.shape}; it needs at least one sample")
        if x.dtype.kind not in "biuf":
            raise DataError(f"{where}: x has dtype {x.dtype}; convert it to a numeric dtype")
        if y.dtype.kind not in "iu":
            raise DataError(f"{where}: y has dtype {y.dtype}; class labels must be integers")
        if y.shape != (len(x),):
            raise DataError(
                f"{where}: y has shape {y.shape} for {len(x)} samples of x; "
                f"give one label per sample, shape ({len(x)},)"
            )
        check_labels(y, classes, where=f"{where}, array y")
        arrays[split] = (little_endian(x), little_endian(y))
    shapes = {x.shape[1:] for x, _ in arrays.values()}
    dtypes = {x.dtype for x, _ in arrays.values()}
    if len(shapes) > 1 or len(dtypes) > 1:
        raise DataError(
            f"{path}: the splits' samples differ in shape {sorted(shapes)} or dtype "
            f"{sorted(map(str, dtypes))}; every split must have the same sample shape and dtype"
        )
    return arrays


def _default_chunk_samples(x: np.ndarray) -> int:
    """Samples per chunk: chunks of about CHUNK_BYTES or more, of nearly equal size."""
    n_chunks = max(1, x.nbytes // CHUNK_BYTES)
    return ceil(len(x) / n_chunks)


def _write_array(
    group: zarr.Group, key: str, a: np.ndarray, chunk_samples: int, shard_chunks: int | None = None
) -> None:
    k = min(chunk_samples, len(a))
    chunks_in_a = ceil(len(a) / k)
    if shard_chunks is None:
        shard_chunks = SHARD_CHUNKS if chunks_in_a > SHARD_CHUNKS else 1
    shards = None
    if shard_chunks > 1:
        shards = (k * min(shard_chunks, chunks_in_a), *a.shape[1:])
    crcs = [chunk_crc32(a[lo : lo + k]) for lo in range(0, len(a), k)]
    group.create_array(
        key,
        data=a,
        chunks=(k, *a.shape[1:]),
        shards=shards,
        serializer=BytesCodec(),
        compressors=[ZstdCodec(level=9), Crc32cCodec()],
        attributes={"chunk_crc32": crcs},
    )


def _replace(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``, moving an existing ``path`` aside first."""
    if not path.exists():
        tmp.rename(path)
        return
    old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
    path.rename(old)
    try:
        tmp.rename(path)
    except BaseException:
        old.rename(path)
        raise
    shutil.rmtree(old)


def _is_dataset(path: Path) -> bool:
    try:
        return "dlrun_format" in zarr.open_group(path, mode="r", zarr_format=3).attrs
    except (zarr.errors.BaseZarrError, ValueError, OSError):
        return False
