"""Mini-batches over samples in memory (numpy) or on disk (zarr), reshuffled every epoch.

numpy arrays: a full permutation of the samples per epoch.
zarr arrays: read chunk by chunk (never the whole array at once): each epoch shuffles the
order of the chunks, reads them ``window`` at a time and shuffles the samples of the
chunks read. Samples left over at the end of a window (fewer than a batch) are carried
into the next, so every batch is full except perhaps the last of the epoch.

Worker ``i`` of ``n`` (``worker=(i, n)``) gets chunks ``i, i + n, i + 2n...`` of a zarr
array, or the ``i``-th of ``n`` contiguous blocks of a numpy array: the workers' samples
are disjoint and together every sample is seen once per epoch.

The order is a function of (seed, epoch, worker) only: ``loader.epoch(3)`` gives the same
batches every time it is called, and a different order from ``loader.epoch(4)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import zarr

from dlrun.datasets.store import n_chunks, read_chunk
from dlrun.errors import ConfigError, DataError

Batch = tuple[np.ndarray, np.ndarray]


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
    transform : applied to every batch, ``transform(xb, yb) -> (xb, yb)``.

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
        window: int = 1,
        transform: Callable[[np.ndarray, np.ndarray], Batch] | None = None,
    ):
        self.in_memory = not isinstance(x, zarr.Array)
        if self.in_memory:
            x, y = np.asarray(x), np.asarray(y)
        if x.shape[0] != y.shape[0]:  # (zarr arrays have no len())
            raise DataError(
                f"x holds {x.shape[0]} samples but y {y.shape[0]} labels; give one label per sample"
            )
        if batch_size < 1 or window < 1:
            raise ConfigError(
                f"batch_size={batch_size}, window={window}; both must be positive integers"
            )
        i, n = worker or (0, 1)
        if not 0 <= i < n:
            raise ConfigError(f"worker={worker}; expected (i, n) with 0 <= i < n")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.worker, self.window, self.transform = (i, n), window, transform
        if self.in_memory:
            self.lo, self.hi = i * len(x) // n, (i + 1) * len(x) // n
            self.num_samples = self.hi - self.lo
        else:
            total = n_chunks(x)
            if total < n:
                raise ConfigError(
                    f"{x.store_path} has {total} chunks, fewer than the {n} workers; "
                    "use fewer workers, or rewrite the dataset with smaller chunk_samples"
                )
            self.chunks = list(range(i, total, n))
            k = x.chunks[0]
            self.num_samples = sum(min(k, x.shape[0] - c * k) for c in self.chunks)

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of epoch ``epoch`` (an integer >= 0)."""
        if epoch < 0:
            raise ConfigError(f"epoch={epoch}; epochs are numbered from 0")
        rng = np.random.default_rng([self.seed, epoch, self.worker[0]])
        batches = self._memory_batches(rng) if self.in_memory else self._chunk_batches(rng)
        if self.transform is None:
            return batches
        return (self.transform(xb, yb) for xb, yb in batches)

    def _memory_batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        order = np.arange(self.lo, self.hi)
        if self.shuffle:
            order = rng.permutation(order)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for s in range(0, stop, self.batch_size):
            idx = order[s : s + self.batch_size]
            yield self.x[idx], self.y[idx]

    def _chunk_batches(self, rng: np.random.Generator) -> Iterator[Batch]:
        B = self.batch_size
        carry = None  # samples short of a batch at the end of a window, for the next one
        for xw, yw in self._windows(rng):
            if carry is not None:
                xw, yw = np.concatenate([carry[0], xw]), np.concatenate([carry[1], yw])
            full = len(xw) - len(xw) % B
            for s in range(0, full, B):
                yield xw[s : s + B], yw[s : s + B]
            carry = (xw[full:], yw[full:]) if full < len(xw) else None
        if carry is not None and not self.drop_last:
            yield carry

    def _windows(self, rng: np.random.Generator) -> Iterator[Batch]:
        """The worker's chunks, ``window`` at a time, each window's samples shuffled."""
        chunks = rng.permutation(self.chunks) if self.shuffle else self.chunks
        k = self.x.chunks[0]
        for start in range(0, len(chunks), self.window):
            group = chunks[start : start + self.window]
            xw = np.concatenate([read_chunk(self.x, c) for c in group])
            yw = np.concatenate([read_chunk(self.y, c, chunk_samples=k) for c in group])
            if self.shuffle:
                p = rng.permutation(len(xw))
                xw, yw = xw[p], yw[p]
            yield xw, yw
