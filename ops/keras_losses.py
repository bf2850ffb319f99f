"""Keras' other losses: hinge, squared hinge, categorical hinge, mean absolute error,
Kullback-Leibler divergence, Poisson and cosine similarity; and ``weighted_mean``, the
reduction a user's loss function (built with ``dlrun.backend``) ends in.

Each takes per-sample weights ``w`` and reduces as :mod:`dlrun.ops.losses` does:
``loss = sum_i w_i loss_i / batch``. A sample's loss is, as in Keras, the mean over its
elements of an elementwise term (hinge, squared hinge, MAE, Poisson: made by
:func:`dlrun.ops.losses.pair_loss`), or the mean over its rows (vectors along the last
axis) of a term computed on a whole row (categorical hinge, KL divergence, cosine
similarity: the row templates below, a CPU loop and a CUDA thread per row).

The formulas follow Keras' documentation (``keras.losses``):

* hinge ``max(1 - t p, 0)``, squared hinge its square (targets -1 or 1; the engine turns
  0/1 targets into -1/1 before training, as Keras does);
* categorical hinge ``max(neg - pos + 1, 0)``, ``pos = sum_j t_j p_j``,
  ``neg = max_j (1 - t_j) p_j`` (one-hot targets);
* mean absolute error ``|p - t|``; Poisson ``p - t log(p + EPS)``;
* KL divergence ``sum_j t_j log(t_j / p_j)``, both clipped into [EPS, 1];
* cosine similarity ``-sum_j t_j p_j / (|t| |p|)``, a norm ``sqrt(max(sum x^2, 1e-12))``
  as ``l2_normalize``.
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.elementwise import instantiate
from dlrun.ops.losses import EPS, check_weights, pair_loss, pair_shape, sample_means, \
    weights_sample
from dlrun.ops.reduce import block_sum
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None

# Keras' l2_normalize divides by sqrt(max(sum x^2, NORM_EPS)).
NORM_EPS = 1e-12


# -- elementwise terms: a sample's loss is their mean ------------------------------------------
@config.formula
def _hinge(p, t, wr):
    """w max(1 - t p, 0)"""
    m = 1.0 - t * p
    return m * wr if m > 0.0 else 0.0


@config.formula
def _hinge_grad(g, p, t):
    """d/dp of max(1 - t p, 0), times g: -t g where the margin is positive"""
    return -g * t if 1.0 - t * p > 0.0 else 0.0


@config.formula
def _squared_hinge(p, t, wr):
    """w max(1 - t p, 0)^2"""
    m = 1.0 - t * p
    return m * (m * wr) if m > 0.0 else 0.0


@config.formula
def _squared_hinge_grad(g, p, t):
    """d/dp of max(1 - t p, 0)^2, times g: -2 t g max(1 - t p, 0)"""
    m = 1.0 - t * p
    return -2.0 * g * t * m if m > 0.0 else 0.0


@config.formula
def _absolute_error(p, t, wr):
    """w |p - t|"""
    d = p - t
    return (d if d >= 0.0 else -d) * wr


@config.formula
def _absolute_error_grad(g, p, t):
    """d/dp of |p - t|, times g: g sign(p - t) (0 where p = t)"""
    if p > t:
        return g
    return -g if p < t else 0.0


@config.formula
def _poisson(p, t, wr):
    """w (p - t log(p + EPS))"""
    return (p - t * math.log(p + EPS)) * wr


@config.formula
def _poisson_grad(g, p, t):
    """d/dp of p - t log(p + EPS), times g"""
    return g * (1.0 - t / (p + EPS))


def _with_shape(make):
    """``sample(shape)`` of pair_loss from ``make(rng, shape) -> (pred, target)``."""
    def with_shape(shape):
        def sample(rng, dt):
            p, t = make(rng, shape)
            return (p.astype(dt), t.astype(dt), weights_sample(rng, shape[0], dt)), {}
        return sample
    return with_shape


def _signs(rng, shape):
    """targets -1/1; predictions kept 0.05 away from the hinge's kink (t p = 1)"""
    t = rng.choice([-1.0, 1.0], shape)
    p = rng.uniform(-2.0, 2.0, shape)
    near = np.abs(1.0 - t * p) < 0.05
    p[near] += 0.1 * t[near]
    return p, t


def _apart(rng, shape):
    """predictions kept 0.05 away from the targets (the kink of |p - t|)"""
    p, t = rng.uniform(-1.0, 1.0, shape), rng.uniform(-1.0, 1.0, shape)
    p[np.abs(p - t) < 0.05] += 0.1
    return p, t


def _rates(rng, shape):
    """positive predictions (rates) and counts"""
    return rng.uniform(0.2, 2.0, shape), rng.uniform(0.0, 3.0, shape)


