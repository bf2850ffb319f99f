"""Device backends: the one place the engine's core asks where arrays live and which
kernels run on them.

A backend is chosen once, when a model is compiled (:func:`dlrun.engine.core.device.backend`),
and the plan, the optimizer and the metric counts go through it for everything that
differs between devices:

- ``kernels(op)`` / ``twin(name)``: an op's or a stand-alone kernel's version for the device;
- ``empty``, ``zeros``, ``constant``: buffers; ``feed``: a host array the caller fills and
  the buffer the kernels read (one array on the CPU; pinned memory and its device copy
  on a GPU); ``param``: the buffer a weight is read and updated in;
- ``start(plan)``: what happens before a plan's kernels run (a GPU copies the weights the
  host owns and the fed batch up); ``fetch``: host copies of results, after one wait;
- ``updates``: what the optimizer updates, and with which kernels (:class:`Updates`);
- ``rewrites``: the plan rewrites this device benefits from (:mod:`~dlrun.engine.core.rewrites`).

:class:`CpuBackend` is here; the CUDA one lives in :mod:`dlrun.engine.core.cuda`.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from dlrun.engine.core import rewrites
from dlrun.ops.registry import get_twin

# The kernels an optimizer update uses: ``Updates.kernels.<name>`` is the twin (a kernel
# outside the op registry, with the same arguments on every device, see
# dlrun.ops.registry.Twin) of that name.
UPDATE_KERNELS = {"sgd": "sgd_update", "momentum": "sgd_momentum_update",
                  "adagrad": "adagrad_update", "rmsprop": "rmsprop_update",
                  "rmsprop_momentum": "rmsprop_momentum_update", "adam": "adam_update",
                  "decay": "decay_weights", "clip": "clip_gradient",
                  "sum_squares": "sum_squares"}


def pack(arrays: list, empty) -> tuple[dict, list]:
    """Room for ``arrays`` in one contiguous buffer per dtype made by ``empty(size,
    dtype)``: returns ({dtype string: buffer}, a view of the buffers shaped like each
    array, in order); the caller fills them. One buffer per dtype lets a round move, or an
    optimizer update, every array of a model at once."""
    sizes: dict[str, int] = {}
    for a in arrays:
        sizes[a.dtype.str] = sizes.get(a.dtype.str, 0) + a.size
    flat = {k: empty(n, np.dtype(k)) for k, n in sizes.items()}
    at = dict.fromkeys(flat, 0)
    views = []
    for a in arrays:
        k = a.dtype.str
        view = flat[k][at[k]:at[k] + a.size]
        # (a device array cannot be reshaped to 0-d: a scalar keeps one element's view)
        views.append(view.reshape(a.shape) if a.shape or isinstance(view, np.ndarray)
                     else view)
        at[k] += a.size
    return flat, views


class Updates:
    """What one optimizer step updates, on one device.

    ``units()`` gives (weights, gradients, state) triples to update: one per parameter, or
    one per dtype over flat buffers when a device keeps the model that way (one launch of
    each kernel for the whole model). ``grads``, ``clipped`` (scratch of the same shapes)
    and ``squares`` (one float64 per gradient) serve clipping, which works per parameter;
    ``read(array)`` brings a small array back to the host. ``kernels`` holds the device's
    update kernels by the short names of :data:`UPDATE_KERNELS`.
    """

    def __init__(self, backend, params: list, grads: list):
        self.params, self.grads = list(params), list(grads)
        self.kernels = SimpleNamespace(**{k: backend.twin(name)
                                          for k, name in UPDATE_KERNELS.items()})
        self.clipped = [backend.empty(p.shape, p.dtype) for p in params]
        self.squares = backend.zeros((max(1, len(params)),), np.float64)
        self.read = backend.read

    def units(self, optimizer, clipped: bool) -> list:
        grads = self.clipped if clipped else self.grads
        state = optimizer.state
        return [(p.value, g, state[p.name]) for p, g in zip(self.params, grads)]


class CpuBackend:
    """Arrays are numpy arrays; kernels are the ops' ``@njit`` ones."""

    name = "cpu"
    rewrites = (rewrites.fuse_sgd,)

    def kernels(self, op) -> tuple:
        return op.kernels("cpu")

    def twin(self, name: str):
        return get_twin(name).kernel("cpu")

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)

    def constant(self, value, dtype):
        return np.full((), value, dtype)

    def fill(self, buf, value) -> None:
        buf[...] = value

    def feed(self, shape, dtype) -> tuple:
        a = np.zeros(shape, dtype)
        return a, a

    def param(self, p):
        return p.value

    def grad_buffers(self, params: list) -> dict:
        """Gradient buffers the device wants laid out its own way (none on the CPU)."""
        return {}

    def attach(self, params: list, optimizer) -> bool:
        """Take charge of a model's weights; True if plans made before must be remade."""
        return False

    def start(self, plan) -> None:
        """Nothing to move: the kernels read the host's arrays."""

    def fetch(self, arrays) -> list:
        return list(arrays)

    def read(self, array):
        return array

    def updates(self, plan, params: list) -> Updates:
        """What the optimizer updates after ``plan`` runs: ``params`` by their gradients."""
        return Updates(self, params, [plan.grad(p) for p in params])

    def launches(self) -> int | None:
        return None

    def sync_to_host(self) -> None:
        """The host always holds the values."""
