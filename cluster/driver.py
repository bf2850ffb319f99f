"""Data-parallel training with parameter averaging: the driver's side.

Each round the driver hands the current weights (and, with ``optimizer_state="average"``,
the optimizer state) to every worker; each copies them into its replica, trains
``average_every`` local steps on its own shard and returns its arrays and sample count;
the driver averages them, weighted by samples, in place into the model's own buffers
(:func:`dlrun.cluster.averaging.average_into`). Workers are visited in index order and each
one's batches depend only on (seed, epoch, worker), so a run is deterministic for a seed
and a worker count.

A worker that dies is replaced and the round is redone from the last averaged weights; a
round in which a worker returns NaN or infinite arrays is rejected and redone (and after
``max_retries`` the run stops, keeping the last good checkpoint).
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np

from dlrun.cluster.averaging import average_into, scratch_for
from dlrun.cluster.checkpoints import restore_round, save_round
from dlrun.cluster.pool import InProcessPool, WorkersLost, RayPool
from dlrun.cluster.worker import (OPTIMIZER_STATES, flatten_optimizer_state, flatten_weights,
                                  model_spec)
from dlrun.errors import ClusterError, ConfigError

LR_SCALINGS = ("none", "linear")

ON_LOST = ("wait", "continue")

WARN_AVERAGE_EVERY = 20

# -- training --------------------------------------------------------------------------------
def train_distributed(model, dataset, *, workers: int = 2, average_every: int = 5,
                      optimizer_state: str = "average", lr_scaling: str = "none",
                      sync_warmup: int = 0, epochs: int = 1, batch_size: int = 100,
                      seed: int = 0, threads: int | None = None, validation_data=None,
                      callbacks=None, verbose=1, in_process: bool = False,
                      max_retries: int = 3, echo=print, on_event=None,
                      announce: bool = True, checkpoint_dir=None,
                      checkpoint_every: int = 0, on_lost: str = "wait",
                      replace_timeout: float = 300.0, device: str | None = None):
    """Train ``model`` (built and compiled) data-parallel on ``workers`` workers.

    Parameters
    ----------
    model : a built, compiled :class:`dlrun.Sequential`; it ends with the averaged weights.
    dataset : name or path of a dlrun dataset that every worker can open (its ``train``
        split is shared out), or ``(x, y)`` arrays with ``in_process=True``.
    workers : number of workers, each with ``1/workers`` of the samples.
    average_every : local steps between averages (K).
    optimizer_state : 'average' (momentum, Adam moments averaged like the weights),
        'reset' (zeroed every round) or 'local' (each worker keeps its own).
    lr_scaling : 'none', or 'linear' (learning rate x workers; a constant rate only).
    sync_warmup : steps at the start averaged after every step, then every K (post-local
        SGD).
    threads : Numba/BLAS threads per worker (default: the cores split among workers).
    in_process : run the workers one after another in this process instead of on Ray.
    callbacks, verbose, validation_data : as for ``model.fit``; metrics come per epoch.
    on_event : called with a line of text for every fault handled (lost worker, rejected
        round), besides ``echo``.
    announce : print the global batch and the choices at the start (with ``verbose``).
    checkpoint_dir, checkpoint_every : every ``checkpoint_every`` rounds (0: never) save
        the averaged state to ``checkpoint_dir/round`` (beside the epoch checkpoints of a
        :class:`~dlrun.callbacks.BackupAndRestore` there); a later run given the same
        folder continues from it mid-epoch, with the weights the uninterrupted run has.

    on_lost, replace_timeout : a lost worker is replaced; when no replacement starts
        within ``replace_timeout`` seconds (a node gone, no CPU free), 'wait' stops the run
        (the last checkpoint is kept) and 'continue' goes on with the other workers: the
        lost worker's share is skipped for the rest of the epoch, and from the next epoch
        the data is shared out among the workers left.

    device : where the workers train ('cpu', 'cuda', 'auto'; default: the model's own).
        On Ray, 'cuda' gives each actor a GPU, or an equal share of the cluster's GPUs when
        there are fewer than workers (they then take turns); 'auto' does so when the
        cluster has any GPU.

    Callbacks see ``params['workers']``: each worker's pid, samples, batches and threads.

    Ray must be running (``ray.init()``, :func:`start_local_ray`, or ``dlrun train``)
    unless ``in_process``. Returns the :class:`~dlrun.engine.callbacks.History`.
    """
    from dlrun.engine.callbacks import CallbackList, History, ProgressBar
    from dlrun.ops.threads import available_cores

    _check_options(workers, average_every, optimizer_state, lr_scaling, sync_warmup,
                   epochs, batch_size, max_retries)
    if on_lost not in ON_LOST:
        raise ConfigError(f"on_lost must be one of {', '.join(ON_LOST)}, got {on_lost!r}")
    model._require_built()
    model._require_compiled()
    if isinstance(dataset, (tuple, list)) and not in_process:
        raise ConfigError("workers open the dataset themselves: give its name or a path "
                          "every node can read, not (x, y) arrays (those only work with "
                          "in_process=True); write arrays with dlrun.datasets.write_dataset")
    if lr_scaling == "linear" and workers > 1 and model.optimizer.schedule is not None:
        raise ConfigError("lr_scaling='linear' takes a constant learning rate; this "
                          "optimizer follows a schedule: scale its initial rate instead")
    if not in_process:
        import ray

        if not ray.is_initialized():
            raise ClusterError("Ray is not running in this process: call ray.init() (or "
                               "dlrun.cluster.start_local_ray()) first, or use "
                               "`dlrun train --workers N`, which starts it")
        cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
        cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
    else:
        cluster_cpus = float(available_cores())
    num_gpus, worker_device = _worker_gpus(device or model.device or "cpu", workers,
                                           None if in_process else cluster_gpus)
    if threads is None:
        threads = max(1, int(cluster_cpus // workers))
    num_cpus = min(float(threads), cluster_cpus / workers)

    verbose = 1 if verbose == "auto" else int(verbose)
    history = History()
    cbs = list(callbacks or []) + [history]
    if verbose:
        cbs.append(ProgressBar(verbose))
    params = {"epochs": epochs, "steps": None, "verbose": verbose}
    cbs = CallbackList(cbs, model, params)
    model.stop_training = False
    cbs.on_train_begin()             # BackupAndRestore may restore a checkpoint here
    initial_epoch = 0
    resume, model._resume = model._resume, None
    if resume is not None:
        initial_epoch = resume["epoch"]
    start = restore_round(model, checkpoint_dir, initial_epoch, echo)

    spec = model_spec(model)
    spec["device"] = worker_device
    if lr_scaling == "linear" and workers > 1:
        spec["optimizer"]["config"]["learning_rate"] *= workers
    if average_every > WARN_AVERAGE_EVERY:
        warnings.warn(f"average_every={average_every}: workers drift apart over more than "
                      f"{WARN_AVERAGE_EVERY} local steps, and accuracy usually suffers",
                      RuntimeWarning, stacklevel=2)
    # the averages land in the model's own weights, packed into one buffer per dtype
    out = flatten_weights(model)
    _warm_cache(model, batch_size, out)
    opt_state = flatten_optimizer_state(model)
    if optimizer_state == "average":
        out |= opt_state
    scratch = scratch_for(out)

    make_args = [(i, workers, spec, dataset, batch_size, seed, threads)
                 for i in range(workers)]
    pool = (InProcessPool(make_args) if in_process
            else RayPool(make_args, num_cpus, num_gpus=num_gpus))
    try:
        infos = params["workers"] = pool.info()
        pool.share(out)                 # (after info: a serving worker takes no calls)
        per_worker = [i["batches"] for i in infos]
        lr = spec["optimizer"]["config"]["learning_rate"]
        if verbose and announce:
            echo(f"{workers} workers x batch {batch_size} = global batch "
                 f"{workers * batch_size}; {threads} thread(s) per worker; average every "
                 f"{average_every} steps (sync warm-up {sync_warmup}); optimizer state "
                 f"{optimizer_state}; lr scaling {lr_scaling} (worker lr "
                 f"{lr if not isinstance(lr, dict) else 'schedule'})")
        trainer = _Rounds(model, pool, out, scratch, optimizer_state, average_every,
                          sync_warmup, max_retries, echo, on_event)
        trainer.infos, trainer.per_worker = infos, per_worker
        trainer.checkpoint_dir, trainer.checkpoint_every = checkpoint_dir, checkpoint_every
        trainer.on_lost, trainer.replace_timeout = on_lost, replace_timeout
        for epoch in range(initial_epoch, epochs):
            if len(pool.make_args) < workers:        # workers were dropped: share out again
                workers = len(pool.make_args)
                pool.shutdown()
                make_args = [(i, workers, spec, dataset, batch_size, seed, threads)
                             for i in range(workers)]
                pool = trainer.pool = RayPool(make_args, num_cpus, num_gpus=num_gpus)
                infos = trainer.infos = params["workers"] = pool.info()
                pool.share(out)
                per_worker = trainer.per_worker = [i["batches"] for i in infos]
            rounds = trainer.plan_epoch(max(per_worker) - start)
            params["steps"] = len(rounds)
            cbs.on_epoch_begin(epoch)
            logs = trainer.run_epoch(epoch, rounds, per_worker, cbs, start)
            start = 0
            if validation_data is not None:
                val = model.evaluate(*validation_data, batch_size=max(batch_size, 500),
                                     return_dict=True)
                logs |= {"val_" + k: v for k, v in val.items()}
            model.completed_epochs = epoch + 1
            cbs.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
    finally:
        pool.shutdown()
    cbs.on_train_end()
    return history

def _check_options(workers, average_every, optimizer_state, lr_scaling, sync_warmup,
                   epochs, batch_size, max_retries):
    for name, value, low in (("workers", workers, 1), ("average_every", average_every, 1),
                             ("sync_warmup", sync_warmup, 0), ("epochs", epochs, 1),
                             ("batch_size", batch_size, 1), ("max_retries", max_retries, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if optimizer_state not in OPTIMIZER_STATES:
        raise ConfigError(f"optimizer_state must be one of {', '.join(OPTIMIZER_STATES)}; "
                          f"got {optimizer_state!r}")
    if lr_scaling not in LR_SCALINGS:
        raise ConfigError(f"lr_scaling must be one of {', '.join(LR_SCALINGS)}; got "
                          f"{lr_scaling!r}")

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

def _warm_cache(model, batch_size: int, weights: dict) -> None:
    """Compile (and cache) the training kernels here, before the workers start, so that
    several processes never race to write Numba's cache. Runs forward and backward only,
    and puts back ``weights`` (the packed buffers), which a training forward may change
    (BatchNormalization's moving statistics)."""
    saved = {k: v.copy() for k, v in weights.items()}
    e = model._plan("train", batch_size)
    for buf in e["plan"].feed.values():
        buf[...] = 0
    e["plan"].run(seed=0)
    model.sync_to_host()                 # a model on cuda: its values come back first
    for k, v in saved.items():
        np.copyto(weights[k], v)

class _Rounds:
    """The round loop of one run: schedule, broadcast, train, average, recover."""

    def __init__(self, model, pool, out, scratch, optimizer_state, k, warmup, max_retries,
                 echo, on_event):
        self.model, self.pool, self.out, self.scratch = model, pool, out, scratch
        self.optimizer_state, self.k, self.warmup = optimizer_state, k, warmup
        self.max_retries, self.echo, self.on_event = max_retries, echo, on_event
        self.round = 0
        self.events = []

    def plan_epoch(self, batches: int) -> list:
        """Local steps of each round of an epoch of ``batches`` steps (for the busiest
        worker): 1 while in the sync warm-up, K after; rounds end at the epoch's end."""
        steps, at = [], self.model.optimizer.iterations
        done = 0
        while done < batches:
            k = 1 if at < self.warmup else self.k
            k = min(k, batches - done)
            steps.append(k)
            done += k
            at += k
        return steps

    def _replace(self, i: int) -> None:
        pid = self.pool.replace(i, self.replace_timeout)
        if pid is not None:
            self.infos[i]["pid"] = pid
            self.event(f"round {self.round + 1}: worker {i} was lost; replaced (new pid "
                       f"{pid}); redoing the round from the last averaged weights")
            return
        left = len(self.pool.make_args) - 1
        if self.on_lost == "wait" or left == 0:
            raise ClusterError(f"worker {i} was lost and no replacement could start within "
                               f"{self.replace_timeout:g} s (no CPU free for it); the last "
                               "checkpoint is kept: resume with --resume when the cluster "
                               "has room")
        self.pool.drop(i)
        del self.infos[i], self.per_worker[i]
        self.event(f"round {self.round + 1}: worker {i} was lost and no replacement could "
                   f"start within {self.replace_timeout:g} s; continuing with {left} "
                   "worker(s): its share is skipped for the rest of the epoch, and shared "
                   "out among the others from the next one")

    def event(self, text: str) -> None:
        self.events.append(text)
        self.echo(text)
        if self.on_event is not None:
            self.on_event(text)

    def run_epoch(self, epoch, rounds, per_worker, cbs, start=0) -> dict:
        model, opt = self.model, self.model.optimizer
        t_epoch = time.perf_counter()
        samples, loss_sum = 0, 0.0
        counts = [[0, 0] for _ in model.metrics]
        worker_rates, overheads = [], []
        position = start
        for r, k in enumerate(rounds):
            cbs.on_train_batch_begin(r)
            state = {"epoch": epoch, "position": position, "step": model._step,
                     "iterations": opt.iterations, "optimizer_state": self.optimizer_state}
            t0 = time.perf_counter()
            results = self._round(state, k)
            wall = time.perf_counter() - t0
            busiest = max(res["seconds"] for res in results)
            overheads.append(wall - busiest)
            for res in results:
                samples += res["samples"]
                loss_sum += res["loss_sum"]
                for acc, (c, n) in zip(counts, res["counts"]):
                    acc[0] += c
                    acc[1] += n
                if res["samples"]:
                    worker_rates.append(res["samples"] / res["seconds"])
            position += k
            model._step += k
            opt.iterations += k
            self.round += 1
            if (self.checkpoint_every and self.round % self.checkpoint_every == 0
                    and position < max(self.per_worker)):
                save_round(model, self.checkpoint_dir, epoch, position)
            cbs.on_train_batch_end(r, _logs(model, loss_sum, samples, counts))
        seconds = time.perf_counter() - t_epoch
        logs = _logs(model, loss_sum, samples, counts)
        logs |= {"samples_per_s": samples / seconds,
                 "worker_samples_per_s": float(np.mean(worker_rates)) if worker_rates else 0.0,
                 "round_overhead_ms": 1e3 * float(np.mean(overheads)) if overheads else 0.0}
        return logs

    def _round(self, state, k) -> list:
        """One round, redone after a lost worker or a non-finite contribution."""
        for attempt in range(self.max_retries + 1):
            states = [state | {"position": min(state["position"], n)}
                      for n in self.per_worker]
            ref = self.pool.put(self.out)
            try:
                results = self.pool.run(ref, states, k)
            except WorkersLost as lost:
                for i in sorted(lost.workers, reverse=True):
                    self._replace(i)
                continue
            finally:
                del ref
            bad = average_into(self.out, [res["arrays"] for res in results],
                               [res["samples"] for res in results], self.scratch)
            if not bad:
                return results
            self.event(f"round {self.round + 1}: worker(s) {bad} returned NaN or infinite "
                       "weights; the round is rejected and redone from the last averaged "
                       "weights")
        raise ClusterError(f"round {self.round + 1} failed {self.max_retries + 1} times "
                           f"(lost workers or NaN weights; see above); stopping. The last "
                           "good checkpoint is kept; try a smaller learning rate")

def _logs(model, loss_sum, samples, counts) -> dict:
    logs = {"loss": loss_sum / samples if samples else math.nan}
    for m, (c, n) in zip(model.metrics, counts):
        logs[m.name] = c / n if n else 0.0
    return logs

def default_threads(workers: int) -> int:
    """Threads per local worker: the cores split evenly, at least one."""
    from dlrun.ops.threads import available_cores

    return max(1, available_cores() // workers)
