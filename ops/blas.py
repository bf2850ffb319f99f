"""Matrix products for kernels: ``gemm`` calls the BLAS numpy itself uses, from compiled code.

``np.dot`` inside ``@njit`` goes through SciPy's BLAS, a second OpenBLAS with its own
thread pool: measured here it runs 10–30% slower than numpy's, and when both pools are
busy on 2 cores they spin against each other. ``gemm`` instead finds the ``cblas_?gemm``
of the OpenBLAS numpy was built with (numpy's wheels bundle one) and calls it through
LLVM, which Numba compiles into a direct call. So a time loop inside ``@njit`` (the
recurrent layers) and numpy's own ``@`` share one library, one thread pool and one
``--threads`` setting, and ``gemm`` also offers what ``@`` cannot: ``beta`` (accumulate
into ``c``) and transposes without copies.

Where numpy's BLAS cannot be found (another BLAS vendor), ``gemm`` falls back to
``np.dot`` inside Numba (SciPy's BLAS) with the same semantics.

float32 products on CPUs with AVX-512 go to dlrun's own kernel instead
(:mod:`dlrun.ops.sgemm`): 1.6x OpenBLAS's AVX2 kernels, which an environment may force
(``OPENBLAS_CORETYPE``). :func:`sgemm_choice` says which runs and why; ``DLRUN_GEMM=openblas``
or ``=dlrun`` overrides the choice. :func:`matmul` is the entry for code outside kernels:
it splits a large product between ``--threads`` threads.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from numba import get_num_threads
from numba.core import types
from numba.extending import intrinsic, overload

from dlrun.ops.config import jit
from dlrun.ops.sgemm import dims, rows_contiguous, sgemm, sgemm_parallel

# CBLAS enum values
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

# exported name -> integer width, in order of preference
_CANDIDATES = (("scipy_cblas_{t}gemm64_", 64),      # numpy >= 2 wheels (scipy-openblas64)
               ("cblas_{t}gemm64_", 64),
               ("scipy_cblas_{t}gemm", 32),         # 32-bit scipy-openblas
               ("cblas_{t}gemm", 32))


def _numpy_blas_paths() -> list:
    """Files of the BLAS libraries loaded in this process, numpy's first."""
    from threadpoolctl import threadpool_info

    np.dot(np.ones((2, 2)), np.ones((2, 2)))            # make sure numpy's BLAS is loaded
    infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    # numpy's wheels bundle theirs in numpy.libs/ (numpy/.dylibs/ on macOS); SciPy's own
    # copy sits in scipy.libs/. Elsewhere (conda) both use one library: load order then.
    pkg = os.path.realpath(os.path.dirname(np.__file__))
    own = (pkg + os.sep, pkg + ".libs" + os.sep)
    infos.sort(key=lambda i: not os.path.realpath(i["filepath"]).startswith(own))
    return [i["filepath"] for i in infos]


def _find_cblas():
    """(kind of integer, address of sgemm, address of dgemm) in numpy's BLAS, or None."""
    try:
        paths = _numpy_blas_paths()
    except Exception:                                   # noqa: BLE001 - fall back below
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)                     # already loaded: the same handle
        except OSError:
            continue
        for pattern, bits in _CANDIDATES:
            fns = [getattr(lib, pattern.format(t=t), None) for t in "sd"]
            if all(f is not None for f in fns):
                return (bits, *(ctypes.cast(f, ctypes.c_void_p).value for f in fns))
    return None


def _declare(found):
    """Numba external functions bound to numpy's cblas_sgemm/dgemm.

    They are declared by symbol name and the symbols registered with LLVM in every
    process, so kernels that call them can still be cached on disk (a ctypes function
    would bake its address into the cached code). The names carry the integer width, so
    a cache made against another BLAS fails to link instead of calling it wrongly.
    """
    import llvmlite.binding as llvm
    from numba.core import types

    bits, s_addr, d_addr = found
    integer = types.int64 if bits == 64 else types.int32
    fns = []
    for t, real, addr in (("s", types.float32, s_addr), ("d", types.float64, d_addr)):
        name = f"dlrun_cblas_{t}gemm_i{bits}"
        llvm.add_symbol(name, addr)
        i32, vp = types.int32, types.voidptr
        sig = types.void(i32, i32, i32, integer, integer, integer, real, vp, integer, vp,
                         integer, real, vp, integer)
        fns.append(types.ExternalFunction(name, sig))
    return fns


_FOUND = _find_cblas()
HAVE_CBLAS = _FOUND is not None
if HAVE_CBLAS:
    _sgemm, _dgemm = _declare(_FOUND)


