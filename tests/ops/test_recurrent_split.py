"""The recurrent ops' CPU kernels (gru's too) split the batch between threads (``blas.split_run``):
the split results must agree with one call over the whole batch (``blas._threads`` = 1),
forward and backward, every gradient wanted or only some, uneven parts included."""
from __future__ import annotations

import numpy as np
import pytest

from dlrun.ops import blas, gru
from dlrun.ops import recurrent as rec

TOL = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12)}


def problem(gates, dtype, nb=13, nt=6, nin=5, n=7, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nb, nt, nin)).astype(dtype)
    w = (0.5 * rng.standard_normal((nin, gates * n))).astype(dtype)
    u = (0.4 * rng.standard_normal((n, gates * n))).astype(dtype)
    b = (0.1 * rng.standard_normal(gates * n)).astype(dtype)
    dy = rng.standard_normal((nb, nt, n)).astype(dtype)
    return x, w, u, b, dy


def lstm_run(x, w, u, b, dy, want_dx):
    nb, nt, _ = x.shape
    n = u.shape[0]
    h, c, tc = (np.full((nb, nt, n), np.nan, x.dtype) for _ in range(3))
    g = np.full((nb, nt, 4 * n), np.nan, x.dtype)
    rec.lstm_fwd_cpu(x, w, u, b, h, g, c, tc)
    dx = np.full_like(x, np.nan) if want_dx else None
    dw, du, db = (np.full_like(a, np.nan) for a in (w, u, b))
    rec.lstm_bwd_cpu(dy, x, w, u, h, g, c, tc, dx, dw, du, db)
    return [a for a in (h, g, c, tc, dx, dw, du, db) if a is not None]


def rnn_run(activation):
    def run(x, w, u, b, dy, want_dx):
        h = np.full(dy.shape, np.nan, x.dtype)
        rec.simple_rnn_fwd_cpu(x, w, u, b, activation, h)
        dx = np.full_like(x, np.nan) if want_dx else None
        dw, du, db = (np.full_like(a, np.nan) for a in (w, u, b))
        rec.simple_rnn_bwd_cpu(dy, x, w, u, h, activation, dx, dw, du, db)
        return [a for a in (h, dx, dw, du, db) if a is not None]
    return run


def gru_run(x, w, u, b, dy, want_dx):
    b = np.stack([b, -b])                  # (2, 3 units): input bias, recurrent bias
    nb, nt, _ = x.shape
    n = u.shape[0]
    h, uh = (np.full((nb, nt, n), np.nan, x.dtype) for _ in range(2))
    g = np.full((nb, nt, 3 * n), np.nan, x.dtype)
    gru.gru_fwd_cpu(x, w, u, b, h, g, uh)
    dx = np.full_like(x, np.nan) if want_dx else None
    dw, du, db = (np.full_like(a, np.nan) for a in (w, u, b))
    gru.gru_bwd_cpu(dy, x, w, u, h, g, uh, dx, dw, du, db)
    return [a for a in (h, g, uh, dx, dw, du, db) if a is not None]


CASES = {"lstm": (4, lstm_run), "gru": (3, gru_run), "rnn-tanh": (1, rnn_run("tanh")),
         "rnn-relu": (1, rnn_run("relu"))}


@pytest.fixture
def counted_parts(monkeypatch):
    """The number of parts of every split_run call the recurrent kernels make."""
    parts = []

    def counting(fn, n, min_per_part=1):
        parts.append(blas.split_run(fn, n, min_per_part))
        return parts[-1]

    monkeypatch.setattr(rec, "split_run", counting)
    monkeypatch.setattr(gru, "split_run", counting)
    return parts


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("want_dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES))
def test_split_matches_one_call(case, dtype, want_dx, threads, monkeypatch, counted_parts):
    gates, run = CASES[case]
    args = problem(gates, np.dtype(dtype))
    monkeypatch.setattr(blas, "_threads", 1)
    whole = run(*args, want_dx)
    assert counted_parts == [1, 1]
    monkeypatch.setattr(blas, "_threads", threads)
    split = run(*args, want_dx)
    if blas._set_local is not None:
        assert counted_parts[2:] == [threads, threads]      # 13 rows: uneven parts
    for a, b in zip(whole, split):
        assert np.isfinite(b).all()                        # every element written
        np.testing.assert_allclose(b, a, **TOL[np.dtype(dtype)])
    # and again: the partial buffers are reused from call to call
    again = run(*args, want_dx)
    for a, b in zip(split, again):
        np.testing.assert_array_equal(b, a)


def test_small_batches_are_one_call(monkeypatch, counted_parts):
    monkeypatch.setattr(blas, "_threads", 2)
    args = problem(4, np.dtype(np.float32), nb=2 * rec.MIN_PER_PART - 1)
    lstm_run(*args, True)
    assert counted_parts == [1, 1]
