import threading
import time
import tracemalloc

import numpy as np
import pytest

import dlrun.datasets.loader as loader_module
from dlrun.datasets import Loader, open_dataset, write_dataset
from dlrun.errors import ConfigError, DataError

N = 50  # the toy train split: 50 samples in chunks of 7 (the last one 1)


def numpy_data(n=N):
    x = np.arange(n * 3).reshape(n, 3)  # row i is [3i, 3i+1, 3i+2]
    return x, np.arange(n)


@pytest.fixture(params=["numpy", "zarr"])
def data(request, toy):
    """(x, y) whose sample index can be read back from x: in memory, or the toy store."""
    if request.param == "numpy":
        return numpy_data()
    return open_dataset(toy[0]).arrays("train")


def sample_ids(x, y, batches):
    """The sample indices of the batches, checking every x row still sits with its label."""
    x_all, y_all = (a[:] for a in (x, y))
    ids = []
    for xb, yb in batches:
        for row, label in zip(xb, yb, strict=True):
            i = int(np.flatnonzero((x_all == row).all(axis=tuple(range(1, x_all.ndim))))[0])
            assert y_all[i] == label
            ids.append(i)
    return ids


def test_every_sample_once_per_epoch(data):
    x, y = data
    loader = Loader(x, y, 8, seed=3)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == 7  # 6 full batches + 2 left over
    assert [len(b[0]) for b in batches] == [8] * 6 + [2]
    assert sorted(sample_ids(x, y, batches)) == list(range(N))


def test_deterministic_per_seed_and_epoch(data):
    x, y = data

    def order(seed, epoch):
        return sample_ids(x, y, Loader(x, y, 8, seed=seed).epoch(epoch))

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)
    assert order(0, 1) != sorted(order(0, 1))


def test_no_shuffle_is_in_order(data):
    x, y = data
    assert sample_ids(x, y, Loader(x, y, 8, shuffle=False).epoch(5)) == list(range(N))


def test_drop_last(data):
    x, y = data
    loader = Loader(x, y, 8, drop_last=True)
    batches = list(loader.epoch(0))
    assert len(loader) == len(batches) == 6
    assert all(len(xb) == len(yb) == 8 for xb, yb in batches)


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_workers_are_disjoint_and_cover_everything(data, n_workers):
    x, y = data
    seen = []
    for i in range(n_workers):
        loader = Loader(x, y, 4, seed=7, worker=(i, n_workers))
        ids = sample_ids(x, y, loader.epoch(2))
        assert len(ids) == loader.num_samples
        seen.append(set(ids))
    assert sum(len(s) for s in seen) == N
    assert set().union(*seen) == set(range(N))


def test_zarr_worker_gets_whole_chunks(toy):
    x, y = open_dataset(toy[0]).arrays("train")
    ids = sample_ids(x, y, Loader(x, y, 4, worker=(1, 3)).epoch(0))
    assert sorted(ids) == [i for c in (1, 4, 7) for i in range(7 * c, min(7 * c + 7, N))]


