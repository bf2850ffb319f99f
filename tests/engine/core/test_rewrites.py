"""Plain SGD fused into the weight gradient's product (CPU plans): the same training as the
optimizer's own update, and left alone wherever something else needs the gradient."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine.models.program import plain_sgd


def _data():
    rng = np.random.default_rng(0)
    return rng.random((40, 8), dtype=np.float32), rng.integers(0, 3, 40)


def _model(reg=None):
    dl.set_seed(0)
    return dl.Sequential([dl.layers.Dense(16, activation="relu", input_shape=(8,),
                                          kernel_regularizer=reg),
                          dl.layers.Dense(3, activation="softmax")])


def _labels(model):
    return model.program("train", 10).plan.describe().split("\n")


def _train(opt, reg=None):
    x, y = _data()
    m = _model(reg)
    m.compile(opt, "sparse_categorical_crossentropy")
    m.fit(x, y, batch_size=10, epochs=3, verbose=0, shuffle=False)
    return m


def _numpy_sgd(lr_at, epochs=3):
    """The same MLP trained by plain SGD, written in numpy (float64)."""
    x, y = _data()
    ws = [w.astype(np.float64) for w in _model().get_weights()]
    step = 0
    for _ in range(epochs):
        for b in range(0, 40, 10):
            xb, yb = x[b:b + 10].astype(np.float64), y[b:b + 10]
            h = np.maximum(xb @ ws[0] + ws[1], 0)
            z = h @ ws[2] + ws[3]
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            dz = p.copy()
            dz[np.arange(10), yb] -= 1
            dz /= 10
            dh = (dz @ ws[2].T) * (h > 0)
            grads = [xb.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
            lr = lr_at(step)
            ws = [w - lr * g for w, g in zip(ws, grads)]
            step += 1
    return ws


def test_plain_sgd_is_fused_and_trains_as_numpy_sgd():
    m = _train(dl.optimizers.SGD(0.1))
    assert _labels(m).count("matmul.backward+sgd") == 2
    for got, want in zip(m.get_weights(), _numpy_sgd(lambda t: 0.1)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)


def test_a_schedule_reaches_the_fused_steps():
    sched = dl.schedules.ExponentialDecay(0.2, decay_steps=1, decay_rate=0.8)
    m = _train(dl.optimizers.SGD(sched))
    assert "matmul.backward+sgd" in _labels(m)
    for got, want in zip(m.get_weights(), _numpy_sgd(lambda t: 0.2 * 0.8 ** t)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("opt", [
    lambda: dl.optimizers.SGD(0.1, momentum=0.9),
    lambda: dl.optimizers.SGD(0.1, clipnorm=1.0),
    lambda: dl.optimizers.SGD(0.1, weight_decay=0.01),
    lambda: dl.optimizers.Adam(0.01),
])
def test_not_fused_when_the_optimizer_needs_the_gradient(opt):
    o = opt()
    assert not plain_sgd(o)
    assert "matmul.backward+sgd" not in _labels(_train(o))


def test_a_regularised_kernel_keeps_its_gradient():
    m = _train(dl.optimizers.SGD(0.1), reg=dl.regularizers.l2(0.01))
    # the first kernel has a penalty (its gradient has two terms); the second is fused
    assert _labels(m).count("matmul.backward+sgd") == 1


def test_a_shared_weight_is_not_fused():
    dl.set_seed(0)
    inp = dl.Input(shape=(8,))
    shared = dl.layers.Dense(8, activation="tanh")
    out = dl.layers.Dense(3, activation="softmax")(shared(shared(inp)))
    m = dl.Model(inp, out)
    m.compile(dl.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    x, y = _data()
    before = m.get_weights()
    m.fit(x, y, batch_size=10, epochs=1, verbose=0)
    assert _labels(m).count("matmul.backward+sgd") == 1         # only the head's kernel
    assert not np.allclose(m.get_weights()[0], before[0])
