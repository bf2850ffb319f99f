"""Workers on the driver's node and elsewhere at once, on ray.cluster_utils.Cluster (a
head with one CPU, which the driver joins, and a second one-CPU node): the worker beside
the driver exchanges through shared memory and a socket, the other through Ray calls and
the object store, and the run gives the weights of the same workers run in process."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.cluster import train_distributed

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(make_ray_cluster):
    # a head with one CPU (the driver's node) and a second one-CPU node
    with make_ray_cluster(1, [1]) as (c, _):
        yield c


def test_one_local_and_one_remote_worker_train_as_in_process(cluster, h, monkeypatch,
                                                             one_thread):
    from dlrun.cluster import pool

    share, local = pool.RayPool.share, []

    def recorded(self, out):
        share(self, out)
        local.append(list(self.local))
    monkeypatch.setattr(pool.RayPool, "share", recorded)
    x, y = h.digits()
    ref = h.small_model(optimizer=dl.optimizers.Adam(learning_rate=0.01))
    train_distributed(ref, (x, y), workers=2, average_every=3, epochs=2, batch_size=50,
                      seed=3, threads=1, verbose=0, in_process=True)
    model = h.small_model(optimizer=dl.optimizers.Adam(learning_rate=0.01))
    train_distributed(model, "digits", workers=2, average_every=3, epochs=2, batch_size=50,
                      seed=3, threads=1, verbose=0)
    assert local and sorted(local[0]) == [False, True], local
    for a, b in zip(model.get_weights(), ref.get_weights()):
        assert np.array_equal(a, b)
