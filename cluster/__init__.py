"""Data-parallel training on Ray: workers with their own shards, parameter averaging,
recovery from lost workers.

>>> import ray, dlrun as dl
>>> ray.init(num_cpus=4)                       # or dl.cluster.start_local_ray()
>>> dl.cluster.train_distributed(model, "mnist-5k", workers=4, average_every=5, epochs=5)

Modules: ``session`` (the Ray instance, authentication), ``worker`` (one replica and its
shard), ``pool`` and ``exchange`` (the workers and how arrays reach them), ``averaging``
(a pure numpy function), ``driver`` (the round loop), ``checkpoints`` (mid-epoch).
"""
from dlrun.cluster.averaging import average_into
from dlrun.cluster.driver import default_threads, train_distributed
from dlrun.cluster.session import connect_ray, ray_session, start_local_ray
from dlrun.cluster.worker import Worker, model_spec
from dlrun.errors import ClusterError

__all__ = ["ClusterError", "Worker", "average_into", "connect_ray", "default_threads",
           "model_spec", "ray_session", "start_local_ray", "train_distributed"]
