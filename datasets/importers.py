"""Turn files in common formats into dlrun zarr datasets.

Each importer reads its files into memory, checks them and writes one dataset with
:func:`~dlrun.datasets.store.write_dataset` (atomically: a failed import leaves nothing
under the final name). Supported:

* IDX files, the MNIST format (``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``...,
  gzipped or not): a folder of them, or one images file beside its labels file. Images
  ``(N, H, W)`` become ``(N, 1, H, W)`` (NCHW).
* ``.npz`` files and folders of ``.npy`` files holding ``x`` and ``y``, or ``x_train``,
  ``y_train``, ``x_test``, ``y_test`` (and optionally ``x_validation``, ``y_validation``).
* CSV files (``.csv``, ``.csv.gz``): one row per sample, a label column and feature columns.

>>> from dlrun.datasets.importers import import_path
>>> import_path("downloads/mnist", name="mnist")          # into ~/.dlrun/datasets/mnist.zarr
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from dlrun.datasets.store import data_home, write_dataset
from dlrun.errors import ConfigError, DataError

# IDX type codes: the third byte of the magic number.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
KINDS = ("idx", "npz", "npy", "csv")


def target_path(name: str, out: str | os.PathLike | None = None) -> Path:
    """Where a dataset called ``name`` goes: ``<out or data_home()>/<name>.zarr``."""
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(
            f"dataset name {name!r}; use letters, digits, '.', '_' and '-' (e.g. 'mnist')"
        )
    return Path(out if out is not None else data_home()) / f"{name}.zarr"


def import_path(
    path: str | os.PathLike,
    *,
    name: str,
    out: str | os.PathLike | None = None,
    kind: str | None = None,
    overwrite: bool = False,
    classes: int | None = None,
    class_names: list[str] | None = None,
    label_column: int | str | None = None,
    header: bool | None = None,
    **attrs: Any,
) -> Path:
    """Import ``path`` as dataset ``name`` and return the store's path.

    Parameters
    ----------
    path : a folder of IDX or ``.npy`` files, an IDX images file, a ``.npz`` or a CSV file.
    name : the dataset's name; it is written to ``<out>/<name>.zarr``.
    out : the folder to write to; default :func:`~dlrun.datasets.store.data_home`.
    kind : one of ``idx``, ``npz``, ``npy``, ``csv``; default: from the path.
    overwrite : replace an existing dataset of that name.
    classes, class_names : default: ``max(y) + 1`` classes named ``"0", "1"...``.
    label_column, header : CSV only, see :func:`read_csv`.
    attrs : more attributes for ``write_dataset`` (``normalization``, ``source``,
        ``license``, ``description``, ``chunk_samples``).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"nothing to import at {path}: the path does not exist")
    kind = kind or detect_kind(path)
    found_names = None
    if kind == "csv":
        x, y, found_names = read_csv(path, label_column=label_column, header=header)
        splits = {"": (x, y)}
    elif label_column is not None or header is not None:
        raise ConfigError("label_column and header are options of CSV imports only")
    elif kind == "idx":
        splits = read_idx_files(path)
    elif kind in ("npz", "npy"):
        splits = read_arrays(path)
    else:
        raise ConfigError(f"kind={kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "idx" and "normalization" not in attrs:
        x = next(iter(splits.values()))[0]
        if x.dtype == np.uint8:
            attrs["normalization"] = {"scale": 1 / 255, "offset": 0.0}
    class_names = class_names or found_names
    if classes is None:
        classes = len(class_names) if class_names else 1 + max(int(y.max()) for _, y in
                                                               splits.values())
    data = splits[""] if list(splits) == [""] else splits
    attrs.setdefault("source", str(path.resolve()))
    return write_dataset(
        target_path(name, out), data, name=name, classes=classes, class_names=class_names,
        overwrite=overwrite, **attrs,
    )


def detect_kind(path: Path) -> str:
    """``idx``, ``npz``, ``npy`` or ``csv``, from the file name or the folder's contents."""
    if path.is_dir():
        names = [p.name for p in path.iterdir()]
        if any(_is_idx_name(n) for n in names):
            return "idx"
        if any(n.endswith(".npy") for n in names):
            return "npy"
        raise DataError(
            f"{path}: a folder with no IDX (*-idx3-ubyte...) or .npy files; nothing to import"
        )
    lower = path.name.lower()
    if _is_idx_name(lower):
        return "idx"
    if lower.endswith(".npz"):
        return "npz"
    if lower.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    raise DataError(
        f"{path}: cannot tell its format from the name; pass kind= (--kind) one of "
        f"{', '.join(KINDS)}"
    )


# ---------------------------------------------------------------------------------------
# IDX


def _is_idx_name(name: str) -> bool:
    return re.search(r"idx\d-ubyte(\.gz)?$", name.lower()) is not None


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array in native byte order."""
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # gzip: truncated or not gzip after all
        raise DataError(f"{path}: cannot read it as an IDX file ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(
            f"{path}: not an IDX file (magic number {data[:4].hex() or 'missing'}; expected "
            "00 00 <type> <ndim>)"
        )
    ndim = data[3]
    dims = np.frombuffer(data, ">i4", count=ndim, offset=4) if len(data) >= 4 + 4 * ndim else None
    if dims is None or ndim == 0:
        raise DataError(f"{path}: IDX header with {ndim} dimensions is truncated or empty")
    dtype = np.dtype(IDX_DTYPES[data[2]])
    body = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - body != expected:
        raise DataError(
            f"{path}: IDX header says {tuple(int(d) for d in dims)} {dtype.name} values "
            f"({expected} bytes) but the file holds {len(data) - body}; the file is truncated "
            "or damaged: download it again"
        )
    a = np.frombuffer(data, dtype, offset=body).reshape(tuple(int(d) for d in dims))
    return a.astype(dtype.newbyteorder("="))


def _idx_role(name: str) -> tuple[str, str] | None:
    """(split, "x" or "y") from a name like ``t10k-images-idx3-ubyte.gz``; None if unknown."""
    lower = name.lower()
    if not _is_idx_name(lower):
        return None
    split = "test" if lower.startswith(("t10k", "test")) else "train" if lower.startswith(
        "train") else None
    role = "x" if ("images" in lower or "idx3" in lower) else "y" if (
        "labels" in lower or "idx1" in lower) else None
    return (split, role) if split and role else None


def read_idx_files(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (x, y)}`` from a folder of IDX files, or from one images file and the
    labels file beside it (``...images-idx3...`` and ``...labels-idx1...``)."""
    if path.is_dir():
        files = sorted(path.iterdir())
    else:
        partner = path.name.replace("images-idx3", "labels-idx1")
        files = [path, path.with_name(partner)]
    found: dict[str, dict[str, Path]] = {}
    for f in files:
        role = _idx_role(f.name)
        if role and f.exists():
            found.setdefault(role[0], {})[role[1]] = f
    splits = {}
    for split, pair in found.items():
        if set(pair) != {"x", "y"}:
            missing = "labels (*-labels-idx1-ubyte)" if "y" not in pair else "images"
            raise DataError(f"{path}: IDX {split} split has no {missing} file; add it")
        x, y = read_idx(pair["x"]), read_idx(pair["y"])
        if x.ndim == 3:
            x = x[:, None]  # (N, H, W) -> (N, 1, H, W), the project's NCHW
        if len(x) != len(y):
            raise DataError(
                f"{pair['x']} holds {len(x)} images but {pair['y'].name} {len(y)} labels; "
                "they must be the files of one split"
            )
        splits[split] = (x, y)
    if not splits:
        raise DataError(
            f"{path}: no IDX images/labels pair found (expected names like "
            "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz])"
        )
    if set(splits) == {"train", "test"}:
        return {"train": splits["train"], "test": splits["test"]}
    return {"": next(iter(splits.values()))}


# ---------------------------------------------------------------------------------------
# .npz / .npy


def read_arrays(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (x, y)}`` from a ``.npz`` file or a folder of ``.npy`` files (never pickles)."""
    arrays: dict[str, np.ndarray] = {}
    try:
        if path.is_dir():
            for f in sorted(path.glob("*.npy")):
                arrays[f.stem] = np.load(f, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read its arrays ({exc}); object arrays are refused") \
            from exc
    if "x" in arrays and "y" in arrays:
        return {"": (arrays["x"], arrays["y"])}
    aliases = {"validation": ("validation", "val", "valid")}
    splits = {}
    for split in ("train", "validation", "test"):
        for alias in aliases.get(split, (split,)):
            if f"x_{alias}" in arrays and f"y_{alias}" in arrays:
                splits[split] = (arrays[f"x_{alias}"], arrays[f"y_{alias}"])
    if "train" in splits and "test" in splits:
        return splits
    raise DataError(
        f"{path}: arrays {sorted(arrays)}; expected 'x' and 'y', or 'x_train', 'y_train', "
        "'x_test', 'y_test' (and optionally 'x_validation', 'y_validation')"
    )


# ---------------------------------------------------------------------------------------
# CSV


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


def write_idx(path: str | os.PathLike, a: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``a`` as an IDX file (gzipped when ``compress``, default: the name ends .gz)."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    a = np.asarray(a)
    native = a.dtype.newbyteorder("=")
    if native not in codes:
        raise DataError(
            f"IDX has no type for dtype {a.dtype}; use one of {sorted(map(str, codes))}"
        )
    head = bytes([0, 0, codes[native], a.ndim]) + np.asarray(a.shape, ">i4").tobytes()
    data = head + a.astype(a.dtype.newbyteorder(">")).tobytes()
    compress = path.name.endswith(".gz") if compress is None else compress
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path