def test_zarr_reads_chunk_by_chunk(toy, monkeypatch):
    """Every read is one chunk, each read once an epoch; a batch holds a chunk's samples
    and at most the few carried over from the chunk before."""
    x, y = open_dataset(toy[0]).arrays("train")
    reads = []
    original = loader_module.read_chunk

    def read_chunk(arr, index, **kwargs):
        reads.append(index)
        return original(arr, index, **kwargs)

    monkeypatch.setattr(loader_module, "read_chunk", read_chunk)
    batches = list(Loader(x, y, 7, seed=1, window=1).epoch(0))
    assert sorted(reads) == sorted(2 * list(range(8)))  # x and y, every chunk once
    assert all(len({i // 7 for i in sample_ids(x, y, [b])}) <= 2 for b in batches)


def test_zarr_window_mixes_chunks(toy):
    x, y = open_dataset(toy[0]).arrays("train")
    batches = list(Loader(x, y, 14, seed=0, window=4).epoch(0))
    ids = sample_ids(x, y, batches)
    assert sorted(ids) == list(range(N))
    assert len({i // 7 for i in ids[:14]}) > 2


def test_dataset_loader_normalizes(toy):
    ds = open_dataset(toy[0])
    x, y = ds.split("train")
    batches = list(ds.loader("train", 16, seed=0).epoch(0))
    xb = np.concatenate([b[0] for b in batches])
    yb = np.concatenate([b[1] for b in batches])
    assert xb.dtype == np.float32 and yb.dtype == np.int64
    order = np.argsort(xb[:, 0, 0, 0])
    np.testing.assert_array_equal(xb[order], x)
    np.testing.assert_array_equal(yb[order], y)


def test_transform_and_lists():
    loader = Loader(
        [[1], [2], [3]], [0, 1, 0], 2, shuffle=False, transform=lambda xb, yb: (xb * 10, yb)
    )
    assert [xb.tolist() for xb, _ in loader.epoch(0)] == [[[10], [20]], [[30]]]


def test_bad_arguments(toy):
    x, y = numpy_data()
    with pytest.raises(DataError, match="50 samples but y 49"):
        Loader(x, y[:-1], 8)
    with pytest.raises(ConfigError, match="batch_size=0"):
        Loader(x, y, 0)
    with pytest.raises(ConfigError, match="worker=\\(2, 2\\)"):
        Loader(x, y, 8, worker=(2, 2))
    with pytest.raises(ConfigError, match="numbered from 0"):
        Loader(x, y, 8).epoch(-1)
    with pytest.raises(ConfigError, match="prefetch=-1"):
        Loader(x, y, 8, prefetch=-1)


@pytest.mark.parametrize("n_workers", [2, 8, 9, 20, 60])
def test_zarr_workers_balanced_even_with_more_workers_than_chunks(toy, n_workers):
    """8 chunks: up to 8 workers get whole chunks; more split the samples in equal ranges."""
    x, y = open_dataset(toy[0]).arrays("train")
    seen = []
    for i in range(n_workers):
        ids = sample_ids(x, y, Loader(x, y, 3, seed=2, worker=(i, n_workers)).epoch(1))
        seen.append(ids)
    assert sorted(i for ids in seen for i in ids) == list(range(N))
    sizes = [len(ids) for ids in seen]
    assert max(sizes) - min(sizes) <= (7 if n_workers <= 8 else 1), sizes


def test_drop_last_per_worker(toy):
    x, y = open_dataset(toy[0]).arrays("train")
    for i in range(3):
        loader = Loader(x, y, 4, worker=(i, 3), drop_last=True)
        sizes = [len(xb) for xb, _ in loader.epoch(0)]
        assert sizes == [4] * (loader.num_samples // 4) == [4] * len(loader)


def test_prefetch_does_not_change_the_order(toy):
    x, y = open_dataset(toy[0]).arrays("train")
    orders = [
        sample_ids(x, y, Loader(x, y, 5, seed=4, window=3, prefetch=p).epoch(2)) for p in (0, 1, 3)
    ]
    assert orders[0] == orders[1] == orders[2]


def test_background_error_reaches_the_consumer():
    def items():
        yield 1
        raise DataError("chunk 3 of array 'x' is missing")

    got = []
    with pytest.raises(DataError, match="chunk 3 of array 'x' is missing"):
        for item in loader_module.in_background(items(), 1):
            got.append(item)
    assert got == [1]


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "dlrun-loader-prefetch"]


def test_abandoned_epoch_stops_its_thread(toy):
    x, y = open_dataset(toy[0]).arrays("train")
    loader = Loader(x, y, 2, prefetch=1)
    for _ in range(3):
        batches = loader.epoch(0)
        next(batches)
        assert len(prefetch_threads()) == 1
        del batches  # abandoned after one batch
        deadline = time.monotonic() + 5
        while prefetch_threads() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert prefetch_threads() == []
    list(loader.epoch(1))  # and a full epoch ends its thread too
    time.sleep(0.05)
    assert prefetch_threads() == []


def test_streaming_memory_is_bounded_by_the_window(tmp_path, monkeypatch):
    """A dataset 20x larger than the window: never more than a few windows in memory,
    and never more than (prefetch + 2) windows read ahead of the consumer."""
    n, k = 4000, 100  # 40 chunks of 100 samples of 2,000 bytes: 200 kB a chunk, 8 MB in all
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 2000), dtype=np.uint8)
    path = write_dataset(tmp_path / "big.zarr", (x, np.zeros(n, np.uint8)), name="big",
                         classes=1, chunk_samples=k)
    zx, zy = open_dataset(path).arrays()
    window, prefetch = 2, 1
    window_bytes = window * k * 2000
    reads, consumed = [], [0]
    original = loader_module.read_chunk

    def read_chunk(arr, index, **kwargs):
        if arr.ndim == 2:
            reads.append(index)
            assert len(reads) - consumed[0] / k <= window * (prefetch + 2)
        return original(arr, index, **kwargs)

    monkeypatch.setattr(loader_module, "read_chunk", read_chunk)
    loader = Loader(zx, zy, 50, window=window, prefetch=prefetch, seed=0)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for xb, _ in loader.epoch(0):
            consumed[0] += len(xb)
            time.sleep(0.002)  # a consumer slower than the reader
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert consumed[0] == n and sorted(reads) == list(range(40))
    assert x.nbytes == 20 * window_bytes
    assert peak < 8 * window_bytes, f"peak {peak / 1e6:.1f} MB for a {window_bytes / 1e6} MB window"
