"""Data-parallel training with parameter averaging: the driver's side.

Each round the driver hands the current weights (and, with ``optimizer_state="average"``,
the optimizer state) to every worker; each copies them into its replica, trains
``average_every`` local steps on its own shard and returns its arrays and sample count;
the driver averages them, weighted by samples, in place into the model's own buffers
(:mod:`dlrun.cluster.rounds`). Workers are visited in index order and each one's batches
depend only on (seed, epoch, worker), so a run is deterministic for a seed and a worker
count. The epochs, callbacks and metric sums are the engine's one training loop
(:class:`dlrun.engine.models.training.Loop`), with a round as its unit.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np

from dlrun.cluster.checkpoints import restore_round
from dlrun.cluster.rounds import Rounds
from dlrun.cluster.worker import (OPTIMIZER_STATES, flatten_optimizer_state, flatten_weights,
                                  model_spec, training_labels)
from dlrun.engine.callbacks import History
from dlrun.engine.models import data
from dlrun.engine.models.data import check_class_weight
from dlrun.engine.models.training import Loop
from dlrun.errors import ClusterError, ConfigError

LR_SCALINGS = ("none", "linear")
ON_LOST = ("wait", "continue")
WARN_AVERAGE_EVERY = 20


@dataclass
class Options:
    """How a distributed run trains and recovers (see :func:`train_distributed`)."""

    workers: int = 2
    average_every: int = 5
    optimizer_state: str = "average"
    lr_scaling: str = "none"
    sync_warmup: int = 0
    seed: int = 0
    threads: int | None = None
    in_process: bool = False
    max_retries: int = 3
    checkpoint_dir: object = None
    checkpoint_every: int = 0
    on_lost: str = "wait"
    replace_timeout: float = 300.0
    device: str | None = None

    @classmethod
    def from_kwargs(cls, options: dict) -> "Options":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for distributed training; it "
                              f"takes {sorted(known)}")
        return cls(**options)

    def check(self, epochs: int, batch_size: int) -> None:
        for name, value, low in (("workers", self.workers, 1),
                                 ("average_every", self.average_every, 1),
                                 ("sync_warmup", self.sync_warmup, 0), ("epochs", epochs, 1),
                                 ("batch_size", batch_size, 1),
                                 ("max_retries", self.max_retries, 0)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, value, allowed in (("optimizer_state", self.optimizer_state,
                                      OPTIMIZER_STATES),
                                     ("lr_scaling", self.lr_scaling, LR_SCALINGS),
                                     ("on_lost", self.on_lost, ON_LOST)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got "
                                  f"{value!r}")


def train_distributed(model, dataset, *, epochs: int = 1, batch_size: int = 100,
                      validation_data=None, callbacks=None, verbose=1, class_weight=None,
                      echo=print, on_event=None, announce: bool = True,
                      **options) -> History:
    """Train ``model`` (built and compiled) data-parallel on several workers.

    Parameters
    ----------
    model : a built, compiled model; it ends with the averaged weights.
    dataset : name or path of a dlrun dataset that every worker can open (its ``train``
        split is shared out), or ``(x, y)`` arrays with ``in_process=True``.
    epochs, batch_size, callbacks, verbose, validation_data : as for ``model.fit``
        (``batch_size`` per worker); metrics come per epoch, and callbacks see a round as
        a batch, and ``params['workers']``: each worker's pid, samples, batches, threads.
    class_weight : ``{label: weight}``, or ``'balanced'`` (counted over the whole
        training split), weighing each sample's loss as ``fit`` does.
    echo, on_event : where lines of text go (the start line, faults handled); ``on_event``
        is called with each fault's line too.
    announce : print the global batch and the choices at the start (with ``verbose``).
    options : how it trains and recovers:

        - ``workers`` (2): number of workers, each with ``1/workers`` of the samples;
        - ``average_every`` (5): local steps between averages (K);
        - ``optimizer_state`` ('average'): 'average' (momentum, Adam moments averaged like
          the weights), 'reset' (zeroed every round) or 'local' (each worker keeps its own);
        - ``lr_scaling`` ('none'): or 'linear' (learning rate x workers; a constant rate);
        - ``sync_warmup`` (0): steps at the start averaged after every step, then every K
          (post-local SGD);
        - ``seed`` (0): the shards' shuffling is a function of (seed, epoch, worker);
        - ``threads``: Numba/BLAS threads per worker (default: the cores split among them);
        - ``in_process`` (False): run the workers one after another in this process;
        - ``max_retries`` (3): redos of a round before the run stops;
        - ``checkpoint_dir``, ``checkpoint_every`` (0: never): every so many rounds save
          the averaged state to ``checkpoint_dir/round``; a later run given the same folder
          continues from it mid-epoch, with the weights the uninterrupted run has;
        - ``on_lost`` ('wait'), ``replace_timeout`` (300 s): a lost worker is replaced; when
          no replacement starts in time, 'wait' stops the run (the last checkpoint is
          kept) and 'continue' goes on with the others (the lost share is skipped for the
          rest of the epoch and shared out among the others from the next one);
        - ``device``: where the workers train ('cpu', 'cuda', 'auto'; default: the
          model's own); on Ray 'cuda' gives each actor a GPU, or an equal share of the
          cluster's GPUs when there are fewer than workers.

    Ray must be running (``ray.init()``, :func:`dlrun.cluster.start_local_ray`, or
    ``dlrun train``) unless ``in_process``. Returns the History.
    """
    opts = Options.from_kwargs(options)
    opts.check(epochs, batch_size)
    _check_model_and_data(model, dataset, opts)
    resources = _resources(model, opts)
    loop = Loop(model, epochs, verbose, callbacks,
                validation=_validation(model, validation_data, batch_size))
    resume = loop.begin()            # BackupAndRestore may restore a checkpoint here
    initial_epoch = resume.epoch if resume is not None else 0
    start = restore_round(model, opts.checkpoint_dir, initial_epoch, echo)
    spec, out = _prepare(model, batch_size, opts, resources["device"])
    spec["class_weight"] = check_class_weight(
        class_weight, training_labels(dataset) if class_weight == "balanced" else None)
    rounds = Rounds(model, out, lambda n: [(i, n, spec, dataset, batch_size, opts.seed,
                                            resources["threads"]) for i in range(n)],
                    opts, resources, echo, on_event)
    try:
        loop.params["workers"] = rounds.infos
        if loop.verbose and announce:
            echo(_start_line(spec, batch_size, opts, resources["threads"]))
            if spec["class_weight"]:
                echo(f"class weights {_weights_text(spec['class_weight'])}")
        for epoch in range(initial_epoch, epochs):
            if rounds.reshard():                 # workers were dropped: share out again
                loop.params["workers"] = rounds.infos
            units = rounds.epoch(epoch, start)
            loop.params["steps"] = len(units)
            loop.run_epoch(epoch, units, extra_logs=rounds.throughput)
            start = 0
            if model.stop_training:
                break
    finally:
        rounds.shutdown()
    return loop.end()


def _validation(model, validation_data, batch_size: int):
    """What the loop evaluates after every epoch: checked ``(x, y)`` or ``(x, y, sample
    weights)``, in batches of at least 500."""
    if validation_data is None:
        return None
    vx, vy = data.check_xy(model, *validation_data[:2])
    return (vx, vy, max(batch_size, 500),
            data.sample_weights(model, vy, len(vy), *validation_data[2:]))


def _check_shippable(model) -> None:
    """Refuse what a worker cannot rebuild or feed from a dataset: Python functions (a
    user loss, a Lambda layer; a worker receives the model as JSON, which holds no code)
    and integer inputs (an Embedding's indices; workers feed float32 batches)."""
    code = [c.name for c in model.compiled_loss.loss_names if not isinstance(c, str)]
    code += [f"Lambda layer {layer.name!r}" for layer in model.layers
             if type(layer).__name__ == "Lambda"]
    if code:
        raise ConfigError(f"distributed training sends workers the model as JSON, which "
                          f"holds no Python code; model {model.name!r} has "
                          f"{', '.join(map(str, code))}: train it in one process "
                          "(model.fit without workers=)")
    if any(d.kind != "f" for d in model.input_dtypes()):
        raise ConfigError(f"distributed training feeds float32 batches; model "
                          f"{model.name!r} takes integer inputs (an Embedding): train it "
                          "in one process (model.fit without workers=)")


def _check_model_and_data(model, dataset, opts: Options) -> None:
    model.require_built()
    model.require_compiled()
    if len(model.output_names) > 1 or len(model.input_names) > 1:
        raise ConfigError(f"distributed training takes a model of one input and one output "
                          f"(a dataset holds x and y); model {model.name!r} has inputs "
                          f"{model.input_names} and outputs {model.output_names}")
    _check_shippable(model)
    if isinstance(dataset, (tuple, list)) and not opts.in_process:
        raise ConfigError("workers open the dataset themselves: give its name or a path "
                          "every node can read, not (x, y) arrays (those only work with "
                          "in_process=True); write arrays with dlrun.datasets.write_dataset")
    if opts.lr_scaling == "linear" and opts.workers > 1 \
            and model.optimizer.schedule is not None:
        raise ConfigError("lr_scaling='linear' takes a constant learning rate; this "
                          "optimizer follows a schedule: scale its initial rate instead")
    if opts.average_every > WARN_AVERAGE_EVERY:
        warnings.warn(f"average_every={opts.average_every}: workers drift apart over more "
                      f"than {WARN_AVERAGE_EVERY} local steps, and accuracy usually suffers",
                      RuntimeWarning, stacklevel=3)


def _resources(model, opts: Options) -> dict:
    """Threads per worker, the CPUs and GPUs each Ray actor asks for, and the device the
    workers compile for."""
    from dlrun.ops.threads import available_cores

    if opts.in_process:
        cluster_cpus, cluster_gpus = float(available_cores()), None
    else:
        import ray

        if not ray.is_initialized():
            raise ClusterError("Ray is not running in this process: call ray.init() (or "
                               "dlrun.cluster.start_local_ray()) first, or use "
                               "`dlrun train --workers N`, which starts it")
        cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
        cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
    num_gpus, device = _worker_gpus(opts.device or model.device or "cpu", opts.workers,
                                    cluster_gpus)
    threads = opts.threads if opts.threads is not None else \
        max(1, int(cluster_cpus // opts.workers))
    return {"threads": threads, "num_cpus": min(float(threads), cluster_cpus / opts.workers),
            "num_gpus": num_gpus, "device": device}


def _worker_gpus(device: str, workers: int, cluster_gpus: float | None) -> tuple:
    """(num_gpus per Ray actor, the device the workers compile for). ``cluster_gpus`` is
    None in process, where the device is resolved here."""
    from dlrun.engine.core.device import ray_gpus_per_worker, resolve

    if cluster_gpus is None or device not in ("cuda", "auto"):     # (an unknown name: its error)
        return 0.0, resolve(device)
    if device == "auto":
        if cluster_gpus < 1:
            return 0.0, "cpu"
        device = "cuda"
    return ray_gpus_per_worker(workers, cluster_gpus), device


def _prepare(model, batch_size: int, opts: Options, device: str) -> tuple:
    """The workers' model spec, and what is averaged: the model's weights (and optimizer
    state) packed into one buffer per dtype, so the averages land in the model itself.
    The kernels are compiled here first (see :func:`_warm_cache`)."""
    spec = model_spec(model)
    spec["device"] = device
    if opts.lr_scaling == "linear" and opts.workers > 1:
        spec["optimizer"]["config"]["learning_rate"] *= opts.workers
    out = flatten_weights(model)
    _warm_cache(model, batch_size, out)
    opt_state = flatten_optimizer_state(model)
    if opts.optimizer_state == "average":
        out |= opt_state
    return spec, out


def _warm_cache(model, batch_size: int, weights: dict) -> None:
    """Compile (and cache) the training kernels here, before the workers start, so that
    several processes never race to write Numba's cache. Runs forward and backward only,
    and puts back ``weights`` (the packed buffers), which a training forward may change
    (BatchNormalization's moving statistics)."""
    saved = {k: v.copy() for k, v in weights.items()}
    plan = model.program("train", batch_size).plan
    for buf in plan.feed.values():
        buf[...] = 0
    plan.run(seed=0)
    model.sync_to_host()                 # a model on cuda: its values come back first
    for k, v in saved.items():
        np.copyto(weights[k], v)


def _start_line(spec: dict, batch_size: int, opts: Options, threads: int) -> str:
    lr = spec["optimizer"]["config"]["learning_rate"]
    return (f"{opts.workers} workers x batch {batch_size} = global batch "
            f"{opts.workers * batch_size}; {threads} thread(s) per worker; average every "
            f"{opts.average_every} steps (sync warm-up {opts.sync_warmup}); optimizer state "
            f"{opts.optimizer_state}; lr scaling {opts.lr_scaling} (worker lr "
            f"{lr if not isinstance(lr, dict) else 'schedule'})")


def _weights_text(class_weight: dict) -> str:
    return ", ".join(f"{k}: {w:.3g}" for k, w in sorted(class_weight.items()))


def default_threads(workers: int) -> int:
    """Threads per local worker: the cores split evenly, at least one."""
    from dlrun.ops.threads import available_cores

    return max(1, available_cores() // workers)
