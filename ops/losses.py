"""Losses, each reduced to a scalar: the per-sample weighted mean over the batch.

Every loss takes per-sample weights ``w`` (shape (batch,), the predictions' float dtype;
no gradient), with Keras' meaning: ``loss = sum_i w_i loss_i / batch`` (divided by the
batch size, not by the weights' sum), each sample's gradient multiplied by ``w_i``, a zero
weight removing the sample. A sample's loss is its mean over the features. With every
weight 1 the results are those of the unweighted loss to the bit: terms and gradients are
computed as without weights, then multiplied by ``w_i``.

A softmax output followed by cross entropy is one fused op (``softmax_ce`` for integer
labels, ``softmax_ce_onehot`` for one-hot targets): it works on the logits with the
log-sum-exp trick, so it never takes ``log(0)``, and its gradient is just ``p - t``.

On CUDA a loss is one block (:func:`dlrun.ops.reduce.block_sum`); a kernel cannot raise,
so a label outside [0, classes) makes the loss NaN there.
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops import config
from dlrun.ops.activations import softmax_row
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.elementwise import instantiate
from dlrun.ops.reduce import block_sum
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None

# Keras clips probabilities into [EPS, 1 - EPS] before taking logs.
EPS = 1e-7


def check_weights(op: str, pred: Spec, w: Spec) -> None:
    if len(pred.shape) < 1 or w.shape != pred.shape[:1] or w.dtype != pred.dtype:
        raise OpError(f"{op} needs sample weights of shape ({pred.shape[0] if pred.shape else 0},) "
                      f"and dtype {pred.dtype}, one per sample; got {w.shape} {w.dtype}")


def weights_sample(rng, n: int, dtype):
    """Sample weights in [0, 2), one of them 0 (a sample that must not count)."""
    w = rng.uniform(0.0, 2.0, n).astype(dtype)
    w[1] = 0.0
    return w


# -- softmax + cross entropy, integer labels --------------------------------------------------
def _ce_shape(logits: Spec, labels: Spec, w: Spec) -> list:
    check_float("softmax_ce", logits=logits)
    if len(logits.shape) != 2:
        raise OpError(f"softmax_ce needs logits of shape (batch, classes); got {logits.shape}")
    if labels.shape != logits.shape[:1] or labels.dtype.kind not in "iu":
        raise OpError(f"softmax_ce needs integer labels of shape ({logits.shape[0]},); got "
                      f"{labels.shape} {labels.dtype}")
    check_weights("softmax_ce", logits, w)
    return [Spec((), logits.dtype), Spec(logits.shape, logits.dtype)]


@jit
def softmax_ce_fwd_cpu(logits, labels, w, loss, p):
    """loss = sum_i w_i (-log softmax(logits_i)[labels_i]) / n ; p = softmax(logits)"""
    n, c = logits.shape
    total = 0.0
    for i in range(n):
        t = labels[i]
        if t < 0 or t >= c:
            raise ValueError("softmax_ce: a label is outside [0, classes)")
        total += (softmax_row(logits, p, i) - logits[i, t]) * w[i]
    loss[()] = total / n


@cuda_kernel
def _softmax_ce_fwd(logits, labels, w, loss, p):
    """loss = sum_i w_i (-log softmax(logits_i)[labels_i]) / n ; p = softmax(logits)"""
    n, c = logits.shape
    t = cuda.threadIdx.x
    total = 0.0
    for i in range(t, n, cuda.blockDim.x):
        lse = softmax_row(logits, p, i)
        k = labels[i]
        total += (lse - logits[i, k]) * w[i] if 0 <= k < c else math.nan
    total = block_sum(total)
    if t == 0:
        loss[()] = total / n


def softmax_ce_fwd_cuda(logits, labels, w, loss, p):
    """Launch _softmax_ce_fwd (one block, a thread per row)."""
    _softmax_ce_fwd[1, config.CUDA_BLOCK](logits, labels, w, loss, p)


@jit
def softmax_ce_bwd_cpu(dy, labels, p, w, dlogits):
    """dlogits = dy w_i (p - onehot(labels)) / n"""
    n, c = p.shape
    g = dy[()] / n
    for i in range(n):
        gw = g * w[i]
        for j in range(c):
            dlogits[i, j] = gw * p[i, j]
        dlogits[i, labels[i]] -= gw


@cuda_kernel
def _softmax_ce_bwd(dy, labels, p, w, dlogits):
    """dlogits = dy w_i (p - onehot(labels)) / n"""
    n, c = p.shape
    g = dy[()] / n
    for k in range(cuda.grid(1), n * c, cuda.gridsize(1)):
        i = k // c
        j = k - i * c
        gw = g * w[i]
        dlogits[i, j] = gw * p[i, j]
        if j == labels[i]:
            dlogits[i, j] -= gw


def softmax_ce_bwd_cuda(dy, labels, p, w, dlogits):
    """Launch _softmax_ce_bwd (grid-stride over the elements)."""
    _softmax_ce_bwd[config.grid_1d(p.size)](dy, labels, p, w, dlogits)


def _log_softmax(logits):
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _ce_ref(logits, labels, w):
    logp = _log_softmax(logits)
    loss = -(w * logp[np.arange(len(labels)), labels]).sum() / len(labels)
    return np.asarray(loss, logits.dtype), np.exp(logp).astype(logits.dtype)


def _ce_sample(n: int, c: int, onehot: bool = False):
    """logits (n, c), labels (one-hot if ``onehot``), weights"""
    def sample(rng, dt):
        logits = rng.standard_normal((n, c)).astype(dt)
        labels = rng.integers(0, c, n).astype(np.int64)
        target = np.eye(c, dtype=dt)[labels] if onehot else labels
        return (logits, target, weights_sample(rng, n, dt)), {}
    return sample


register(Op(
    name="softmax_ce", inputs=("logits", "labels", "w"), outputs=("loss", "p"),
    shape=_ce_shape, saves=("labels", "p", "w"), diff=("logits",),
    forward=softmax_ce_fwd_cpu, backward=softmax_ce_bwd_cpu,
    cuda_forward=softmax_ce_fwd_cuda, cuda_backward=softmax_ce_bwd_cuda,
    sample=_ce_sample(5, 4), big_sample=_ce_sample(37, 6), reference=_ce_ref,
))


# -- softmax + cross entropy, one-hot targets -------------------------------------------------
def _ce1h_shape(logits: Spec, targets: Spec, w: Spec) -> list:
    check_float("softmax_ce_onehot", logits=logits, targets=targets)
    if len(logits.shape) != 2 or targets.shape != logits.shape:
        raise OpError(f"softmax_ce_onehot needs logits and one-hot targets of one shape "
                      f"(batch, classes); got {logits.shape} and {targets.shape}")
    check_weights("softmax_ce_onehot", logits, w)
    return [Spec((), logits.dtype), Spec(logits.shape, logits.dtype)]


@config.formula
def _onehot_row_loss(logits, targets, w, p, i, total):
    """p[i] = softmax(logits[i]); returns total + w_i sum_j t_ij (lse_i - logits_ij), the
    targets weighted before the product (t w_i = t exactly when w_i = 1)"""
    lse = softmax_row(logits, p, i)
    wi = float(w[i])
    for j in range(logits.shape[1]):
        total += targets[i, j] * wi * (lse - logits[i, j])
    return total


@jit
def softmax_ce_onehot_fwd_cpu(logits, targets, w, loss, p):
    """loss = sum_i w_i (-sum_j t_ij log softmax(logits_i)_j) / n ; p = softmax(logits)"""
    n = logits.shape[0]
    total = 0.0
    for i in range(n):
        total = _onehot_row_loss(logits, targets, w, p, i, total)
    loss[()] = total / n


@cuda_kernel
def _softmax_ce_onehot_fwd(logits, targets, w, loss, p):
    """loss = sum_i w_i (-sum_j t_ij log softmax(logits_i)_j) / n ; p = softmax(logits)"""
    n = logits.shape[0]
    t = cuda.threadIdx.x
    total = 0.0
    for i in range(t, n, cuda.blockDim.x):
        total = _onehot_row_loss(logits, targets, w, p, i, total)
    total = block_sum(total)
    if t == 0:
        loss[()] = total / n


def softmax_ce_onehot_fwd_cuda(logits, targets, w, loss, p):
    """Launch _softmax_ce_onehot_fwd (one block, a thread per row)."""
    _softmax_ce_onehot_fwd[1, config.CUDA_BLOCK](logits, targets, w, loss, p)


@config.formula
def _onehot_row_grad(dy, targets, p, w, dlogits, i):
    """dlogits[i] = dy w_i (p_i sum_j t_ij - t_i) / n   (= p - t for one-hot rows)"""
    n, c = p.shape
    st = 0.0
    for j in range(c):
        st += targets[i, j]
    gw = dy[()] / n * w[i]
    for j in range(c):
        dlogits[i, j] = gw * (p[i, j] * st - targets[i, j])


@jit
def softmax_ce_onehot_bwd_cpu(dy, targets, p, w, dlogits):
    """dlogits = dy w_i (p * sum_j t_j - t) / n"""
    for i in range(p.shape[0]):
        _onehot_row_grad(dy, targets, p, w, dlogits, i)


@cuda_kernel
def _softmax_ce_onehot_bwd(dy, targets, p, w, dlogits):
    """dlogits = dy w_i (p * sum_j t_j - t) / n, a thread per row"""
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        _onehot_row_grad(dy, targets, p, w, dlogits, i)


def softmax_ce_onehot_bwd_cuda(dy, targets, p, w, dlogits):
    """Launch _softmax_ce_onehot_bwd (grid-stride over rows)."""
    _softmax_ce_onehot_bwd[config.grid_1d(p.shape[0])](dy, targets, p, w, dlogits)


def _ce1h_ref(logits, targets, w):
    logp = _log_softmax(logits)
    loss = -(w * (targets * logp).sum(axis=1)).sum() / len(w)
    return np.asarray(loss, logits.dtype), np.exp(logp).astype(logits.dtype)


register(Op(
    name="softmax_ce_onehot", inputs=("logits", "targets", "w"), outputs=("loss", "p"),
    shape=_ce1h_shape, saves=("targets", "p", "w"), diff=("logits",),
    forward=softmax_ce_onehot_fwd_cpu, backward=softmax_ce_onehot_bwd_cpu,
    cuda_forward=softmax_ce_onehot_fwd_cuda, cuda_backward=softmax_ce_onehot_bwd_cuda,
    sample=_ce_sample(5, 4, True), big_sample=_ce_sample(37, 6, True), reference=_ce1h_ref,
))


# -- losses on predictions and targets of one shape: mse, binary_ce ---------------------------
# A sample's loss is the mean over its features: sum_k w_row(k) term_k / N over the N
# elements, row(k) = k // (N / batch).
def pair_shape(name):
    def shape(pred: Spec, target: Spec, w: Spec) -> list:
        check_float(name, pred=pred, target=target)
        if pred.shape != target.shape:
            raise OpError(f"{name} needs predictions and targets of one shape; got "
                          f"{pred.shape} and {target.shape}")
        check_weights(name, pred, w)
        return [Spec((), pred.dtype)]
    return shape


@config.formula(inline=True)
def _squared_error(p, t, wr):
    """w (p - t)^2, as d (d w): d d exactly when w = 1"""
    d = p - t
    return d * (d * wr)


@config.formula(inline=True)
def _squared_error_grad(g, p, t):
    """d/dp of (p - t)^2, times g"""
    return 2.0 * g * (p - t)


@config.formula
def _cross_entropy(p, t, wr):
    """-w (t log p + (1 - t) log(1 - p)), p clipped into [EPS, 1 - EPS] (without min/max:
    numba 0.66+ fails on them for CUDA)"""
    q = float(p)
    if q < EPS:
        q = EPS
    elif q > 1.0 - EPS:
        q = 1.0 - EPS
    return -(t * math.log(q) + (1.0 - t) * math.log(1.0 - q)) * wr


@config.formula
def _cross_entropy_grad(g, p, t):
    """d/dp of the cross entropy, times g: (p - t) / (p (1 - p)) inside the clip range,
    0 outside"""
    if p < EPS or p > 1.0 - EPS:
        return 0.0
    return g * (p - t) / (p * (1.0 - p))


@config.formula
def unweighted(w):
    """True when every weight is 1 (no sample weights): the CPU kernels then run one flat
    loop, which LLVM vectorizes where a loop per sample of a few values does not"""
    for r in range(w.size):
        if w[r] != 1:
            return False
    return True


# Kernel templates, instantiated per loss with the formulas above as _term and _grad (and
# _one, a loss's one-gradient CPU kernel). CPU loops run from 0 with an offset in the
# index: LLVM vectorizes those, not range(start, stop).
_term = _grad = _one = None


def _mean_cpu_template(pred, target, w, loss):
    """loss = sum_k _term(pred_k, target_k, w_row(k)) / N"""
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    per = pf.size // w.size if w.size else 0
    total = 0.0
    if unweighted(w):
        for k in range(pf.size):
            total += _term(pf[k], tf[k], 1.0)
    else:
        for r in range(w.size):
            for j in range(per):
                total += _term(pf[r * per + j], tf[r * per + j], w[r])
    loss[()] = total / pf.size


def _mean_cuda_template(pred, target, w, loss):
    """loss = sum_k _term(pred_k, target_k, w_row(k)) / N, one block"""
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    per = pf.size // w.size if w.size else 0
    t = cuda.threadIdx.x
    total = 0.0
    for k in range(t, pf.size, cuda.blockDim.x):
        total += _term(pf[k], tf[k], w[k // per])
    total = block_sum(total)
    if t == 0:
        loss[()] = total / pf.size


def _grad_cpu_template(dy, a, b, w, da):
    """da_k = _grad(dy w_row(k) / N, a_k, b_k)"""
    af = a.reshape(-1)
    bf = b.reshape(-1)
    df = da.reshape(-1)
    per = af.size // w.size if w.size else 0
    g = dy[()] / af.size
    if unweighted(w):
        for k in range(af.size):
            df[k] = _grad(g, af[k], bf[k])
    else:
        for r in range(w.size):
            gw = g * w[r]
            for j in range(per):
                df[r * per + j] = _grad(gw, af[r * per + j], bf[r * per + j])


def _grads_cpu_template(dy, pred, target, w, dpred, dtarget):
    """dpred by _one ; dtarget by _one with pred and target swapped (each when wanted)"""
    if dpred is not None:
        _one(dy, pred, target, w, dpred)
    if dtarget is not None:
        _one(dy, target, pred, w, dtarget)


def _grad_cuda_template(dy, a, b, w, da):
    """da_k = _grad(dy w_row(k) / N, a_k, b_k)  (grid-stride)"""
    af = a.reshape(-1)
    bf = b.reshape(-1)
    df = da.reshape(-1)
    per = af.size // w.size if w.size else 0
    g = dy[()] / af.size
    for k in range(cuda.grid(1), af.size, cuda.gridsize(1)):
        df[k] = _grad(g * w[k // per], af[k], bf[k])


def pair_loss(name: str, term, grad, sample, reference, diff: tuple) -> None:
    """Register a loss of predictions and targets of one shape, from its term and its
    gradient (with respect to the first argument; the target's by swapping them)."""
    forward = instantiate(_mean_cpu_template, f"{name}_fwd_cpu", term, "cpu", _term=term)
    backward = instantiate(_grad_cpu_template, f"{name}_bwd_cpu", grad, "cpu", _grad=grad)
    if len(diff) == 2:      # the target's gradient too
        backward = instantiate(_grads_cpu_template, f"{name}_bwd2_cpu", grad, "cpu",
                               _one=backward)
    mean = instantiate(_mean_cuda_template, f"{name}_fwd_cuda", term, "cuda", _term=term)
    each = instantiate(_grad_cuda_template, f"{name}_bwd_cuda", grad, "cuda", _grad=grad)

    def cuda_forward(pred, target, w, loss):
        mean[1, config.CUDA_BLOCK](pred, target, w, loss)

    def cuda_backward(dy, pred, target, w, *grads):
        for (a, b), d in zip(((pred, target), (target, pred)), grads):
            if d is not None:
                each[config.grid_1d(a.size)](dy, a, b, w, d)

    cuda_forward.__doc__, cuda_backward.__doc__ = term.__doc__, grad.__doc__
    register(Op(
        name=name, inputs=("pred", "target", "w"), outputs=("loss",), shape=pair_shape(name),
        saves=("pred", "target", "w"), diff=diff, forward=forward, backward=backward,
        cuda_forward=cuda_forward, cuda_backward=cuda_backward,
        sample=sample((4, 3)), big_sample=sample((9, 11)), reference=reference))


def _pair_sample(lo, hi, target_lo=None):
    def with_shape(shape):
        def sample(rng, dt):
            pred = rng.uniform(lo, hi, shape).astype(dt)
            target = rng.uniform(lo if target_lo is None else target_lo, hi, shape).astype(dt)
            return (pred, target, weights_sample(rng, shape[0], dt)), {}
        return sample
    return with_shape


def sample_means(per_element, w):
    """sum_i w_i mean_j per_element[i, j] / batch, in float64 (Keras' reduction)."""
    means = per_element.reshape(len(w), -1).mean(axis=1)
    return (w.astype(np.float64) * means).sum() / len(w)


def _mse_ref(p, t, w):
    d = p.astype(np.float64) - t
    return (np.asarray(sample_means(d * d, w), p.dtype),)


def _bce_ref(p, t, w):
    q = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return (np.asarray(sample_means(-(t * np.log(q) + (1 - t) * np.log(1 - q)), w),
                       p.dtype),)


pair_loss("mse", _squared_error, _squared_error_grad, _pair_sample(-1.0, 1.0), _mse_ref,
           diff=("pred", "target"))
pair_loss("binary_ce", _cross_entropy, _cross_entropy_grad, _pair_sample(0.1, 0.9, 0.0),
           _bce_ref, diff=("pred",))
