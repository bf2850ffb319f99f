import numpy as np
import pytest

from dlrun.datasets import write_dataset


def toy_splits(n_train=50, n_test=20, classes=3):
    """Samples whose pixels encode their own index, so a batch can be checked against y."""
    rng = np.random.default_rng(1)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = np.zeros((n, 1, 2, 2), dtype=np.uint16)
        x[:, 0, 0, 0] = np.arange(n)
        x[:, 0, 1, 1] = rng.integers(0, 1000, n)
        splits[split] = (x, rng.integers(0, classes, n).astype(np.uint8))
    return splits


@pytest.fixture
def toy(tmp_path):
    """A small valid dataset on disk: 50 train / 20 test samples, 7 samples a chunk."""
    splits = toy_splits()
    path = write_dataset(
        tmp_path / "toy.zarr",
        splits,
        name="toy",
        classes=3,
        class_names=["a", "b", "c"],
        normalization={"scale": 0.5, "offset": -1.0},
        source="made up",
        license="CC0",
        chunk_samples=7,
    )
    return path, splits
