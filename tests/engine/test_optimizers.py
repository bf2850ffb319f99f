"""Optimizers against Keras' update rules written in numpy; state, config, names."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine import optimizers
from dlrun.engine.core.graph import Parameter
from dlrun.errors import ConfigError


def keras_sgd(w, grads, lr, momentum=0.0, nesterov=False):
    """Keras SGD: v = m v - lr g; w += v  (Nesterov: w += m v - lr g)."""
    w, v = w.copy(), np.zeros_like(w)
    for g in grads:
        if momentum:
            v = momentum * v - lr * g
            w = w + (momentum * v - lr * g if nesterov else v)
        else:
            w = w - lr * g
    return w, v


@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(learning_rate=0.05, momentum=0.9),
                                dict(lr=0.02, momentum=0.7, nesterov=True)],
                         ids=["plain", "momentum", "nesterov"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_update_matches_keras(kw, dtype):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4)).astype(dtype)
    grads = [rng.standard_normal((3, 4)).astype(dtype) for _ in range(5)]
    p = Parameter(w0.copy(), "layer/kernel")
    opt = dl.optimizers.SGD(**kw)
    opt.build([p])
    for g in grads:
        opt.apply([(p, g)])
    w_ref, v_ref = keras_sgd(w0.astype(np.float64), [g.astype(np.float64) for g in grads],
                             opt.learning_rate, kw.get("momentum", 0.0),
                             kw.get("nesterov", False))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(p.value, w_ref, rtol=tol, atol=tol)
    assert p.value.dtype == dtype
    assert opt.iterations == 5
    if kw.get("momentum"):
        np.testing.assert_allclose(opt.get_state()["layer/kernel/velocity"], v_ref,
                                   rtol=tol, atol=tol)
    else:
        assert opt.get_state() == {}


# -- Keras 3 update rules, written out in numpy --------------------------------------------
def keras_adagrad(w, g, st, lr, initial_accumulator_value=0.1, epsilon=1e-7, **_):
    acc = st.setdefault("accumulator", np.full_like(w, initial_accumulator_value))
    acc += g * g
    return w - lr * g / np.sqrt(acc + epsilon)


def keras_rmsprop(w, g, st, lr, rho=0.9, momentum=0.0, epsilon=1e-7, **_):
    v = st.setdefault("velocity", np.zeros_like(w))
    v[...] = rho * v + (1 - rho) * g * g
    inc = lr * g / np.sqrt(v + epsilon)
    if momentum:
        m = st.setdefault("momentum", np.zeros_like(w))
        m[...] = momentum * m + inc
        return w - m
    return w - inc


def keras_adam(w, g, st, lr, t, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **_):
    m = st.setdefault("momentum", np.zeros_like(w))
    v = st.setdefault("velocity", np.zeros_like(w))
    m[...] = beta_1 * m + (1 - beta_1) * g
    v[...] = beta_2 * v + (1 - beta_2) * g * g
    m_hat, v_hat = m / (1 - beta_1 ** t), v / (1 - beta_2 ** t)
    # Keras folds the bias correction into the step: eps is scaled by sqrt(1 - b2^t)
    return w - lr * m_hat / (np.sqrt(v_hat) + epsilon / np.sqrt(1 - beta_2 ** t))


def keras_sgd_step(w, g, st, lr, momentum=0.0, nesterov=False, **_):
    if not momentum:
        return w - lr * g
    v = st.setdefault("velocity", np.zeros_like(w))
    v[...] = momentum * v - lr * g
    return w + (momentum * v - lr * g if nesterov else v)


RULES = {"SGD": keras_sgd_step, "Adagrad": keras_adagrad, "RMSprop": keras_rmsprop,
         "Adam": keras_adam, "AdamW": keras_adam}


def keras_trajectory(cls, ws, grad_seq, kw, lr_at):
    """Keras 3's apply(): clip, decay (w -= lr wd w), update_step; ws is a list of arrays."""
    ws = [w.astype(np.float64).copy() for w in ws]
    states = [{} for _ in ws]
    wd = kw.get("weight_decay", 0.004 if cls == "AdamW" else None)
    for t, grads in enumerate(grad_seq, start=1):
        lr = lr_at(t - 1)
        grads = [g.astype(np.float64) for g in grads]
        if kw.get("clipnorm"):
            c = kw["clipnorm"]
            grads = [g * c / max(np.sqrt(np.sum(g * g)), c) for g in grads]
        elif kw.get("global_clipnorm"):
            c = kw["global_clipnorm"]
            norm = np.sqrt(sum(np.sum(g * g) for g in grads))
            grads = [g * min(1.0, c / norm) for g in grads]
        elif kw.get("clipvalue"):
            grads = [np.clip(g, -kw["clipvalue"], kw["clipvalue"]) for g in grads]
        for i, g in enumerate(grads):
            if wd:
                ws[i] = ws[i] - ws[i] * wd * lr
            args = {k: v for k, v in kw.items() if k not in ("lr", "learning_rate")}
            if cls in ("Adam", "AdamW"):
                args["t"] = t
            ws[i] = RULES[cls](ws[i], g, states[i], lr, **args)
    return ws, states


