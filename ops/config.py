"""Every Numba option dlrun uses, in one place.

Kernels never pass options to ``numba.njit`` themselves: they use :func:`jit`,
:func:`pjit` (parallel) or :func:`cuda_kernel` from here, so the flags below are the
project's one set; a scalar formula shared by CPU and CUDA kernels is a :func:`formula`.
How a kernel module's ``cuda`` global is bound, safely under the simulator too, is
explained once, above :class:`_SimulatedCuda`.
"""
from __future__ import annotations

import os
import sys
import threading

# Numba's OpenMP threads (its ``omp`` layer runs dlrun's parallel loops and split matrix
# products) spin after each parallel region before they sleep; by default long enough to
# hold a core while the batch-split kernels (``ops.blas.split_run``, Python threads) want
# both: measured at 2 threads, the CNN's forward 19.2 ms a batch that way, 12.1 ms with the
# spin cut to 30,000 iterations, which still bridges the gaps between the MLP's products
# (108k samples/s either way; never spinning, OMP_WAIT_POLICY=passive: 85k). Must be set
# before libgomp loads; a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

import numba  # noqa: E402
import numpy as np  # noqa: E402

# Fast-math without ``nnan``/``ninf``: with those two, LLVM may fold ``isnan(x)`` to False,
# and the NaN checks (TerminateOnNaN, the averaging guard) would silently stop working.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Kernels run in-process many times: compile once per signature and keep it on disk
# (honours NUMBA_CACHE_DIR). The driver warms the cache before Ray workers start.
CACHE = os.environ.get("DLRUN_NO_CACHE", "") == ""

# Below this many elements a parallel loop costs more in thread wake-up than it saves.
PARALLEL_MIN = 1 << 16

# CUDA: threads per block for 1-D grid-stride kernels; tests patch it small so that
# several blocks run under the simulator.
CUDA_BLOCK = 256
CUDA_MAX_BLOCKS = 1024
# CUDA's limit on threads per block: block reductions size their shared buffers by it, so
# they work for any CUDA_BLOCK chosen at run time.
CUDA_MAX_THREADS = 1024


def jit(fn=None, **kw):
    """``numba.njit`` with the project's options (serial kernel)."""
    opts = dict(nogil=True, cache=CACHE, fastmath=FASTMATH, error_model="numpy")
    opts.update(kw)
    if fn is None:
        return lambda f: numba.njit(**opts)(f)
    return numba.njit(**opts)(fn)


def pjit(fn=None, **kw):
    """``numba.njit(parallel=True)`` with the project's options; loops use ``prange``."""
    return jit(fn, parallel=True, **kw)


def formula(fn=None, *, inline: bool = False):
    """A scalar function callable as it is from CPU kernels, CUDA kernels and Python.

    Numba compiles it for whichever target calls it: with the project's options inside a
    CPU kernel, as a device function inside a CUDA kernel, and the simulator runs it as
    Python. It must not use ``cuda`` (it is one formula for both devices). Returns ``fn``
    itself. LLVM inlines small formulas by itself; ``inline=True`` makes Numba inline one
    into CPU kernels before that, for a formula with loops called per element, whose
    call would cost more than its work (not for one that reassigns a variable inside a
    branch: Numba's inliner warns on those).
    """
    if fn is None:
        return lambda f: formula(f, inline=inline)
    from numba.extending import overload

    # only kernels call a formula's compiled form (Python calls fn itself): no CPython or
    # C wrappers, whose code generation cost a first run most of each formula's compile
    @overload(fn, target="cpu", strict=False, inline="always" if inline else "never",
              jit_options=dict(nogil=True, fastmath=FASTMATH, error_model="numpy",
                               no_cpython_wrapper=True, no_cfunc_wrapper=True))
    def _on_cpu(*args):
        return fn

    @overload(fn, target="cuda", strict=False)
    def _on_cuda(*args):
        return fn

    return fn


