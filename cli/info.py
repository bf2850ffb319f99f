"""What ``dlrun info`` reports."""
from __future__ import annotations

import os
import platform
from importlib import metadata


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def cuda_status() -> str:
    """Whether numba.cuda can run kernels here, and on what."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "simulator (NUMBA_ENABLE_CUDASIM=1): kernels run on the CPU, slowly"
    try:
        from numba import cuda

        if not cuda.is_available():
            return "no usable CUDA device (no GPU or driver found)"
        dev = cuda.get_current_device()
        free, total = cuda.current_context().get_memory_info()
        cc = ".".join(map(str, dev.compute_capability))
        return f"{dev.name.decode() if isinstance(dev.name, bytes) else dev.name}, " \
               f"{total / 2**30:.1f} GiB, compute capability {cc}"
    except Exception as e:  # noqa: BLE001 - any driver failure means "not usable"
        return f"not usable ({type(e).__name__}: {e})"


def collect() -> list:
    import numba
    from threadpoolctl import threadpool_info

    from dlrun import __version__
    from dlrun.datasets import list_datasets
    from dlrun.engine.threads import available_cores

    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads)"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    rows = [("dlrun", __version__), ("python", platform.python_version())]
    rows += [(p, _version(p)) for p in ("numpy", "numba", "scipy", "zarr", "ray", "click")]
    rows += [("cores available", available_cores()),
             ("numba threads", numba.config.NUMBA_NUM_THREADS),
             ("blas", "; ".join(blas) or "none found"),
             ("numba cache", os.environ.get("NUMBA_CACHE_DIR", "beside the sources "
                                            "(set NUMBA_CACHE_DIR to move it)")),
             ("cuda", cuda_status()),
             ("datasets", ", ".join(list_datasets()))]
    return rows
