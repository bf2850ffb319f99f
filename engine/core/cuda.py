"""The CUDA backend: a model's weights, gradients and optimizer state stay on the GPU for
the whole step; only the batch goes up and the loss and metric counts come back.

``numba.cuda`` is imported only when this backend is made, so ``import dlrun`` stays fast
and ``NUMBA_ENABLE_CUDASIM`` can still be chosen by the caller (the simulator counts as a
GPU).

A model's weights live in a :class:`DeviceStore` for as long as it trains: one flat device
buffer per dtype, every parameter a view of it (trainable ones first, so one launch
updates them all), and the optimizer's state laid out the same way. The host arrays
(``Parameter.value``, ``Optimizer.state``) stay the source of truth for everything outside
a step: reading either while the device holds newer values copies every array back first
and hands the values to the host; the next step copies them up again. So a step moves
only its batch up and a few numbers back, and ``get_weights``, ``save``, checkpoints and
callbacks see (and set) the real values.
"""
from __future__ import annotations

import numpy as np

from dlrun.engine.core import rewrites
from dlrun.engine.core.backend import Updates, pack
from dlrun.ops.registry import get_twin


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
    device does, every parameter's ``holder`` (and the optimizer's) is this store, which
    is how a read of ``p.value`` knows to call :meth:`to_host` first.
    """

    def __init__(self, cuda, params: list, optimizer=None):
        self.cuda = cuda
        self.params = list(params)
        self.optimizer = optimizer
        self.signature = signature(self.params)
        self.trainable = [p for p in self.params if p.trainable]
        order = self.trainable + [p for p in self.params if not p.trainable]
        self.flat, views = pack([p.host_value for p in order], self._zeros)
        self.dev = {p.id: v for p, v in zip(order, views)}
        # the trainable parameters' share of each flat buffer (they come first)
        self.trainable_size: dict[str, int] = {}
        for p in self.trainable:
            k = p.dtype.str
            self.trainable_size[k] = self.trainable_size.get(k, 0) + p.host_value.size
        self.state_flat = None        # {state name: {dtype: flat}}, made on first upload
        self.state_dev = None         # {param id: {state name: view}}
        self.owner = "host"

    def _zeros(self, n, dtype):
        return self.cuda.to_device(np.zeros(n, dtype))

    def _make_state(self) -> None:
        probe = self.optimizer.make_state(np.zeros(1, np.float32)) if self.optimizer else {}
        self.state_flat, self.state_dev = {}, {p.id: {} for p in self.trainable}
        for name in sorted(probe):
            flat, views = pack([p.host_value for p in self.trainable], self._zeros)
            self.state_flat[name] = flat
            for p, v in zip(self.trainable, views):
                self.state_dev[p.id][name] = v

    def _opt_state(self) -> dict:
        return self.optimizer.host_state if self.optimizer is not None else {}

    def to_device(self) -> None:
        """Copy every parameter (and optimizer state) up, unless the device has them."""
        if self.owner == "device":
            return
        if self.state_dev is None:
            self._make_state()
        for p in self.params:
            _to_device(self.dev[p.id], p.host_value)
        opt_state = self._opt_state()
        for p in self.trainable:
            host = opt_state.get(p.name, {})
            for name, view in self.state_dev[p.id].items():
                if name in host:        # a parameter the optimizer never updated has none
                    _to_device(view, host[name])
        self.owner = "device"
        for p in self.params:
            p.holder = self
        if self.optimizer is not None:
            self.optimizer.holder = self

    def to_host(self) -> None:
        """Copy every parameter (and optimizer state) back, unless the host has them; the
        host owns the values afterwards."""
        if self.owner == "host":
            return
        self.owner = "host"
        for p in self.params:
            p.holder = None
        if self.optimizer is not None:
            self.optimizer.holder = None
        for p in self.params:
            _to_host(self.dev[p.id], p.host_value)
        opt_state = self._opt_state()
        for p in self.trainable:
            host = opt_state.get(p.name, {})
            for name, view in self.state_dev[p.id].items():
                if name in host:
                    _to_host(view, host[name])


def signature(params: list) -> tuple:
    return tuple((p.id, p.trainable) for p in params)


class CudaUpdates(Updates):
    """:class:`Updates` over the store's flat buffers when the plan trains exactly the
    store's trainable parameters (one launch per kernel for the whole model), else per
    parameter."""

    def __init__(self, backend, params: list, grads: list, flat_grads=None):
        super().__init__(backend, params, grads)
        self.store = backend.store
        self.flat_grads = flat_grads
        if flat_grads is not None:
            self._clip_flat, self.clipped = pack(
                [np.empty(p.shape, p.dtype) for p in params], backend.empty)

    def units(self, optimizer, clipped: bool) -> list:
        store = self.store
        if self.flat_grads is not None:
            grads = self._clip_flat if clipped else self.flat_grads
            return [(store.flat[k][:n], grads[k],
                     {name: flat[k] for name, flat in store.state_flat.items()})
                    for k, n in store.trainable_size.items()]
        grads = self.clipped if clipped else self.grads
        return [(store.dev[p.id], g, store.state_dev[p.id])
                for p, g in zip(self.params, grads)]


class CudaBackend:
    """Device arrays from ``numba.cuda``; kernels are the ops' CUDA twins, launched on the
    default stream, so copies queue in order with them."""

    name = "cuda"
    rewrites = (rewrites.fuse_bias_activation, rewrites.alias_bias_grad)

    def __init__(self):
        from numba import cuda

        from dlrun.ops.config import cuda_kernel

        self.cuda = cuda
        self._launch_counter = cuda_kernel
        # the simulator has no default_stream
        self.stream = getattr(cuda, "default_stream", cuda.stream)()
        self.store = None
        self._host: dict = {}

    def kernels(self, op) -> tuple:
        return op.kernels("cuda")

    def twin(self, name: str):
        return get_twin(name).kernel("cuda")

    def empty(self, shape, dtype):
        return self.cuda.device_array(shape, dtype)

    def zeros(self, shape, dtype):
        return self.cuda.to_device(np.zeros(shape, dtype))

    def constant(self, value, dtype):
        return self.cuda.to_device(np.full((), value, dtype))

    def fill(self, buf, value) -> None:
        buf.copy_to_device(np.full(buf.shape, value, buf.dtype))

    def feed(self, shape, dtype) -> tuple:
        host = self.cuda.pinned_array(shape, dtype)
        host[...] = 0
        return host, self.cuda.device_array(shape, dtype)

    def attach(self, params: list, optimizer) -> bool:
        """Keep ``params`` (and the optimizer's state) in a :class:`DeviceStore`, made anew
        when the parameters or their trainable flags changed: plans made before must then
        be remade (True)."""
        if self.store is not None and self.store.signature == signature(params):
            return False
        if self.store is not None:
            self.store.to_host()
        self.store = DeviceStore(self.cuda, params, optimizer)
        return True

    def param(self, p):
        return self.store.dev[p.id]

    def grad_buffers(self, params: list) -> dict:
        """When a plan trains exactly the store's trainable parameters, their gradients are
        views of one flat buffer per dtype (``"flat"`` holds those), so the optimizer
        updates the whole model with one launch per kernel."""
        if not params or [p.id for p in params] != [p.id for p in self.store.trainable]:
            return {}
        flat, views = pack([np.empty(p.shape, p.dtype) for p in params], self.empty)
        return {"flat": flat} | {p.id: v for p, v in zip(params, views)}

    def start(self, plan) -> None:
        """Weights the host owns go up first, then the fed batch (queued, not waited for)."""
        self.store.to_device()
        for host, dev in plan.uploads:
            dev.copy_to_device(host, stream=self.stream)

    def fetch(self, arrays) -> list:
        """Host copies of device arrays, after waiting for the GPU; each copy is reused by
        the next fetch of the same array."""
        out = []
        for dev in arrays:
            host = self._host.get(id(dev))
            if host is None or host.shape != dev.shape:
                host = self._host[id(dev)] = self.cuda.pinned_array(dev.shape, dev.dtype)
            dev.copy_to_host(host, stream=self.stream)
            out.append(host)
        self.stream.synchronize()
        return out

    def read(self, array):
        return array.copy_to_host()

    def updates(self, plan, params: list) -> Updates:
        """What the optimizer updates after ``plan`` runs (over the flat gradient buffers
        when the plan made them)."""
        return CudaUpdates(self, params, [plan.grad(p) for p in params], plan.flat_grads)

    def launches(self) -> int:
        return self._launch_counter.launches

    def sync_to_host(self) -> None:
        if self.store is not None:
            self.store.to_host()
