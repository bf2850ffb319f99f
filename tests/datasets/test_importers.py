"""Every importer: a round trip through a dlrun dataset, and its bad inputs refused."""

import gzip

import numpy as np
import pytest

from dlrun.datasets import open_dataset
from dlrun.datasets.importers import import_path, read_idx, write_idx
from dlrun.errors import ConfigError, DataError

RNG = np.random.default_rng(5)


def images(n, h=4, w=3):
    return RNG.integers(0, 256, (n, h, w), dtype=np.uint8)


def labels(n, classes=10):
    return RNG.integers(0, classes, n).astype(np.uint8)


def mnist_folder(folder, n_train=30, n_test=12, gz=True):
    folder.mkdir(exist_ok=True)
    ext = ".gz" if gz else ""
    data = {"train": (images(n_train), labels(n_train)), "test": (images(n_test), labels(n_test))}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", data[split][0])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", data[split][1])
    return data


@pytest.mark.parametrize("dtype", ["uint8", "int8", ">i2", "int32", "float32", "float64"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, dtype, gz):
    a = (RNG.standard_normal((5, 3, 2)) * 50).astype(dtype)
    path = write_idx(tmp_path / ("a-idx3-ubyte" + (".gz" if gz else "")), a)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=") and back.dtype.isnative
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize("gz", [False, True])
def test_import_idx_folder(tmp_path, gz):
    data = mnist_folder(tmp_path / "raw", gz=gz)
    path = import_path(tmp_path / "raw", name="mini", out=tmp_path / "ds")
    assert path == tmp_path / "ds" / "mini.zarr"
    ds = open_dataset(path)
    assert ds.splits == ["train", "test"] and ds.input_shape == (1, 4, 3) and ds.classes == 10
    assert ds.normalization == (1 / 255, 0.0)
    for split, (x, y) in data.items():
        zx, zy = ds.arrays(split)
        np.testing.assert_array_equal(zx[:], x[:, None])
        np.testing.assert_array_equal(zy[:], y)
    ds.verify()


def test_import_one_idx_images_file_finds_its_labels(tmp_path):
    data = mnist_folder(tmp_path / "raw", gz=False)
    path = import_path(tmp_path / "raw" / "t10k-images-idx3-ubyte", name="t", out=tmp_path)
    ds = open_dataset(path)
    assert ds.splits == []
    np.testing.assert_array_equal(ds.arrays()[1][:], data["test"][1])


def test_idx_bad_files(tmp_path):
    mnist_folder(tmp_path / "raw", gz=False)
    f = tmp_path / "raw" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: IDX header says \\(30, 4, 3\\)"):
        import_path(tmp_path / "raw", name="bad", out=tmp_path / "ds")
    f.write_bytes(b"\x12\x34" + f.read_bytes())
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(f)
    g = tmp_path / "raw" / "t10k-labels-idx1-ubyte"
    g.write_bytes(gzip.compress(g.read_bytes())[:-20])
    with pytest.raises(DataError, match="cannot read it as an IDX file"):
        read_idx(g)
    (tmp_path / "raw" / "train-labels-idx1-ubyte").unlink()
    f.unlink()
    (tmp_path / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="test split has no labels"):
        import_path(tmp_path / "raw", name="bad", out=tmp_path / "ds")
    assert not (tmp_path / "ds").exists() or list((tmp_path / "ds").iterdir()) == []


def test_import_npz_splits_and_flat(tmp_path):
    x_tr, y_tr, x_te, y_te = images(20), labels(20, 3), images(6), labels(6, 3)
    np.savez(tmp_path / "s.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    ds = open_dataset(import_path(tmp_path / "s.npz", name="s", out=tmp_path))
    assert ds.splits == ["train", "test"] and ds.classes == 3
    np.testing.assert_array_equal(ds.arrays("test")[0][:], x_te)
    np.savez_compressed(tmp_path / "f.npz", x=x_tr.astype(np.float32), y=y_tr)
    ds = open_dataset(import_path(tmp_path / "f.npz", name="f", out=tmp_path, classes=5))
    assert ds.splits == [] and ds.classes == 5
    np.testing.assert_array_equal(ds.split()[0], x_tr.astype(np.float32))


def test_import_npy_folder(tmp_path):
    (tmp_path / "arrays").mkdir()
    x, y = RNG.standard_normal((9, 7)), labels(9, 2)
    np.save(tmp_path / "arrays" / "x.npy", x)
    np.save(tmp_path / "arrays" / "y.npy", y)
    ds = open_dataset(import_path(tmp_path / "arrays", name="a", out=tmp_path))
    np.testing.assert_array_equal(ds.arrays()[0][:], x)
    np.testing.assert_array_equal(ds.arrays()[1][:], y)


def test_npz_refuses_pickles_and_unknown_keys(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, int))
    with pytest.raises(DataError, match="object arrays are refused"):
        import_path(tmp_path / "o.npz", name="o", out=tmp_path)
    np.savez(tmp_path / "k.npz", data=np.zeros(3), target=np.zeros(3))
    with pytest.raises(DataError, match="arrays \\['data', 'target'\\]; expected 'x' and 'y'"):
        import_path(tmp_path / "k.npz", name="k", out=tmp_path)


def test_import_csv_with_header_and_label_name(tmp_path):
    f = tmp_path / "iris.csv"
    f.write_text("a,b,species\n1.5,2,setosa\n3,4.25,virginica\n5,6,setosa\n")
    ds = open_dataset(import_path(f, name="iris", out=tmp_path, label_column="species"))
    assert ds.attrs["class_names"] == ["setosa", "virginica"] and ds.classes == 2
    x, y = ds.split()
    np.testing.assert_array_equal(x, np.array([[1.5, 2], [3, 4.25], [5, 6]], np.float32))
    assert y.tolist() == [0, 1, 0]


def test_import_csv_mnist_style(tmp_path):
    """No header, label first, pixels 0..255: stored as uint8; gzipped works too."""
    rows = np.column_stack([labels(8), images(8, 2, 2).reshape(8, 4)])
    f = tmp_path / "m.csv.gz"
    with gzip.open(f, "wt") as out:
        out.writelines(",".join(map(str, r)) + "\n" for r in rows)
    ds = open_dataset(import_path(f, name="m", out=tmp_path, classes=10))
    zx, zy = ds.arrays()
    assert zx.dtype == np.uint8 and ds.classes == 10
    np.testing.assert_array_equal(zx[:], rows[:, 1:])
    np.testing.assert_array_equal(zy[:], rows[:, 0])


def test_import_csv_label_last_by_index_and_forced_header(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("1,2,0\n3,4,1\n5,6,1\n")
    ds = open_dataset(import_path(f, name="d", out=tmp_path, label_column=-1, header=True))
    x, y = ds.split()
    assert x.tolist() == [[3, 4], [5, 6]] and y.tolist() == [1, 1]


def test_csv_bad_input(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("label,a\n1,2\n0,oops\n")
    with pytest.raises(DataError, match="every feature must be a number"):
        import_path(f, name="bad", out=tmp_path)
    with pytest.raises(ConfigError, match="no column named 'kind'"):
        import_path(f, name="bad", out=tmp_path, label_column="kind")
    with pytest.raises(ConfigError, match="label column 5 out of range"):
        import_path(f, name="bad", out=tmp_path, label_column=5)
    f.write_text("")
    with pytest.raises(DataError, match="empty"):
        import_path(f, name="bad", out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_import_refuses_bad_names_and_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        import_path(tmp_path / "none.csv", name="x", out=tmp_path)
    (tmp_path / "a.txt").write_text("1,2")
    with pytest.raises(DataError, match="cannot tell its format"):
        import_path(tmp_path / "a.txt", name="x", out=tmp_path)
    with pytest.raises(ConfigError, match="dataset name '../x'"):
        import_path(tmp_path / "a.txt", name="../x", out=tmp_path, kind="csv")


def test_import_default_goes_to_data_home_and_opens_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("DLRUN_DATA", str(tmp_path / "home"))
    mnist_folder(tmp_path / "raw")
    path = import_path(tmp_path / "raw", name="mini")
    assert path == tmp_path / "home" / "mini.zarr"
    assert open_dataset("mini").path == path
    with pytest.raises(DataError, match="already exists"):
        import_path(tmp_path / "raw", name="mini")
    import_path(tmp_path / "raw", name="mini", overwrite=True)
