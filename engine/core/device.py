"""Devices: choosing one (``cpu``, ``cuda``, ``auto``), and the backend that runs a model
there (:mod:`~dlrun.engine.core.backend`, :mod:`~dlrun.engine.core.cuda`).

``numba.cuda`` is imported only when a GPU is asked for, so ``import dlrun`` stays fast and
``NUMBA_ENABLE_CUDASIM`` can still be chosen by the caller (the simulator counts as a GPU).
"""
from __future__ import annotations

import contextlib
import os

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


def backend(name: str):
    """The backend of a resolved device name (``'cpu'`` or ``'cuda'``): made once, when a
    model is compiled."""
    if name == "cuda":
        from dlrun.engine.core.cuda import CudaBackend

        return CudaBackend()
    from dlrun.engine.core.backend import CpuBackend

    return CpuBackend()
