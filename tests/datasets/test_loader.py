import numpy as np
import pytest

import dlrun.datasets.loader as loader_module
from dlrun.datasets import Loader, open_dataset
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
    batches = list(Loader(x, y, 7, seed=1).epoch(0))
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
    zx, zy = open_dataset(toy[0]).arrays("train")
    with pytest.raises(ConfigError, match="8 chunks, fewer than the 9 workers"):
        Loader(zx, zy, 8, worker=(0, 9))
