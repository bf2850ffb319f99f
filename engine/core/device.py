"""Devices: choosing one (``cpu``, ``cuda``, ``auto``) and keeping a model on a GPU.

``numba.cuda`` is imported only when a GPU is asked for, so ``import dlrun`` stays fast and
``NUMBA_ENABLE_CUDASIM`` can still be chosen by the caller (the simulator counts as a GPU).

On ``cuda`` a model's weights live in a :class:`DeviceStore` for as long as it trains: one
flat device buffer per dtype, every parameter a view of it (trainable ones first, so one
launch updates them all), and the optimizer's state laid out the same way. The host arrays
(``Parameter.value``, ``Optimizer.state``) stay the source of truth for everything outside
a step: reading either while the device holds newer values copies every array back first
and hands the values to the host; the next step copies them up again. So a step moves only
its batch up and a few numbers back, and ``get_weights``, ``save``, checkpoints and
callbacks see (and set) the real values.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from dlrun.errors import ConfigError

DEVICES = ("cpu", "cuda", "auto")
_STACK: list[str] = []            # devices of the enclosing ``dl.device`` blocks


# -- choosing a device ---------------------------------------------------------------------
def cuda_unusable_reason() -> str | None:
    """None when ``numba.cuda`` can run kernels here (a GPU, or the simulator), else why
    not, in one line."""
    try:
        from numba import cuda
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
        return f"numba.cuda cannot be imported ({type(e).__name__}: {e})"
    try:
        if cuda.is_available():
            return None
        error = cuda.cuda_error() if hasattr(cuda, "cuda_error") else None
    except Exception as e:  # noqa: BLE001 - any driver failure means "not usable"
        error = f"{type(e).__name__}: {e}"
    if not error:
        return "no CUDA GPU found (the driver loaded but lists no device)"
    lines = [ln.strip().rstrip(":.") for ln in str(error).splitlines() if ln.strip()]
    return lines[0] if lines else "the CUDA driver failed to start"


def resolve(name: str | None = None) -> str:
    """``'cpu'`` or ``'cuda'`` for a device name; ``None`` means the innermost
    :func:`device` block's, else ``'cpu'``. ``'auto'`` is ``'cuda'`` when a GPU is usable.
    ``'cuda'`` without a usable GPU raises a :class:`ConfigError` that says why."""
    if name is None:
        return _STACK[-1] if _STACK else "cpu"
    key = name.lower() if isinstance(name, str) else None
    if key not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; expected 'cpu', 'cuda' or 'auto'")
    if key == "cpu":
        return "cpu"
    reason = cuda_unusable_reason()
    if key == "auto":
        return "cpu" if reason else "cuda"
    if reason:
        raise ConfigError(f"device 'cuda' asked for, but no CUDA GPU is usable here "
                          f"({reason}); use device 'cpu', or 'auto' to fall back to the CPU "
                          "when there is no GPU")
    return "cuda"


@contextlib.contextmanager
def device(name: str):
    """Models compiled inside the block without ``device=`` run on this device::

        with dl.device("cuda"):
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")

    ``'auto'`` takes the GPU when one is usable; ``'cuda'`` without one raises at once.
    """
    _STACK.append(resolve(name))
    try:
        yield _STACK[-1]
    finally:
        _STACK.pop()


def describe(name: str) -> str:
    """The device for a run's start line: ``cpu``, or ``cuda (name, memory, cc)``."""
    return "cpu" if name == "cpu" else f"cuda ({cuda_status()})"