CASES = [
    ("Adagrad", dict(learning_rate=0.1)),
    ("Adagrad", dict(lr=0.05, initial_accumulator_value=0.5, epsilon=1e-3)),
    ("RMSprop", dict(learning_rate=0.01)),
    ("RMSprop", dict(learning_rate=0.01, rho=0.8, momentum=0.7, epsilon=1e-4)),
    ("Adam", dict(learning_rate=0.01)),
    ("Adam", dict(lr=0.02, beta_1=0.5, beta_2=0.9, epsilon=1e-3)),
    ("AdamW", dict(learning_rate=0.05)),
    ("AdamW", dict(learning_rate=0.05, weight_decay=0.1, beta_1=0.8)),
    ("SGD", dict(learning_rate=0.1, weight_decay=0.05)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9, clipnorm=0.5)),
    ("Adam", dict(learning_rate=0.01, global_clipnorm=0.7)),
    ("RMSprop", dict(learning_rate=0.01, clipvalue=0.3, weight_decay=0.01)),
    ("Adagrad", dict(learning_rate=0.1, clipnorm=100.0)),   # norm below the limit: no-op
]


def run_optimizer(opt, ws, grad_seq):
    params = [Parameter(w.copy(), f"layer/w{i}") for i, w in enumerate(ws)]
    opt.build(params)
    for grads in grad_seq:
        kept = [g.copy() for g in grads]
        opt.apply(list(zip(params, grads)))
        for g, k in zip(grads, kept):
            np.testing.assert_array_equal(g, k)          # gradients are not clipped in place
    return params


@pytest.mark.parametrize("cls,kw", CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CASES)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trajectory_matches_keras(cls, kw, dtype):
    rng = np.random.default_rng(1)
    ws = [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(4).astype(dtype)]
    grad_seq = [[rng.standard_normal(w.shape).astype(dtype) for w in ws] for _ in range(6)]
    opt = getattr(dl.optimizers, cls)(**kw)
    params = run_optimizer(opt, ws, grad_seq)
    lr = kw.get("lr", kw.get("learning_rate"))
    want, states = keras_trajectory(cls, ws, grad_seq, kw, lambda t: lr)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for p, w in zip(params, want):
        assert p.value.dtype == dtype
        np.testing.assert_allclose(p.value, w, rtol=tol, atol=tol)
    got_state = opt.get_state()
    for i, st in enumerate(states):
        for k, v in st.items():
            np.testing.assert_allclose(got_state[f"layer/w{i}/{k}"], v, rtol=tol, atol=tol)
    assert sorted(got_state) == sorted(f"layer/w{i}/{k}" for i, st in enumerate(states)
                                       for k in st)
    assert opt.iterations == 6


def test_schedule_is_evaluated_per_step_from_iterations():
    rng = np.random.default_rng(2)
    ws = [rng.standard_normal((2, 3))]
    grad_seq = [[rng.standard_normal((2, 3))] for _ in range(7)]
    sched = dl.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    opt = dl.optimizers.SGD(learning_rate=sched, momentum=0.9)
    assert opt.learning_rate == 0.1
    params = run_optimizer(opt, ws, grad_seq)
    want, _ = keras_trajectory("SGD", ws, grad_seq, {"momentum": 0.9},
                               lambda t: 0.1 * 0.5 ** (t / 2))
    np.testing.assert_allclose(params[0].value, want[0], rtol=1e-12)
    assert opt.learning_rate == pytest.approx(0.1 * 0.5 ** 3.5)
    with pytest.raises(ConfigError, match="0.5"):
        opt.learning_rate = 0.5                      # a schedule's rate cannot be set


