"""Reading a dlrun dataset (the format: :mod:`dlrun.datasets.store`): :func:`open_dataset`
and :class:`Dataset`, which validates the store on open and every chunk as it is read."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr
import zarr.errors

from dlrun.datasets.store import (
    FORMAT_VERSION,
    SHIPPED,
    SPLIT_NAMES,
    ChunkError,
    array_key,
    check_labels,
    checked_normalization,
    chunk_checksums,
    data_home,
    little_endian,
    n_chunks,
    read_chunk,
    resolve,
)
from dlrun.errors import DataError

if TYPE_CHECKING:
    from dlrun.datasets.loader import Loader


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
        self.normalization = checked_normalization(self.attrs.get("normalization", {}), path)
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
                    f"{self.path}: array '{array_key(split, key)}' is {what}; every split needs "
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
                            f"array '{array_key(split, key)}': chunk {start // k}: label "
                            f"{raw[i]} at sample {start + i} is outside [0, {self.classes}) "
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
            digest.update(little_endian(raw))
            yield i * arr.chunks[0], raw
        expected = self.attrs.get("checksums", {}).get(array_key(split, key))
        if expected is not None and not failed and expected != digest.hexdigest():
            message = (
                f"array '{array_key(split, key)}' does not match its recorded sha256 "
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
        where = f"{self.path}: array '{array_key(split, 'x')}'"
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
        where = f"{self.path}: array '{array_key(split, 'y')}'"
        if y.dtype.kind not in "iu":
            raise DataError(
                f"{where} has dtype {y.dtype}; class labels must be integers: rewrite it"
            )
        if y.shape != (x.shape[0],):
            raise DataError(
                f"{where} has shape {y.shape} but '{array_key(split, 'x')}' holds {x.shape[0]} "
                f"samples; y needs one label per sample, shape ({x.shape[0]},)"
            )

    def _where(self, split: str | None, key: str) -> str:
        return f"dataset {self.path}, array '{array_key(split, key)}'"


def _normalize(raw: np.ndarray, scale: float, offset: float) -> np.ndarray:
    # float64 first, then float32: the same numbers as `(raw / 255.0).astype(float32)`
    # for scale 1/255; multiplying in float32 differs in the last bit for half the values.
    return (raw.astype(np.float64) * scale + offset).astype(np.float32)
