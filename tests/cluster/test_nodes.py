"""Losing a node mid-training, on ray.cluster_utils.Cluster (a head and two one-CPU
nodes): the lost worker's replacement starts on a node that joined, and the run ends with
the weights it would have had without the fault."""
from __future__ import annotations

import numpy as np
import pytest

from dlrun.cluster import train_distributed
from dlrun.engine.callbacks import Callback

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(make_ray_cluster):
    with make_ray_cluster(0, [1, 1]) as pair:
        yield pair


class ReplaceNode(Callback):
    """Before round ``at`` of the first epoch, a fresh one-CPU node joins and ``node``
    (with a worker on it) is removed. (Cluster.add_node must run in the main thread.)"""

    def __init__(self, cluster, node, at):
        super().__init__()
        self.cluster, self.node, self.at = cluster, node, at
        self.done = False

    def on_train_batch_begin(self, batch, logs=None):
        if not self.done and batch == self.at:
            self.done = True
            self.cluster.add_node(num_cpus=1)
            self.cluster.wait_for_nodes()
            self.cluster.remove_node(self.node)


def test_a_lost_node_is_replaced_and_its_round_redone(cluster, h, one_thread):
    c, nodes = cluster
    clean = h.small_model()
    train_distributed(clean, "digits", workers=2, average_every=3, epochs=1, batch_size=50,
                      seed=0, threads=1, verbose=0)
    model, events = h.small_model(), []
    train_distributed(model, "digits", workers=2, average_every=3, epochs=1, batch_size=50,
                      seed=0, threads=1, verbose=0, callbacks=[ReplaceNode(c, nodes[1], 2)],
                      echo=lambda s: None, on_event=events.append)
    assert events and all("was lost; replaced" in e for e in events), events
    for a, b in zip(model.get_weights(), clean.get_weights()):
        assert np.array_equal(a, b)


def test_with_on_lost_continue_a_lost_node_leaves_the_other_workers_to_go_on(cluster, h,
                                                                              one_thread):
    c, _ = cluster
    worker_nodes = [n for n in c.list_all_nodes() if n is not c.head_node]
    assert len(worker_nodes) == 2

    class RemoveNode(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2 and not getattr(self, "done", False):
                self.done = True
                c.remove_node(worker_nodes[1])     # and no node joins: no room anywhere

    events = []
    hist = train_distributed(h.small_model(), "digits", workers=2, average_every=3,
                             epochs=2, batch_size=50, seed=0, threads=1, verbose=0,
                             callbacks=[RemoveNode()], on_lost="continue",
                             replace_timeout=3, echo=lambda s: None,
                             on_event=events.append)
    assert len(events) == 1 and "continuing with 1 worker(s)" in events[0], events
    assert len(hist.history["loss"]) == 2
    assert hist.history["accuracy"][1] > hist.history["accuracy"][0]
