import numpy as np
import pytest
import zarr

from dlrun.datasets import open_dataset, write_dataset
from dlrun.datasets.pack import pack_dataset


def sorted_rows(x, y):
    """Rows with their labels in a canonical order, to compare datasets up to shuffling."""
    flat = np.column_stack([x.reshape(len(x), -1), y])
    return flat[np.lexsort(flat.T[::-1])]


def test_pack_shuffles_keeps_samples_and_chunks_a_megabyte(toy, tmp_path):
    src, _ = toy
    out = pack_dataset(src, tmp_path / "packed.zarr", seed=3, chunk_bytes=40)
    a, b = open_dataset(src), open_dataset(out)
    assert b.splits == a.splits and b.classes == a.classes
    assert b.attrs["class_names"] == ["a", "b", "c"]
    assert "shuffled (seed 3)" in b.attrs["description"]
    for split in a.splits:
        xa, ya = a.split(split)
        xb, yb = b.split(split)
        assert not np.array_equal(xa, xb)  # shuffled...
        np.testing.assert_array_equal(sorted_rows(xa, ya), sorted_rows(xb, yb))  # ...same rows
    assert b.arrays("train")[0].chunks[0] == 5  # 40 bytes of 8-byte samples
    b.verify()
    # the default: >= 1 MB chunks, here one chunk per split
    default = open_dataset(pack_dataset(src, tmp_path / "d.zarr"))
    assert default.arrays("train")[0].chunks[0] == 50


def test_pack_is_deterministic(toy, tmp_path):
    src, _ = toy
    a = open_dataset(pack_dataset(src, tmp_path / "a.zarr", seed=1)).raw("train")
    b = open_dataset(pack_dataset(src, tmp_path / "b.zarr", seed=1)).raw("train")
    c = open_dataset(pack_dataset(src, tmp_path / "c.zarr", seed=2)).raw("train")
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_pack_uint8_float_data_within_half_a_step(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32) * 3 + 1
    y = rng.integers(0, 4, 300)
    src = write_dataset(tmp_path / "f.zarr", (x, y), name="f", classes=4)
    packed = open_dataset(pack_dataset(src, tmp_path / "u.zarr", uint8=True))
    zx = packed.arrays()[0]
    assert zx.dtype == np.uint8 and zx.nbytes * 4 == x.nbytes
    xs, ys = packed.split()
    scale, offset = packed.normalization
    assert offset == pytest.approx(x.min()) and scale == pytest.approx((x.max() - x.min()) / 255)
    # every value comes back within half a quantization step (compared in sorted order)
    err = np.abs(np.sort(x, axis=None) - np.sort(xs, axis=None)).max()
    assert err <= scale / 2 + 1e-6
    np.testing.assert_array_equal(np.sort(ys), np.sort(y))


def test_pack_uint8_integers_exact(tmp_path):
    x = np.arange(-100, 100, dtype=np.int16).reshape(50, 4)
    y = np.zeros(50, np.uint8)
    src = write_dataset(tmp_path / "i.zarr", (x, y), name="i", classes=1,
                        normalization={"scale": 0.5})
    packed = open_dataset(pack_dataset(src, tmp_path / "u.zarr", uint8=True, seed=0))
    assert packed.arrays()[0].dtype == np.uint8
    np.testing.assert_array_equal(np.sort(packed.split()[0], axis=None),
                                  np.sort(x * 0.5, axis=None).astype(np.float32))


def test_pack_with_shards_keeps_few_files(toy, tmp_path):
    src, _ = toy
    out = pack_dataset(src, tmp_path / "s.zarr", chunk_bytes=8, shard_chunks=25)
    arr = zarr.open_array(out / "train" / "x", mode="r")
    assert arr.chunks[0] == 1 and arr.shards[0] == 25
    assert len(list((out / "train" / "x" / "c").rglob("*"))) <= 2 * 4  # 2 shard files (+ dirs)
    ds = open_dataset(out)
    ds.verify()
    assert len(list(ds.loader("train", 7).epoch(0))) == 8
