"""Data-parallel training with parameter averaging, on Ray actors (or in-process).

Each round the driver puts the current weights (and, with ``optimizer_state="average"``,
the optimizer state) into the object store once; every worker copies them into its replica,
trains ``average_every`` local steps on its own shard and returns its arrays and sample
count; the driver averages them, weighted by samples, in place into the model's own
buffers (:func:`dlrun.cluster.averaging.average_into`). Workers are visited in index order
and each one's batches depend only on (seed, epoch, worker), so a run is deterministic for a
seed and a worker count.

A worker that dies is replaced and the round is redone from the last averaged weights; a
round in which a worker returns NaN or infinite arrays is rejected and redone (and after
``max_retries`` the run stops, keeping the last good checkpoint).

This module is the only place that wraps :class:`~dlrun.cluster.worker.Worker` in
``ray.remote``. It never calls ``ray.init`` itself; :func:`start_local_ray` does, when the
user asks for local workers (``dlrun train --workers N`` without an address).
"""
from __future__ import annotations

import math
import os
import tempfile
import time
import warnings

import numpy as np

from dlrun.cluster.averaging import average_into, scratch_for
from dlrun.cluster.worker import (OPTIMIZER_STATES, Worker, _plain, flatten_optimizer_state,
                                  flatten_weights, map_arrays, model_spec)
from dlrun.errors import ConfigError, DlrunError

LR_SCALINGS = ("none", "linear")
ON_LOST = ("wait", "continue")
WARN_AVERAGE_EVERY = 20


class ClusterError(DlrunError, RuntimeError):
    """Distributed training cannot go on (no Ray, lost workers, poisoned rounds)."""


# -- the Ray instance ------------------------------------------------------------------------
def start_local_ray(num_cpus: int | None = None) -> str:
    """Start a private local Ray instance (no dashboard) for this process; returns its temp
    folder. A fresh temp folder makes it immune to a stale ``ray_current_cluster`` file
    left by a head that died without ``ray stop``."""
    import ray

    from dlrun.ops.threads import available_cores

    temp = tempfile.mkdtemp(prefix="dlrun-ray-")
    ray.init(address="local", num_cpus=num_cpus or available_cores(),
             include_dashboard=False, _temp_dir=temp, log_to_driver=True,
             configure_logging=False)
    return temp


def _token_available() -> bool:
    """A token where Ray looks for one: ``RAY_AUTH_TOKEN``, else the file
    ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token``. (Only whether it exists;
    dlrun never reads it, Ray does.)"""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return os.path.isfile(path)


def _enable_token_auth() -> None:
    """Token mode for this process, as Ray's own ``address='auto'`` path switches it on
    (the mode is cached by Ray's config, so setting the variable alone is not enough)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:              # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


TOKEN_HELP = ("set RAY_AUTH_TOKEN to the cluster's token (or RAY_AUTH_TOKEN_PATH to a file "
              "holding it, or copy the head's ~/.ray/auth_token here), or run with "
              "--address auto on a node of the cluster; dlrun never turns Ray's "
              "authentication off")


def _probe(address: str, timeout_s: float = 5.0) -> str:
    """Open a GCS client on the cluster at ``address``, as ``ray.init`` does first, sending
    the token this process would send (if any): 'auth' if the cluster refuses it for want
    of the right token, 'unreachable' if nothing answers, else 'ok' (also when this Ray
    lacks these internals: then ``ray.init`` decides). ``ray.init`` itself retries a
    refused token for ~20 s and then only says it could not connect."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
        from ray._raylet import InnerGcsClient
        from ray.exceptions import AuthenticationError, RpcError
    except ImportError:
        return "ok"
    try:
        gcs = canonicalize_bootstrap_address(address)
    except Exception:                    # noqa: BLE001 - ray.init reports a bad address
        return "ok"
    if gcs is None:
        return "ok"
    try:
        InnerGcsClient.standalone(gcs, None, int(timeout_s * 1000))
    except AuthenticationError:
        return "auth"
    except RpcError as e:
        return "unreachable" if "timed out" in str(e).lower() else "ok"
    except Exception:                    # noqa: BLE001 - anything else: ray.init decides
        return "ok"
    return "ok"


