import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import dlrun.datasets.store as store
import dlrun.datasets.writer as writer
from dlrun.datasets import FORMAT_VERSION, open_dataset, write_dataset
from dlrun.errors import DataError

# --------------------------------------------------------------------------------------
# Round trip


def test_round_trip(toy):
    path, splits = toy
    ds = open_dataset(path)
    assert ds.name == "toy" and ds.splits == ["train", "test"]
    assert ds.classes == 3 and ds.input_shape == (1, 2, 2)
    for split, (x, y) in splits.items():
        xs, ys = ds.split(split)
        assert xs.dtype == np.float32 and ys.dtype == np.int64
        np.testing.assert_array_equal(xs, (x * 0.5 - 1.0).astype(np.float32))
        np.testing.assert_array_equal(ys, y)
        zx, zy = ds.arrays(split)
        assert zx.dtype == np.uint16 and zy.dtype == np.uint8
        np.testing.assert_array_equal(zx[:], x)


def test_attributes(toy):
    path, splits = toy
    attrs = open_dataset(str(path)).attrs
    x_train = splits["train"][0]
    assert attrs["dlrun_format"] == FORMAT_VERSION == 1
    assert attrs["task"] == "classification"
    assert attrs["class_names"] == ["a", "b", "c"]
    assert attrs["input_shape"] == [1, 2, 2] and attrs["x_dtype"] == "uint16"
    assert attrs["normalization"] == {"scale": 0.5, "offset": -1.0}
    assert attrs["source"] == "made up" and attrs["license"] == "CC0"
    assert attrs["splits"] == ["train", "test"]
    digest = hashlib.sha256(x_train.astype("<u2").tobytes()).hexdigest()
    assert attrs["checksums"]["train/x"] == digest
    assert set(attrs["checksums"]) == {"train/x", "train/y", "test/x", "test/y"}


def test_layout_on_disk(toy):
    """Chunked along the sample axis only, x and y alike, CRC-32C after zstd."""
    path, _ = toy
    group = zarr.open_group(path, mode="r")
    x, y = group["train/x"], group["train/y"]
    assert x.chunks == (7, 1, 2, 2) and y.chunks == (7,)
    names = [type(c).__name__ for c in x.metadata.codecs]
    assert names == ["BytesCodec", "ZstdCodec", "Crc32cCodec"]


def test_no_splits_and_defaults(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 1, 0, 1, 1, 0])
    ds = open_dataset(write_dataset(tmp_path / "flat.zarr", (x, y), name="flat", classes=2))
    assert ds.splits == [] and ds.attrs["class_names"] == ["0", "1"]
    assert ds.attrs["checksums"].keys() == {"x", "y"}
    xs, ys = ds.split()
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)
    # one chunk when the data are small
    assert ds.arrays()[0].chunks == (6, 2)


def test_default_chunks_about_a_megabyte(tmp_path):
    x = np.zeros((3000, 1000), dtype=np.uint8)  # 3 MB
    y = np.zeros(3000, dtype=np.uint8)
    ds = open_dataset(write_dataset(tmp_path / "big.zarr", (x, y), name="big", classes=1))
    zx, zy = ds.arrays()
    assert zx.chunks == (1000, 1000) and zy.chunks == (1000,)


def test_mnist_scale_matches_dividing_by_255(tmp_path):
    x = np.arange(256, dtype=np.uint8).reshape(256, 1)
    path = write_dataset(
        tmp_path / "s.zarr",
        (x, np.zeros(256, np.int8)),
        name="s",
        classes=1,
        normalization={"scale": 1 / 255},
    )
    xs, _ = open_dataset(path).split()
    np.testing.assert_array_equal(xs, (x / 255.0).astype(np.float32))


# --------------------------------------------------------------------------------------
# Writing: validation and atomicity


