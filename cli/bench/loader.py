"""How fast the streaming loader is, and how little memory it holds: ``dlrun data bench``
(``--samples``, ``--batch-size``, ``--window``, ``--prefetch``, ``--cores``, ``--raw``;
``--memory MB`` for the memory check), also reachable as ``dlrun bench loader``.

:func:`loader_throughput` times epochs of a 60,000 x 1 x 28 x 28 uint8 dataset on local
disk (the shipped MNIST digits repeated, so chunks compress like real images), shuffling
on, by default pinned to one core. :func:`loader_memory` streams a synthetic dataset much
larger than a memory cap in a child process and reports its peak resident memory above
what it held before the epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dlrun.datasets import FORMAT_VERSION, open_dataset, write_dataset
from dlrun.datasets.store import chunk_crc32


def mnist_sized(path: Path, n: int = 60_000) -> Path:
    """A uint8 dataset of ``n`` 1x28x28 digits: mnist-5k's, repeated."""
    x, y = open_dataset("mnist-5k").raw("train")
    reps = -(-n // len(x))
    x, y = np.concatenate([x] * reps)[:n], np.concatenate([y] * reps)[:n]
    return write_dataset(path, (x, y), name=f"mnist-{n}", classes=10,
                         normalization={"scale": 1 / 255, "offset": 0.0})


def loader_throughput(
    n: int = 60_000,
    *,
    batch_size: int = 100,
    window: int = 4,
    prefetch: int = 2,
    epochs: int = 3,
    cores: int | None = 1,
    normalize: bool = True,
    folder: str | os.PathLike | None = None,
) -> dict:
    """Samples/s of :class:`~dlrun.datasets.loader.Loader` over an MNIST-sized dataset.

    ``cores``: pin the process to that many cores for the measurement (None: leave it).
    ``normalize``: batches as training gets them (float32 x, int64 y) rather than raw.
    Returns the median and every epoch's samples/s, and the settings.
    """
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = mnist_sized(Path(tmp) / "bench.zarr", n)
        ds = open_dataset(path)
        chunk_samples = int(ds.arrays()[0].chunks[0])
        before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        if cores and before:
            os.sched_setaffinity(0, sorted(before)[:cores])
        try:
            if normalize:
                loader = ds.loader(None, batch_size, window=window, prefetch=prefetch)
            else:
                from dlrun.datasets.loader import Loader

                loader = Loader(*ds.arrays(), batch_size, window=window, prefetch=prefetch)
            rates = []
            for epoch in range(epochs + 1):  # epoch 0 warms the caches: not counted
                t = time.perf_counter()
                seen = sum(len(yb) for _, yb in loader.epoch(epoch))
                if epoch:
                    rates.append(seen / (time.perf_counter() - t))
        finally:
            if cores and before:
                os.sched_setaffinity(0, before)
    return {"samples_per_second": float(np.median(rates)), "epochs": [round(r) for r in rates],
            "samples": n, "batch_size": batch_size, "window": window, "prefetch": prefetch,
            "cores": cores, "normalize": normalize,
            "chunk_samples": chunk_samples}


def write_synthetic(path: Path, n: int, sample_bytes: int, chunk_samples: int) -> Path:
    """A dlrun dataset of ``n`` random uint8 samples, written chunk by chunk (never whole)."""
    import zarr
    from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

    root = zarr.open_group(path, mode="w", zarr_format=3)
    rng = np.random.default_rng(0)
    arrays = {}
    for key, shape in (("x", (n, sample_bytes)), ("y", (n,))):
        arrays[key] = root.create_array(
            key, shape=shape, dtype=np.uint8, chunks=(chunk_samples, *shape[1:]),
            serializer=BytesCodec(), compressors=[ZstdCodec(level=1), Crc32cCodec()])
    digests = {k: hashlib.sha256() for k in arrays}
    crcs: dict[str, list[int]] = {k: [] for k in arrays}
    for lo in range(0, n, chunk_samples):
        hi = min(lo + chunk_samples, n)
        chunk = {"x": rng.integers(0, 256, (hi - lo, sample_bytes), dtype=np.uint8),
                 "y": rng.integers(0, 10, hi - lo).astype(np.uint8)}
        for key, a in chunk.items():
            arrays[key][lo:hi] = a
            digests[key].update(a.tobytes())
            crcs[key].append(chunk_crc32(a))
    for key, arr in arrays.items():
        arr.attrs["chunk_crc32"] = crcs[key]
    root.attrs.update(dlrun_format=FORMAT_VERSION, name="synthetic", task="classification",
                      classes=10, class_names=[str(c) for c in range(10)],
                      input_shape=[sample_bytes], x_dtype="uint8",
                      normalization={"scale": 1.0, "offset": 0.0}, source="random",
                      license="CC0", splits=[],
                      checksums={k: d.hexdigest() for k, d in digests.items()})
    root.attrs["complete"] = True
    return path


_CHILD = """
import json, sys, time
from dlrun.datasets import open_dataset

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

path, window, prefetch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ds = open_dataset(path)
loader = ds.loader(None, 100, window=window, prefetch=prefetch)
next(iter(ds.loader(None, 100, window=1, prefetch=0).epoch(0)))  # warm zarr's pools
before = rss("VmRSS:")
t = time.perf_counter()
seen = sum(len(yb) for _, yb in loader.epoch(0))
print(json.dumps({"samples": seen, "seconds": time.perf_counter() - t,
                  "rss_before": before, "rss_peak": rss("VmHWM:")}))
"""


def loader_memory(
    cap_mb: float = 64, *, factor: int = 4, chunk_mb: float = 1.0, window: int = 4,
    prefetch: int = 2, folder: str | os.PathLike | None = None,
) -> dict:
    """Stream a dataset ``factor`` times larger than ``cap_mb`` in a child process.

    Returns the dataset's size, the window's, and the child's peak resident memory above
    its resident memory before the epoch (``growth_mb``), which should stay near
    ``(window * (prefetch + 2))`` chunks and far below the cap.
    """
    sample_bytes = 4096
    chunk_samples = max(1, int(chunk_mb * 1e6) // sample_bytes)
    n = int(cap_mb * 1e6 * factor) // sample_bytes
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = write_synthetic(Path(tmp) / "big.zarr", n, sample_bytes, chunk_samples)
        out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(window),
                              str(prefetch)], capture_output=True, text=True, check=True)
    child = json.loads(out.stdout)
    growth = (child["rss_peak"] - child["rss_before"]) / 1e6
    return {"cap_mb": cap_mb, "dataset_mb": n * sample_bytes / 1e6,
            "window_mb": window * chunk_samples * sample_bytes / 1e6, "prefetch": prefetch,
            "growth_mb": round(growth, 1), "samples": child["samples"],
            "samples_per_second": round(child["samples"] / child["seconds"])}