def connect_ray(address: str) -> None:
    """Join a running Ray cluster at ``address`` ('auto', 'HOST:PORT' or 'ray://...').

    Ray's token authentication stays on. With ``address='auto'`` Ray finds the cluster's
    token itself; with an explicit address it would not send it (and fail after ~20 s), so
    when a token is at hand (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` is unset, token mode is switched on for
    this process, as ``auto`` would. A cluster that refuses the connection for want of
    the right token is reported at once (:class:`ClusterError`, saying how to pass it).
    """
    import ray

    if "RAY_AUTH_MODE" not in os.environ and _token_available():
        _enable_token_auth()
    unreachable = (f"cannot reach a Ray cluster at {address!r}{{}}; start one with `ray "
                   "start --head`, or leave out --address to use local workers")
    probe = "ok" if address.startswith("ray://") else _probe(address)
    if probe == "auth":
        mode = os.environ.get("RAY_AUTH_MODE", "token")
        found = (f"RAY_AUTH_MODE is {mode!r} here" if mode != "token"
                 else "the token found here was refused" if _token_available()
                 else "no token was found here")
        raise ClusterError(f"the Ray cluster at {address!r} requires token authentication "
                           f"and {found}: {TOKEN_HELP}")
    if probe == "unreachable":
        raise ClusterError(unreachable.format(" (no answer)"))
    try:
        ray.init(address=address, configure_logging=False)
    except ConnectionError as e:
        raise ClusterError(unreachable.format(f" ({e})")) from None
    except Exception as e:               # noqa: BLE001 - Ray raises many kinds here
        text = str(e)
        if "auth" in text.lower() or "token" in text.lower():
            raise ClusterError(f"the Ray cluster at {address!r} refused the connection: "
                               f"{text.splitlines()[0] if text else e!r}; {TOKEN_HELP}"
                               ) from None
        raise


