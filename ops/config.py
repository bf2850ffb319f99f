"""Every Numba option dlrun uses, in one place.

Kernels never pass options to ``numba.njit`` themselves: they use :func:`jit`,
:func:`pjit` (parallel) or :func:`cuda_kernel` from here, so the flags below are the
project's one set.
"""
from __future__ import annotations

import os

# Numba's OpenMP threads (its ``omp`` layer runs dlrun's parallel loops and split matrix
# products) spin after each parallel region before they sleep; by default long enough to
# hold a core while the batch-split kernels (``ops.blas.split_run``, Python threads) want
# both: measured at 2 threads, the CNN's forward 19.2 ms a batch that way, 12.1 ms with the
# spin cut to 30,000 iterations, which still bridges the gaps between the MLP's products
# (108k samples/s either way; never spinning, OMP_WAIT_POLICY=passive: 85k). Must be set
# before libgomp loads; a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

import numba  # noqa: E402

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


class cuda_kernel:
    """A ``numba.cuda.jit`` kernel, or with ``device=True`` a device function, compiled on
    first use.

    ``numba.cuda`` is imported only when a CUDA kernel is first launched, so importing
    dlrun stays fast and ``NUMBA_ENABLE_CUDASIM`` can still be chosen by the caller.
    The kernel's module refers to ``cuda`` as a global; it is bound here.
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

            # Unless bound already: under the simulator a device function compiles while
            # its kernel runs, with the simulator's stand-in bound there.
            if self.fn.__globals__.get("cuda") is None:
                self.fn.__globals__["cuda"] = cuda
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
