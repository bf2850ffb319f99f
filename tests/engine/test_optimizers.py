"""Optimizers against Keras' update rules written in numpy; state, config, names."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine import optimizers
from dlrun.engine.graph import Parameter
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


def test_state_round_trip():
    p = Parameter(np.ones(3, np.float32), "d/bias")
    opt = dl.optimizers.SGD(lr=0.1, momentum=0.5)
    opt.build([p])
    opt.apply([(p, np.ones(3, np.float32))])
    state = opt.get_state()
    other = optimizers.from_config("SGD", opt.get_config())
    other.set_state(state)
    assert other.get_config() == opt.get_config() == \
        {"learning_rate": 0.1, "momentum": 0.5, "nesterov": False}
    np.testing.assert_array_equal(other.get_state()["d/bias/velocity"], state["d/bias/velocity"])
    # build() keeps restored state instead of zeroing it
    other.build([p])
    np.testing.assert_array_equal(other.get_state()["d/bias/velocity"], np.float32(-0.1))


def test_by_name_and_errors():
    assert isinstance(optimizers.get("sgd"), dl.optimizers.SGD)
    opt = dl.optimizers.SGD()
    assert optimizers.get(opt) is opt
    assert opt.learning_rate == 0.01                 # Keras' default
    for bad in ("adamw", 3, None):
        with pytest.raises(ConfigError, match=repr(bad)):
            optimizers.get(bad)
    with pytest.raises(ConfigError, match="momentum"):
        dl.optimizers.SGD(nesterov=True)
    with pytest.raises(ConfigError, match="learning_rate.*0"):
        dl.optimizers.SGD(learning_rate=0)
    with pytest.raises(ConfigError, match="'Adam'"):
        optimizers.from_config("Adam", {})
