"""Shared by the cluster tests (fixture `h`): a small model on the shipped digits dataset, and the
single-process references the distributed runs must match."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import dlrun as dl
from dlrun.datasets import Loader, open_dataset


def digits():
    return open_dataset("digits").split("train")


def small_model(seed=0, optimizer=None, dropout=0.0):
    dl.set_seed(seed)
    layers = [dl.layers.Flatten(input_shape=(1, 8, 8)),
              dl.layers.Dense(32, activation="relu")]
    if dropout:
        layers.append(dl.layers.Dropout(dropout))
    layers.append(dl.layers.Dense(10, activation="softmax"))
    model = dl.Sequential(layers)
    model.compile(optimizer=optimizer or dl.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def train_single(model, x, y, batch_size, epochs, seed):
    """One process, the batches a single worker's Loader gives."""
    loader = Loader(x, y, batch_size, seed=seed, worker=(0, 1))
    for e in range(epochs):
        for xb, yb in loader.epoch(e):
            model.train_on_batch(xb, yb)


def train_union(model, x, y, batch_size, workers, epochs, seed):
    """One process with batch workers*batch_size: step s takes the union of every
    worker's batch s (invariant 2's reference)."""
    loaders = [Loader(x, y, batch_size, seed=seed, worker=(i, workers))
               for i in range(workers)]
    for e in range(epochs):
        for parts in zip(*(ld.epoch(e) for ld in loaders)):
            model.train_on_batch(np.concatenate([p[0] for p in parts]),
                                 np.concatenate([p[1] for p in parts]))


@contextlib.contextmanager
def ray_cluster(head_cpus: int, node_cpus: list):
    """A ray.cluster_utils.Cluster with a head of ``head_cpus`` and one node per entry of
    ``node_cpus``, joined by this process; yields (cluster, nodes). Skips the test where
    this process already joined a Ray instance."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.skip("this process already joined a Ray instance")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus,
                                                       "include_dashboard": False})
    nodes = [c.add_node(num_cpus=n) for n in node_cpus]
    ray.init(address=c.address)
    c.wait_for_nodes()
    try:
        yield c, nodes
    finally:
        ray.shutdown()
        c.shutdown()


class _Helpers:
    digits = staticmethod(digits)
    small_model = staticmethod(small_model)
    train_single = staticmethod(train_single)
    train_union = staticmethod(train_union)


@pytest.fixture(scope="session")
def make_ray_cluster():
    """:func:`ray_cluster`, for the module-scoped cluster fixtures of the test modules."""
    return ray_cluster


@pytest.fixture
def h():
    """The helpers above, for the test modules (which cannot import each other)."""
    return _Helpers
