"""The planner and executor: fan-out gradients, buffer reuse, allocation-free reruns,
frozen parameters, per-run dropout seeds. References are written in numpy here."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from dlrun.engine.core.graph import Parameter, Placeholder, apply, topological_order
from dlrun.engine.core.plan import Plan
from dlrun.errors import ConfigError
from dlrun.ops import Spec

F64 = np.float64


def placeholder(a: np.ndarray) -> Placeholder:
    return Placeholder(Spec(a.shape, a.dtype), name="x")


def ones(n: int) -> Placeholder:
    """Per-sample loss weights of one (the loss ops' third input), fed by :func:`run`."""
    return Placeholder(Spec((n,), F64), name="w")


def run(plan: Plan, feeds: dict, seed: int = 0) -> None:
    for t in plan.feed:
        if t.name == "w":
            plan.feed[t][...] = 1
    for t, v in feeds.items():
        plan.feed[t][...] = v
    plan.run(seed=seed)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# -- fan-out -------------------------------------------------------------------------------
def test_tensor_used_by_two_matmuls_gets_the_sum_of_both_gradients(rng):
    """h = tanh(x W) feeds two matmuls; loss = mse(h A, h B)."""
    xv, Wv, Av, Bv = (rng.standard_normal(s) for s in [(4, 3), (3, 5), (5, 2), (5, 2)])
    x = placeholder(xv)
    W, A, B = Parameter(Wv.copy(), "W"), Parameter(Av.copy(), "A"), Parameter(Bv.copy(), "B")
    h = apply("tanh", apply("matmul", x, W))
    w = ones(4)
    loss = apply("mse", apply("matmul", h, A), apply("matmul", h, B), w)
    plan = Plan([x, w], [loss], [W, A, B], loss=loss)
    run(plan, {x: xv})

    hv = np.tanh(xv @ Wv)
    a, b = hv @ Av, hv @ Bv
    d = 2 * (a - b) / a.size                        # d loss / d a;  d loss / d b = -d
    dh = d @ Av.T - d @ Bv.T                        # both uses of h contribute
    assert float(plan.value(loss)) == pytest.approx(np.mean((a - b) ** 2), rel=1e-12)
    np.testing.assert_allclose(plan.grad(A), hv.T @ d, rtol=1e-10)
    np.testing.assert_allclose(plan.grad(B), -hv.T @ d, rtol=1e-10)
    np.testing.assert_allclose(plan.grad(W), xv.T @ (dh * (1 - hv ** 2)), rtol=1e-10)
    # and not just one of the two contributions
    assert not np.allclose(plan.grad(W), xv.T @ ((d @ Av.T) * (1 - hv ** 2)))


def test_parameter_used_twice_and_gradients_not_carried_between_runs(rng):
    """loss = (sum(x W) - mean(z W))^2: W feeds two matmuls; its gradient is
    d (x^T 1 - z^T 1 / N) with d = 2 (sum(x W) - mean(z W)), and is fresh every run."""
    xv, zv = rng.standard_normal((4, 3)), rng.standard_normal((6, 3))
    Wv = rng.standard_normal((3, 2))
    x, z = placeholder(xv), placeholder(zv)
    W = Parameter(Wv.copy(), "W")
    # there is no add op: mse joins the two branches (both of its inputs are differentiable)
    s1 = apply("sum", apply("matmul", x, W))
    s2 = apply("mean", apply("matmul", z, W))
    w = ones(1)
    loss = apply("mse", apply("reshape", s1, shape=(1,)), apply("reshape", s2, shape=(1,)), w)
    plan = Plan([x, z, w], [loss], [W], loss=loss)
    expected = None
    for _ in range(3):                              # accumulation must not leak across runs
        run(plan, {x: xv, z: zv})
        d = 2 * ((xv @ Wv).sum() - (zv @ Wv).mean())
        expected = d * (xv.T @ np.ones((4, 2))) - d * (zv.T @ np.ones((6, 2)) / 12)
        np.testing.assert_allclose(plan.grad(W), expected, rtol=1e-10)


def test_topological_order_is_iterative_for_deep_graphs():
    x = Placeholder(Spec((2, 3), F64))
    y = x
    for _ in range(3000):                           # far past Python's recursion limit
        y = apply("tanh", y)
    order = topological_order([y])
    assert len(order) == 3000
    assert order[0].inputs[0] is x and order[-1].outputs[0] is y


# -- buffers -------------------------------------------------------------------------------
def dense_stack(depth, width, batch, rng):
    xv = rng.standard_normal((batch, width))
    x = placeholder(xv)
    params, h = [], x
    for i in range(depth):
        W = Parameter(rng.standard_normal((width, width)) / np.sqrt(width), f"W{i}")
        b = Parameter(rng.standard_normal(width) * 0.1, f"b{i}")
        params += [W, b]
        h = apply("relu", apply("bias_add", apply("matmul", h, W), b))
    return x, xv, params, h


def numpy_stack(xv, params):
    hs = [xv]
    for W, b in zip(params[::2], params[1::2]):
        hs.append(np.maximum(hs[-1] @ W.value + b.value, 0))
    return hs


def tensor_bytes(nodes) -> int:
    return sum(t.spec.dtype.itemsize * int(np.prod(t.shape)) for n in nodes for t in n.outputs)


def test_inference_plan_reuses_buffers_and_stays_correct(rng):
    x, xv, params, out = dense_stack(depth=10, width=16, batch=8, rng=rng)
    plan = Plan([x], [out], params)
    one_each = tensor_bytes(plan.nodes)             # 30 intermediate arrays
    assert plan.nbytes <= one_each / 5, (plan.nbytes, one_each)
    run(plan, {x: xv})
    np.testing.assert_allclose(plan.value(out), numpy_stack(xv, params)[-1], rtol=1e-12)


def test_training_plan_reuses_buffers_and_gradients_are_right(rng):
    x, xv, params, out = dense_stack(depth=6, width=8, batch=5, rng=rng)
    loss = apply("mean", out)
    plan = Plan([x], [loss], params, loss=loss)
    grad_bytes = sum(p.value.nbytes for p in params)
    one_each = tensor_bytes(plan.nodes) * 2 + grad_bytes
    assert plan.nbytes < one_each
    run(plan, {x: xv})

    hs = numpy_stack(xv, params)
    g = np.ones_like(hs[-1]) / hs[-1].size
    for i in reversed(range(6)):
        g = g * (hs[i + 1] > 0)
        W = params[2 * i]
        np.testing.assert_allclose(plan.grad(W), hs[i].T @ g, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(plan.grad(params[2 * i + 1]), g.sum(0), rtol=1e-10,
                                   atol=1e-14)
        g = g @ W.value.T


def bound_arrays(plan):
    return [a for s in plan.steps for a in s.args if isinstance(a, np.ndarray)]


def test_rerun_is_identical_and_allocates_nothing(rng):
    x, xv, params, out = dense_stack(depth=4, width=64, batch=32, rng=rng)
    loss = apply("mean", out)
    plan = Plan([x], [loss, out], params, loss=loss)
    run(plan, {x: xv})
    first = (float(plan.value(loss)), plan.value(out).copy(),
             [plan.grad(p).copy() for p in params])
    ids = [id(a) for a in bound_arrays(plan)]

    tracemalloc.start()
    try:
        plan.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a 64x64 float64 buffer is 32 KiB; per-call Python overhead is far below that
    assert peak < 8 * 1024, f"plan.run() allocated {peak} bytes"
    assert [id(a) for a in bound_arrays(plan)] == ids
    assert float(plan.value(loss)) == first[0]
    np.testing.assert_array_equal(plan.value(out), first[1])
    for p, g in zip(params, first[2]):
        np.testing.assert_array_equal(plan.grad(p), g)


# -- frozen parameters ---------------------------------------------------------------------
def test_frozen_parameter_gets_no_gradient(rng):
    xv = rng.standard_normal((4, 3))
    x = placeholder(xv)
    W1 = Parameter(rng.standard_normal((3, 3)), "W1", trainable=False)
    W2 = Parameter(rng.standard_normal((3, 2)), "W2")
    loss = apply("mean", apply("matmul", apply("tanh", apply("matmul", x, W1)), W2))
    plan = Plan([x], [loss], [W1, W2], loss=loss)
    assert W1.id not in plan.grads and W2.id in plan.grads
    with pytest.raises(KeyError):
        plan.grad(W1)
    # nothing upstream of the frozen weight is differentiated either
    assert "matmul.backward" in plan.describe()
    assert plan.describe().count("matmul.backward") == 1
    assert "tanh.backward" not in plan.describe()
    run(plan, {x: xv})
    h = np.tanh(xv @ W1.value)
    np.testing.assert_allclose(plan.grad(W2), h.T @ np.full((4, 2), 1 / 8), rtol=1e-12)


def test_all_frozen_is_an_error(rng):
    x = placeholder(rng.standard_normal((2, 3)))
    W = Parameter(np.ones((3, 2)), "W", trainable=False)
    loss = apply("mean", apply("matmul", x, W))
    with pytest.raises(ConfigError, match="trainable"):
        Plan([x], [loss], [W], loss=loss)


def test_unfed_source_tensor_is_an_error():
    x = Placeholder(Spec((2, 3), F64), name="forgotten")
    with pytest.raises(ConfigError, match="forgotten"):
        Plan([], [apply("tanh", x)], [])


# -- gradients with respect to chosen tensors ---------------------------------------------
def test_wrt_a_placeholder_and_a_frozen_parameter(rng):
    """wrt=[x, W1]: the input and a frozen weight get gradients; the trainable W2, not
    asked for, gets none. loss = mean(tanh(x W1) W2)."""
    xv = rng.standard_normal((4, 3))
    x = placeholder(xv)
    W1 = Parameter(rng.standard_normal((3, 3)), "W1", trainable=False)
    W2 = Parameter(rng.standard_normal((3, 2)), "W2")
    loss = apply("mean", apply("matmul", apply("tanh", apply("matmul", x, W1)), W2))
    plan = Plan([x], [loss], [W1, W2], loss=loss, wrt=[x, W1])
    assert set(plan.grads) == {x.id, W1.id}
    run(plan, {x: xv})
    h = np.tanh(xv @ W1.value)
    dz = np.full((4, 2), 1 / 8) @ W2.value.T * (1 - h ** 2)
    np.testing.assert_allclose(plan.grad(x), dz @ W1.value.T, rtol=1e-12)
    np.testing.assert_allclose(plan.grad(W1), xv.T @ dz, rtol=1e-12)


def test_non_scalar_loss_takes_the_callers_seed(rng):
    """loss = tanh(x W) (not a scalar): a run differentiates sum(seed * loss), the seed fed
    into plan.seed; a second seed on the same plan gives that seed's gradient."""
    xv, Wv = rng.standard_normal((5, 3)), rng.standard_normal((3, 4))
    x, W = placeholder(xv), Parameter(Wv.copy(), "W")
    out = apply("tanh", apply("matmul", x, W))
    plan = Plan([x], [out], [W], loss=out, wrt=[x, W])
    assert plan.seed.shape == (5, 4)
    h = np.tanh(xv @ Wv)
    for seed in (rng.standard_normal((5, 4)), np.eye(4)[[2] * 5]):
        plan.seed[...] = seed
        run(plan, {x: xv})
        dz = seed * (1 - h ** 2)
        np.testing.assert_allclose(plan.grad(x), dz @ Wv.T, rtol=1e-12)
        np.testing.assert_allclose(plan.grad(W), xv.T @ dz, rtol=1e-12)


def test_wrt_unreached_is_an_error_naming_the_tensor(rng):
    x, z = placeholder(rng.standard_normal((2, 3))), placeholder(rng.standard_normal((2, 3)))
    z.name = "unused"
    loss = apply("mean", apply("tanh", x))
    with pytest.raises(ConfigError, match="unused"):
        Plan([x, z], [loss], [], loss=loss, wrt=[z])


# -- rng ops -------------------------------------------------------------------------------
def test_dropout_seed_changes_per_run_and_repeats_per_seed():
    xv = np.ones((20, 30))
    x = placeholder(xv)
    y = apply("dropout", x, rate=0.5)
    plan = Plan([x], [y], [])
    run(plan, {x: xv}, seed=1)
    a = plan.value(y).copy()
    run(plan, {x: xv}, seed=2)
    b = plan.value(y).copy()
    run(plan, {x: xv}, seed=1)
    np.testing.assert_array_equal(plan.value(y), a)
    assert (a != b).mean() > 0.2
    assert set(np.unique(a)) == {0.0, 2.0}