@jit
def _gemm_cblas(a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """c = alpha * op(a) @ op(b) + beta * c, op = transpose where asked.

    2-D arrays of one float dtype whose rows may be strided (slices such as ``x[:, t, :]``)
    but whose elements within a row are contiguous.
    """
    m, n, k = dims(a, b, c, trans_a, trans_b)
    if not (rows_contiguous(a) and rows_contiguous(b) and rows_contiguous(c)):
        raise ValueError("gemm: the elements of a row must be contiguous")
    size = c.itemsize
    if m == 0 or n == 0:
        return
    lda = max(a.strides[0] // size, a.shape[1], 1)
    ldb = max(b.strides[0] // size, b.shape[1], 1)
    ldc = max(c.strides[0] // size, n, 1)
    ta = _TRANS if trans_a else _NO_TRANS
    tb = _TRANS if trans_b else _NO_TRANS
    if size == 4:
        _sgemm(_ROW_MAJOR, ta, tb, m, n, k, alpha, a.ctypes, lda, b.ctypes, ldb, beta,
               c.ctypes, ldc)
    else:
        _dgemm(_ROW_MAJOR, ta, tb, m, n, k, alpha, a.ctypes, lda, b.ctypes, ldb, beta,
               c.ctypes, ldc)


@jit
def _gemm_numpy(a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """c = alpha * op(a) @ op(b) + beta * c, through np.dot (SciPy's BLAS): the fallback."""
    dims(a, b, c, trans_a, trans_b)
    aa = np.ascontiguousarray(a.T) if trans_a else np.ascontiguousarray(a)
    bb = np.ascontiguousarray(b.T) if trans_b else np.ascontiguousarray(b)
    p = np.dot(aa, bb)
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            c[i, j] = alpha * p[i, j] + (beta * c[i, j] if beta != 0.0 else 0.0)


_gemm_blas = _gemm_cblas if HAVE_CBLAS else _gemm_numpy


# -- float32: dlrun's own kernel where the CPU has AVX-512 ----------------------------------
def _host_has_avx512() -> bool:
    try:
        import llvmlite.binding as llvm

        return "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")
    except Exception:                                   # noqa: BLE001 - then OpenBLAS
        return False


def _choose_sgemm() -> tuple[bool, str]:
    forced = os.environ.get("DLRUN_GEMM", "").strip().lower()
    if forced in ("openblas", "blas"):
        return False, "DLRUN_GEMM=openblas"
    if forced == "dlrun":
        return True, "DLRUN_GEMM=dlrun"
    if forced:
        from dlrun.errors import ConfigError

        raise ConfigError(f"DLRUN_GEMM must be 'dlrun' or 'openblas', got {forced!r}")
    if _host_has_avx512():
        return True, "the CPU has AVX-512"
    return False, "the CPU has no AVX-512"


OWN_SGEMM, _WHY = _choose_sgemm()

# The choice is read at run time by compiled code through a C global registered under a
# fixed name, so kernels cached on disk follow this process's choice (a Python global would
# be frozen into the cached machine code).
_FLAG = ctypes.c_int32(1 if OWN_SGEMM else 0)


def _register_flag():
    import llvmlite.binding as llvm

    llvm.add_symbol("dlrun_own_sgemm", ctypes.addressof(_FLAG))


_register_flag()


@intrinsic
def _own_sgemm_on(typingctx):
    """Whether float32 products use dlrun's kernel in this process (reads the C global)."""
    def codegen(context, builder, signature, args):
        from llvmlite import ir

        mod = builder.module
        gv = mod.globals.get("dlrun_own_sgemm")
        if gv is None:
            gv = ir.GlobalVariable(mod, ir.IntType(32), "dlrun_own_sgemm")
            gv.linkage = "external"
        return builder.icmp_unsigned("!=", builder.load(gv), ir.Constant(ir.IntType(32), 0))
    return types.boolean(), codegen


def sgemm_choice() -> str:
    """Which kernel multiplies float32 matrices here, and why (for ``dlrun info``)."""
    if OWN_SGEMM:
        return f"dlrun sgemm, AVX-512 micro-kernel ({_WHY})"
    return f"OpenBLAS ({_WHY})"


def _sgemm_if_f32(a, b, c, alpha, beta, trans_a, trans_b):
    """Stub: runs :func:`sgemm` and returns True for float32 arrays, else returns False."""


@overload(_sgemm_if_f32, jit_options=dict(nogil=True))
def _sgemm_if_f32_impl(a, b, c, alpha, beta, trans_a, trans_b):
    if a.dtype == b.dtype == c.dtype == types.float32:
        def run(a, b, c, alpha, beta, trans_a, trans_b):
            sgemm(a, b, c, alpha, beta, trans_a, trans_b)
            return True
        return run
    return lambda a, b, c, alpha, beta, trans_a, trans_b: False


@jit
def gemm(a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """c = alpha * op(a) @ op(b) + beta * c on the calling thread's BLAS (or dlrun's kernel
    for float32, where chosen); callable inside kernels."""
    if _own_sgemm_on():
        if _sgemm_if_f32(a, b, c, alpha, beta, trans_a, trans_b):
            return
    _gemm_blas(a, b, c, alpha, beta, trans_a, trans_b)


# Below this many flops a product is not split between threads: waking the second thread
# costs more than it saves (measured: a 1 MFLOP product ran slower on two).
PARALLEL_MIN_FLOPS = 4_000_000


def matmul(a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False) -> None:
    """c = alpha * op(a) @ op(b) + beta * c, from Python, on ``--threads`` threads.

    float32 with dlrun's kernel: cut between Numba's threads when large enough. Otherwise
    OpenBLAS with its own threads (numpy's ``@`` where a layout needs it).
    """
    if (OWN_SGEMM and c.dtype == np.float32 and a.dtype == np.float32
            and b.dtype == np.float32 and _rows_contiguous(a, b, c)):
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        parts = get_num_threads() if 2 * m * n * k >= PARALLEL_MIN_FLOPS else 1
        if parts > 1:
            sgemm_parallel(a, b, c, alpha, beta, trans_a, trans_b, parts)
        else:
            sgemm(a, b, c, alpha, beta, trans_a, trans_b)
        return
    if alpha == 1.0 and beta == 0.0:
        np.dot(a.T if trans_a else a, b.T if trans_b else b, out=c)
    else:
        _gemm_blas(np.ascontiguousarray(a), np.ascontiguousarray(b), c, alpha, beta,
                   trans_a, trans_b)


def _rows_contiguous(*arrays) -> bool:
    """:func:`dlrun.ops.sgemm.rows_contiguous` of each, from Python (no compiled call)."""
    return all(x.ndim == 2 and (x.size == 0 or x.shape[1] <= 1 or x.strides[1] == x.itemsize)
               for x in arrays)


# -- splitting a kernel's work between threads -----------------------------------------------
# Many small BLAS calls in a row (a recurrent time loop, a convolution chunk by chunk) do not
# scale with OpenBLAS's own threads: every call hands half its work to the second thread and
# waits for it. Measured here: two Python threads calling single-threaded BLAS on their own
# halves of the data run at ~1.9x one thread, while both calling a 2-thread OpenBLAS at once
# collapse (~1 GFLOP/s). So kernel drivers split the batch between threads, each of which sets
# OpenBLAS to one thread for itself only (``openblas_set_num_threads_local``, OpenBLAS >= 0.3.27).

def _find_local_threads():
    try:
        paths = _numpy_blas_paths()
    except Exception:                                   # noqa: BLE001 - no splitting then
        return None
    for path in paths[:1]:
        fn = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            return fn
    return None


_set_local = _find_local_threads()
_threads = None                    # the --threads knob, set by dlrun.set_threads
_pool = None


def set_split_threads(n: int) -> None:
    """How many threads :func:`split_run` uses (``dlrun.set_threads`` sets it)."""
    global _threads
    _threads = max(1, int(n))


def split_threads() -> int:
    """Threads :func:`split_run` would use now: 1 where OpenBLAS cannot be limited per
    thread."""
    global _threads
    if _set_local is None:
        return 1
    if _threads is None:
        from dlrun.ops.threads import available_cores

        _threads = available_cores()
    return _threads


def split_run(fn, n: int, min_per_part: int = 1) -> int:
    """Call ``fn(start, stop)`` on contiguous parts of ``range(n)``, one part per thread,
    in parallel, each thread's BLAS limited to one thread; returns the number of parts.

    ``fn`` must release the GIL (a ``nogil`` Numba kernel) to run in parallel, and must
    only write what its part owns. With one thread, or ``n < 2 * min_per_part``, it is
    one call on the calling thread with BLAS as it is.
    """
    global _pool
    parts = min(split_threads(), n // max(1, min_per_part))
    if parts <= 1:
        fn(0, n)
        return 1
    if _pool is None or _pool._max_workers < parts - 1:
        from concurrent.futures import ThreadPoolExecutor

        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(parts - 1, thread_name_prefix="dlrun-split")
    bounds = [n * i // parts for i in range(parts + 1)]

    def part(i):
        prev = _set_local(1)
        try:
            fn(bounds[i], bounds[i + 1])
        finally:
            _set_local(prev)

    futures = [_pool.submit(part, i) for i in range(1, parts)]
    try:
        part(0)
    finally:
        for f in futures:
            f.result()
    return parts
