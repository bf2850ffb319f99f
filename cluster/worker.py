"""One data-parallel worker: a model replica and its own shard of the training data.

A plain class, usable in-process (the tests do) and wrapped by ``ray.remote`` in one place
only (:mod:`dlrun.cluster.driver`). It receives the model as JSON (:func:`model_spec`) and
the dataset as a name or path, never as arrays, so nothing large travels from the driver
but the weights of each round.
"""
from __future__ import annotations

import os
import time

import numpy as np

from dlrun.cluster.exchange import map_arrays, plain_number
from dlrun.engine.core.backend import pack
from dlrun.engine.metrics import Tally
from dlrun.engine.models.data import check_class_weight, class_weights
from dlrun.errors import ConfigError

OPTIMIZER_STATES = ("average", "reset", "local")


def model_spec(model) -> dict:
    """What a worker needs to rebuild ``model`` (built and compiled): JSON only."""
    model.require_built()
    model.require_compiled()
    return {"class_name": type(model).__name__, "config": model.get_config(),
            "compile": model.compile_config(),
            "optimizer": {"class_name": type(model.optimizer).__name__,
                          "config": model.optimizer.get_config()},
            "seed": model.training.seed, "device": model.device or "cpu"}


def build_model(spec: dict):
    """The model :func:`model_spec` described, with fresh weights (set them next)."""
    from dlrun.engine import optimizers
    from dlrun.engine.models.saving import model_from_config

    cfg = spec["config"]
    model = model_from_config(spec.get("class_name", "Sequential"), cfg)
    model.build(cfg["input_shape"])
    opt = optimizers.from_config(spec["optimizer"]["class_name"], spec["optimizer"]["config"])
    model.compile(optimizer=opt, device=spec.get("device", "cpu"), **spec["compile"])
    model.training.seed = int(spec["seed"])
    return model


# a split with at least this many chunks per worker is streamed chunk by chunk; a smaller
# one (the shipped datasets) is read whole and cut into equal sample ranges, which keeps the
# workers' shares equal where whole chunks could not
STREAM_CHUNKS_PER_WORKER = 4
# a streamed share of at most this many bytes (as stored) is kept in memory after the
# first epoch: decoding and checking the same chunks again every epoch cost ~5% of a
# worker's time (MLP 784-500-500-10, 1 thread)
CACHE_BYTES = 1 << 30


def training_labels(data) -> np.ndarray:
    """All the labels of the training split (what ``class_weight='balanced'`` counts)."""
    from dlrun.datasets import open_dataset

    if isinstance(data, (tuple, list)):
        return np.asarray(data[1])
    ds = open_dataset(data)
    return ds.arrays("train" if "train" in ds.splits else None)[1][:]


def load_shard(data, index: int, count: int, batch_size: int, seed: int):
    """The Loader over worker ``index`` of ``count``'s share of the training split.

    ``data`` is a dataset name or path (read by the worker itself: the path must be
    readable on every node), or ``(x, y)`` arrays for in-process use. A large split is
    streamed: the worker reads only its own chunks (``i, i + n, ...``); a small one is
    read whole and the worker keeps its ``1/n``-th.
    """
    from dlrun.datasets import Loader, open_dataset
    from dlrun.datasets.store import n_chunks

    if isinstance(data, (tuple, list)):
        x, y = data
    else:
        ds = open_dataset(data)
        split = "train" if "train" in ds.splits else None
        zx, zy = ds.arrays(split)
        if n_chunks(zx) >= STREAM_CHUNKS_PER_WORKER * count:
            share = (zx.nbytes + zy.nbytes) / count
            return ds.loader(split, batch_size, seed=seed, worker=(index, count),
                             prefetch=1, cache=share <= CACHE_BYTES)
        x, y = ds.split(split)
    return Loader(x, y, batch_size, seed=seed, worker=(index, count), prefetch=0)


def _packed(arrays: list) -> tuple[dict, list]:
    """``arrays`` copied into one buffer per dtype (:func:`dlrun.engine.core.backend.pack`),
    so a round moves one buffer per dtype instead of one array per weight."""
    bufs, views = pack(arrays, np.empty)
    for v, a in zip(views, arrays):
        v[...] = a
    return bufs, views


