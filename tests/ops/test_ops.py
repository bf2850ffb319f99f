"""Every registered op, through one set of helpers: forward vs its numpy reference, shape
rule vs real outputs, float64 gradcheck, the adjoint identity; then user ops, errors, and
the two ops with special contracts (dropout's mask, softmax_ce's stability).

The tests are parametrized over ``dlrun.ops.names()``, so a newly registered op is tested
without touching this file: it needs ``sample`` and ``reference`` in its record.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import pytest

import dlrun as dl
from dlrun import ops
from dlrun.engine.core.graph import Parameter, Placeholder, apply
from dlrun.engine.core.plan import Plan
from dlrun.errors import DlrunError, ShapeError
from dlrun.ops import GradcheckError, Op, OpError, Spec

OPS = ops.names()
FLOATS = [np.float32, np.float64]
TOL = {np.dtype(np.float32): dict(rtol=2e-5, atol=1e-6),
       np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12)}


# -- helpers: the op contract, written out here rather than borrowed from dlrun ----------
def attrs_of(op: Op, attrs: dict) -> dict:
    """Declared attributes in kernel order, defaults filled in."""
    return {k: attrs.get(k, v) for k, v in op.attrs.items()}


def sample(op: Op, dtype, seed=0):
    if op.sample is None or op.reference is None:
        pytest.fail(f"op {op.name!r} has no sample/reference; every op needs both to be tested")
    return op.sample(np.random.default_rng(seed), np.dtype(dtype))


def reference(op: Op, inputs, attrs, seed=0) -> list:
    extra = {"seed": seed} if op.rng else {}
    return [np.asarray(r) for r in op.reference(*inputs, **attrs_of(op, attrs), **extra)]


def poisoned(shape, dtype) -> np.ndarray:
    """A buffer whose every element shows if a kernel forgets to write it."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.full(shape, np.nan, dtype)
    return np.full(shape, np.iinfo(dtype).min, dtype)


def forward(op: Op, inputs, attrs, seed=0, specs=None) -> list:
    """Call the CPU forward kernel on NaN-filled outputs; ``specs`` default to op.infer."""
    a = attrs_of(op, attrs)
    if specs is None:
        specs = op.infer([Spec(np.shape(x), np.asarray(x).dtype) for x in inputs], a)
    outs = [poisoned(s.shape, s.dtype) for s in specs]
    op.forward(*inputs, *a.values(), *((seed,) if op.rng else ()), *outs)
    return outs


def backward(op: Op, inputs, outs, dy, attrs, wanted=None) -> list:
    """Call the CPU backward kernel; NaN-filled gradient buffers, None where not wanted."""
    named = dict(zip(op.inputs, inputs)) | dict(zip(op.outputs, outs))
    wanted = op.diff if wanted is None else wanted
    grads = [poisoned(np.shape(named[d]), named[d].dtype) if d in wanted else None
             for d in op.diff]
    op.backward(dy, *(named[s] for s in op.saves), *attrs_of(op, attrs).values(), *grads)
    return grads


def needs_backward(op: Op):
    if op.backward is None:
        pytest.skip(f"op {op.name!r} has no backward kernel (not differentiable)")


# -- (a) forward vs reference, (b) shape rule ---------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("name", OPS)
def test_forward_matches_reference(name, dtype):
    op = ops.get(name)
    inputs, attrs = sample(op, dtype)
    ref = reference(op, inputs, attrs, seed=7)
    # buffers shaped like the reference outputs, so this test does not lean on op.infer
    outs = forward(op, inputs, attrs, seed=7, specs=[Spec(r.shape, r.dtype) for r in ref])
    for o, r, oname in zip(outs, ref, op.outputs):
        assert not np.isnan(o).any() or np.isnan(r).any(), \
            f"{name}: output {oname!r} has elements the kernel never wrote"
        np.testing.assert_allclose(o, r, **TOL[np.dtype(dtype)], err_msg=f"{name}.{oname}")


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("name", OPS)
def test_shape_rule_matches_reference(name, dtype):
    op = ops.get(name)
    inputs, attrs = sample(op, dtype)
    specs = op.infer([Spec(np.shape(x), np.asarray(x).dtype) for x in inputs],
                     attrs_of(op, attrs))
    ref = reference(op, inputs, attrs)
    assert len(specs) == len(op.outputs) == len(ref)
    for s, r, oname in zip(specs, ref, op.outputs):
        assert s.shape == r.shape, f"{name}.{oname}: shape rule {s.shape}, real {r.shape}"
        assert s.dtype == r.dtype, f"{name}.{oname}: shape rule {s.dtype}, real {r.dtype}"


