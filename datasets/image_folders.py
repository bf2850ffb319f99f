"""Folders of images, one sub-folder per class (``PATH/<class name>/<image files>``, or
``PATH/train/`` and ``PATH/test/`` each holding such class folders), read with Pillow
(``pip install 'dlrun[images]'``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dlrun.errors import ConfigError, DataError

# Files read by the image-folder importer; any other file (and any hidden one) is skipped.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                  ".ppm", ".pgm", ".pbm")


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


def holds_class_folders(path: Path) -> bool:
    """Whether ``path`` holds class folders of images (or ``train/`` and ``test/`` of them)."""
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
    size = _checked_options(path, size, mode, test_fraction)
    Image = _import_pillow()
    layout, class_names = _class_layout(path, test_fraction)
    images, labels, all_grey = _open_images(Image, layout, class_names, size)
    mode = mode or ("L" if all_grey else "RGB")
    label_dtype = np.uint8 if len(class_names) <= 256 else np.int64
    rng = np.random.default_rng(seed)
    splits = {}
    for split in layout:
        x = np.stack([_to_array(Image, img, mode, size) for img in images[split]])
        y = np.asarray(labels[split], dtype=label_dtype)
        order = rng.permutation(len(x))
        splits[split] = (x[order], y[order])
    if test_fraction:
        splits = _hold_out(*splits.pop(""), test_fraction)
    return splits, class_names


def _checked_options(path: Path, size, mode: str | None, test_fraction: float):
    """``size`` as ``(height, width)`` ints (or None), after checking every option."""
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
    return size


def _class_layout(path: Path, test_fraction: float) -> tuple[dict, list[str]]:
    """``({split: {class name: files}}, class names)``: split ``""`` for a single folder
    of classes, else ``train`` and ``test``, whose classes are those of ``train``."""
    if not _split_layout(path):
        layout = {"": _list_class_files(path)}
        return layout, list(layout[""])
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
    return layout, class_names


# The modes of Pillow images with one grey channel.
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _open_images(Image, layout: dict, class_names: list[str], size):
    """``(images, labels, all grey)``: every file opened, once, split by split. Without
    ``size`` all images must share one size."""
    index = {c: i for i, c in enumerate(class_names)}
    images: dict[str, list] = {}
    labels: dict[str, list[int]] = {}
    first: tuple[Path, tuple[int, int]] | None = None
    all_grey = True
    for split, classes in layout.items():
        images[split], labels[split] = [], []
        for c, files in classes.items():
            for f in files:
                img = _read_image(Image, f)
                all_grey = all_grey and img.mode in _GREY_MODES
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
    return images, labels, all_grey


def _to_array(Image, img, mode: str, size) -> np.ndarray:
    """One image as uint8 ``(C, H, W)``: in ``mode``, resized to ``size`` if given."""
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


def _hold_out(x: np.ndarray, y: np.ndarray, test_fraction: float) -> dict:
    """``{"train", "test"}`` splits of shuffled samples: the first ``test_fraction`` of
    them are the test split."""
    n_test = int(round(len(x) * test_fraction))
    if n_test < 1 or n_test >= len(x):
        raise ConfigError(
            f"test_fraction={test_fraction} of {len(x)} images leaves "
            f"{n_test} test and {len(x) - n_test} train samples; both need one or more")
    return {"train": (x[n_test:], y[n_test:]), "test": (x[:n_test], y[:n_test])}
