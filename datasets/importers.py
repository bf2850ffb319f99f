"""Turn files in common formats into dlrun zarr datasets.

Each importer reads its files into memory, checks them and writes one dataset with
:func:`~dlrun.datasets.writer.write_dataset` (atomically: a failed import leaves nothing
under the final name). Supported:

* IDX files, the MNIST format (``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``...,
  gzipped or not): a folder of them, or one images file beside its labels file. Images
  ``(N, H, W)`` become ``(N, 1, H, W)`` (NCHW).
* ``.npz`` files and folders of ``.npy`` files holding ``x`` and ``y``, or ``x_train``,
  ``y_train``, ``x_test``, ``y_test`` (and optionally ``x_validation``, ``y_validation``).
* CSV files (``.csv``, ``.csv.gz``): one row per sample, a label column and feature columns.
* A folder of images per class (``PATH/<class name>/<image files>``, or ``PATH/train/`` and
  ``PATH/test/`` each holding such class folders), read with Pillow (``pip install
  'dlrun[images]'``): see :func:`import_image_folder`.

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

from dlrun.datasets.store import data_home
from dlrun.datasets.writer import write_dataset
from dlrun.errors import ConfigError, DataError

# IDX type codes: the third byte of the magic number.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
KINDS = ("idx", "npz", "npy", "csv", "images")
# Files read by the image-folder importer; any other file (and any hidden one) is skipped.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                  ".ppm", ".pgm", ".pbm")


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
        if any(_is_idx_name(n) for n in names):
            return "idx"
        if any(n.endswith(".npy") for n in names):
            return "npy"
        if _holds_class_folders(path):
            return "images"
        raise DataError(
            f"{path}: a folder with no IDX (*-idx3-ubyte...) or .npy files and no class "
            "folders of images; nothing to import"
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


# ---------------------------------------------------------------------------------------
# Folders of images, one sub-folder per class


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and p.name != "__MACOSX"


def _is_image_file(p: Path) -> bool:
    return p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES


def _class_dirs(path: Path) -> list[Path]:
    return sorted((d for d in path.iterdir() if d.is_dir() and _visible(d)),
                  key=lambda d: d.name)


def _split_layout(path: Path) -> bool:
    """Whether ``path`` holds ``train/`` and ``test/`` folders of class folders."""
    dirs = {d.name: d for d in _class_dirs(path)}
    return set(dirs) == {"train", "test"} and all(
        any(d.is_dir() for d in dirs[s].iterdir()) for s in ("train", "test"))


def _holds_class_folders(path: Path) -> bool:
    if _split_layout(path):
        return True
    return any(any(_is_image_file(f) for f in d.iterdir()) for d in _class_dirs(path))


def _import_pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise ConfigError(
            "importing a folder of images needs Pillow: pip install 'dlrun[images]' "
            "(or pip install pillow)"
        ) from exc
    return Image


def _list_class_files(root: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image files}`` for the class folders under ``root``."""
    classes = {}
    for d in _class_dirs(root):
        files = sorted((f for f in d.iterdir() if _is_image_file(f)), key=lambda f: f.name)
        if not files:
            raise DataError(
                f"{d}: class folder {d.name!r} holds no image files "
                f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder"
            )
        classes[d.name] = files
    if not classes:
        raise DataError(f"{root}: no class folders; expected {root}/<class name>/<images>")
    return classes


def _read_image(Image, f: Path):
    try:
        img = Image.open(f)
        img.load()
    except Exception as exc:  # UnidentifiedImageError, OSError, truncated files, bombs...
        raise DataError(f"{f}: cannot read it as an image ({exc}); fix or remove the file") \
            from exc
    return img