def cuda_status() -> str:
    """Whether numba.cuda can run kernels here, and on what (``dlrun info``)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "simulator (NUMBA_ENABLE_CUDASIM=1): kernels run on the CPU, slowly"
    reason = cuda_unusable_reason()
    if reason:
        return f"not usable: {reason}"
    try:
        from numba import cuda

        dev = cuda.get_current_device()
        free, total = cuda.current_context().get_memory_info()
        name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
        cc = ".".join(map(str, dev.compute_capability))
        return f"{name}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free), " \
               f"compute capability {cc}"
    except Exception as e:  # noqa: BLE001 - any driver failure means "not usable"
        return f"not usable ({type(e).__name__}: {e})"


def ray_gpus_per_worker(workers: int, cluster_gpus: float) -> float:
    """``num_gpus`` for each of ``workers`` Ray actors on a cluster with ``cluster_gpus``:
    a whole GPU each while there are enough, else an equal share (several workers then
    take turns on one GPU, each with its own CUDA context, rather than waiting forever
    for a GPU that never frees). No GPU at all is a ConfigError."""
    if cluster_gpus < 1:
        raise ConfigError(f"--device cuda with --workers {workers}: the Ray cluster has no "
                          "GPU; use --device cpu, or auto")
    if cluster_gpus >= workers:
        return 1.0
    return int(cluster_gpus) / workers


# -- a model's arrays on the GPU -----------------------------------------------------------
def _pack(cuda, arrays: list, ids: list) -> tuple[dict, dict]:
    """One zeroed flat device buffer per dtype and a view of it per array, in order."""
    sizes: dict[str, int] = {}
    for a in arrays:
        sizes[a.dtype.str] = sizes.get(a.dtype.str, 0) + a.size
    flat = {k: cuda.to_device(np.zeros(n, np.dtype(k))) for k, n in sizes.items()}
    at = dict.fromkeys(flat, 0)
    views = {}
    for key, a in zip(ids, arrays):
        k = a.dtype.str
        views[key] = flat[k][at[k]:at[k] + a.size].reshape(a.shape) if a.shape else \
            flat[k][at[k]:at[k] + 1]
        at[k] += a.size
    return flat, views


def _to_host(view, host: np.ndarray) -> None:
    if host.flags.c_contiguous and host.shape == view.shape:
        view.copy_to_host(host)
    else:
        np.copyto(host, view.copy_to_host().reshape(host.shape))


def _to_device(view, host: np.ndarray) -> None:
    view.copy_to_device(np.ascontiguousarray(host).reshape(view.shape))


class DeviceStore:
    """A model's parameters and its optimizer's state on the GPU (see the module doc).

    ``owner`` is ``'host'`` or ``'device'``: who holds the current values. While the
    device does, every parameter's ``_device`` (and the optimizer's) is this store, which
    is how a read of ``p.value`` knows to call :meth:`to_host` first.
    """

    def __init__(self, params: list, optimizer=None):
        from numba import cuda

        self.cuda = cuda
        self.params = list(params)
        self.optimizer = optimizer
        self.signature = tuple((p.id, p.trainable) for p in self.params)
        self.trainable = [p for p in self.params if p.trainable]
        order = self.trainable + [p for p in self.params if not p.trainable]
        self.flat, self.dev = _pack(cuda, [p._value for p in order], [p.id for p in order])
        # the trainable parameters' share of each flat buffer (they come first)
        self.trainable_size: dict[str, int] = {}
        for p in self.trainable:
            k = p.dtype.str
            self.trainable_size[k] = self.trainable_size.get(k, 0) + p._value.size
        self.state_flat = None        # {state name: {dtype: flat}}, made on first upload
        self.state_dev = None         # {param id: {state name: view}}
        self.owner = "host"

    # -- optimizer state -------------------------------------------------------------------
    def _state_names(self) -> list:
        probe = self.optimizer.make_state(np.zeros(1, np.float32)) if self.optimizer else {}
        return sorted(probe)

    def _make_state(self) -> None:
        self.state_flat, self.state_dev = {}, {p.id: {} for p in self.trainable}
        for name in self._state_names():
            flat, views = _pack(self.cuda, [p._value for p in self.trainable],
                                [p.id for p in self.trainable])
            self.state_flat[name] = flat
            for pid, v in views.items():
                self.state_dev[pid][name] = v

    # -- moving values ---------------------------------------------------------------------
    def to_device(self) -> None:
        """Copy every parameter (and optimizer state) up, unless the device has them."""
        if self.owner == "device":
            return
        if self.state_dev is None:
            self._make_state()
        for p in self.params:
            _to_device(self.dev[p.id], p._value)
        opt_state = self.optimizer._state if self.optimizer is not None else {}
        for p in self.trainable:
            host = opt_state.get(p.name, {})
            for name, view in self.state_dev[p.id].items():
                if name in host:        # a parameter the optimizer never updated has none
                    _to_device(view, host[name])
        self.owner = "device"
        for p in self.params:
            p._device = self
        if self.optimizer is not None:
            self.optimizer._device = self

    def to_host(self) -> None:
        """Copy every parameter (and optimizer state) back, unless the host has them; the
        host owns the values afterwards."""
        if self.owner == "host":
            return
        self.owner = "host"
        for p in self.params:
            p._device = None
        if self.optimizer is not None:
            self.optimizer._device = None
        for p in self.params:
            _to_host(self.dev[p.id], p._value)
        opt_state = self.optimizer._state if self.optimizer is not None else {}
        for p in self.trainable:
            host = opt_state.get(p.name, {})
            for name, view in self.state_dev[p.id].items():
                if name in host:
                    _to_host(view, host[name])



class DeviceUpdate:
    """What an optimizer needs to update a plan's trainable parameters on the GPU.

    ``units`` are (weights, gradients, {state name: array}) triples: one per dtype over
    the flat buffers when the plan trains exactly the store's trainable parameters (one
    launch per kernel for the whole model), else one per parameter. ``params``/``grads``
    are per parameter (clipping works per parameter), ``clipped`` their scratch twins.
    """

    def __init__(self, store: DeviceStore, params: list, grads: list, flat_grads=None):
        cuda = store.cuda
        self.store, self.params, self.grads = store, list(params), list(grads)
        self.weights = [store.dev[p.id] for p in params]
        self.flat_grads = flat_grads
        self._clip_flat, views = _pack(cuda, [np.empty(p.shape, p.dtype) for p in params],
                                       list(range(len(params))))
        self.clipped = [views[i] for i in range(len(params))]
        self.squares = cuda.to_device(np.zeros(max(1, len(params)), np.float64))

    def units(self, clipped: bool) -> list:
        """(weights, gradients, state) to update: flat per dtype when possible."""
        store = self.store
        if self.flat_grads is not None:
            grads = self._clip_flat if clipped else self.flat_grads
            return [(store.flat[k][:n], grads[k],
                     {name: flat[k] for name, flat in store.state_flat.items()})
                    for k, n in store.trainable_size.items()]
        grads = self.clipped if clipped else self.grads
        return [(w, g, store.state_dev[p.id]) for p, w, g in zip(self.params, self.weights,
                                                                    grads)]


class DeviceMetrics:
    """Counts of correct predictions made on the GPU, so a step brings back a few integers
    rather than its predictions. A metric whose kernel has no CUDA twin (or a per-output
    loss) gets what it reads copied back and is counted on the host, as on the CPU."""

    def __init__(self, cuda, metrics: list, outputs: list):
        from dlrun.engine import metrics as metrics_mod
        from dlrun.ops import counts

        twins = {metrics_mod.correct_sparse_cpu: counts.correct_sparse_cuda,
                 metrics_mod.correct_onehot_cpu: counts.correct_onehot_cuda,
                 metrics_mod.correct_binary_cpu: counts.correct_binary_cuda}
        self.metrics, self.outputs = list(metrics), list(outputs)
        self.kernels = [twins.get(getattr(m, "kernel", None)) for m in self.metrics]
        self.out = cuda.to_device(np.zeros(max(1, len(self.metrics)), np.int64))

    def launch(self, preds: list, ys: list) -> None:
        for slot, (k, i) in enumerate(zip(self.kernels, self.outputs)):
            if k is not None:
                k(preds[i], ys[i], self.out, slot)


def plan_options(model) -> dict:
    """``device`` and ``store`` arguments of a model's next :class:`Plan`. On cuda the
    model's :class:`DeviceStore` is made here, and made anew (with the old plans dropped)
    when its parameters or their trainable flags changed since."""
    if model.device != "cuda":
        return {"device": "cpu", "store": None}
    params = model.weights_params()
    store = model._store
    if store is None or store.signature != tuple((p.id, p.trainable) for p in params):
        if store is not None:
            store.to_host()
        model._plans = {}
        store = model._store = DeviceStore(params, model.optimizer)
    return {"device": "cuda", "store": store}


def prepare(model, entry: dict, mode: str) -> None:
    """The device parts of a plan entry: the optimizer's view of the gradients and
    weights (train), and the metric counters (train, eval)."""
    plan = entry["plan"]
    if mode == "train":
        pairs = entry["updates"]
        entry["updates"] = DeviceUpdate(plan.store, [p for p, _ in pairs],
                                        [g for _, g in pairs], plan.flat_grads)
    if mode != "predict":
        outputs = getattr(model, "_metric_outputs", None) or [0] * len(model.metrics)
        entry["counts"] = DeviceMetrics(plan.store.cuda, model.metrics, outputs)


def run_batch(model, e: dict, mode: str, samples: int) -> tuple:
    """One step of a model on the GPU, its batch already in ``plan.feed``: copy the batch
    up, run the plan (and the update), count the metrics there, and bring back the loss
    and the counts (one wait). Returns (loss, [numerator, denominator] per metric)."""
    from dlrun.ops.config import cuda_kernel

    plan = e["plan"]
    launches = cuda_kernel.launches
    plan.run(seed=model._seed + model._step)
    if mode == "train":
        model.optimizer.apply_device(e["updates"])
        model._step += 1
    preds = [plan.value(t) for t in e.get("preds", [e["pred"]])]
    ys = [plan.value(t) for t in e.get("ys", [e["y"]])]
    dm = e["counts"]
    dm.launch(preds, ys)
    plan.kernels_per_step = cuda_kernel.launches - launches
    # what comes back: the loss, the device counts, and whatever a host-counted metric reads
    wanted = [e["loss"], dm.out]
    for m, k, i in zip(dm.metrics, dm.kernels, dm.outputs):
        if k is None:
            wanted += [e["parts"][i]] if not hasattr(m, "kernel") else \
                [e.get("preds", [e["pred"]])[i], e.get("ys", [e["y"]])[i]]
    host = plan.fetch(*wanted)
    loss, device_counts, rest = float(host[0]), host[1], iter(host[2:])
    counts = []
    for slot, (m, k, i) in enumerate(zip(dm.metrics, dm.kernels, dm.outputs)):
        if k is not None:
            pred = preds[i]
            total = pred.shape[0] if m.per == "sample" else int(np.prod(pred.shape))
            counts.append((int(device_counts[slot]), total))
        elif not hasattr(m, "kernel"):          # the loss of one output
            counts.append(m.count(next(rest), samples))
        else:
            counts.append(m.count(next(rest), next(rest)))
    return loss, counts
