"""CSV files (``.csv``, ``.csv.gz``, ``.tsv``): one row per sample, a label column and
feature columns."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np

from dlrun.errors import ConfigError, DataError


def read_csv(
    path: str | os.PathLike,
    *,
    label_column: int | str | None = None,
    header: bool | None = None,
    delimiter: str | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """``(x, y, class_names)`` from a CSV file: one row per sample.

    Parameters
    ----------
    label_column : the labels' column, by index (negative counts from the end) or by
        header name; default: the column named ``label`` (or ``class``, ``target``, ``y``),
        else the first.
    header : whether the first row names the columns; default: it does when any of its
        fields is not a number.
    delimiter : default ``,`` (tab for ``.tsv``).

    Integer labels are kept; other labels become classes numbered in sorted order, and
    their names are returned as ``class_names`` (None for integer labels). Features that
    are all integers in 0..255 are stored as uint8, others as float32.
    """
    path = Path(path)
    delimiter = delimiter or ("\t" if path.name.lower().endswith(".tsv") else ",")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        first = f.readline().rstrip("\r\n").split(delimiter)
    if first == [""]:
        raise DataError(f"{path}: the file is empty")
    if header is None:
        header = not all(_is_number(v) for v in first)
    names = [v.strip() for v in first] if header else None
    ncols = len(first)
    label = _label_index(label_column, names, ncols, path)
    features = [c for c in range(ncols) if c != label]
    if not features:
        raise DataError(f"{path}: only a label column; a CSV needs feature columns too")
    skip = 1 if header else 0
    try:
        raw_y = np.loadtxt(path, delimiter=delimiter, skiprows=skip, usecols=[label],
                           dtype=str, ndmin=1)
        x = np.loadtxt(path, delimiter=delimiter, skiprows=skip, usecols=features,
                       dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(
            f"{path}: {exc}; every feature must be a number and every row must have "
            f"{ncols} fields (check the delimiter and the header option)"
        ) from exc
    raw_y = np.char.strip(raw_y)
    class_names = None
    if all(_is_int(v) for v in raw_y):
        y = raw_y.astype(np.int64)
        if len(y) and y.min() < 0:
            raise DataError(f"{path}: label {y.min()} is negative; labels are 0, 1, 2...")
    else:
        class_names, y = np.unique(raw_y, return_inverse=True)
        class_names = [str(c) for c in class_names]
    if len(x) == 0:
        raise DataError(f"{path}: no rows of data")
    if np.all(np.mod(x, 1) == 0) and x.min() >= 0 and x.max() <= 255:
        x = x.astype(np.uint8)
    else:
        x = x.astype(np.float32)
    return x, y.astype(np.int64), class_names


def _label_index(label_column, names, ncols: int, path: Path) -> int:
    if label_column is None:
        for candidate in ("label", "class", "target", "y"):
            if names and candidate in [n.lower() for n in names]:
                return [n.lower() for n in names].index(candidate)
        return 0
    if isinstance(label_column, str) and not _is_int(label_column):
        if not names or label_column not in names:
            raise ConfigError(
                f"{path}: no column named {label_column!r} (columns: "
                f"{names if names else 'no header row'}); pass a name or an index"
            )
        return names.index(label_column)
    index = int(label_column)
    if not -ncols <= index < ncols:
        raise ConfigError(f"{path}: label column {index} out of range for {ncols} columns")
    return index % ncols


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _is_int(v: str) -> bool:
    return re.fullmatch(r"\s*[+-]?\d+\s*", v) is not None