def test_write_refuses_bad_input(tmp_path):
    x, y = np.zeros((4, 2)), np.array([0, 1, 2, 1])
    with pytest.raises(DataError, match="label 2 at sample 2"):
        write_dataset(tmp_path / "a.zarr", (x, y), name="a", classes=2)
    with pytest.raises(DataError, match="one label per sample"):
        write_dataset(tmp_path / "a.zarr", (x, y[:3]), name="a", classes=3)
    with pytest.raises(DataError, match="must be integers"):
        write_dataset(tmp_path / "a.zarr", (x, y.astype(float)), name="a", classes=3)
    with pytest.raises(DataError, match="'train' and 'test'"):
        write_dataset(tmp_path / "a.zarr", {"training": (x, y)}, name="a", classes=3)
    with pytest.raises(DataError, match="class_names"):
        write_dataset(tmp_path / "a.zarr", (x, y), name="a", classes=3, class_names=["a"])
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_existing_path(toy, tmp_path):
    path, splits = toy
    with pytest.raises(DataError, match="overwrite=True"):
        write_dataset(path, splits, name="toy", classes=3)
    other = tmp_path / "not-a-dataset"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a dlrun dataset"):
        write_dataset(other, splits, name="toy", classes=3, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"


def test_overwrite_replaces(toy):
    path, splits = toy
    x, y = splits["train"]
    write_dataset(path, (x, y), name="toy2", classes=3, overwrite=True)
    ds = open_dataset(path)
    assert ds.name == "toy2" and ds.splits == []
    assert [p.name for p in path.parent.iterdir()] == [path.name]


class Boom(RuntimeError):
    pass


def fail_on_third_array(monkeypatch):
    calls = []
    original = writer._write_array

    def write_array(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise Boom("disk full")
        original(*args, **kwargs)

    monkeypatch.setattr(writer, "_write_array", write_array)


def test_failed_write_leaves_nothing(tmp_path, toy, monkeypatch):
    _, splits = toy
    target = tmp_path / "new" / "data.zarr"
    target.parent.mkdir()
    fail_on_third_array(monkeypatch)
    with pytest.raises(Boom):
        write_dataset(target, splits, name="new", classes=3)
    assert list(target.parent.iterdir()) == []


def test_failed_overwrite_keeps_the_old_dataset(toy, monkeypatch):
    path, splits = toy
    fail_on_third_array(monkeypatch)
    with pytest.raises(Boom):
        write_dataset(path, splits, name="replacement", classes=3, overwrite=True)
    assert open_dataset(path).name == "toy"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


# --------------------------------------------------------------------------------------
# Opening and loading: every bad store is refused with a DataError naming what and where


def raw_store(path: Path, attrs: dict | None, arrays: dict[str, np.ndarray]) -> Path:
    """A store written with zarr alone: ``arrays`` keyed like "train/x"."""
    root = zarr.open_group(path, mode="w", zarr_format=3)
    for key, a in arrays.items():
        split, _, name = key.rpartition("/")
        group = root.require_group(split) if split else root
        group.create_array(name, data=a)
    if attrs is not None:
        root.attrs.update(attrs)
    return path


GOOD_ATTRS = {
    "dlrun_format": 1, "name": "raw", "classes": 3, "splits": ["train", "test"], "complete": True
}
X4, Y4 = np.zeros((4, 2), np.uint8), np.array([0, 1, 2, 0], np.uint8)
GOOD_ARRAYS = {"train/x": X4, "train/y": Y4, "test/x": X4, "test/y": Y4}


def test_raw_zarr_store_opens(tmp_path):
    """The format needs no dlrun to write: zarr and the required attributes suffice."""
    ds = open_dataset(raw_store(tmp_path / "raw.zarr", GOOD_ATTRS, GOOD_ARRAYS))
    x, y = ds.split("test")
    assert x.shape == (4, 2) and y.tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize(
    "attrs, arrays, match",
    [
        (None, GOOD_ARRAYS, "not a dlrun dataset.*no 'dlrun_format'"),
        ({**GOOD_ATTRS, "dlrun_format": 2}, GOOD_ARRAYS, "format 2, newer .*upgrade dlrun"),
        ({**GOOD_ATTRS, "dlrun_format": "1"}, GOOD_ARRAYS, "'dlrun_format' is '1'"),
        ({**GOOD_ATTRS, "classes": None}, GOOD_ARRAYS, "'classes' is None"),
        (GOOD_ATTRS, {**GOOD_ARRAYS, "test/x": None}, "array 'test/x' is missing"),
        (GOOD_ATTRS, {**GOOD_ARRAYS, "train/y": None}, "array 'train/y' is missing"),
        (GOOD_ATTRS, {**GOOD_ARRAYS, "train/y": Y4[:3]}, "'train/y' has shape \\(3,\\).*4 samples"),
        (GOOD_ATTRS, {**GOOD_ARRAYS, "train/x": np.array(list("abcd"))}, "'train/x' has dtype"),
        (GOOD_ATTRS, {**GOOD_ARRAYS, "test/y": Y4 * 1.0}, "'test/y' has dtype float64"),
        (GOOD_ATTRS, {**GOOD_ARRAYS, "test/x": X4[:, :1]}, "'test/x' has samples of shape"),
        ({**GOOD_ATTRS, "splits": ["train", "validation"]}, GOOD_ARRAYS, "no group 'validation'"),
    ],
)
@pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification")
def test_open_refuses(tmp_path, attrs, arrays, match):
    arrays = {k: a for k, a in arrays.items() if a is not None}
    path = raw_store(tmp_path / "bad.zarr", attrs, arrays)
    with pytest.raises(DataError, match=match) as info:
        open_dataset(path)
    assert str(path) in str(info.value)


def test_open_refuses_missing_and_non_zarr_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist.*mnist-5k"):
        open_dataset(tmp_path / "nowhere.zarr")
    with pytest.raises(DataError, match="does not exist"):
        open_dataset("mnist-50k")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="plain is not a zarr v3 group"):
        open_dataset(tmp_path / "plain")
    zarr.create_array(tmp_path / "array.zarr", data=X4)
    with pytest.raises(DataError, match="array.zarr is not a zarr v3 group"):
        open_dataset(tmp_path / "array.zarr")


def test_label_out_of_range_names_sample_and_value(tmp_path):
    y = np.array([0, 1, 2, 7, 9], np.uint8)
    arrays = {**GOOD_ARRAYS, "train/x": np.zeros((5, 2), np.uint8), "train/y": y}
    ds = open_dataset(raw_store(tmp_path / "bad.zarr", GOOD_ATTRS, arrays))
    for load in (lambda: ds.split("train"), lambda: ds.loader("train", 2)):
        with pytest.raises(DataError, match="'train/y': label 7 at sample 3 is outside \\[0, 3\\)"):
            load()
    ds.split("test")  # the other split is fine


def test_unknown_split(toy):
    ds = open_dataset(toy[0])
    with pytest.raises(DataError, match="no split 'validation'"):
        ds.split("validation")
    with pytest.raises(DataError, match="has splits"):
        ds.split()


def chunk_file(path: Path, array: str, index: int) -> Path:
    """The file of chunk ``index`` along the sample axis: c/<index>/0/0... ("/" separator)."""
    file = path / array / "c" / str(index)
    while file.is_dir():
        file = file / "0"
    return file


def flip_byte(file: Path, at: int = 10) -> None:
    data = bytearray(file.read_bytes())
    data[at] ^= 0xFF
    file.write_bytes(bytes(data))


def test_corrupt_chunk_is_refused(toy):
    path, _ = toy
    flip_byte(chunk_file(path, "train/x", 2))
    ds = open_dataset(path)  # metadata are intact
    with pytest.raises(DataError, match="array 'train/x'.*chunk 2 \\(samples 14..20\\) is corrupt"):
        ds.split("train")
    with pytest.raises(DataError, match="chunk 2"):
        ds.verify()
    with pytest.raises(DataError, match="array 'train/x': chunk 2.*dlrun data verify"):
        for _ in ds.loader("train", 5, shuffle=False).epoch(0):
            pass
    ds.split("test")


def test_corrupt_label_chunk_is_refused(toy):
    path, _ = toy
    flip_byte(chunk_file(path, "test/y", 1), at=0)
    with pytest.raises(DataError, match="array 'test/y'.*chunk 1"):
        open_dataset(path).split("test")


def test_deleted_chunk_is_named(toy):
    path, _ = toy
    chunk_file(path, "train/x", 3).unlink()  # zarr would read the fill value instead
    ds = open_dataset(path)
    missing = "array 'train/x': chunk 3 \\(samples 21..27\\) is missing"
    with pytest.raises(DataError, match=missing):
        ds.split("train")
    with pytest.raises(DataError, match=missing):
        for _ in ds.loader("train", 5).epoch(0):
            pass
    with pytest.raises(DataError, match=missing):
        ds.verify()


def test_deleted_chunk_without_chunk_checksums_fails_the_sha256(toy):
    path, _ = toy
    x = zarr.open_array(path / "train" / "x", mode="r+")
    del x.attrs["chunk_crc32"]
    chunk_file(path, "train/x", 0).unlink()
    ds = open_dataset(path)
    with pytest.raises(DataError, match="'train/x' does not match its recorded sha256"):
        ds.split("train")
    with pytest.raises(DataError, match="sha256"):
        ds.verify()


def test_changed_chunk_that_still_decodes_is_caught(toy):
    """A chunk rewritten through zarr (valid codec CRC, wrong numbers) fails its CRC-32."""
    path, _ = toy
    x = zarr.open_array(path / "train" / "x", mode="r+")
    x[7] = x[7] + 1  # chunk 1
    with pytest.raises(DataError, match="chunk 1 .* does not match its recorded CRC-32"):
        open_dataset(path).split("train")


def test_verify_names_every_problem(toy):
    path, _ = toy
    flip_byte(chunk_file(path, "train/x", 2))
    chunk_file(path, "train/x", 5).unlink()
    truncated = chunk_file(path, "train/y", 6)
    truncated.write_bytes(truncated.read_bytes()[:-3])
    flip_byte(chunk_file(path, "test/y", 1), at=0)
    ds = open_dataset(path)
    problems = ds.problems()
    assert len(problems) == 4, problems
    assert problems[0].startswith("array 'train/x': chunk 2 (samples 14..20) is corrupt")
    assert problems[1].startswith("array 'train/x': chunk 5 (samples 35..41) is missing")
    assert problems[2].startswith("array 'train/y': chunk 6 (samples 42..48) is corrupt")
    assert problems[3].startswith("array 'test/y': chunk 1 (samples 7..13) is corrupt")
    with pytest.raises(DataError, match="4 problem") as info:
        ds.verify()
    assert all(p in str(info.value) for p in problems)


def test_verify_names_bad_labels_by_chunk(tmp_path):
    y = np.array([0, 1, 2, 7, 9], np.uint8)
    arrays = {**GOOD_ARRAYS, "train/x": np.ones((5, 2), np.uint8), "train/y": y}
    ds = open_dataset(raw_store(tmp_path / "bad.zarr", GOOD_ATTRS, arrays))
    assert ds.problems() == [
        "array 'train/y': chunk 0: label 7 at sample 3 is outside [0, 3) "
        "(2 bad labels in the chunk)"
    ]


def test_unfinished_write_is_refused(toy):
    path, _ = toy
    root = zarr.open_group(path, mode="r+")
    del root.attrs["complete"]
    with pytest.raises(DataError, match="unfinished write.*'complete' marker"):
        open_dataset(path)


def test_complete_marker_is_written_last(tmp_path, monkeypatch):
    """Interrupted after the last array: the temporary store has no marker yet."""
    seen = {}
    original = writer._replace

    def replace(tmp, path):
        seen["attrs"] = dict(zarr.open_group(tmp, mode="r").attrs)
        original(tmp, path)

    monkeypatch.setattr(writer, "_replace", replace)
    x, y = np.zeros((4, 2), np.uint8), np.zeros(4, np.uint8)
    path = write_dataset(tmp_path / "a.zarr", (x, y), name="a", classes=1)
    assert seen["attrs"]["complete"] is True
    assert list(seen["attrs"])[-1] == "complete"
    assert open_dataset(path).attrs["complete"] is True


def test_verify_passes_on_a_good_store(toy):
    open_dataset(toy[0]).verify()


def test_missing_shipped_store_says_how_to_rebuild(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "DATA_DIR", tmp_path)
    with pytest.raises(DataError, match="build_shipped"):
        open_dataset("digits")


def test_copied_store_still_opens(toy, tmp_path):
    """A store is a plain directory: copying it moves the dataset."""
    path, _ = toy
    copy = shutil.copytree(path, tmp_path / "elsewhere" / "copy.zarr")
    assert open_dataset(copy).name == "toy"


def test_many_chunks_are_sharded(tmp_path, monkeypatch):
    """More than SHARD_CHUNKS chunks: SHARD_CHUNKS to a file; the chunk stays the unit."""
    monkeypatch.setattr(writer, "SHARD_CHUNKS", 4)
    x = np.arange(30 * 2, dtype=np.uint16).reshape(30, 2)
    y = np.arange(30) % 3
    path = write_dataset(tmp_path / "s.zarr", (x, y), name="s", classes=3, chunk_samples=3)
    ds = open_dataset(path)
    zx, zy = ds.arrays()
    assert zx.chunks == (3, 2) and zx.shards == (12, 2) and zy.shards == (12,)
    assert sorted(p.name for p in (path / "x" / "c").iterdir()) == ["0", "1", "2"]
    np.testing.assert_array_equal(ds.split()[0], x)
    ds.verify()
    small = open_dataset(write_dataset(tmp_path / "t.zarr", (x[:12], y[:12]), name="t",
                                       classes=3, chunk_samples=3))
    assert small.arrays()[0].shards is None
    # a lost shard file: each of its chunks is named
    shutil.rmtree(path / "x" / "c" / "1") if (path / "x" / "c" / "1").is_dir() else \
        (path / "x" / "c" / "1").unlink()
    problems = open_dataset(path).problems()
    assert [p.split(" (")[0] for p in problems] == [
        f"array 'x': chunk {c}" for c in (4, 5, 6, 7)]
    assert all("is missing" in p for p in problems)
