"""IDX files, the format of MNIST and its kin (``train-images-idx3-ubyte[.gz]``...): read
one, write one, and pair a folder's images and labels files into splits."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np

from dlrun.errors import DataError

# IDX type codes: the third byte of the magic number.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def is_idx_name(name: str) -> bool:
    """Whether a file name is an IDX file's (``...-idx3-ubyte``, optionally ``.gz``)."""
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


def _idx_role(name: str) -> tuple[str, str] | None:
    """(split, "x" or "y") from a name like ``t10k-images-idx3-ubyte.gz``; None if unknown."""
    lower = name.lower()
    if not is_idx_name(lower):
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
