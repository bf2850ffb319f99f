"""Per-sample weights in the loss ops, with Keras' meaning: ``loss = sum_i w_i loss_i /
batch``, each sample's gradient times ``w_i``, a zero weight removing the sample. The
generic tests (test_ops.py: reference, gradcheck, adjoint) already run every loss with
weights that include a zero; these check the meaning against numpy written here."""
from __future__ import annotations

import numpy as np
import pytest

from dlrun import ops
from dlrun.ops import OpError, Spec

LOSSES = ["softmax_ce", "softmax_ce_onehot", "mse", "binary_ce", "hinge", "squared_hinge",
          "categorical_hinge", "mae", "kld", "poisson", "cosine_similarity"]
EPS = 1e-7


def problem(name, n=6, c=4, seed=0, dtype=np.float64):
    """(prediction, target) of a batch of n."""
    rng = np.random.default_rng(seed)
    if name.startswith("softmax_ce"):
        logits = rng.standard_normal((n, c)).astype(dtype)
        labels = rng.integers(0, c, n)
        return logits, (labels if name == "softmax_ce" else np.eye(c, dtype=dtype)[labels])
    if name in KERAS:
        pred, target = KERAS[name][0](rng, (n, 3, 2))
        return pred.astype(dtype), target.astype(dtype)
    lo = 0.05 if name == "binary_ce" else -1.0
    return (rng.uniform(lo, 0.95, (n, 3, 2)).astype(dtype),
            rng.uniform(0.0, 0.95, (n, 3, 2)).astype(dtype))


def _signs(rng, shape):
    return rng.uniform(-2.0, 2.0, shape), rng.choice([-1.0, 1.0], shape)


def _one_hot(rng, shape):
    return rng.uniform(-1.0, 1.0, shape), np.eye(shape[-1])[rng.integers(0, shape[-1],
                                                                         shape[:-1])]


def _unit(x):
    return x / np.sqrt(np.maximum((x * x).sum(axis=-1, keepdims=True), 1e-12))


# Keras' losses as its documentation writes them (keras.losses), on numpy arrays:
# name -> (problem maker, loss per element (or per row, reducing the last axis))
KERAS = {
    "hinge": (_signs, lambda p, t: np.maximum(1 - t * p, 0)),
    "squared_hinge": (_signs, lambda p, t: np.square(np.maximum(1 - t * p, 0))),
    "categorical_hinge": (_one_hot, lambda p, t: np.maximum(
        np.amax((1 - t) * p, axis=-1) - np.sum(t * p, axis=-1) + 1, 0)),
    "mae": (lambda rng, s: (rng.uniform(-1, 1, s), rng.uniform(-1, 1, s)),
            lambda p, t: np.abs(p - t)),
    "kld": (lambda rng, s: (rng.uniform(0.05, 1, s), rng.uniform(0, 1, s)),
            lambda p, t: np.sum(np.clip(t, EPS, 1) * np.log(np.clip(t, EPS, 1)
                                                            / np.clip(p, EPS, 1)), axis=-1)),
    "poisson": (lambda rng, s: (rng.uniform(0.1, 2, s), rng.uniform(0, 3, s)),
                lambda p, t: p - t * np.log(p + EPS)),
    "cosine_similarity": (lambda rng, s: (rng.standard_normal(s), rng.standard_normal(s)),
                          lambda p, t: -np.sum(_unit(t) * _unit(p), axis=-1)),
}


def per_sample_losses(name, pred, target) -> np.ndarray:
    """Each sample's loss, in plain numpy (the mean over its features)."""
    if name in KERAS:
        return KERAS[name][1](pred, target).reshape(len(pred), -1).mean(axis=1)
    if name.startswith("softmax_ce"):
        z = pred - pred.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        if name == "softmax_ce":
            return -logp[np.arange(len(target)), target]
        return -(target * logp).sum(axis=1)
    if name == "mse":
        return ((pred - target) ** 2).reshape(len(pred), -1).mean(axis=1)
    q = np.clip(pred, 1e-7, 1 - 1e-7)
    return (-(target * np.log(q) + (1 - target) * np.log(1 - q))).reshape(len(pred), -1) \
        .mean(axis=1)


def run(name, pred, target, w):
    """(loss, gradient of the prediction) from the CPU kernels."""
    op = ops.get(name)
    specs = op.infer([Spec(a.shape, a.dtype) for a in (pred, target, w)], {})
    outs = [np.full(s.shape, np.nan, s.dtype) for s in specs]
    op.forward(pred, target, w, *outs)
    named = {"logits": pred, "pred": pred, "labels": target, "targets": target,
             "target": target, "w": w} | dict(zip(op.outputs, outs))
    grads = [np.full(pred.shape, np.nan) if d == op.diff[0] else None for d in op.diff]
    op.backward(np.ones((), pred.dtype), *(named[s] for s in op.saves), *grads)
    return float(outs[0]), grads[0]


