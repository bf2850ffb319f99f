"""Mini-batches over samples in memory (numpy) or on disk (zarr), reshuffled every epoch.

numpy arrays: a full permutation of the samples per epoch.

zarr arrays are streamed, never loaded whole: each epoch shuffles the order of the
worker's chunks, reads them ``window`` at a time and shuffles the samples of the chunks
read together. A background thread reads the next windows while the current one is
consumed (at most ``prefetch`` windows wait in a queue), so the memory held is a few
windows, whatever the size of the dataset. Samples left over at the end of a window (fewer
than a batch) are carried into the next, so every batch is full except perhaps the last of
the epoch, which ``drop_last`` drops. Every chunk read is checked against the CRC-32
recorded when it was written: a deleted chunk file (which zarr reads back as zeros) or a
changed one raises a DataError naming the dataset, array and chunk.

Worker ``i`` of ``n`` (``worker=(i, n)``) gets chunks ``i, i + n, i + 2n...`` of a zarr
array (when there are fewer chunks than workers, the ``i``-th of ``n`` equal sample ranges
instead), or the ``i``-th of ``n`` contiguous blocks of a numpy array: the workers' samples
are disjoint, their counts differ by at most a chunk, and together every sample is seen
once per epoch.

The order is a function of (seed, epoch, worker) only: ``loader.epoch(3)`` gives the same
batches every time it is called, and a different order from ``loader.epoch(4)``. The
background thread does not change it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import zarr

from dlrun.datasets.store import chunk_checksums, describe, read_chunk
from dlrun.errors import ConfigError, DataError

Batch = tuple[np.ndarray, np.ndarray]
Piece = tuple[int, int, int]  # (chunk index, first sample, end sample), absolute indices


class Loader:
    """Batches ``(xb, yb)`` of ``batch_size`` samples from ``x`` and ``y``.

    Parameters
    ----------
    x, y : numpy arrays, or zarr arrays chunked along the first (sample) axis, of equal length.
    batch_size : samples per batch.
    shuffle : reshuffle every epoch; False: samples in order.
    seed : the order is determined by (seed, epoch, worker).
    drop_last : drop the last batch of an epoch when it is smaller than ``batch_size``.
    worker : ``(i, n)``: only the share of worker ``i`` of ``n``; None: everything.
    window : zarr only: how many chunks are read and shuffled together.
    prefetch : zarr only: windows read ahead by a background thread (0: read in the
        caller's thread).
    transform : applied to every batch, ``transform(xb, yb) -> (xb, yb)``.
    cache : zarr only: keep the chunks read (checked, read-only) for the next epochs,
        which then read nothing from storage (and need no background thread): for a
        share that fits in memory and is read every epoch, as a cluster worker's is.

    Examples
    --------
    >>> loader = Loader(x, y, 100, seed=0)
    >>> for epoch in range(20):
    ...     for xb, yb in loader.epoch(epoch):
    ...         model.train_on_batch(xb, yb)
    """

    def __init__(
        self,
        x,
        y,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        worker: tuple[int, int] | None = None,
        window: int = 4,
        prefetch: int = 2,
        transform: Callable[[np.ndarray, np.ndarray], Batch] | None = None,
        cache: bool = False,
    ):
        self.in_memory = not isinstance(x, zarr.Array)
        if self.in_memory:
            x, y = np.asarray(x), np.asarray(y)
        if x.shape[0] != y.shape[0]:  # (zarr arrays have no len())
            raise DataError(
                f"x holds {x.shape[0]} samples but y {y.shape[0]} labels; give one label per sample"
            )
        if batch_size < 1 or window < 1 or prefetch < 0:
            raise ConfigError(
                f"batch_size={batch_size}, window={window}, prefetch={prefetch}; batch_size "
                "and window must be positive integers, prefetch >= 0"
            )
        i, n = worker or (0, 1)
        if not 0 <= i < n:
            raise ConfigError(f"worker={worker}; expected (i, n) with 0 <= i < n")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.worker, self.window, self.prefetch = (i, n), window, prefetch
        self.transform = transform
        self._cache = {} if cache else None
        if self.in_memory:
            self.lo, self.hi = i * len(x) // n, (i + 1) * len(x) // n
            self.num_samples = self.hi - self.lo
        else:
            self.pieces = worker_pieces(x.shape[0], x.chunks[0], i, n)
            self.num_samples = sum(hi - lo for _, lo, hi in self.pieces)
            self._checksums = (chunk_checksums(x), chunk_checksums(y))

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of epoch ``epoch`` (an integer >= 0).

        Abandoning the iterator (``break``, or dropping it) stops the background thread.
        """
        if epoch < 0:
            raise ConfigError(f"epoch={epoch}; epochs are numbered from 0")
        rng = np.random.default_rng([self.seed, epoch, self.worker[0]])
        if self.in_memory:
            batches = self._memory_batches(rng)
        else:
            windows = self._windows(rng)
            if self.prefetch and not self._all_cached():
                windows = in_background(windows, self.prefetch)
            batches = self._chunk_batches(windows)
        if self.transform is None:
            return batches
        return (self.transform(xb, yb) for xb, yb in batches)

    def _all_cached(self) -> bool:
        """Every chunk of the share is in the cache: reading is a copy in memory, and a
        background thread would only take CPU from the training (~4% of a 1-thread
        worker on 2 busy cores, measured)."""
        return self._cache is not None and len(self._cache) == 2 * len(self.pieces)

    def _memory_batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        order = np.arange(self.lo, self.hi)
        if self.shuffle:
            order = rng.permutation(order)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for s in range(0, stop, self.batch_size):
            idx = order[s : s + self.batch_size]
            yield self.x[idx], self.y[idx]

    def _chunk_batches(self, windows: Iterator[Batch]) -> Iterator[Batch]:
        B = self.batch_size
        carry = None  # samples short of a batch at the end of a window, for the next one
        for xw, yw in windows:
            if carry is not None:
                xw, yw = np.concatenate([carry[0], xw]), np.concatenate([carry[1], yw])
            full = len(xw) - len(xw) % B
            for s in range(0, full, B):
                yield xw[s : s + B], yw[s : s + B]
            carry = (xw[full:].copy(), yw[full:].copy()) if full < len(xw) else None
            del xw, yw  # let the window go before the next one is taken
        if carry is not None and not self.drop_last:
            yield carry

    def _windows(self, rng: np.random.Generator) -> Iterator[Batch]:
        """The worker's pieces of chunks, ``window`` at a time, each window shuffled."""
        pieces = self.pieces
        if self.shuffle:
            pieces = [pieces[j] for j in rng.permutation(len(pieces))]
        for start in range(0, len(pieces), self.window):
            group = pieces[start : start + self.window]
            xw = _concat([self._read(self.x, 0, piece) for piece in group])
            yw = _concat([self._read(self.y, 1, piece) for piece in group])
            if self.shuffle:
                p = rng.permutation(len(xw))
                xw, yw = xw[p], yw[p]
            yield xw, yw

    def _read(self, arr: zarr.Array, which: int, piece: Piece) -> np.ndarray:
        c, lo, hi = piece
        k = self.x.chunks[0]
        raw = None if self._cache is None else self._cache.get((which, c))
        if raw is None:
            raw = read_chunk(arr, c, where=describe(arr), chunk_samples=k,
                             checksums=self._checksums[which])
            if self._cache is not None:
                raw.flags.writeable = False  # batches may be views of it
                self._cache[(which, c)] = raw
        return raw[lo - c * k : hi - c * k]


def worker_pieces(num_samples: int, chunk_samples: int, i: int, n: int) -> list[Piece]:
    """The pieces of chunks worker ``i`` of ``n`` reads: whole chunks ``i, i + n...``, or,
    with fewer chunks than workers, its ``1/n``-th of the samples cut at chunk boundaries.
    """
    k, total = chunk_samples, -(-num_samples // chunk_samples)
    if total >= n:
        return [(c, c * k, min((c + 1) * k, num_samples)) for c in range(i, total, n)]
    lo, hi = i * num_samples // n, (i + 1) * num_samples // n
    return [
        (c, max(lo, c * k), min(hi, (c + 1) * k)) for c in range(lo // k, -(-hi // k)) if lo < hi
    ]


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _Failed:
    """An exception raised in the background thread, to be raised again in the consumer."""

    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


def in_background(items: Iterator, depth: int) -> Iterator:
    """``items``, produced by a background thread at most ``depth`` ahead of the consumer.

    An exception in the thread is raised again in the consumer. Closing this generator
    (or dropping it) stops the thread within a read.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Failed(exc))
        finally:
            if hasattr(items, "close"):
                items.close()

    thread = threading.Thread(target=produce, name="dlrun-loader-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
            del item
    finally:
        stop.set()
        thread.join(timeout=5)