def read_image_folder(
    path: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    mode: str | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """``({split: (x, y)}, class_names)`` from a folder of class folders of images.

    Parameters
    ----------
    path : ``PATH/<class name>/<image files>``, or ``PATH/train/<class name>/...`` and
        ``PATH/test/<class name>/...``. Classes are the sorted folder names (in the split
        layout, those of ``train/``; ``test/`` may lack some but have no others). Files
        without an image suffix (``.png``, ``.jpg``, ``.bmp``...) and hidden files or
        folders are skipped; an empty class folder or an unreadable image is an error.
    size : ``(height, width)`` to resize every image to (bilinear); default: keep them as
        they are, and all must share one size.
    mode : ``"L"`` (grey, 1 channel) or ``"RGB"`` (3 channels); default: ``"L"`` when every
        image is grey, else ``"RGB"``.
    test_fraction : in ``[0, 1)``: hold out this share of the samples, drawn at random
        with ``seed``, as the ``test`` split (not with a ``train/`` + ``test/`` layout).
    seed : the seed of that draw and of the order the samples are stored in (shuffled,
        since folders list them class by class).

    ``x`` is uint8 ``(N, C, H, W)``; ``y`` holds the class indices (uint8 up to 256
    classes). The key is ``""`` for a single split, else ``train`` and ``test``.
    """
    path = Path(path)
    if mode is not None and mode not in ("L", "RGB"):
        raise ConfigError(f"mode={mode!r}; expected 'L' (grey) or 'RGB'")
    if size is not None:
        try:
            size = (int(size[0]), int(size[1]))
        except (TypeError, ValueError, IndexError):
            size = None
        if size is None or len(size) != 2 or min(size) < 1:
            raise ConfigError("size must be (height, width), two positive integers")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction={test_fraction}; expected a number in [0, 1)")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder; expected {path}/<class name>/<images>")
    Image = _import_pillow()

    if _split_layout(path):
        if test_fraction:
            raise ConfigError(
                f"{path} already has train/ and test/ folders; leave test_fraction at 0")
        layout = {s: _list_class_files(path / s) for s in ("train", "test")}
        class_names = list(layout["train"])
        extra = sorted(set(layout["test"]) - set(class_names))
        if extra:
            raise DataError(
                f"{path / 'test'}: class folder(s) {extra} have no counterpart in "
                f"{path / 'train'}; every test class must also be a train class")
    else:
        layout = {"": _list_class_files(path)}
        class_names = list(layout[""])
    index = {c: i for i, c in enumerate(class_names)}

    # One pass to open every file: the default mode and, without ``size``, the common size.
    images: dict[str, list] = {}
    labels: dict[str, list[int]] = {}
    first: tuple[Path, tuple[int, int]] | None = None
    all_grey = True
    for split, classes in layout.items():
        images[split], labels[split] = [], []
        for c, files in classes.items():
            for f in files:
                img = _read_image(Image, f)
                all_grey = all_grey and img.mode in ("1", "L", "LA", "I", "I;16", "F")
                if size is None:
                    hw = (img.height, img.width)
                    if first is None:
                        first = (f, hw)
                    elif hw != first[1]:
                        raise DataError(
                            f"{f} is {hw[0]}x{hw[1]} (height x width) but {first[0]} is "
                            f"{first[1][0]}x{first[1][1]}; images must share one size, or "
                            "pass size=(height, width) (--size HxW) to resize them")
                images[split].append(img)
                labels[split].append(index[c])
    mode = mode or ("L" if all_grey else "RGB")

    def to_array(img) -> np.ndarray:
        if img.mode in ("I", "I;16", "F"):
            a = np.asarray(img, dtype=np.float64)  # 16-bit/float grey: scale to 0..255
            top = 65535.0 if img.mode.startswith("I") else 1.0
            img = Image.fromarray(np.clip(np.rint(a * 255 / top), 0, 255).astype(np.uint8))
        if img.mode != mode:
            img = img.convert(mode)
        if size is not None and (img.height, img.width) != size:
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        a = np.asarray(img, dtype=np.uint8)
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    label_dtype = np.uint8 if len(class_names) <= 256 else np.int64
    rng = np.random.default_rng(seed)
    splits = {}
    for split in layout:
        x = np.stack([to_array(img) for img in images[split]])
        y = np.asarray(labels[split], dtype=label_dtype)
        order = rng.permutation(len(x))
        splits[split] = (x[order], y[order])
    if test_fraction:
        x, y = splits.pop("")
        n_test = int(round(len(x) * test_fraction))
        if n_test < 1 or n_test >= len(x):
            raise ConfigError(
                f"test_fraction={test_fraction} of {len(x)} images leaves "
                f"{n_test} test and {len(x) - n_test} train samples; both need one or more")
        splits = {"train": (x[n_test:], y[n_test:]), "test": (x[:n_test], y[:n_test])}
    return splits, class_names


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
