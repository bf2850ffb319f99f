"""``dlrun.ops.blas.gemm``: numpy's own BLAS called from compiled code, its fallback, and
the dispatcher that sends float32 to dlrun's kernel where chosen."""
from __future__ import annotations

import os

import numpy as np
import pytest

from dlrun.ops import blas
from dlrun.ops.config import jit

IMPLS = [pytest.param(blas._gemm_numpy, id="numpy-fallback"),
         pytest.param(blas.gemm, id="dispatch")]
if blas.HAVE_CBLAS:
    IMPLS.insert(0, pytest.param(blas._gemm_cblas, id="cblas"))


def test_numpy_blas_found():
    # numpy's wheels bundle OpenBLAS; without it every recurrent kernel is slower
    assert blas.HAVE_CBLAS
    assert blas._gemm_blas is blas._gemm_cblas
    import scipy.linalg  # noqa: F401  SciPy's own OpenBLAS, loaded too, must come second

    first = os.path.realpath(blas._numpy_blas_paths()[0])
    assert first.startswith(os.path.realpath(os.path.dirname(np.__file__)))


@pytest.mark.parametrize("gemm", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_matches_numpy(gemm, dtype, ta, tb):
    rng = np.random.default_rng(0)
    m, n, k = 5, 7, 3
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    want = 0.5 * (a.T if ta else a) @ (b.T if tb else b) - 2.0 * c
    gemm(a, b, c, 0.5, -2.0, ta, tb)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("gemm", IMPLS)
def test_gemm_strided_rows_and_beta_zero_ignores_garbage(gemm):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)       # (batch, time, features)
    w = rng.standard_normal((3, 8)).astype(np.float32)
    out = rng.standard_normal((4, 6, 8)).astype(np.float32)
    out[:, 2, :] = np.nan                                       # beta=0 must not read it
    gemm(x[:, 2, :], w, out[:, 2, :], 1.0, 0.0, False, False)
    np.testing.assert_allclose(out[:, 2, :], x[:, 2, :] @ w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gemm", IMPLS)
def test_gemm_from_compiled_code_in_a_loop(gemm):
    @jit(cache=False)
    def steps(h, u, out):
        for t in range(out.shape[0]):
            gemm(h, u, out[t], 1.0, 0.0, False, False)
            h[:] = np.tanh(out[t])

    rng = np.random.default_rng(2)
    h = rng.standard_normal((3, 4))
    u = rng.standard_normal((4, 4)) * 0.5
    out = np.zeros((5, 3, 4))
    want, hh = [], h.copy()
    for _ in range(5):
        want.append(hh @ u)
        hh = np.tanh(want[-1])
    steps(h, u, out)
    np.testing.assert_allclose(out, np.array(want), rtol=1e-12)


@pytest.mark.parametrize("gemm", IMPLS)
def test_gemm_rejects_shapes_that_do_not_fit(gemm):
    a, b = np.ones((2, 3), np.float32), np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match="shapes"):
        gemm(a, b, np.zeros((2, 5), np.float32), 1.0, 0.0, False, False)


# -- split_run ---------------------------------------------------------------------------
def test_split_run_covers_every_index_once_and_restores_threads(monkeypatch):
    import threading

    monkeypatch.setattr(blas, "_threads", 3)
    if blas._set_local is None:
        pytest.skip("this OpenBLAS cannot limit threads per thread")
    seen = np.zeros(10, int)
    names = set()

    def fn(a, b):
        names.add(threading.current_thread().name)
        seen[a:b] += 1

    assert blas.split_run(fn, 10) == 3
    np.testing.assert_array_equal(seen, 1)
    assert len(names) >= 2                # the caller and at least one pool thread
    assert blas.split_run(fn, 10, min_per_part=4) == 2          # 10 // 4 parts at most
    assert blas.split_run(fn, 1) == 1
    # the calling thread's own BLAS setting is back as it was
    before = blas._set_local(5)
    blas._set_local(before)
    blas.split_run(fn, 10)
    assert blas._set_local(before) == before


def test_split_run_products_match_one_call_and_errors_propagate(monkeypatch):
    monkeypatch.setattr(blas, "_threads", 2)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 16)).astype(np.float32)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    out = np.full((40, 8), np.nan, np.float32)
    blas.split_run(lambda s, e: blas.gemm(a[s:e], w, out[s:e], 1.0, 0.0, False, False), 40)
    np.testing.assert_allclose(out, a @ w, rtol=1e-5, atol=1e-5)

    def bad(s, e):
        if s > 0:
            raise RuntimeError("part failed")
    if blas.split_threads() > 1:
        with pytest.raises(RuntimeError, match="part failed"):
            blas.split_run(bad, 40)
