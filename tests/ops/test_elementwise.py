"""Elementwise ops from scalar formulas (``dlrun.ops.elementwise``): a user's op end to end,
its fused bias twin, what a bad formula gets, kernels cached on disk or not, and the
float32 math the formulas share (``dlrun.ops.mathfn``). The generic registry tests in
test_ops.py cover the built-in ones too; the CUDA twins run in test_cuda_parity.py."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import dlrun as dl
from dlrun import ops
from dlrun.ops import OpError, mathfn
from dlrun.ops.config import jit

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


@pytest.fixture
def cleanup():
    """Names of ops a test registers, unregistered after it."""
    names = []
    yield names
    for n in names:
        ops.unregister(n)


def run_child(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a child process (dlrun importable as in this one)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=600, check=False, env={**os.environ, **(env or {})})


# -- a user's op ----------------------------------------------------------------------------
def define_softplus(cleanup):
    @ops.elementwise("test_softplus")
    def softplus(x, beta=1.0):
        """y = log(1 + exp(beta x)) / beta"""
        return math.log1p(math.exp(beta * x)) / beta

    @softplus.derivative
    def softplus_grad(x, beta):
        """dy/dx = sigmoid(beta x)"""
        return 1.0 / (1.0 + math.exp(-beta * x))

    cleanup.append("test_softplus")
    return softplus


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_user_op_forward_matches_numpy(cleanup, dtype):
    define_softplus(cleanup)
    op = ops.get("test_softplus")
    x = np.random.default_rng(0).uniform(-3, 3, (6, 7)).astype(dtype)
    y = np.full_like(x, np.nan)
    op.forward(x, 0.5, y)
    want = np.log1p(np.exp(0.5 * x.astype(np.float64))) / 0.5
    np.testing.assert_allclose(y, want, rtol=1e-6 if dtype == np.float32 else 1e-13)


def test_user_op_record_and_gradcheck(cleanup):
    softplus = define_softplus(cleanup)
    op = ops.get("test_softplus")
    assert (op.inputs, op.attrs, op.saves, op.diff) == (("x",), {"beta": 1.0}, ("x",), ("x",))
    assert op.pointwise is softplus and softplus.op is op
    assert softplus(0.0) == pytest.approx(math.log(2.0))      # the formula, in Python
    x = np.random.default_rng(1).uniform(-3, 3, (3, 4))
    assert ops.gradcheck("test_softplus", x, beta=1.7)
    assert ops.gradcheck(op, x)


def test_user_op_with_a_wrong_derivative_fails_gradcheck(cleanup):
    @ops.elementwise("test_cube")
    def cube(x):
        return x * x * x

    @cube.derivative
    def cube_grad(x):
        return 2.0 * x * x                    # wrong: 3 x^2

    cleanup.append("test_cube")
    with pytest.raises(ops.GradcheckError, match="test_cube"):
        ops.gradcheck("test_cube", np.random.default_rng(0).uniform(0.5, 2, (3, 3)))


def test_user_op_of_two_inputs_and_a_partial_backward(cleanup):
    @ops.elementwise("test_hypot")
    def hypot(a, b):
        return math.sqrt(a * a + b * b)

    cleanup.append("test_hypot")
    assert ops.get("test_hypot").backward is None           # no derivative yet

    @hypot.derivative("a")
    def hypot_da(a, y):
        return a / y

    op = ops.get("test_hypot")
    assert (op.diff, op.saves) == (("a",), ("a", "y"))

    @hypot.derivative("b")
    def hypot_db(b, y):
        return b / y

    op = ops.get("test_hypot")
    assert (op.diff, op.saves) == (("a", "b"), ("a", "b", "y"))
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.5, 2, (3, 4)), rng.uniform(0.5, 2, (3, 4))
    assert ops.gradcheck("test_hypot", a, b)
    y = np.empty_like(a)
    op.forward(a, b, y)
    np.testing.assert_allclose(y, np.hypot(a, b), rtol=1e-14)
    db = np.full_like(a, np.nan)
    op.backward(np.ones_like(a), a, b, y, None, db)          # only db wanted
    np.testing.assert_allclose(db, b / y, rtol=1e-14)
    with pytest.raises(OpError, match=r"a \(3, 4\) float64, b \(4, 3\)"):
        op.infer([ops.Spec((3, 4), np.float64), ops.Spec((4, 3), np.float64)], {})


def test_user_op_trains_in_a_graph(cleanup):
    """loss = mean(softplus(x @ W)): the engine differentiates through the user's kernels."""
    from dlrun.engine.core.graph import Parameter, Placeholder, apply
    from dlrun.engine.core.plan import Plan

    define_softplus(cleanup)
    rng = np.random.default_rng(3)
    xv, wv = rng.standard_normal((5, 3)), rng.standard_normal((3, 2))
    xp = Placeholder(ops.Spec(xv.shape, np.float64))
    w = Parameter(wv.copy(), "w")
    loss = apply("mean", apply("test_softplus", apply("matmul", xp, w), beta=2.0))
    plan = Plan([xp], [loss], [w], loss=loss)
    plan.feed[xp][...] = xv
    plan.run()
    h = xv @ wv
    assert float(plan.value(loss)) == pytest.approx(np.mean(np.log1p(np.exp(2 * h)) / 2))
    sig = 1 / (1 + np.exp(-2 * h))
    np.testing.assert_allclose(plan.grad(w), xv.T @ (sig / h.size), rtol=1e-12)


