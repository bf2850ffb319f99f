"""dlrun's own float32 GEMM (``ops.sgemm``) against a float64 numpy product, and how
``ops.blas`` chooses between it and OpenBLAS."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from dlrun.ops import blas
from dlrun.ops.sgemm import KC, MR, NR, NR_NARROW, sgemm, sgemm_parallel, split_bounds

# (m, n, k): whole tiles, edges in both directions, the narrow tile, several KC slices,
# one row, one column, an empty shared dimension
SHAPES = [(MR, NR, 5), (13, 45, 7), (2 * MR + 3, NR_NARROW - 6, KC + 9),
          (19, 45, 300),      # a transposed b: 16 x 16 blocks transposed whole, and the rest
          (1, 1, 1), (1, 70, 33), (37, 1, 20), (MR * 3, NR * 2, 2 * KC), (5, 17, 0)]


def _operands(rng, m, n, k, ta, tb):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    c = rng.standard_normal((m, n)).astype(np.float32)
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    return a, b, c, want


def _close(got, want, k):
    # float32 sums of k products of standard normals: error grows like sqrt(k) * eps
    tol = 1e-5 * max(1.0, np.sqrt(k)) * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("parts", [0, 2, 3])
def test_sgemm_matches_float64_numpy(m, n, k, ta, tb, parts):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a, b, c, want = _operands(rng, m, n, k, ta, tb)

    def run(c, alpha, beta):
        if parts:
            sgemm_parallel(a, b, c, alpha, beta, ta, tb, parts)
        else:
            sgemm(a, b, c, alpha, beta, ta, tb)

    acc = c.copy()
    run(acc, 0.5, -2.0)
    _close(acc, 0.5 * want - 2.0 * c.astype(np.float64), k)
    fresh = np.full((m, n), np.nan, np.float32)          # beta = 0 never reads c
    run(fresh, 1.0, 0.0)
    _close(fresh, want, k)


def test_sgemm_reads_and_writes_strided_rows():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((50, 3, 40)).astype(np.float32)[:, 1, :]      # rows 120 apart
    w = rng.standard_normal((40, 100)).astype(np.float32)[:, 3:70]        # 67 of 100 columns
    big = np.full((60, 90), 7.0, np.float32)
    out = big[5:55, 10:77]
    sgemm_parallel(x, w, out, 1.0, 0.0, False, False, 2)
    _close(out, x.astype(np.float64) @ w, 40)
    assert (big[:5] == 7).all() and (big[55:] == 7).all()           # nothing outside written
    assert (big[:, :10] == 7).all() and (big[:, 77:] == 7).all()
    # transposed operand read through a strided view
    xt = rng.standard_normal((40, 2, 50)).astype(np.float32)[:, 0, :]
    out2 = np.empty((50, 67), np.float32)
    sgemm(xt, w, out2, 1.0, 0.0, True, False)
    _close(out2, xt.T.astype(np.float64) @ w, 40)


def test_sgemm_rejects_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match="shapes"):
        sgemm(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32),
              np.zeros((2, 5), np.float32), 1.0, 0.0, False, False)


def test_sgemm_rejects_rows_whose_elements_are_not_contiguous():
    a = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match="contiguous"):
        sgemm(a[:, ::2], np.ones((3, 5), np.float32), np.zeros((4, 5), np.float32),
              1.0, 0.0, False, False)
    with pytest.raises(ValueError, match="contiguous"):
        sgemm_parallel(a, np.ones((6, 5), np.float32), np.zeros((5, 4), np.float32).T,
                       1.0, 0.0, False, False, 2)


@pytest.mark.parametrize("m,n,parts", [(100, 500, 2), (784, 500, 2), (5, 3, 4), (100, 10, 3)])
def test_split_bounds_cover_c_once_at_whole_tiles(m, n, parts):
    rows, bounds = split_bounds(m, n, parts)
    size, unit = (m, MR) if rows else (n, NR)
    assert rows == (m >= n)
    assert bounds[0] == 0 and bounds[-1] == size
    assert (np.diff(bounds) > 0).all()
    assert all(b % unit == 0 for b in bounds[:-1])
    assert len(bounds) - 1 <= parts


def test_matmul_uses_threads_and_matches(monkeypatch):
    import numba

    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 300)).astype(np.float32)
    b = rng.standard_normal((300, 200)).astype(np.float32)
    c = np.full((64, 200), np.nan, np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        blas.matmul(a, b, c)
    finally:
        numba.set_num_threads(before)
    _close(c, a.astype(np.float64) @ b, 300)
    # float64 goes to OpenBLAS, with alpha and beta
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    c64 = np.ones((64, 200))
    blas.matmul(a64, b64, c64, 2.0, 1.0)
    np.testing.assert_allclose(c64, 2.0 * a64 @ b64 + 1.0, rtol=1e-12)


_CHOICE = """
import numpy as np
from dlrun.ops import blas
a = np.arange(12, dtype=np.float32).reshape(3, 4); b = np.ones((4, 2), np.float32)
c = np.empty((3, 2), np.float32); blas.gemm(a, b, c)
assert np.array_equal(c, a @ b), c
print(blas.OWN_SGEMM, blas.sgemm_choice())
"""


@pytest.mark.parametrize("value,own", [("openblas", False), ("dlrun", True)])
def test_dlrun_gemm_overrides_the_choice_even_with_cached_kernels(value, own):
    # each run compiles or loads the same cached gemm: the choice is read at run time
    env = dict(os.environ, DLRUN_GEMM=value)
    out = subprocess.run([sys.executable, "-c", _CHOICE], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(own)), out.stdout
    assert f"DLRUN_GEMM={value}" in out.stdout


def test_dlrun_gemm_with_a_wrong_value_is_a_clear_error():
    env = dict(os.environ, DLRUN_GEMM="mkl")
    out = subprocess.run([sys.executable, "-c", "import dlrun.ops.blas"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "DLRUN_GEMM must be 'dlrun' or 'openblas', got 'mkl'" in out.stderr


def test_the_openblas_path_still_passes_the_product_tests():
    # CPUs without AVX-512 multiply float32 on OpenBLAS: run the tests of every op and
    # layer built on products again in a child process that chooses it (kernels cached by
    # this session are reused; they read the choice at run time)
    tests = ["tests/ops/test_ops.py", "tests/ops/test_recurrent_split.py",
             "tests/engine/layers", "tests/engine/core/test_rewrites.py"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, DLRUN_GEMM="openblas")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *tests, "-k", "matmul or conv or lstm or rnn or dense or split "
                          "or fus or Dense or LSTM"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
