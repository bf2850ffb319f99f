"""Twin records, the kernels outside the op registry (``dlrun.ops.registry.Twin``): every
one declared completely, their CPU kernels against numpy; their CUDA kernels against the
CPU ones run in test_cuda_parity.py, enumerated from the same records."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dlrun import ops
from dlrun.ops import OpError, Twin

TWINS = ops.twin_names()


def cases(twin: Twin, dtype) -> list:
    got = twin.sample(np.random.default_rng(0), np.dtype(dtype))
    return got if isinstance(got, list) else [got]


@pytest.mark.parametrize("name", TWINS)
def test_every_twin_is_declared_completely(name):
    twin = ops.get_twin(name)
    assert twin.cuda is not None or twin.no_cuda, f"{name}: no CUDA kernel and no reason"
    for dtype in (np.float32, np.float64):
        for args in cases(twin, dtype):
            assert twin.writes and all(isinstance(args[k], np.ndarray) for k in twin.writes)
            assert set(twin.outputs) <= set(twin.writes)
            host = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
            for k in twin.outputs:
                host[k][...] = np.nan
            twin.kernel("cpu")(*host)
            for k in twin.writes:           # each written array was written everywhere
                assert not np.isnan(host[k]).any(), f"{name}: argument {k} not all written"


def test_the_expected_twins_are_there():
    expected = {"sgd_update", "sgd_momentum_update", "adagrad_update", "rmsprop_update",
                "rmsprop_momentum_update", "adam_update", "decay_weights", "clip_gradient",
                "sum_squares", "correct_sparse", "correct_onehot", "correct_binary", "copy",
                "correct_top5", "correct_sparse_top5",
                "bias_add+relu", "bias_add+sigmoid", "bias_add+tanh", "bias_add+leaky_relu",
                "bias_add+elu", "matmul_bwd_sgd"}
    assert expected <= set(TWINS)


def test_twin_records_refuse_what_they_cannot_be():
    def k(*_):
        pass

    with pytest.raises(OpError, match="no CUDA kernel; say why"):
        Twin("t", k, None, writes=(0,), sample=lambda rng, dt: ())
    with pytest.raises(OpError, match=r"outputs \[1\] are not in writes \(0,\)"):
        Twin("t", k, k, writes=(0,), outputs=(1,), sample=lambda rng, dt: ())
    cpu_only = Twin("t", k, None, writes=(0,), sample=lambda rng, dt: (), no_cuda="CPU only")
    assert cpu_only.kernel("cpu") is k
    with pytest.raises(OpError, match="no CUDA twin: CPU only"):
        cpu_only.kernel("cuda")
    with pytest.raises(OpError, match="'tpu'"):
        cpu_only.kernel("tpu")
    with pytest.raises(OpError, match="already registered"):
        ops.register_twin(ops.get_twin("adam_update"))
    with pytest.raises(OpError, match="no_such_kernel.*adam_update"):
        ops.get_twin("no_such_kernel")
    with pytest.raises(OpError, match="dict"):
        ops.register_twin({"name": "x"})


# -- the updates, in place, against numpy ---------------------------------------------------
def adam_ref(w, g, m, v, alpha, b1, b2, eps):
    m = m + (g - m) * (1 - b1)
    v = v + (g * g - v) * (1 - b2)
    return {"w": w - alpha * m / (np.sqrt(v) + eps), "m": m, "v": v}


def momentum_ref(w, g, v, lr, mom, nesterov):
    v = mom * v - lr * g
    return {"w": w + (mom * v - lr * g if nesterov else v), "v": v}


UPDATES = {
    "sgd_update": (("w", "g"), (0.1,), lambda w, g, lr: {"w": w - lr * g}),
    "sgd_momentum_update": (("w", "g", "v"), (0.1, 0.9, True), momentum_ref),
    "adagrad_update": (("w", "g", "acc"), (0.1, 1e-7), lambda w, g, a, lr, eps: {
        "acc": a + g * g, "w": w - lr * g / np.sqrt(a + g * g + eps)}),
    "rmsprop_update": (("w", "g", "v"), (0.01, 0.9, 1e-7), lambda w, g, v, lr, rho, eps: {
        "v": rho * v + (1 - rho) * g * g,
        "w": w - lr * g / np.sqrt(rho * v + (1 - rho) * g * g + eps)}),
    "rmsprop_momentum_update": (("w", "g", "v", "m"), (0.01, 0.9, 0.5, 1e-7),
                                lambda w, g, v, m, lr, rho, mom, eps: {
        "v": rho * v + (1 - rho) * g * g,
        "m": mom * m + lr * g / np.sqrt(rho * v + (1 - rho) * g * g + eps),
        "w": w - (mom * m + lr * g / np.sqrt(rho * v + (1 - rho) * g * g + eps))}),
    "adam_update": (("w", "g", "m", "v"), (0.003, 0.9, 0.999, 1e-7), adam_ref),
    "decay_weights": (("w",), (0.01,), lambda w, f: {"w": w - f * w}),
}


@pytest.mark.parametrize("name, scalars", [(n, UPDATES[n][1]) for n in sorted(UPDATES)]
                         + [("sgd_momentum_update", (0.1, 0.9, False))])
def test_update_kernels_match_numpy(name, scalars):
    arrays, _, ref = UPDATES[name]
    rng = np.random.default_rng(5)
    state = [rng.standard_normal((7, 3)) for _ in arrays]
    state = [np.abs(a) if n in ("acc", "v") and name != "sgd_momentum_update" else a
             for n, a in zip(arrays, state)]
    want = ref(*state, *scalars)
    got = [a.copy() for a in state]
    ops.get_twin(name).kernel("cpu")(*got, *scalars)
    for n, a in zip(arrays, got):
        np.testing.assert_allclose(a, want.get(n, dict(zip(arrays, state))[n]), rtol=1e-13,
                                   err_msg=f"{name}: {n}")


def test_the_fused_sgd_product_matches_numpy():
    twin = ops.get_twin("matmul_bwd_sgd")
    assert twin.cuda is None and "CPU" in twin.no_cuda
    rng = np.random.default_rng(8)
    dy, a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 4)), rng.standard_normal(
        (4, 3))
    w, da = b.copy(), np.full_like(a, np.nan)
    twin.kernel("cpu")(dy, a, w, np.array([0.1]), da)
    np.testing.assert_allclose(da, dy @ b.T, rtol=1e-12)
    np.testing.assert_allclose(w, b - 0.1 * a.T @ dy, rtol=1e-12)


def test_clip_and_sum_squares_match_numpy():
    g = np.random.default_rng(6).standard_normal((5, 4)).astype(np.float32)
    out = np.full_like(g, np.nan)
    ops.get_twin("clip_gradient").kernel("cpu")(g, 0.7, 0.5, out)
    np.testing.assert_array_equal(out, np.clip(0.7 * g.astype(np.float64), -0.5, 0.5)
                                  .astype(np.float32))
    ops.get_twin("clip_gradient").kernel("cpu")(g, 2.0, math.inf, out)
    np.testing.assert_array_equal(out, 2 * g)
    slots = np.full(3, -1.0)
    ops.get_twin("sum_squares").kernel("cpu")(g, slots, 2)
    np.testing.assert_allclose(slots, [-1, -1, (g.astype(np.float64) ** 2).sum()], rtol=1e-14)


def test_metric_counts_match_numpy():
    rng = np.random.default_rng(7)
    p = rng.random((50, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 50)
    onehot = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 50)]
    out = np.full(4, -1, np.int64)
    ops.get_twin("correct_sparse").kernel("cpu")(p, labels, out, 0)
    ops.get_twin("correct_onehot").kernel("cpu")(p, onehot, out, 1)
    ops.get_twin("correct_binary").kernel("cpu")(p, onehot, out, 3)
    want = [(p.argmax(1) == labels).sum(), (p.argmax(1) == onehot.argmax(1)).sum(), -1,
            ((p > 0.5) == (onehot > 0.5)).sum()]
    np.testing.assert_array_equal(out, want)


def test_top5_counts_match_numpy():
    """The target among the 5 highest of 9 scores; a tie at the boundary counts as in,
    as TensorFlow's in_top_k (which Keras' top_k_categorical_accuracy calls) has it."""
    rng = np.random.default_rng(8)
    p = rng.integers(0, 6, (60, 9)).astype(np.float32)     # small integers: many ties
    labels = rng.integers(0, 9, 60)
    out = np.full(2, -1, np.int64)
    ops.get_twin("correct_sparse_top5").kernel("cpu")(p, labels, out, 0)
    ops.get_twin("correct_top5").kernel("cpu")(p, np.eye(9, dtype=np.float32)[labels], out, 1)
    above = (p > p[np.arange(60), labels][:, None]).sum(1)
    assert 0 < (above < 5).sum() < 60
    np.testing.assert_array_equal(out, [(above < 5).sum()] * 2)
