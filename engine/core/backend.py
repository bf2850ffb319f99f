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

# The stand-alone kernels an optimizer update and the metric counts use, by name; every
# device has the same names with the same arguments.
UPDATE_KERNELS = ("sgd", "momentum", "adagrad", "rmsprop", "rmsprop_momentum", "adam",
                  "decay", "clip", "sum_squares")


def pack(arrays: list, empty) -> tuple[dict, list]:
    """Copy ``arrays`` into one contiguous buffer per dtype made by ``empty(size, dtype)``;
    returns ({dtype string: buffer}, the views of the buffers that hold the arrays, in
    order). One buffer per dtype lets a round move, or an optimizer update, every array
    of a model at once."""
    sizes: dict[str, int] = {}
    for a in arrays:
        sizes[a.dtype.str] = sizes.get(a.dtype.str, 0) + a.size
    flat = {k: empty(n, np.dtype(k)) for k, n in sizes.items()}
    at = dict.fromkeys(flat, 0)
    views = []
    for a in arrays:
        k = a.dtype.str
        views.append(flat[k][at[k]:at[k] + max(a.size, 1)].reshape(a.shape) if a.shape
                     else flat[k][at[k]:at[k] + 1])
        at[k] += a.size
    return flat, views


class Updates:
    """What one optimizer step updates, on one device.

    ``units()`` gives (weights, gradients, state) triples to update: one per parameter, or
    one per dtype over flat buffers when a device keeps the model that way (one launch of
    each kernel for the whole model). ``grads``, ``clipped`` (scratch of the same shapes)
    and ``squares`` (one float64 per gradient) serve clipping, which works per parameter;
    ``read(array)`` brings a small array back to the host. ``kernels`` holds the device's
    update kernels by the names of :data:`UPDATE_KERNELS`.
    """

    def __init__(self, backend, params: list, grads: list):
        self.params, self.grads = list(params), list(grads)
        self.kernels = SimpleNamespace(**{k: backend.twin(k) for k in UPDATE_KERNELS})
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
        return _twin(name, "cpu")

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


def _twin(name: str, device: str):
    """A stand-alone kernel by name for a device."""
    kernels = _TWINS.get(device)
    if kernels is None:
        kernels = _TWINS[device] = _twin_table(device)
    return kernels[name]


_TWINS: dict = {}


def _twin_table(device: str) -> dict:
    from dlrun.ops import counts, fused, updates
    from dlrun.engine import metrics

    if device == "cuda":
        return {"sgd": updates.sgd_update_cuda, "momentum": updates.sgd_momentum_update_cuda,
                "adagrad": updates.adagrad_update_cuda, "rmsprop": updates.rmsprop_update_cuda,
                "rmsprop_momentum": updates.rmsprop_momentum_update_cuda,
                "adam": updates.adam_update_cuda, "decay": updates.decay_weights_cuda,
                "clip": updates.clip_gradient_cuda,
                "sum_squares": lambda g, out, slot: updates.sum_squares_cuda(
                    g, out[slot:slot + 1]),
                "correct_sparse": counts.correct_sparse_cuda,
                "correct_onehot": counts.correct_onehot_cuda,
                "correct_binary": counts.correct_binary_cuda,
                "bias_act": fused.bias_act_fwd_cuda}

    def count(kernel):
        def run(p, t, out, slot):
            out[slot] = kernel(p, t)
        return run

    def sum_squares(g, out, slot):
        out[slot] = updates.sum_squares_cpu(g)

    return {"sgd": updates.sgd_update_cpu, "momentum": updates.sgd_momentum_update_cpu,
            "adagrad": updates.adagrad_update_cpu, "rmsprop": updates.rmsprop_update_cpu,
            "rmsprop_momentum": updates.rmsprop_momentum_update_cpu,
            "adam": updates.adam_update_cpu, "decay": updates.decay_weights_cpu,
            "clip": updates.clip_gradient_cpu, "sum_squares": sum_squares,
            "correct_sparse": count(metrics.correct_sparse_cpu),
            "correct_onehot": count(metrics.correct_onehot_cpu),
            "correct_binary": count(metrics.correct_binary_cpu),
            "bias_act": fused.bias_act_fwd_cpu}
