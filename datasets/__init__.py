"""Datasets: the zarr dataset format, the batch loader, and the datasets shipped with dlrun.

>>> from dlrun.datasets import open_dataset, Loader
>>> ds = open_dataset("mnist-5k")
>>> x, y = ds.split("train")          # float32 (4000, 1, 28, 28) in [0, 1], int64 labels
>>> for xb, yb in Loader(x, y, 100).epoch(0): ...
"""

from dlrun.datasets.loader import Loader
from dlrun.datasets.reader import Dataset, open_dataset
from dlrun.datasets.store import FORMAT_VERSION, list_datasets
from dlrun.datasets.writer import write_dataset

__all__ = ["FORMAT_VERSION", "Dataset", "Loader", "list_datasets", "open_dataset", "write_dataset"]