# -- (c) gradcheck, (d) adjoint identity --------------------------------------------------
@pytest.mark.parametrize("name", OPS)
def test_gradcheck_float64(name):
    op = ops.get(name)
    needs_backward(op)
    inputs, attrs = sample(op, np.float64)
    assert ops.gradcheck(name, *inputs, **attrs) is True


@pytest.mark.parametrize("name", OPS)
def test_adjoint_identity(name):
    """<J v, c> (central differences along v) == <v, J^T c> (backward kernel), float64."""
    op = ops.get(name)
    needs_backward(op)
    inputs, attrs = sample(op, np.float64, seed=3)
    rng = np.random.default_rng(11)
    outs = forward(op, inputs, attrs, seed=5)
    c = rng.standard_normal(outs[0].shape)
    grads = backward(op, inputs, outs, c, attrs)
    for d, g in zip(op.diff, grads):
        assert np.isfinite(g).all(), f"{name}: gradient of {d!r} has unwritten (NaN) elements"

    v = {d: rng.standard_normal(np.shape(inputs[op.inputs.index(d)])) for d in op.diff}
    h = 1e-6

    def shifted(sign):
        xs = [x + sign * h * v[n] if n in v else x for n, x in zip(op.inputs, inputs)]
        return forward(op, xs, attrs, seed=5)[0]

    jv = (shifted(+1) - shifted(-1)) / (2 * h)
    lhs = float(np.sum(jv * c))
    rhs = float(sum(np.sum(v[d] * g) for d, g in zip(op.diff, grads)))
    assert lhs == pytest.approx(rhs, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("name", [n for n in OPS if len(ops.get(n).diff) > 1])
def test_backward_skips_unwanted_gradients(name):
    """The engine passes None for gradients nobody needs; the others must not change."""
    op = ops.get(name)
    inputs, attrs = sample(op, np.float64)
    outs = forward(op, inputs, attrs)
    dy = np.random.default_rng(2).standard_normal(outs[0].shape)
    full = backward(op, inputs, outs, dy, attrs)
    for k, d in enumerate(op.diff):
        only = backward(op, inputs, outs, dy, attrs, wanted=(d,))
        assert all(g is None for j, g in enumerate(only) if j != k)
        # equal up to rounding: fastmath may compile the two call shapes differently
        np.testing.assert_allclose(only[k], full[k], rtol=1e-13, atol=1e-15)


# -- user ops: a broken backward is caught, a correct one works end to end ----------------
@pytest.fixture
def register():
    """Register user ops through the public API; unregister them after the test."""
    names = []

    def reg(op):
        ops.register(op)
        names.append(op.name)
        return op
    yield reg
    for n in names:
        ops.unregister(n)


@numba.njit
def double_fwd(x, y):
    """y = 2 x"""
    xf, yf = x.reshape(-1), y.reshape(-1)
    for i in range(xf.size):
        yf[i] = 2.0 * xf[i]


@numba.njit
def double_bwd_wrong(dy, dx):
    """dx = 3 dy  (wrong: should be 2 dy)"""
    dyf, dxf = dy.reshape(-1), dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = 3.0 * dyf[i]


@numba.njit
def double_bwd_skips_last(dy, dx):
    """dx = 2 dy, but forgets the last element"""
    dyf, dxf = dy.reshape(-1), dx.reshape(-1)
    for i in range(dyf.size - 1):
        dxf[i] = 2.0 * dyf[i]


@pytest.mark.parametrize("bwd", [double_bwd_wrong, double_bwd_skips_last])
def test_gradcheck_fails_for_a_wrong_backward(register, bwd):
    register(Op(name="test_double_broken", inputs=("x",), shape=ops.same_shape,
                forward=double_fwd, backward=bwd))
    x = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(GradcheckError, match="test_double_broken"):
        ops.gradcheck("test_double_broken", x)


@numba.njit
def square_fwd(x, y):
    """y = x^2"""
    xf, yf = x.reshape(-1), y.reshape(-1)
    for i in range(xf.size):
        yf[i] = xf[i] * xf[i]


@numba.njit
def square_bwd(dy, x, dx):
    """dx = 2 x dy"""
    dyf, xf, dxf = dy.reshape(-1), x.reshape(-1), dx.reshape(-1)
    for i in range(dyf.size):
        dxf[i] = 2.0 * xf[i] * dyf[i]


def square_op():
    return Op(name="test_square", inputs=("x",), shape=ops.same_shape, saves=("x",),
              forward=square_fwd, backward=square_bwd,
              sample=lambda rng, dt: ((rng.standard_normal((3, 4)).astype(dt),), {}),
              reference=lambda x: (x * x,))


def test_user_op_passes_gradcheck_and_runs_in_a_graph(register):
    op = register(square_op())
    assert "test_square" in ops.names()
    x, _ = op.sample(np.random.default_rng(0), np.dtype(np.float64))
    assert ops.gradcheck("test_square", *x)
    np.testing.assert_allclose(forward(op, x, {})[0], x[0] ** 2)

    # loss = mean((x @ W)^2), differentiated by the engine through the user's kernels
    rng = np.random.default_rng(1)
    xv, wv = rng.standard_normal((5, 3)), rng.standard_normal((3, 2))
    xp = Placeholder(Spec(xv.shape, np.float64))
    w = Parameter(wv.copy(), "w")
    loss = apply("mean", apply("test_square", apply("matmul", xp, w)))
    plan = Plan([xp], [loss], [w], loss=loss)
    plan.feed[xp][...] = xv
    plan.run()
    h = xv @ wv
    assert float(plan.value(loss)) == pytest.approx(np.mean(h ** 2), rel=1e-12)
    np.testing.assert_allclose(plan.grad(w), xv.T @ (2 * h / h.size), rtol=1e-12)


def test_user_op_in_a_model_layer(register):
    register(square_op())

    class Square(dl.layers.Layer):
        def call(self, x, training):
            return apply("test_square", x)

    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Dense(2, input_shape=(3,)), Square()])
    model.compile(optimizer=dl.optimizers.SGD(learning_rate=0.1), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    t = rng.standard_normal((4, 2)).astype(np.float32)
    W, b = (w.astype(np.float64) for w in model.get_weights())
    h = x @ W + b
    np.testing.assert_allclose(model.predict(x), h ** 2, rtol=1e-5, atol=1e-6)

    model.train_on_batch(x, t)
    dh = 2 * (h ** 2 - t) / t.size * 2 * h
    W2, b2 = model.get_weights()
    np.testing.assert_allclose(W2, W - 0.1 * x.T @ dh, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b2, b - 0.1 * dh.sum(0), rtol=1e-5, atol=1e-6)


# -- (f) errors a user can cause ----------------------------------------------------------
def test_matmul_mismatched_inner_dims():
    op = ops.get("matmul")
    with pytest.raises(OpError, match=r"\(3, 4\) @ \(5, 2\)"):
        op.infer([Spec((3, 4), np.float32), Spec((5, 2), np.float32)], {})
    # through the graph it is a ShapeError, raised where the bad node is made
    a = Placeholder(Spec((3, 4), np.float32))
    b = Parameter(np.zeros((5, 2), np.float32), "b")
    with pytest.raises(ShapeError, match=r"\(3, 4\) @ \(5, 2\)"):
        apply("matmul", a, b)


def test_unknown_op_name():
    with pytest.raises(OpError, match="no_such_op.*matmul"):
        ops.get("no_such_op")
    with pytest.raises(OpError, match="no_such_op"):
        apply("no_such_op", Placeholder(Spec((2,), np.float32)))
    with pytest.raises(OpError, match="no_such_op"):
        ops.gradcheck("no_such_op", np.zeros(2))


def test_unknown_attribute():
    x = Placeholder(Spec((2, 3), np.float32))
    with pytest.raises(OpError, match=r"'relu'.*\['alphaa'\]"):
        apply("relu", x, alphaa=0.1)
    with pytest.raises(OpError, match=r"\['beta'\].*\['alpha'\]"):
        ops.gradcheck("leaky_relu", np.ones((2, 2)), beta=0.1)


def test_wrong_input_count_and_dtype():
    with pytest.raises(OpError, match=r"2 inputs.*got 1"):
        ops.gradcheck("matmul", np.ones((2, 2)))
    with pytest.raises(OpError, match="int64"):
        ops.get("relu").infer([Spec((2, 2), np.int64)], {})
    with pytest.raises(OpError, match=r"\(4,\).*\(3,\)"):
        ops.get("bias_add").infer([Spec((2, 4), np.float32), Spec((3,), np.float32)], {})


def test_register_refuses_duplicates_and_non_ops(register):
    register(square_op())
    with pytest.raises(OpError, match="test_square.*replace=True"):
        ops.register(square_op())
    assert ops.register(square_op(), replace=True).name == "test_square"
    with pytest.raises(OpError, match="dict"):
        ops.register({"name": "x"})
    with pytest.raises(OpError, match="'z'"):
        Op(name="bad", inputs=("x",), shape=ops.same_shape, forward=double_fwd, saves=("z",))


def test_op_errors_are_dlrun_errors():
    assert issubclass(OpError, DlrunError) and issubclass(OpError, ValueError)
    assert issubclass(GradcheckError, OpError)


# -- (g) dropout ---------------------------------------------------------------------------
def dropout(x, rate, seed):
    return forward(ops.get("dropout"), (x,), {"rate": rate}, seed=seed)


def test_dropout_mask_is_a_function_of_the_seed():
    x = np.random.default_rng(0).standard_normal((40, 50)).astype(np.float32)
    y1, m1 = dropout(x, 0.3, seed=12345)
    y2, m2 = dropout(x, 0.3, seed=12345)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(y1, y2)
    _, m3 = dropout(x, 0.3, seed=12346)
    assert (m1 != m3).mean() > 0.2


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_keeps_1_minus_rate_scaled(rate):
    x = np.random.default_rng(1).uniform(1.0, 2.0, (200, 500)).astype(np.float32)
    y, mask = dropout(x, rate, seed=99)
    kept = mask != 0
    # 100k Bernoulli draws: the standard error of the fraction is <= 0.0016
    assert kept.mean() == pytest.approx(1 - rate, abs=0.01)
    np.testing.assert_allclose(mask[kept], 1 / (1 - rate), rtol=1e-6)
    np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=1e-6)
    assert np.all(y[~kept] == 0)
    # the mean is preserved in expectation (inverted dropout)
    assert y.mean() == pytest.approx(x.mean(), rel=0.03)