class ray_session:
    """Ray for the length of a ``with`` block, as ``dlrun train --workers`` needs it: the
    instance this process already joined; else the cluster at ``address`` (or
    ``$RAY_ADDRESS``); else a private local one with ``num_cpus`` CPUs. Leaves (and, for a
    local one, stops) only what it started."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address, self.num_cpus = address, num_cpus
        self.started, self.temp, self.kind = False, None, None

    def __enter__(self):
        import ray

        if ray.is_initialized():
            self.kind = "running"
            return self
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address:
            connect_ray(address)
            self.kind = f"cluster at {address}"
        else:
            self.temp = start_local_ray(self.num_cpus)
            self.kind = f"local Ray instance ({self.num_cpus or 'all'} CPUs)"
        self.started = True
        return self

    def __exit__(self, *exc):
        import shutil

        import ray

        if self.started:
            ray.shutdown()
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)
        return False


# -- pools of workers ------------------------------------------------------------------------
class _InProcessPool:
    """Workers as plain objects in this process, run one after another (tests, debugging)."""

    def __init__(self, make_args: list):
        self.make_args = make_args
        self.workers = [Worker(*a) for a in make_args]

    def info(self) -> list:
        return [w.info() for w in self.workers]

    def put(self, arrays):
        return arrays

    def share(self, out) -> None:
        """(In process the arrays need no exchange.)"""

    def run(self, ref, states, k) -> list:
        out = []
        for w, s in zip(self.workers, states):
            r = w.run_round(ref, s, k)
            # copy: the worker's live arrays change in its next round
            out.append(r | {"arrays": {n: a.copy() for n, a in r["arrays"].items()}})
        return out

    def shutdown(self):
        self.workers = []


class _RayPool:
    """One Ray actor per worker."""

    def __init__(self, make_args: list, num_cpus: float, start_timeout: float = 300.0,
                 num_gpus: float = 0.0):
        import ray

        self.ray = ray
        self.start_timeout = start_timeout
        self.actor_class = ray.remote(Worker)        # the one place Worker becomes remote
        self.make_args = make_args
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.actors = [self._start(a) for a in make_args]
        infos = self.info()
        self.pids = [i["pid"] for i in infos]
        self.nodes = [i["node"] for i in infos]
        self.exchange, self.slots = None, list(range(len(make_args)))
        self.local = [False] * len(make_args)       # served through self.exchange
        self.conns = [None] * len(make_args)        # (socket, reader) of a local one
        self.serving = [None] * len(make_args)      # the ref of its serving call

    def _start(self, args):
        return self.actor_class.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                        max_concurrency=1).remote(*args)

    def info(self) -> list:
        try:
            return self.ray.get([a.info.remote() for a in self.actors],
                                timeout=self.start_timeout)
        except self.ray.exceptions.GetTimeoutError:
            cpus = self.ray.available_resources().get("CPU", 0)
            raise ClusterError(f"{len(self.actors)} workers needing {self.num_cpus:g} CPU "
                               f"each did not start within {self.start_timeout:g} s (the "
                               f"cluster has {cpus:g} CPUs free); add nodes or use fewer "
                               "--workers") from None

    def share(self, out: dict) -> None:
        """Run the workers on this node through a local channel (see :class:`_Exchange`):
        arrays in shared memory, each round's request and reply over a Unix socket. The
        others keep Ray calls and the object store."""
        here = self.ray.get_runtime_context().get_node_id()
        if not os.path.isdir("/dev/shm") or here not in self.nodes:
            return
        try:
            self.exchange = _Exchange(out, len(self.actors))
        except OSError:                      # /dev/shm full or small (a container's)
            return
        self.local = [n == here for n in self.nodes]
        for i in range(len(self.actors)):
            if self.local[i]:
                self._serve(i)

    def _serve(self, i: int) -> None:
        """Start worker ``i``'s serving loop and take its connection."""
        e, slot = self.exchange, self.slots[i]
        self.serving[i] = self.actors[i].serve.remote(e.socket_path, slot, e.average_path,
                                                      e.paths[slot], e.layout)
        self.conns[i] = e.accept(slot, self.start_timeout)

    def put(self, arrays):
        """The averaged arrays, where the workers read them: copied into the shared file
        for the workers on this node, put into the object store for the others."""
        if self.exchange is not None:
            for key, a in arrays.items():
                np.copyto(self.exchange.average[key], a)
        return None if all(self.local) else self.ray.put(arrays)

    def run(self, ref, states, k) -> list:
        """The workers' results in index order; raises _Lost naming the dead workers."""
        import json

        refs = []
        for i, (a, s) in enumerate(zip(self.actors, states)):
            if self.local[i]:
                try:
                    self.conns[i][0].sendall(json.dumps({"state": s, "k": k},
                                                        default=_plain).encode() + b"\n")
                except OSError:               # gone: its reply reads as the end, below
                    pass
                refs.append(None)
            else:
                refs.append(a.run_round.remote(ref, s, k))
        results, lost = [], []
        for i, r in enumerate(refs):
            try:
                if r is None:
                    res = self._reply(i)
                    res["arrays"] = self.exchange.own[self.slots[i]]
                else:
                    res = self.ray.get(r)
            except self.ray.exceptions.RayActorError:
                lost.append(i)
                continue
            results.append(res)
        if lost:
            raise _Lost(lost)
        return results

    def _reply(self, i: int) -> dict:
        """Worker ``i``'s answer on its socket. When the connection ends instead, its
        serving call says why: its error is raised as a Ray call's would be; a dead
        worker raises RayActorError."""
        import json

        try:
            line = self.conns[i][1].readline()
        except OSError:
            line = b""
        if line:
            return json.loads(line)
        self.ray.get(self.serving[i])
        raise self.ray.exceptions.RayActorError()     # (it returned: it is no more)

    def replace(self, i: int, timeout: float | None = None) -> int | None:
        """Start a new worker ``i``; its pid, or None if none started within ``timeout``
        seconds (default: the start timeout), for lack of room on the cluster."""
        try:
            self.ray.kill(self.actors[i], no_restart=True)
        except Exception:                    # noqa: BLE001 - already gone
            pass
        self._close(i)
        self.actors[i] = self._start(self.make_args[i])
        try:
            info = self.ray.get(self.actors[i].info.remote(),
                                timeout=timeout or self.start_timeout)
        except self.ray.exceptions.GetTimeoutError:
            return None
        self.pids[i], self.nodes[i] = info["pid"], info["node"]
        self.local[i] = (self.exchange is not None
                         and info["node"] == self.ray.get_runtime_context().get_node_id())
        if self.local[i]:
            self._serve(i)
        return self.pids[i]

    def _close(self, i: int) -> None:
        if self.conns[i] is not None:
            for c in reversed(self.conns[i]):
                c.close()
        self.conns[i] = self.serving[i] = None

    def drop(self, i: int) -> None:
        """Go on without worker ``i`` (its pending replacement is cancelled)."""
        try:
            self.ray.kill(self.actors[i], no_restart=True)
        except Exception:                    # noqa: BLE001
            pass
        self._close(i)
        del self.actors[i], self.make_args[i], self.pids[i], self.nodes[i]
        del self.slots[i], self.local[i], self.conns[i], self.serving[i]

    def shutdown(self):
        for i in range(len(self.actors)):
            self._close(i)                  # (a serving worker returns)
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:                # noqa: BLE001
                pass
        self.actors = []
        if self.exchange is not None:
            self.exchange.close()
            self.exchange = None