def test_clipping_handles_zero_gradients_and_refuses_two_kinds():
    p = Parameter(np.ones(3), "d/bias")
    for kw in (dict(clipnorm=1.0), dict(global_clipnorm=1.0)):
        opt = dl.optimizers.SGD(lr=0.1, **kw)
        opt.build([p])
        opt.apply([(p, np.zeros(3))])
        np.testing.assert_array_equal(p.value, 1.0)
    with pytest.raises(ConfigError, match="clipnorm=1.0.*clipvalue=2.0"):
        dl.optimizers.Adam(clipnorm=1, clipvalue=2)


@pytest.mark.parametrize("cls,kw", [("SGD", dict(lr=0.1, momentum=0.5)),
                                    ("Adagrad", dict(initial_accumulator_value=0.2)),
                                    ("RMSprop", dict(momentum=0.3, clipvalue=1.0)),
                                    ("Adam", dict(beta_1=0.8, global_clipnorm=2.0)),
                                    ("AdamW", dict(weight_decay=0.01)),
                                    ("Adam", dict(learning_rate=dl.schedules.CosineDecay(
                                        0.01, 100, alpha=0.1)))])
def test_state_and_config_round_trip(cls, kw):
    p = Parameter(np.ones(3, np.float32), "d/bias")
    opt = getattr(dl.optimizers, cls)(**kw)
    opt.build([p])
    for _ in range(2):
        opt.apply([(p, np.ones(3, np.float32))])
    state = opt.get_state()
    other = optimizers.from_config(cls, opt.get_config())
    other.set_state(state)
    other.iterations = opt.iterations
    assert other.get_config() == opt.get_config()
    assert other.learning_rate == opt.learning_rate
    assert sorted(other.get_state()) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(other.get_state()[k], state[k])
    # build() keeps restored state instead of zeroing it
    other.build([p])
    for k in state:
        np.testing.assert_array_equal(other.get_state()[k], state[k])
    # and the next update is the same
    q = Parameter(p.value.copy(), "d/bias")
    opt.apply([(p, np.full(3, 0.5, np.float32))])
    other.apply([(q, np.full(3, 0.5, np.float32))])
    np.testing.assert_array_equal(p.value, q.value)


def test_sgd_config_keys():
    assert dl.optimizers.SGD(lr=0.1, momentum=0.5).get_config() == {
        "learning_rate": 0.1, "momentum": 0.5, "nesterov": False, "weight_decay": None,
        "clipnorm": None, "clipvalue": None, "global_clipnorm": None}


def test_by_name_and_errors():
    for name, cls in [("sgd", "SGD"), ("adam", "Adam"), ("rmsprop", "RMSprop"),
                      ("adagrad", "Adagrad"), ("adamw", "AdamW"), ("Adam", "Adam")]:
        assert type(optimizers.get(name)).__name__ == cls
    opt = dl.optimizers.SGD()
    assert optimizers.get(opt) is opt
    assert opt.learning_rate == 0.01                 # Keras' defaults
    assert dl.optimizers.Adam().learning_rate == 0.001
    assert dl.optimizers.AdamW().weight_decay == 0.004
    for bad in ("adamax", 3, None):
        with pytest.raises(ConfigError, match=repr(bad)):
            optimizers.get(bad)
    with pytest.raises(ConfigError, match="momentum"):
        dl.optimizers.SGD(nesterov=True)
    with pytest.raises(ConfigError, match="learning_rate.*0"):
        dl.optimizers.SGD(learning_rate=0)
    with pytest.raises(ConfigError, match="'fast'"):
        dl.optimizers.Adam(learning_rate="fast")
    with pytest.raises(ConfigError, match="beta_1.*1.5"):
        dl.optimizers.Adam(beta_1=1.5)
    with pytest.raises(ConfigError, match="rho.*-0.1"):
        dl.optimizers.RMSprop(rho=-0.1)
    with pytest.raises(ConfigError, match="clipnorm.*0"):
        dl.optimizers.Adagrad(clipnorm=0)
    with pytest.raises(ConfigError, match="weight_decay.*None"):
        dl.optimizers.AdamW(weight_decay=None)
    with pytest.raises(ConfigError, match="'Adamax'"):
        optimizers.from_config("Adamax", {})