@pytest.mark.parametrize("name", LOSSES)
def test_weighted_loss_is_the_weighted_sum_over_the_batch_size(name):
    pred, target = problem(name)
    w = np.array([0.5, 0.0, 2.0, 1.0, 1.5, 0.25])
    loss, _ = run(name, pred, target, w)
    assert loss == pytest.approx((w * per_sample_losses(name, pred, target)).sum() / len(w),
                                 rel=1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_a_zero_weight_removes_the_sample(name):
    pred, target = problem(name)
    w = np.array([1.0, 0.0, 2.0, 1.0, 0.0, 0.5])
    keep = w != 0
    loss, grad = run(name, pred, target, w)
    loss_kept, grad_kept = run(name, pred[keep], target[keep], w[keep])
    # the same samples, over a batch of 6 instead of 4
    assert loss == pytest.approx(loss_kept * keep.sum() / len(w), rel=1e-12)
    np.testing.assert_allclose(grad[keep], grad_kept * keep.sum() / len(w), rtol=1e-12)
    assert (grad[~keep] == 0).all()
    # and what the removed samples hold does not matter
    pred2 = pred.copy()
    pred2[~keep] = pred[0] if name.startswith("softmax") else 0.5
    assert run(name, pred2, target, w)[0] == loss


@pytest.mark.parametrize("name", LOSSES)
def test_each_sample_gradient_is_scaled_by_its_weight(name):
    pred, target = problem(name)
    ones = np.ones(len(pred))
    w = np.linspace(0.0, 2.0, len(pred))
    _, g1 = run(name, pred, target, ones)
    _, gw = run(name, pred, target, w)
    np.testing.assert_allclose(gw, g1 * w.reshape((-1,) + (1,) * (pred.ndim - 1)),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unit_weights_give_the_unweighted_mean(name, dtype):
    pred, target = problem(name, dtype=dtype)
    loss, _ = run(name, pred, target, np.ones(len(pred), dtype))
    assert loss == pytest.approx(per_sample_losses(name, pred.astype(np.float64), target)
                                 .mean(), rel=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_weights_of_the_wrong_shape_or_dtype_are_refused(name):
    pred, target = problem(name)
    op = ops.get(name)
    specs = [Spec(pred.shape, pred.dtype), Spec(target.shape, target.dtype)]
    with pytest.raises(OpError, match=r"\(6,\).*got \(5,\) float64"):
        op.infer(specs + [Spec((5,), np.float64)], {})
    with pytest.raises(OpError, match=r"float64.*got \(6,\) float32"):
        op.infer(specs + [Spec((6,), np.float32)], {})
    with pytest.raises(OpError, match="3 inputs"):
        op.infer(specs, {})


# -- the examples of Keras' documentation (keras.io, tf.keras.losses) -------------------------
@pytest.mark.parametrize("name, pred, target, w, expected", [
    # Hinge: y_true [[0, 1], [0, 0]] (0/1 read as -1/1), y_pred [[0.6, 0.4], [0.4, 0.6]]
    ("hinge", [[0.6, 0.4], [0.4, 0.6]], [[-1, 1], [-1, -1]], [1, 1], 1.3),
    ("hinge", [[0.6, 0.4], [0.4, 0.6]], [[-1, 1], [-1, -1]], [1, 0], 0.55),
    ("squared_hinge", [[0.6, 0.4], [0.4, 0.6]], [[-1, 1], [-1, -1]], [1, 1], 1.86),
    ("poisson", [[1, 1], [0, 0]], [[0, 1], [0, 0]], [1, 1], 0.5),
    ("poisson", [[1, 1], [0, 0]], [[0, 1], [0, 0]], [0.8, 0.2], 0.4),
    ("mae", [[1, 1], [1, 0]], [[0, 1], [0, 0]], [1, 1], 0.5),
    ("mae", [[1, 1], [1, 0]], [[0, 1], [0, 0]], [0.7, 0.3], 0.25),
    ("kld", [[0.6, 0.4], [0.4, 0.6]], [[0, 1], [0, 0]], [1, 1], 0.458),
    ("kld", [[0.6, 0.4], [0.4, 0.6]], [[0, 1], [0, 0]], [0.8, 0.2], 0.366),
    ("cosine_similarity", [[1, 0], [1, 1]], [[0, 1], [1, 1]], [1, 1], -0.5),
    ("cosine_similarity", [[1, 0], [1, 1]], [[0, 1], [1, 1]], [0.8, 0.2], -0.1),
    ("categorical_hinge", [[0.6, 0.4], [0.4, 0.6]], [[0, 1], [0, 0]], [1, 1], 1.4),
    ("categorical_hinge", [[0.6, 0.4], [0.4, 0.6]], [[0, 1], [0, 0]], [1, 0], 0.6),
])
def test_the_values_of_keras_documentation(name, pred, target, w, expected):
    loss, _ = run(name, *(np.asarray(a, np.float32) for a in (pred, target, w)))
    assert loss == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("name", ["categorical_hinge", "kld", "cosine_similarity"])
def test_row_losses_need_a_row_per_sample(name):
    with pytest.raises(OpError, match=r"\(batch, \.\.\., n\).*\(6,\)"):
        ops.get(name).infer([Spec((6,), np.float32)] * 3, {})
