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
    """Whether numba.cuda can run kernels here, and on what (name, memory, compute
    capability), or why not."""
    from dlrun.engine.core.device import cuda_status as status

    return status()


def collect() -> list:
    import numba
    from threadpoolctl import threadpool_info

    from dlrun import __version__
    from dlrun.datasets import list_datasets
    from dlrun.ops.threads import available_cores
    from dlrun.ops.blas import sgemm_choice

    # which kernels OpenBLAS runs decides much of the speed: say when the environment forces
    # them (e.g. OPENBLAS_CORETYPE=Haswell, AVX2 only, on a CPU that has AVX-512)
    forced = os.environ.get("OPENBLAS_CORETYPE")
    blas = []
    for i in threadpool_info():
        if i.get("user_api") != "blas":
            continue
        why = " (OPENBLAS_CORETYPE)" if forced and i.get("internal_api") == "openblas" else ""
        blas.append(f"{i.get('internal_api')} {i.get('version')}, "
                    f"{i.get('architecture') or '?'} kernels{why} ({i.get('num_threads')} "
                    "threads)")
    rows = [("dlrun", __version__), ("python", platform.python_version())]
    rows += [(p, _version(p)) for p in ("numpy", "numba", "scipy", "zarr", "ray", "click")]
    rows += [("cores available", available_cores()),
             ("numba threads", numba.config.NUMBA_NUM_THREADS),
             ("blas", "; ".join(blas) or "none found"),
             ("float32 matmul", sgemm_choice()),
             ("numba cache", os.environ.get("NUMBA_CACHE_DIR", "beside the sources "
                                            "(set NUMBA_CACHE_DIR to move it)")),
             ("cuda", cuda_status()),
             ("datasets", ", ".join(list_datasets()))]
    return rows