def test_dropout_rate_zero_is_identity_and_bad_rate_refused():
    x = np.random.default_rng(2).standard_normal((5, 6)).astype(np.float32)
    y, mask = dropout(x, 0.0, seed=3)
    np.testing.assert_array_equal(y, x)
    for rate in (1.0, -0.1):
        with pytest.raises(OpError, match=str(rate)):
            ops.get("dropout").infer([Spec(x.shape, x.dtype)], {"rate": rate})


# -- (h) numerically extreme inputs ---------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
def test_softmax_ce_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4], [-1e4, -1e4, -1e4]], dtype)
    labels = np.array([0, 2, 1], np.int64)
    op = ops.get("softmax_ce")
    w = np.ones(3, dtype)
    loss, p = forward(op, (logits, labels, w), {})
    # row 0: certain and right; row 1: two equal winners; row 2: uniform over 3
    expected = (0.0 + math.log(2) + math.log(3)) / 3
    assert np.isfinite(loss) and float(loss) == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    (g,) = backward(op, (logits, labels, w), (loss, p), np.ones((), dtype), {})
    assert np.isfinite(g).all()
    # wrong by a margin of 2e4: the loss is that margin, not inf
    loss2, _ = forward(op, (logits[:1], np.array([2]), w[:1]), {})
    assert float(loss2) == pytest.approx(2e4, rel=1e-6)


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
def test_other_ops_are_stable_at_extremes(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype)
    s = forward(ops.get("sigmoid"), (x,), {})[0]
    assert np.isfinite(s).all() and s.min() >= 0 and s.max() <= 1
    p = forward(ops.get("softmax"), (x,), {})[0]
    np.testing.assert_allclose(p, [[1, 0, 0], [0, 0, 1]], atol=1e-12)
    t = np.eye(3, dtype=dtype)[[0, 1]]
    loss, _ = forward(ops.get("softmax_ce_onehot"), (x, t, np.ones(2, dtype)), {})
    assert float(loss) == pytest.approx((0.0 + 2e4) / 2, rel=1e-6)
    # binary_ce on probabilities of exactly 0 and 1: clipped, finite
    pr = np.array([0.0, 1.0, 1.0, 0.0], dtype)
    loss, = forward(ops.get("binary_ce"), (pr, np.array([0, 1, 0, 1], dtype), np.ones(4, dtype)),
                    {})
    assert np.isfinite(loss) and float(loss) > 5