def _ref(term):
    """A reference ``(p, t, w) -> (loss,)``: the Keras reduction of ``term(p, t)``."""
    def reference(p, t, w):
        per = term(p.astype(np.float64), t.astype(np.float64))
        return (np.asarray(sample_means(per, w), p.dtype),)
    return reference


pair_loss("hinge", _hinge, _hinge_grad, _with_shape(_signs),
          _ref(lambda p, t: np.maximum(1.0 - t * p, 0.0)), diff=("pred",))
pair_loss("squared_hinge", _squared_hinge, _squared_hinge_grad, _with_shape(_signs),
          _ref(lambda p, t: np.maximum(1.0 - t * p, 0.0) ** 2), diff=("pred",))
pair_loss("mae", _absolute_error, _absolute_error_grad, _with_shape(_apart),
          _ref(lambda p, t: np.abs(p - t)), diff=("pred",))
pair_loss("poisson", _poisson, _poisson_grad, _with_shape(_rates),
          _ref(lambda p, t: p - t * np.log(p + EPS)), diff=("pred",))


# -- row terms: a sample's loss is their mean over its rows (vectors along the last axis) ------
# Row templates, instantiated per loss with its row formula as _row (returns the row's
# loss) and its gradient as _row_grad (writes the row of dpred); rows are contiguous runs
# of n elements of the flat arrays, row r starting at r * n.
_row = _row_grad = None