def _remove_orphans() -> None:
    """Remove the exchange folders of drivers that died without cleaning up (killed): the
    folder names its driver's pid, and nothing listens on its socket any more (a driver
    in another pid namespace sharing /dev/shm still does). Only this user's can go."""
    import shutil
    import socket

    for d in os.listdir("/dev/shm"):
        pid = d.split("-")[2] if d.startswith("dlrun-exchange-") else ""
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        path = os.path.join("/dev/shm", d)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                probe.connect(os.path.join(path, "socket"))
            continue                          # someone listens: alive
        except OSError:                       # refused, or no socket: orphaned
            shutil.rmtree(path, ignore_errors=True)


class _Exchange:
    """The local channel between the driver and its workers on the same node: files in
    shared memory (/dev/shm) for the arrays, a Unix socket for each round's request and
    reply. The driver copies the average once into one file; every worker copies it in
    from there, trains, writes its arrays into a file of its own (which the driver
    averages from in place) and answers with its sample count and metrics. Ray calls
    with the object store cost a put, a serialised return and a fetch per worker every
    round, and a few ms of call latency each way: ~15 ms of a ~50 ms round of the
    648k-weight MLP on 2 busy cores (BENCHMARKS.md). The driver writes only between rounds
    and a worker only in its round, so no file is read while it is written."""

    def __init__(self, out: dict, slots: int):
        import shutil
        import socket

        self._rmtree = shutil.rmtree
        _remove_orphans()
        self.dir = tempfile.mkdtemp(prefix=f"dlrun-exchange-{os.getpid()}-", dir="/dev/shm")
        self.listener = None
        try:
            self.layout = [(k, a.dtype.str, a.size) for k, a in out.items()]
            self.average_path = os.path.join(self.dir, "average")
            self.average = map_arrays(self.average_path, self.layout, create=True)
            self.paths = [os.path.join(self.dir, f"worker-{i}") for i in range(slots)]
            self.own = [map_arrays(p, self.layout, create=True) for p in self.paths]
            self.socket_path = os.path.join(self.dir, "socket")
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(self.socket_path)
            self.listener.listen(slots)
        except OSError:
            self.close()
            raise

    def accept(self, slot: int, timeout: float) -> tuple:
        """The connection of the worker serving ``slot`` (the next to connect): (socket,
        its reading file)."""
        import json

        deadline = time.monotonic() + timeout
        while True:
            self.listener.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                raise ClusterError(f"worker {slot} did not connect to the driver's socket "
                                   f"within {timeout:g} s") from None
            conn.settimeout(10.0)
            reader = conn.makefile("rb")
            try:
                hello = json.loads(reader.readline() or b"{}")
            except (OSError, ValueError):
                hello = {}
            if hello.get("slot") == slot:
                conn.settimeout(None)
                return conn, reader
            reader.close()                    # not a worker: another driver's liveness
            conn.close()                      # check (see _remove_orphans)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        self.average, self.own = None, []
        self._rmtree(self.dir, ignore_errors=True)