def test_user_op_is_an_activation_of_keras_layers(cleanup):
    """``Dense(activation="test_softplus")``: the op with its attributes' defaults, trained
    like a built-in activation (the layer's forward and one SGD step against numpy)."""
    define_softplus(cleanup)
    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Dense(2, activation="test_softplus", input_shape=(3,))])
    model.compile(optimizer=dl.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    t = rng.standard_normal((4, 2)).astype(np.float32)
    W, b = (w.astype(np.float64) for w in model.get_weights())
    h = x @ W + b
    y = np.log1p(np.exp(h))
    np.testing.assert_allclose(model.predict(x), y, rtol=1e-5, atol=1e-6)
    model.train_on_batch(x, t)
    dh = 2 * (y - t) / t.size / (1 + np.exp(-h))
    np.testing.assert_allclose(model.get_weights()[0], W - 0.1 * x.T @ dh, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(dl.errors.ConfigError, match="elementwise op of one input"):
        dl.layers.Dense(2, activation="test_softplus_missing")


# -- what the decorator refuses -------------------------------------------------------------
def test_a_formula_numba_cannot_compile_is_an_op_error_naming_it():
    def not_compiled(v):
        return v + 1

    with pytest.raises(OpError, match=r"test_elementwise\.py.*test_bad_formula") as err:
        @ops.elementwise("test_bad_formula")
        def bad(x):
            return not_compiled(x)            # a plain Python function: Numba cannot call it
    assert "Traceback" not in str(err.value) and err.value.__cause__ is None
    assert "test_bad_formula" not in ops.names()


def test_a_formula_must_return_one_number():
    with pytest.raises(OpError, match="must return one number"):
        @ops.elementwise("test_two_numbers")
        def two(x):
            return x, x


def test_a_bad_derivative_or_signature_is_refused(cleanup):
    @ops.elementwise("test_square")
    def square(x):
        return x * x

    cleanup.append("test_square")
    with pytest.raises(OpError, match=r"\['z'\].*'y' \(the output\)"):
        @square.derivative
        def square_grad(z):
            return 2.0 * z
    with pytest.raises(OpError, match="derivative is for"):
        ops.get("add").pointwise.derivative(lambda: 1.0)
    with pytest.raises(OpError, match="no input 'c'"):
        ops.get("add").pointwise.derivative("c")
    with pytest.raises(OpError, match="must default to a number"):
        ops.elementwise("test_str_attr")(lambda x, mode="fast": x)
    with pytest.raises(OpError, match="plain one"):
        ops.elementwise("test_varargs")(lambda *xs: xs[0])
    with pytest.raises(OpError, match="already registered"):
        ops.elementwise("relu")(lambda x: x)


# -- kernels on disk, or not ----------------------------------------------------------------
FORMULA_MODULE = '''
import dlrun as dl


@dl.ops.elementwise("test_cached_square")
def square(x):
    return x * x


@square.derivative
def square_grad(x):
    return 2.0 * x
'''


@pytest.mark.slow
def test_user_kernels_are_cached_for_the_next_process(tmp_path):
    (tmp_path / "my_formulas.py").write_text(FORMULA_MODULE)
    code = """
        import numpy as np, my_formulas
        from dlrun import ops
        op = ops.get("test_cached_square")
        x = np.arange(6.0).reshape(2, 3); y = np.empty_like(x); dx = np.empty_like(x)
        op.forward(x, y); op.backward(x, x, dx)
        assert (y == x * x).all() and (dx == 2 * x * x).all()
        print("hits", sum(op.forward.stats.cache_hits.values()),
              sum(op.backward.stats.cache_hits.values()))
    """
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first, second = run_child(code, env), run_child(code, env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "hits 0 0" in first.stdout and "hits 1 1" in second.stdout, (first.stdout,
                                                                        second.stdout)


def test_a_formula_typed_at_a_prompt_works_without_the_cache(cleanup):
    scope = {"dl": dl}
    exec(compile(FORMULA_MODULE.replace("test_cached_square", "test_prompt_square"),
                 "<stdin>", "exec"), scope)
    cleanup.append("test_prompt_square")
    op = ops.get("test_prompt_square")
    x = np.linspace(-1, 1, 7)
    y = np.empty_like(x)
    op.forward(x, y)
    np.testing.assert_array_equal(y, x * x)
    assert op.forward._cache.__class__.__name__ == "NullCache"
    assert ops.gradcheck("test_prompt_square", x)


# -- the fused bias + op twins --------------------------------------------------------------
FUSABLE = [n for n in ops.names()
           if ops.get(n).pointwise is not None and len(ops.get(n).inputs) == 1]


@pytest.mark.parametrize("name", FUSABLE)
@pytest.mark.parametrize("alias", [False, True], ids=["z", "z=y"])
def test_fused_bias_twin_equals_bias_add_then_the_op(name, alias):
    op = ops.get(name)
    twin = ops.fused_bias_forward(name)
    assert twin.name == f"bias_add+{name}" and twin.cuda is not None
    rng = np.random.default_rng(4)
    x, b = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(5).astype(
        np.float32)
    attrs = [0.25] * len(op.attrs)
    want = np.empty_like(x)
    op.forward(x + b, *attrs, want)
    y = np.full_like(x, np.nan)
    z = y if alias else np.full_like(x, np.nan)
    twin.kernel("cpu")(x, b, *attrs, z, y)
    np.testing.assert_array_equal(y, want)
    if not alias:
        np.testing.assert_array_equal(z, x + b)


def test_fused_bias_is_only_for_one_input_elementwise_ops(cleanup):
    with pytest.raises(OpError, match="softmax"):
        ops.fused_bias_forward("softmax")
    with pytest.raises(OpError, match="add"):
        ops.fused_bias_forward("add")
    define_softplus(cleanup)
    assert "bias_add+test_softplus" in ops.twin_names()       # a user's op fuses too
    ops.unregister("test_softplus")
    assert "bias_add+test_softplus" not in ops.twin_names()


# -- the user's op on CUDA, under the simulator ---------------------------------------------
@pytest.mark.slow
def test_user_op_cuda_twin_matches_its_cpu_kernels():
    code = f"""
        import importlib.util, math, numpy as np
        spec = importlib.util.spec_from_file_location("parity",
                                                      {str(HERE / "cuda_parity_check.py")!r})
        parity = importlib.util.module_from_spec(spec); spec.loader.exec_module(parity)
        from dlrun import ops
        from dlrun.ops import config

        @ops.elementwise("test_swish")
        def swish(x, beta=1.0):
            return x / (1.0 + math.exp(-beta * x))

        @swish.derivative
        def swish_grad(x, y, beta):
            s = 1.0 / (1.0 + math.exp(-beta * x))
            return s + beta * y * (1.0 - s)

        config.CUDA_BLOCK, config.CUDA_MAX_BLOCKS = 8, 4
        op, twin, failures = ops.get("test_swish"), ops.get_twin("bias_add+test_swish"), []
        for dt in (np.float32, np.float64):
            rng = np.random.default_rng(0)
            for inputs, attrs in (op.sample(rng, dt), op.big_sample(rng, dt)):
                parity.report(failures, f"swish {{dt.__name__}}", parity.op_case, op,
                              inputs, {{"beta": 0.7}}, rng)
            parity.report(failures, f"bias+swish {{dt.__name__}}", parity.twin_case, twin,
                          twin.sample(rng, dt))
        print("failures:", failures)
    """
    proc = run_child(code, {"NUMBA_ENABLE_CUDASIM": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "failures: []" in proc.stdout and proc.stdout.count("ok ") == 6, proc.stdout


# -- the float32 math the formulas share ----------------------------------------------------
@jit
def _apply_cpu(fn_id, x, y):
    for i in range(x.size):
        if fn_id == 0:
            y[i] = mathfn.exp(x[i])
        elif fn_id == 1:
            y[i] = mathfn.expm1(x[i])
        else:
            y[i] = mathfn.tanh(x[i])


@pytest.mark.parametrize("fn_id, ref, ulps", [(0, np.exp, 2), (1, np.expm1, 3), (2, np.tanh, 4)],
                         ids=["exp", "expm1", "tanh"])
def test_float32_polynomials_are_accurate(fn_id, ref, ulps):
    x = np.concatenate([np.linspace(-20, 20, 20001), np.geomspace(1e-30, 1, 500),
                        -np.geomspace(1e-30, 1, 500)]).astype(np.float32)
    if fn_id != 2:
        x = x[x < 80]
    y = np.empty_like(x)
    _apply_cpu(fn_id, x, y)
    want = ref(x.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    err = np.abs(y - want) / np.maximum(ulp, np.finfo(np.float32).tiny)
    assert err.max() <= ulps, f"worst at x = {x[np.argmax(err)]}: {err.max():.1f} ulp"


def test_float32_polynomials_at_the_edges():
    x = np.array([-1e30, -100, 100, 1e30, np.nan, 0.0], np.float32)
    for fn_id in range(3):
        y = np.empty_like(x)
        _apply_cpu(fn_id, x, y)
        assert np.isfinite(y[:4]).all() and np.isnan(y[4]) and y[5] == (1.0 if fn_id == 0
                                                                         else 0.0)
    y = np.empty_like(x)
    _apply_cpu(2, x, y)
    np.testing.assert_array_equal(y[:4], [-1, -1, 1, 1])
