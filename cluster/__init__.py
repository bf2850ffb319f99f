"""Data-parallel training on Ray: workers with their own shards, parameter averaging,
recovery from lost workers.

>>> import ray, dlrun as dl
>>> ray.init(num_cpus=4)                       # or dl.cluster.start_local_ray()
>>> dl.cluster.train_distributed(model, "mnist-5k", workers=4, average_every=5, epochs=5)
"""
from dlrun.cluster.averaging import average_into
from dlrun.cluster.driver import (ClusterError, connect_ray, start_local_ray,
                                  train_distributed)
from dlrun.cluster.worker import Worker, model_spec

__all__ = ["ClusterError", "Worker", "average_into", "connect_ray", "model_spec",
           "start_local_ray", "train_distributed"]
