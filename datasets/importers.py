"""Turn files in common formats into dlrun zarr datasets: :func:`import_path` tells the
kind of source from its name or contents and hands it to that kind's reader.

Each reader reads its files into memory and checks them; the dataset is then written with
:func:`~dlrun.datasets.writer.write_dataset` (atomically: a failed import leaves nothing
under the final name). The kinds, one module each:

* ``idx`` (:mod:`dlrun.datasets.idx`): IDX files, the MNIST format
  (``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``..., gzipped or not): a folder of
  them, or one images file beside its labels file. Images ``(N, H, W)`` become
  ``(N, 1, H, W)`` (NCHW).
* ``npz``, ``npy`` (:mod:`dlrun.datasets.numpy_files`): ``.npz`` files and folders of
  ``.npy`` files holding ``x`` and ``y``, or ``x_train``, ``y_train``, ``x_test``,
  ``y_test`` (and optionally ``x_validation``, ``y_validation``).
* ``csv`` (:mod:`dlrun.datasets.csv_files`): CSV files (``.csv``, ``.csv.gz``, ``.tsv``):
  one row per sample, a label column and feature columns.
* ``images`` (:mod:`dlrun.datasets.image_folders`): a folder of images per class
  (``PATH/<class name>/<image files>``, or ``PATH/train/`` and ``PATH/test/`` each holding
  such class folders), read with Pillow (``pip install 'dlrun[images]'``): see
  :func:`import_image_folder`.

The readers are importable from here too, as before the split.

>>> from dlrun.datasets.importers import import_path
>>> import_path("downloads/mnist", name="mnist")          # into ~/.dlrun/datasets/mnist.zarr
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from dlrun.datasets.csv_files import read_csv
from dlrun.datasets.idx import IDX_DTYPES, is_idx_name, read_idx, read_idx_files, write_idx
from dlrun.datasets.image_folders import IMAGE_SUFFIXES, holds_class_folders, read_image_folder
from dlrun.datasets.numpy_files import read_arrays
from dlrun.datasets.store import data_home
from dlrun.datasets.writer import write_dataset
from dlrun.errors import ConfigError, DataError

__all__ = [
    "IDX_DTYPES", "IMAGE_SUFFIXES", "KINDS", "detect_kind", "import_image_folder",
    "import_path", "read_arrays", "read_csv", "read_idx", "read_idx_files",
    "read_image_folder", "target_path", "write_idx",
]

KINDS = ("idx", "npz", "npy", "csv", "images")


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
    size: tuple[int, int] | None = None,
    mode: str | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    **attrs: Any,
) -> Path:
    """Import ``path`` as dataset ``name`` and return the store's path.

    Parameters
    ----------
    path : a folder of IDX or ``.npy`` files, an IDX images file, a ``.npz`` or a CSV file,
        or a folder of class folders of images.
    name : the dataset's name; it is written to ``<out>/<name>.zarr``.
    out : the folder to write to; default :func:`~dlrun.datasets.store.data_home`.
    kind : one of ``idx``, ``npz``, ``npy``, ``csv``, ``images``; default: from the path.
    overwrite : replace an existing dataset of that name.
    classes, class_names : default: ``max(y) + 1`` classes named ``"0", "1"...``.
    label_column, header : CSV only, see :func:`read_csv`.
    size, mode, test_fraction, seed : image folders only, see :func:`read_image_folder`.
    attrs : more attributes for ``write_dataset`` (``normalization``, ``source``,
        ``license``, ``description``, ``chunk_samples``).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"nothing to import at {path}: the path does not exist")
    kind = kind or detect_kind(path)
    found_names = None
    if kind != "images" and (size is not None or mode is not None or test_fraction):
        raise ConfigError("size, mode and test_fraction are options of image-folder imports "
                          "only")
    if kind == "images":
        if label_column is not None or header is not None:
            raise ConfigError("label_column and header are options of CSV imports only")
        splits, found_names = read_image_folder(path, size=size, mode=mode,
                                                test_fraction=test_fraction, seed=seed)
        attrs.setdefault("normalization", {"scale": 1 / 255, "offset": 0.0})
    elif kind == "csv":
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
    """``idx``, ``npz``, ``npy``, ``csv`` or ``images``, from the file name or the folder's
    contents (``images``: a folder whose sub-folders hold image files)."""
    if path.is_dir():
        names = [p.name for p in path.iterdir()]
        if any(is_idx_name(n) for n in names):
            return "idx"
        if any(n.endswith(".npy") for n in names):
            return "npy"
        if holds_class_folders(path):
            return "images"
        raise DataError(
            f"{path}: a folder with no IDX (*-idx3-ubyte...) or .npy files and no class "
            "folders of images; nothing to import"
        )
    lower = path.name.lower()
    if is_idx_name(lower):
        return "idx"
    if lower.endswith(".npz"):
        return "npz"
    if lower.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    raise DataError(
        f"{path}: cannot tell its format from the name; pass kind= (--kind) one of "
        f"{', '.join(KINDS)}"
    )


def import_image_folder(
    path: str | os.PathLike,
    name: str,
    *,
    size: tuple[int, int] | None = None,
    mode: str | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    **attrs: Any,
) -> Path:
    """Import a folder of class folders of images as dataset ``name``; return its path.

    See :func:`read_image_folder` for ``path``, ``size``, ``mode``, ``test_fraction`` and
    ``seed``. Pixels are stored as uint8 NCHW with normalization scale 1/255 (values in
    [0, 1] when loaded); ``class_names`` are the class folders' names. Needs Pillow
    (``pip install 'dlrun[images]'``).
    """
    return import_path(path, name=name, out=out, kind="images", overwrite=overwrite,
                       size=size, mode=mode, test_fraction=test_fraction, seed=seed, **attrs)
