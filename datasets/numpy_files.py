""".npz files and folders of .npy files holding a dataset's arrays (never pickles)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlrun.errors import DataError


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
