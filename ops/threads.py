"""The one thread knob: Numba's and BLAS's thread counts together."""
from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (respects affinity / container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default: every available core) in Numba kernels and in BLAS."""
    import numba
    import scipy.linalg  # noqa: F401  loads SciPy's BLAS (np.dot in @njit) to limit it too
    from threadpoolctl import threadpool_limits

    from dlrun.errors import ConfigError

    n = available_cores() if n is None else int(n)
    if n < 1:
        raise ConfigError(f"threads must be >= 1, got {n}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    from dlrun.ops.blas import set_split_threads

    set_split_threads(n)               # kernels that split their batch between threads
    # a fresh scan every call: a controller made once misses libraries loaded after it
    threadpool_limits(limits=n, user_api="blas")
    return n