@config.formula
def _rows(pred, w):
    """(n, rows, per): the length of a row, the number of rows, the rows of a sample"""
    n = pred.shape[pred.ndim - 1]
    rows = pred.size // n
    return n, rows, (rows // w.size if w.size else 0)


def _rows_cpu_template(pred, target, w, loss):
    """loss = sum_r w_sample(r) _row(pred_r, target_r) / rows"""
    n, rows, per = _rows(pred, w)
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    total = 0.0
    for r in range(rows):
        total += _row(pf, tf, r * n, n) * w[r // per]
    loss[()] = total / rows


def _rows_cuda_template(pred, target, w, loss):
    """loss = sum_r w_sample(r) _row(pred_r, target_r) / rows, one block"""
    n, rows, per = _rows(pred, w)
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    t = cuda.threadIdx.x
    total = 0.0
    for r in range(t, rows, cuda.blockDim.x):
        total += _row(pf, tf, r * n, n) * w[r // per]
    total = block_sum(total)
    if t == 0:
        loss[()] = total / rows


def _rows_grad_cpu_template(dy, pred, target, w, dpred):
    """dpred_r = _row_grad(dy w_sample(r) / rows, pred_r, target_r)"""
    n, rows, per = _rows(pred, w)
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    df = dpred.reshape(-1)
    g = dy[()] / rows
    for r in range(rows):
        _row_grad(g * w[r // per], pf, tf, r * n, n, df)


def _rows_grad_cuda_template(dy, pred, target, w, dpred):
    """dpred_r = _row_grad(dy w_sample(r) / rows, pred_r, target_r), a thread per row"""
    n, rows, per = _rows(pred, w)
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    df = dpred.reshape(-1)
    g = dy[()] / rows
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        _row_grad(g * w[r // per], pf, tf, r * n, n, df)


def _rows_shape(name):
    pair = pair_shape(name)

    def shape(pred: Spec, target: Spec, w: Spec) -> list:
        if len(pred.shape) < 2 or pred.shape[-1] < 1:
            raise OpError(f"{name} needs predictions of shape (batch, ..., n), a row of n "
                          f"values per sample at least; got {pred.shape}")
        return pair(pred, target, w)
    return shape


def _row_loss(name: str, row, row_grad, sample, reference) -> None:
    """Register a loss whose term is computed on whole rows, from its row formula and the
    formula of the row's gradient with respect to the predictions."""
    forward = instantiate(_rows_cpu_template, f"{name}_fwd_cpu", row, "cpu", _row=row)
    backward = instantiate(_rows_grad_cpu_template, f"{name}_bwd_cpu", row_grad, "cpu",
                           _row_grad=row_grad)
    mean = instantiate(_rows_cuda_template, f"{name}_fwd_cuda", row, "cuda", _row=row)
    each = instantiate(_rows_grad_cuda_template, f"{name}_bwd_cuda", row_grad, "cuda",
                       _row_grad=row_grad)

    def cuda_forward(pred, target, w, loss):
        mean[1, config.CUDA_BLOCK](pred, target, w, loss)

    def cuda_backward(dy, pred, target, w, dpred):
        if dpred is not None:
            each[config.grid_1d(pred.size // pred.shape[pred.ndim - 1])](dy, pred, target,
                                                                         w, dpred)

    cuda_forward.__doc__, cuda_backward.__doc__ = row.__doc__, row_grad.__doc__
    register(Op(
        name=name, inputs=("pred", "target", "w"), outputs=("loss",), shape=_rows_shape(name),
        saves=("pred", "target", "w"), diff=("pred",), forward=forward, backward=backward,
        cuda_forward=cuda_forward, cuda_backward=cuda_backward,
        sample=sample((4, 3)), big_sample=sample((9, 2, 5)), reference=reference))


@config.formula
def _clip_probability(x):
    """x clipped into [EPS, 1] (without min/max: numba 0.66+ fails on them for CUDA)"""
    q = float(x)
    if q < EPS:
        q = EPS
    elif q > 1.0:
        q = 1.0
    return q


@config.formula
def _kld_row(p, t, s, n):
    """sum_j t_j log(t_j / p_j), t and p clipped into [EPS, 1]"""
    total = 0.0
    for j in range(s, s + n):
        tj = _clip_probability(t[j])
        total += tj * math.log(tj / _clip_probability(p[j]))
    return total


@config.formula
def _kld_row_grad(g, p, t, s, n, dp):
    """dp_j = -g t_j / p_j inside the clip range [EPS, 1], 0 outside"""
    for j in range(s, s + n):
        q = p[j]
        dp[j] = -g * _clip_probability(t[j]) / q if EPS <= q <= 1.0 else 0.0


@config.formula
def _categorical_hinge_parts(p, t, s, n):
    """(neg - pos + 1, the first j where (1 - t_j) p_j is largest)"""
    pos = 0.0
    neg = (1.0 - t[s]) * p[s]
    at = s
    for j in range(s, s + n):
        pos += t[j] * p[j]
        v = (1.0 - t[j]) * p[j]
        if v > neg:
            neg = v
            at = j
    return neg - pos + 1.0, at


@config.formula
def _categorical_hinge_row(p, t, s, n):
    """max(neg - pos + 1, 0), pos = sum_j t_j p_j, neg = max_j (1 - t_j) p_j"""
    m, _ = _categorical_hinge_parts(p, t, s, n)
    return m if m > 0.0 else 0.0


@config.formula
def _categorical_hinge_row_grad(g, p, t, s, n, dp):
    """dp_j = g (-t_j + (1 - t_j) [j = argmax (1 - t) p]) where the margin is positive"""
    m, at = _categorical_hinge_parts(p, t, s, n)
    for j in range(s, s + n):
        d = 0.0
        if m > 0.0:
            d = -g * t[j]
            if j == at:
                d += g * (1.0 - t[j])
        dp[j] = d


@config.formula
def _cosine_parts(p, t, s, n):
    """(sum_j t_j p_j, |t|, sum_j p_j^2), |t| = sqrt(max(sum_j t_j^2, NORM_EPS))"""
    tp = 0.0
    tt = 0.0
    pp = 0.0
    for j in range(s, s + n):
        tp += t[j] * p[j]
        tt += t[j] * t[j]
        pp += p[j] * p[j]
    return tp, math.sqrt(tt if tt > NORM_EPS else NORM_EPS), pp


@config.formula
def _cosine_row(p, t, s, n):
    """-sum_j t_j p_j / (|t| |p|)"""
    tp, nt, pp = _cosine_parts(p, t, s, n)
    return -tp / (nt * math.sqrt(pp if pp > NORM_EPS else NORM_EPS))


@config.formula
def _cosine_row_grad(g, p, t, s, n, dp):
    """dp_j = g (-t_j / (|t| |p|) + sum(t p) p_j / (|t| |p|^3)), the second term only
    where |p|^2 > NORM_EPS (below, the norm is a constant)"""
    tp, nt, pp = _cosine_parts(p, t, s, n)
    npred = math.sqrt(pp if pp > NORM_EPS else NORM_EPS)
    c = tp / (npred * npred) if pp > NORM_EPS else 0.0
    for j in range(s, s + n):
        dp[j] = -g * (t[j] - c * p[j]) / (nt * npred)


def _probabilities(shape):
    def sample(rng, dt):
        p, t = rng.uniform(0.05, 0.95, shape), rng.uniform(0.0, 1.0, shape)
        return (p.astype(dt), t.astype(dt), weights_sample(rng, shape[0], dt)), {}
    return sample


def _one_hot(shape):
    """one-hot targets; predictions whose margins stay 0.05 away from the kink at 0"""
    def sample(rng, dt):
        t = np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]
        p = rng.uniform(-1.0, 1.0, shape)
        margin = np.max((1 - t) * p, axis=-1) - np.sum(t * p, axis=-1) + 1.0
        p += 0.1 * t * (np.abs(margin) < 0.05)[..., None]
        return (p.astype(dt), t.astype(dt), weights_sample(rng, shape[0], dt)), {}
    return sample


def _normal(shape):
    def sample(rng, dt):
        p, t = rng.standard_normal(shape), rng.standard_normal(shape)
        return (p.astype(dt), t.astype(dt), weights_sample(rng, shape[0], dt)), {}
    return sample


def _kld_ref(p, t, w):
    q = np.clip(p.astype(np.float64), EPS, 1.0)
    r = np.clip(t.astype(np.float64), EPS, 1.0)
    return (np.asarray(sample_means((r * np.log(r / q)).sum(axis=-1), w), p.dtype),)


def _categorical_hinge_ref(p, t, w):
    q, t = p.astype(np.float64), t.astype(np.float64)
    m = np.max((1 - t) * q, axis=-1) - np.sum(t * q, axis=-1) + 1.0
    return (np.asarray(sample_means(np.maximum(m, 0.0), w), p.dtype),)


def _cosine_ref(p, t, w):
    def unit(x):
        x = x.astype(np.float64)
        return x / np.sqrt(np.maximum((x * x).sum(axis=-1, keepdims=True), NORM_EPS))
    return (np.asarray(sample_means(-(unit(t) * unit(p)).sum(axis=-1), w), p.dtype),)


_row_loss("kld", _kld_row, _kld_row_grad, _probabilities, _kld_ref)
_row_loss("categorical_hinge", _categorical_hinge_row, _categorical_hinge_row_grad, _one_hot,
          _categorical_hinge_ref)
_row_loss("cosine_similarity", _cosine_row, _cosine_row_grad, _normal, _cosine_ref)


# -- weighted_mean: the end of a user's loss -----------------------------------------------
# A user loss gives each sample's losses (batch, ...); Keras reduces them as the built-in
# losses: the mean over a sample's elements, weighted, summed over the batch / batch.
def _weighted_mean_shape(x: Spec, w: Spec) -> list:
    check_float("weighted_mean", x=x)
    check_weights("weighted_mean", x, w)
    return [Spec((), x.dtype)]


@jit
def weighted_mean_fwd_cpu(x, w, loss):
    """loss = sum_k w_row(k) x_k / N"""
    xf = x.reshape(-1)
    per = xf.size // w.size if w.size else 0
    total = 0.0
    for r in range(w.size):
        for j in range(per):
            total += xf[r * per + j] * w[r]
    loss[()] = total / xf.size


@cuda_kernel
def _weighted_mean_fwd(x, w, loss):
    """loss = sum_k w_row(k) x_k / N, one block"""
    xf = x.reshape(-1)
    per = xf.size // w.size if w.size else 0
    t = cuda.threadIdx.x
    total = 0.0
    for k in range(t, xf.size, cuda.blockDim.x):
        total += xf[k] * w[k // per]
    total = block_sum(total)
    if t == 0:
        loss[()] = total / xf.size


def weighted_mean_fwd_cuda(x, w, loss):
    """Launch _weighted_mean_fwd (one block)."""
    _weighted_mean_fwd[1, config.CUDA_BLOCK](x, w, loss)


@jit
def weighted_mean_bwd_cpu(dy, w, dx):
    """dx_k = dy w_row(k) / N"""
    df = dx.reshape(-1)
    per = df.size // w.size if w.size else 0
    g = dy[()] / df.size
    for r in range(w.size):
        for j in range(per):
            df[r * per + j] = g * w[r]


@cuda_kernel
def _weighted_mean_bwd(dy, w, dx):
    """dx_k = dy w_row(k) / N (grid-stride)"""
    df = dx.reshape(-1)
    per = df.size // w.size if w.size else 0
    g = dy[()] / df.size
    for k in range(cuda.grid(1), df.size, cuda.gridsize(1)):
        df[k] = g * w[k // per]


def weighted_mean_bwd_cuda(dy, w, dx):
    """Launch _weighted_mean_bwd (grid-stride over dx)."""
    _weighted_mean_bwd[config.grid_1d(dx.size)](dy, w, dx)


def _weighted_mean_sample(shape):
    def sample(rng, dt):
        return (rng.standard_normal(shape).astype(dt), weights_sample(rng, shape[0], dt)), {}
    return sample


register(Op(
    name="weighted_mean", inputs=("x", "w"), outputs=("loss",), shape=_weighted_mean_shape,
    saves=("w",), diff=("x",), forward=weighted_mean_fwd_cpu, backward=weighted_mean_bwd_cpu,
    cuda_forward=weighted_mean_fwd_cuda, cuda_backward=weighted_mean_bwd_cuda,
    sample=_weighted_mean_sample((4, 3)), big_sample=_weighted_mean_sample((37, 5)),
    reference=lambda x, w: (np.asarray(sample_means(x.astype(np.float64), w), x.dtype),)))