# -- CUDA ---------------------------------------------------------------------------------
# A kernel module declares ``cuda = None`` and uses ``cuda.grid(1)``, ``cuda.shared``...;
# :class:`cuda_kernel` binds that global on first launch (importing dlrun never imports
# numba.cuda, so NUMBA_ENABLE_CUDASIM stays the caller's choice). On a GPU it is
# ``numba.cuda`` itself, which the compiler needs. Under the simulator it is
# :data:`_SIMULATED`: the simulator swaps every global that *is* ``numba.cuda`` in a
# function's module for the running kernel's stand-in around each call and swaps it back
# after; for a device function called by many simulated threads at once, one thread's
# restore lands while another still runs, whose next ``cuda.syncthreads()`` then reaches
# the real module. The proxy is never swapped: it looks the running kernel up at each
# access, so device helpers can live in one module and serve kernels of any other.
class _SimulatedCuda:
    """``numba.cuda`` as the running simulated kernel sees it (its ``FakeCUDAModule``,
    whose thread indices are those of the calling Python thread); outside a kernel (a
    launcher's ``cuda.device_array``), the simulator's ``numba.cuda`` itself. Its shared
    arrays come through :class:`_SimulatedShared`."""

    def __getattr__(self, name: str):
        from numba import cuda
        from numba.cuda.simulator.kernel import _get_kernel_context

        context = _get_kernel_context()
        if context is not None and name == "shared":
            return _SimulatedShared(context.shared)
        return getattr(context or cuda, name)


_SHARED_LOCK = threading.Lock()


class _SimulatedShared:
    """The running simulated kernel's ``cuda.shared``, whose ``array`` hands every thread
    of a block the same buffer per call site. The simulator's own looks its buffer up and
    stores a new one without a lock, so two simulated threads that both find none each
    get one of their own, and a block reduction then loses their shares; here the look-up
    and the store are one step."""

    def __init__(self, shared):
        self._shared = shared

    def array(self, shape, dtype):
        if shape == 0:                    # dynamic shared memory: one preallocated buffer
            return self._shared.array(shape, dtype)
        from numba.core import types
        from numba.np import numpy_support

        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        site = (frame.f_code.co_filename, frame.f_lineno)
        with _SHARED_LOCK:
            buffers = self._shared.__dict__.setdefault("_dlrun_buffers", {})
            if site not in buffers:
                buffers[site] = np.empty(shape, dtype)
            return buffers[site]


_SIMULATED = _SimulatedCuda()


def cuda_module():
    """What a kernel module's ``cuda`` global is bound to (see above); imports numba.cuda."""
    from numba import config as numba_config
    from numba import cuda

    return _SIMULATED if numba_config.ENABLE_CUDASIM else cuda


class cuda_kernel:
    """A ``numba.cuda.jit`` kernel, or with ``device=True`` a device function, compiled on
    first use. Its module's ``cuda`` global (declared ``None``) is bound then, by
    :func:`cuda_module`.
    """

    # Kernel launches so far, all kernels together: the engine reads it around a training
    # step to report kernels per step (launch overhead is what bounds small models).
    launches = 0

    def __init__(self, fn, device: bool = False):
        self.fn = fn
        self.device = device
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self._compiled = None

    def compiled(self):
        if self._compiled is None:
            from numba import cuda

            if "cuda" in self.fn.__globals__ and self.fn.__globals__["cuda"] is None:
                self.fn.__globals__["cuda"] = cuda_module()
            self._compiled = cuda.jit(device=self.device, fastmath=False)(self.fn)
        return self._compiled

    def __getitem__(self, launch):
        cuda_kernel.launches += 1
        return self.compiled()[launch]

    # A device function is called from inside kernels: Numba types the global through
    # ``_numba_type_`` (which compiles it), and the simulator calls it as plain Python.
    @property
    def _numba_type_(self):
        return self.compiled()._numba_type_

    def __call__(self, *args):
        return self.compiled()(*args)


def cuda_device(fn):
    """A ``numba.cuda`` device function compiled on first use (see :class:`cuda_kernel`)."""
    return cuda_kernel(fn, device=True)


def grid_1d(n: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over ``n`` elements."""
    blocks = max(1, min(CUDA_MAX_BLOCKS, (n + CUDA_BLOCK - 1) // CUDA_BLOCK))
    return blocks, CUDA_BLOCK