def flatten_weights(model) -> dict:
    """Move the model's weights into one buffer per dtype (``{"w<dtype>": buffer}``); the
    parameters become views of it. Plans made before hold the old arrays: they are
    dropped."""
    params = model.weights_params()
    bufs, views = _packed([p.value for p in params])
    for p, v in zip(params, views):
        p.value = v
    model.forget_programs()
    return {"w" + k: b for k, b in bufs.items()}


def flatten_optimizer_state(model) -> dict:
    """The same for the optimizer's state (``{"o<dtype>": buffer}``), in a canonical
    order (the model's parameters, then state names) that driver and workers share."""
    opt = model.optimizer
    keys = [(p.name, k) for p in model.weights_params() if p.name in opt.state
            for k in sorted(opt.state[p.name])]
    if not keys:
        return {}
    bufs, views = _packed([opt.state[n][k] for n, k in keys])
    for (n, k), v in zip(keys, views):
        opt.state[n][k] = v
    return {"o" + k: b for k, b in bufs.items()}


class Worker:
    """Trains a model replica on shard ``index`` of ``count`` for a few steps per round.

    Parameters
    ----------
    index, count : this worker's place among the workers.
    spec : the model as :func:`model_spec` describes it.
    data : dataset name or path (or ``(x, y)`` in-process).
    batch_size : samples per local step.
    seed : the shard's shuffling is a function of (seed, epoch, index).
    threads : Numba and BLAS threads of this worker (None: the cores it may use).
    """

    def __init__(self, index: int, count: int, spec: dict, data, batch_size: int,
                 seed: int = 0, threads: int | None = None):
        from dlrun.engine.losses import check_targets
        from dlrun.ops.threads import set_threads

        self.index, self.count = index, count
        self.threads = set_threads(threads)       # workers split the cores
        self.model = build_model(spec)
        # the same dropout stream as one process for worker 0, distinct ones for the others
        self.model.training.seed += index * 1_000_003
        self.loader = load_shard(data, index, count, batch_size, seed)
        if self.loader.in_memory:             # (a streamed dataset's labels are checked)
            self.loader.y = check_targets(self.model.loss, self.loader.y,
                                          self.model.output_shape)
        self.class_weight = check_class_weight(spec.get("class_weight"))
        self.params = self.model.weights_params()
        self.weights = flatten_weights(self.model)
        self.model.program("train", batch_size)      # creates the optimizer's state
        self.opt_state = flatten_optimizer_state(self.model)
        self._iter, self._pos = None, (None, 0)    # the current epoch's batches and place
        self._idx = {}
        self._average = self._own = None            # see attach

    def info(self) -> dict:
        try:
            import ray
            node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        except Exception:                    # noqa: BLE001 - no Ray here: no node
            node = None
        return {"pid": os.getpid(), "samples": self.loader.num_samples,
                "batches": len(self.loader), "threads": self.threads, "node": node}

    def attach(self, average: str | None, own: str | None, layout: list) -> None:
        """Exchange the round's arrays through files in shared memory (see
        :func:`map_arrays`) instead of the arguments and results of :meth:`run_round`:
        ``average`` is the file the driver writes the averaged arrays to, ``own`` the one
        this worker writes its arrays to after each round (None: back to arguments and
        results)."""
        self._average = map_arrays(average, layout, readonly=True) if average else None
        self._own = map_arrays(own, layout) if own else None

    def serve(self, address: str, slot: int, average: str, own: str, layout: list) -> None:
        """Run rounds as the driver asks over the Unix socket at ``address`` until it
        closes the connection, the arrays going through shared files (:meth:`attach`).

        The driver sends one JSON line per round, ``{"state": ..., "k": ...}`` (the
        arguments of :meth:`run_round`); the worker answers with one JSON line, the result
        without its arrays. A Ray call per round costs a few ms of latency each way on a
        busy machine; a local socket costs microseconds."""
        import json
        import socket

        self.attach(average, own, layout)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(address)
            conn.sendall(json.dumps({"slot": slot}).encode() + b"\n")
            for line in conn.makefile("rb"):
                msg = json.loads(line)
                res = self.run_round(None, msg["state"], msg["k"])
                del res["arrays"]
                conn.sendall(json.dumps(res, default=plain_number).encode() + b"\n")

    def run_round(self, weights: dict, state: dict, k_steps: int) -> dict:
        """Set the averaged weights (and optimizer state), train ``k_steps`` local steps,
        and report.

        ``weights`` holds the weights packed as :func:`flatten_weights` does (and, when
        the optimizer state is averaged, the state packed by
        :func:`flatten_optimizer_state`), or None to read them from the shared file (see
        :meth:`attach`); they are copied into the model's own buffers (arrays from the
        object store are read-only). ``state`` holds
        ``epoch``, ``position`` (batches of the epoch this worker has done), ``step``
        (the model's step, which seeds dropout), ``iterations`` (the optimizer's) and
        ``optimizer_state`` (average, reset or local).

        Returns a dict: ``arrays`` (the same keys, this worker's values after training;
        None when they were written to the shared file),
        ``samples``, ``steps``, ``loss_sum`` (sum of batch loss x batch size),
        ``counts`` ([correct, total] per metric), ``seconds`` (training time) and
        ``done`` (the epoch's batches are exhausted).
        """
        t0 = time.perf_counter()
        model, opt = self.model, self.model.optimizer
        if weights is None:                  # in the shared file (see attach)
            weights = self._average
        for key, buf in self.weights.items():
            np.copyto(buf, weights[key])
        mode = state.get("optimizer_state", "average")
        if mode not in OPTIMIZER_STATES:
            raise ConfigError(f"optimizer_state must be one of {OPTIMIZER_STATES}, got "
                              f"{mode!r}")
        batches = self._batches(state["epoch"], state["position"])
        model.training.step = int(state["step"])
        model.training.epoch = int(state["epoch"])      # what annealed dropout follows
        opt.iterations = int(state["iterations"])
        self._set_optimizer_state(weights, mode)
        tally, steps, done = Tally(model.metrics), 0, False
        for _ in range(k_steps):                 # fit's own step, summed as fit sums it
            try:
                xb, yb = next(batches)
            except StopIteration:
                done = True
                break
            weights = None if self.class_weight is None else \
                class_weights(yb, self.class_weight)
            tally.add_batch(model.run_batch("train", xb, yb, self._arange(len(xb)), weights))
            steps += 1
        model.sync_to_host()      # on cuda: the packed host buffers get the new values
        self._pos = (state["epoch"], state["position"] + steps)
        if not done and self._pos[1] >= len(self.loader):
            done = True
        arrays = dict(self.weights)
        if mode == "average":
            arrays |= self.opt_state
        if self._own is not None:            # the driver reads them from the shared file
            for key, a in arrays.items():
                np.copyto(self._own[key], a)
            arrays = None
        return {"arrays": arrays, "samples": tally.samples, "steps": steps,
                "loss_sum": tally.loss_sum, "counts": tally.counts,
                "seconds": time.perf_counter() - t0, "done": done, "index": self.index}

    def _set_optimizer_state(self, weights: dict, mode: str) -> None:
        opt = self.model.optimizer
        if mode == "local":
            return
        if mode == "reset":
            for p in self.params:
                for k, dst in opt.state.get(p.name, {}).items():
                    np.copyto(dst, opt.make_state(p.value)[k])
            return
        for key, buf in self.opt_state.items():
            if key in weights:
                np.copyto(buf, weights[key])

    def _batches(self, epoch: int, position: int):
        """The epoch's batches from ``position`` on; the loader's order depends only on
        (seed, epoch, worker), so a replaced worker takes up exactly where one left off."""
        if self._iter is None or self._pos != (epoch, position):
            it = self.loader.epoch(epoch)
            for _ in range(position):
                next(it, None)
            self._iter = it
        return self._iter

    def _arange(self, n: int) -> np.ndarray:
        if n not in self._idx:
            self._idx[n] = np.arange(n)
        return self._idx[n]
