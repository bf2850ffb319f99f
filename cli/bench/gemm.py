"""``dlrun bench gemm``: GFLOP/s of dlrun's float32 GEMM beside numpy's OpenBLAS, on the
products dlrun's models make (the reference MLP's eight, the LSTM's per-step ones, the
CNN's second convolution), at each thread count. OpenBLAS runs whichever kernels it picked
or the environment forced (``OPENBLAS_CORETYPE``): the header line names them. To compare
with OpenBLAS's own choice on a machine that forces one, run it again with the variable
unset.

Run: ``dlrun bench gemm --threads 1,2 --repeats 5 [--json out.json]``.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

# (name, m, n, k, trans_a, trans_b): c (m x n) = op(a) @ op(b), shared dimension k
SHAPES = [
    ("mlp fwd 784->500", 100, 500, 784, False, False),
    ("mlp fwd 500->500", 100, 500, 500, False, False),
    ("mlp fwd 500->10", 100, 10, 500, False, False),
    ("mlp dW 784x500", 784, 500, 100, True, False),
    ("mlp dW 500x500", 500, 500, 100, True, False),
    ("mlp dx 500<-500", 100, 500, 500, False, True),
    ("lstm step h@U", 128, 512, 128, False, False),
    ("lstm dU", 128, 512, 3584, True, False),
    ("cnn conv2 fwd", 64, 4608, 288, False, False),
]


def _time(fn, flops: float, repeats: int) -> float:
    fn()
    reps = max(3, int(3e8 / flops))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        rates.append(flops * reps / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def compare(threads=(1, 2), repeats: int = 5, echo=print) -> list:
    """One row per (threads, shape): GFLOP/s of each implementation and their ratio."""
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    from dlrun.ops import blas
    from dlrun.ops.sgemm import sgemm, sgemm_parallel

    kernels = "; ".join(dict.fromkeys(     # numpy's and SciPy's copies often read the same
        f"{i.get('internal_api')} {i.get('architecture')}"
        for i in threadpool_info() if i.get("user_api") == "blas"))
    echo(f"float32 GEMM, GFLOP/s (median of {repeats}); dlrun sgemm vs {kernels}; "
         f"products here use: {blas.sgemm_choice()}")
    rng = np.random.default_rng(0)
    rows = []
    for t in threads:
        numba.set_num_threads(min(t, numba.config.NUMBA_NUM_THREADS))
        with threadpool_limits(t, user_api="blas"):
            for name, m, n, k, ta, tb in SHAPES:
                a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
                b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
                c = np.zeros((m, n), np.float32)
                flops = 2.0 * m * n * k

                def own(a=a, b=b, c=c, ta=ta, tb=tb, t=t):
                    if t > 1:
                        sgemm_parallel(a, b, c, 1.0, 0.0, ta, tb, t)
                    else:
                        sgemm(a, b, c, 1.0, 0.0, ta, tb)

                def openblas(a=a, b=b, c=c, ta=ta, tb=tb):
                    blas._gemm_blas(a, b, c, 1.0, 0.0, ta, tb)

                blas_r = _time(openblas, flops, repeats)
                # OpenBLAS's idle threads spin for a while after its last call and would
                # take a core from dlrun's (which never run beside them in training)
                time.sleep(0.3)
                own_r = _time(own, flops, repeats)
                row = {"threads": t, "product": name, "m": m, "n": n, "k": k,
                       "dlrun_gflops": round(own_r, 1), "openblas_gflops": round(blas_r, 1),
                       "ratio": round(own_r / blas_r, 2)}
                rows.append(row)
                echo(f"threads {t}  {name:18s} {m:5d} x {n:5d} x {k:5d}  dlrun "
                     f"{own_r:6.1f}  openblas {blas_r:6.1f}  {own_r / blas_r:5.2f}x")
    return rows
