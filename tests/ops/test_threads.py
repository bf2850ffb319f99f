"""The one thread knob sets Numba's and BLAS's thread counts together."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numba
import pytest

import dlrun as dl
from dlrun.ops.threads import available_cores
from dlrun.errors import ConfigError


@pytest.fixture
def restore_threads():
    before = numba.get_num_threads()
    yield
    dl.set_threads(before)


def test_set_threads_sets_numba(restore_threads):
    assert dl.set_threads(1) == 1
    assert numba.get_num_threads() == 1
    n = dl.set_threads()
    assert n == available_cores() >= 1
    assert numba.get_num_threads() == min(n, numba.config.NUMBA_NUM_THREADS)


def test_set_threads_limits_every_blas_dlrun_uses():
    """In a fresh process, so that which BLAS libraries are loaded when is known: numpy's
    OpenBLAS, and SciPy's, which np.dot inside @njit calls (loaded on first use)."""
    script = textwrap.dedent("""
        import dlrun as dl
        from threadpoolctl import threadpool_info

        def blas():
            return {p["filepath"]: p["num_threads"] for p in threadpool_info()
                    if p["user_api"] == "blas"}

        dl.set_threads(1)                 # a CLI sets the knob first thing...
        import scipy.linalg               # ...then kernels load SciPy's BLAS
        assert len(blas()) >= 2, blas()
        assert set(blas().values()) == {1}, f"after one call: {blas()}"
        dl.set_threads(2)
        dl.set_threads(1)                 # calling again must reach every loaded BLAS
        assert set(blas().values()) == {1}, f"after a second call: {blas()}"
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("bad", [0, -2])
def test_bad_thread_count(bad):
    with pytest.raises(ConfigError, match=str(bad)):
        dl.set_threads(bad)