class _Lost(Exception):
    def __init__(self, workers):
        super().__init__(workers)
        self.workers = workers


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
    start = _restore_round(model, checkpoint_dir, initial_epoch, echo)

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
    pool = (_InProcessPool(make_args) if in_process
            else _RayPool(make_args, num_cpus, num_gpus=num_gpus))
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
                pool = trainer.pool = _RayPool(make_args, num_cpus, num_gpus=num_gpus)
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
                _save_round(model, self.checkpoint_dir, epoch, position)
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
            except _Lost as lost:
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


def _save_round(model, folder, epoch: int, position: int) -> None:
    """A checkpoint of the averaged state mid-epoch: ``folder/round`` (a checkpoint as
    :func:`dlrun.engine.models.checkpoints.save_checkpoint` writes it, each written atomically)
    and ``folder/round.json`` (where in the epoch), matched by the model's step."""
    import json
    from pathlib import Path

    from dlrun.engine.models.checkpoints import save_checkpoint

    folder = Path(folder)
    save_checkpoint(model, folder / "round", epoch)
    tmp = folder / f".round.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"epoch": epoch, "position": position, "step": model._step}))
    os.replace(tmp, folder / "round.json")


def _restore_round(model, folder, epoch: int, echo) -> int:
    """Restore a mid-epoch checkpoint of ``epoch`` from ``folder``, if there is a sound
    one; returns the batches of the epoch it had done (0: none)."""
    import json
    from pathlib import Path

    from dlrun.engine.models.checkpoints import read_checkpoint, restore_checkpoint
    from dlrun.errors import ModelFileError

    if folder is None or not (Path(folder) / "round.json").is_file():
        return 0
    folder = Path(folder)
    try:
        where = json.loads((folder / "round.json").read_text())
        if where["epoch"] != epoch:
            return 0                              # older than the epoch checkpoint
        if read_checkpoint(folder / "round")["step"] != where["step"]:
            raise ModelFileError("round.json and the round checkpoint disagree")
        restore_checkpoint(model, folder / "round")
    except (ModelFileError, OSError, ValueError, KeyError, TypeError) as e:
        echo(f"the mid-epoch checkpoint in {folder} is not usable ({e}); continuing from "
             "the last epoch's")
        return 0
    model._resume = None
    echo(f"continuing epoch {epoch + 1} after batch {where['position']} from the mid-epoch "
         "checkpoint")
    return int(where["position"])


def _logs(model, loss_sum, samples, counts) -> dict:
    logs = {"loss": loss_sum / samples if samples else math.nan}
    for m, (c, n) in zip(model.metrics, counts):
        logs[m.name] = c / n if n else 0.0
    return logs


def default_threads(workers: int) -> int:
    """Threads per local worker: the cores split evenly, at least one."""
    from dlrun.ops.threads import available_cores

    return max(1, available_cores() // workers)


__all__ = ["train_distributed", "start_local_ray", "connect_ray", "ClusterError",
           "default_threads"]
