"""Losses, each reduced to a scalar mean over the batch.

A softmax output followed by cross entropy is one fused op (``softmax_ce`` for integer
labels, ``softmax_ce_onehot`` for one-hot targets): it works on the logits with the
log-sum-exp trick, so it never takes ``log(0)``, and its gradient is just ``p - t``.
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops.config import jit
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# Keras clips probabilities into [EPS, 1 - EPS] before taking logs.
EPS = 1e-7


def _ce_shape(logits: Spec, labels: Spec) -> list:
    check_float("softmax_ce", logits=logits)
    if len(logits.shape) != 2:
        raise OpError(f"softmax_ce needs logits of shape (batch, classes); got {logits.shape}")
    if labels.shape != logits.shape[:1] or labels.dtype.kind not in "iu":
        raise OpError(f"softmax_ce needs integer labels of shape ({logits.shape[0]},); got "
                      f"{labels.shape} {labels.dtype}")
    return [Spec((), logits.dtype), Spec(logits.shape, logits.dtype)]


@jit
def softmax_ce_fwd_cpu(logits, labels, loss, p):
    """loss = mean_i -log softmax(logits_i)[labels_i] ; p = softmax(logits)"""
    n, c = logits.shape
    total = 0.0
    for i in range(n):
        t = labels[i]
        if t < 0 or t >= c:
            raise ValueError("softmax_ce: a label is outside [0, classes)")
        m = logits[i, 0]
        for j in range(1, c):
            m = max(m, logits[i, j])
        s = 0.0
        for j in range(c):
            e = math.exp(logits[i, j] - m)
            p[i, j] = e
            s += e
        for j in range(c):
            p[i, j] /= s
        total += math.log(s) + m - logits[i, t]
    loss[()] = total / n


@jit
def softmax_ce_bwd_cpu(dy, labels, p, dlogits):
    """dlogits = dy * (p - onehot(labels)) / n"""
    n, c = p.shape
    g = dy[()] / n
    for i in range(n):
        for j in range(c):
            dlogits[i, j] = g * p[i, j]
        dlogits[i, labels[i]] -= g


def _ce_ref(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(labels)), labels].mean()
    return np.asarray(loss, logits.dtype), np.exp(logp)


register(Op(
    name="softmax_ce", inputs=("logits", "labels"), outputs=("loss", "p"),
    shape=_ce_shape, saves=("labels", "p"), diff=("logits",),
    forward=softmax_ce_fwd_cpu, backward=softmax_ce_bwd_cpu,
    sample=lambda rng, dt: ((rng.standard_normal((5, 4)).astype(dt),
                             rng.integers(0, 4, 5).astype(np.int64)), {}),
    reference=_ce_ref,
))


# -- one-hot targets ---------------------------------------------------------------------
def _ce1h_shape(logits: Spec, targets: Spec) -> list:
    check_float("softmax_ce_onehot", logits=logits, targets=targets)
    if len(logits.shape) != 2 or targets.shape != logits.shape:
        raise OpError(f"softmax_ce_onehot needs logits and one-hot targets of one shape "
                      f"(batch, classes); got {logits.shape} and {targets.shape}")
    return [Spec((), logits.dtype), Spec(logits.shape, logits.dtype)]


@jit
def softmax_ce_onehot_fwd_cpu(logits, targets, loss, p):
    """loss = mean_i -sum_j t_ij log softmax(logits_i)_j ; p = softmax(logits)"""
    n, c = logits.shape
    total = 0.0
    for i in range(n):
        m = logits[i, 0]
        for j in range(1, c):
            m = max(m, logits[i, j])
        s = 0.0
        for j in range(c):
            e = math.exp(logits[i, j] - m)
            p[i, j] = e
            s += e
        lse = math.log(s) + m
        for j in range(c):
            p[i, j] /= s
            total += targets[i, j] * (lse - logits[i, j])
    loss[()] = total / n


@jit
def softmax_ce_onehot_bwd_cpu(dy, targets, p, dlogits):
    """dlogits = dy * (p * sum_j t_j - t) / n   (= p - t for one-hot rows)"""
    n, c = p.shape
    g = dy[()] / n
    for i in range(n):
        st = 0.0
        for j in range(c):
            st += targets[i, j]
        for j in range(c):
            dlogits[i, j] = g * (p[i, j] * st - targets[i, j])


def _ce1h_ref(logits, targets):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return np.asarray(-(targets * logp).sum(axis=1).mean(), logits.dtype), np.exp(logp)


def _ce1h_sample(rng, dt):
    t = np.eye(4, dtype=dt)[rng.integers(0, 4, 5)]
    return (rng.standard_normal((5, 4)).astype(dt), t), {}


register(Op(
    name="softmax_ce_onehot", inputs=("logits", "targets"), outputs=("loss", "p"),
    shape=_ce1h_shape, saves=("targets", "p"), diff=("logits",),
    forward=softmax_ce_onehot_fwd_cpu, backward=softmax_ce_onehot_bwd_cpu,
    sample=_ce1h_sample, reference=_ce1h_ref,
))


# -- mean squared error ------------------------------------------------------------------
def _pair_shape(name):
    def shape(pred: Spec, target: Spec) -> list:
        check_float(name, pred=pred, target=target)
        if pred.shape != target.shape:
            raise OpError(f"{name} needs predictions and targets of one shape; got "
                          f"{pred.shape} and {target.shape}")
        return [Spec((), pred.dtype)]
    return shape


@jit
def mse_fwd_cpu(pred, target, loss):
    """loss = mean (pred - target)^2"""
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    total = 0.0
    for i in range(pf.size):
        d = pf[i] - tf[i]
        total += d * d
    loss[()] = total / pf.size


@jit
def mse_bwd_cpu(dy, pred, target, dpred, dtarget):
    """dpred = 2 dy (pred - target) / N ; dtarget = -dpred"""
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    g = 2.0 * dy[()] / pf.size
    if dpred is not None:
        dp = dpred.reshape(-1)
        for i in range(pf.size):
            dp[i] = g * (pf[i] - tf[i])
    if dtarget is not None:
        dt = dtarget.reshape(-1)
        for i in range(pf.size):
            dt[i] = g * (tf[i] - pf[i])


def _pair_sample(lo, hi):
    def sample(rng, dt):
        return (rng.uniform(lo, hi, (4, 3)).astype(dt), rng.uniform(lo, hi, (4, 3)).astype(dt)), {}
    return sample


register(Op(
    name="mse", inputs=("pred", "target"), outputs=("loss",), shape=_pair_shape("mse"),
    saves=("pred", "target"), forward=mse_fwd_cpu, backward=mse_bwd_cpu,
    sample=_pair_sample(-1.0, 1.0),
    reference=lambda p, t: (np.asarray(((p - t) ** 2).mean(), p.dtype),),
))


# -- binary cross entropy (on probabilities) ---------------------------------------------
@jit
def binary_ce_fwd_cpu(pred, target, loss):
    """loss = -mean t log p + (1 - t) log(1 - p), p clipped into [EPS, 1 - EPS]"""
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    total = 0.0
    for i in range(pf.size):
        p = min(max(pf[i], EPS), 1.0 - EPS)
        total -= tf[i] * math.log(p) + (1.0 - tf[i]) * math.log(1.0 - p)
    loss[()] = total / pf.size


@jit
def binary_ce_bwd_cpu(dy, pred, target, dpred):
    """dpred = dy (p - t) / (p (1 - p)) / N inside the clip range, 0 outside"""
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    df = dpred.reshape(-1)
    g = dy[()] / pf.size
    for i in range(pf.size):
        p = pf[i]
        if p < EPS or p > 1.0 - EPS:
            df[i] = 0.0
        else:
            df[i] = g * (p - tf[i]) / (p * (1.0 - p))


def _bce_ref(p, t):
    q = np.clip(p, EPS, 1 - EPS)
    return (np.asarray(-(t * np.log(q) + (1 - t) * np.log(1 - q)).mean(), p.dtype),)


register(Op(
    name="binary_ce", inputs=("pred", "target"), outputs=("loss",),
    shape=_pair_shape("binary_ce"), saves=("pred", "target"), diff=("pred",),
    forward=binary_ce_fwd_cpu, backward=binary_ce_bwd_cpu,
    sample=_pair_sample(0.1, 0.9), reference=_bce_ref,
))
