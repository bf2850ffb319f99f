"""Losses, each reduced to a scalar mean over the batch.

A softmax output followed by cross entropy is one fused op (``softmax_ce`` for integer
labels, ``softmax_ce_onehot`` for one-hot targets): it works on the logits with the
log-sum-exp trick, so it never takes ``log(0)``, and its gradient is just ``p - t``.
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import CUDA_MAX_THREADS, cuda_device, cuda_kernel, jit
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None

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


# The CUDA losses reduce to the scalar in one block: each thread sums its share in float64,
# as the CPU kernels do, then a tree adds the partial sums. Device helpers that call
# ``cuda.*`` stay in the module of the kernels using them: numba 0.68's simulator swaps
# ``cuda`` into a helper's module per call, which races when that module is another one.
@cuda_device
def _block_sum_device(partial):
    """sum of `partial` over the threads of a 1-D block, by a tree (valid in thread 0)"""
    buf = cuda.shared.array(CUDA_MAX_THREADS, np.float64)
    t = cuda.threadIdx.x
    buf[t] = partial
    n = cuda.blockDim.x
    while n > 1:  # fixed pairs, so the sum is deterministic; any n, not only powers of 2
        cuda.syncthreads()
        half = (n + 1) // 2
        if t < n - half:
            buf[t] += buf[t + half]
        n = half
    return buf[0]


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


@cuda_device
def _softmax_row_device(logits, p, i):
    """p[i] = softmax(logits[i]); returns log sum_j exp(logits[i, j])"""
    c = logits.shape[1]
    m = logits[i, 0]
    for j in range(1, c):
        if logits[i, j] > m:  # noqa: PLR1730  (max() fails to compile for CUDA, numba 0.66+)
            m = logits[i, j]
    s = 0.0
    for j in range(c):
        e = math.exp(logits[i, j] - m)
        p[i, j] = e
        s += e
    for j in range(c):
        p[i, j] /= s
    return math.log(s) + m


@cuda_kernel
def _softmax_ce_fwd(logits, labels, loss, p):
    """loss = mean_i -log softmax(logits_i)[labels_i] ; p = softmax(logits), one block"""
    n, c = logits.shape
    t = cuda.threadIdx.x
    total = 0.0
    for i in range(t, n, cuda.blockDim.x):
        lse = _softmax_row_device(logits, p, i)
        k = labels[i]
        # a kernel cannot raise: a label outside [0, classes) makes the loss NaN
        total += lse - logits[i, k] if 0 <= k < c else math.nan
    total = _block_sum_device(total)
    if t == 0:
        loss[()] = total / n


def softmax_ce_fwd_cuda(logits, labels, loss, p):
    """Launch _softmax_ce_fwd (one block, a thread per row)."""
    _softmax_ce_fwd[1, config.CUDA_BLOCK](logits, labels, loss, p)


@jit
def softmax_ce_bwd_cpu(dy, labels, p, dlogits):
    """dlogits = dy * (p - onehot(labels)) / n"""
    n, c = p.shape
    g = dy[()] / n
    for i in range(n):
        for j in range(c):
            dlogits[i, j] = g * p[i, j]
        dlogits[i, labels[i]] -= g


@cuda_kernel
def _softmax_ce_bwd(dy, labels, p, dlogits):
    """dlogits = dy * (p - onehot(labels)) / n"""
    n, c = p.shape
    g = dy[()] / n
    for k in range(cuda.grid(1), n * c, cuda.gridsize(1)):
        i = k // c
        j = k - i * c
        dlogits[i, j] = g * p[i, j]
        if j == labels[i]:
            dlogits[i, j] -= g


def softmax_ce_bwd_cuda(dy, labels, p, dlogits):
    """Launch _softmax_ce_bwd (grid-stride over the elements)."""
    _softmax_ce_bwd[config.grid_1d(p.size)](dy, labels, p, dlogits)


def _ce_ref(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(labels)), labels].mean()
    return np.asarray(loss, logits.dtype), np.exp(logp)


register(Op(
    name="softmax_ce", inputs=("logits", "labels"), outputs=("loss", "p"),
    shape=_ce_shape, saves=("labels", "p"), diff=("logits",),
    forward=softmax_ce_fwd_cpu, backward=softmax_ce_bwd_cpu,
    cuda_forward=softmax_ce_fwd_cuda, cuda_backward=softmax_ce_bwd_cuda,
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


@cuda_kernel
def _softmax_ce_onehot_fwd(logits, targets, loss, p):
    """loss = mean_i -sum_j t_ij log softmax(logits_i)_j ; p = softmax(logits), one block"""
    n, c = logits.shape
    t = cuda.threadIdx.x
    total = 0.0
    for i in range(t, n, cuda.blockDim.x):
        lse = _softmax_row_device(logits, p, i)
        for j in range(c):
            total += targets[i, j] * (lse - logits[i, j])
    total = _block_sum_device(total)
    if t == 0:
        loss[()] = total / n


def softmax_ce_onehot_fwd_cuda(logits, targets, loss, p):
    """Launch _softmax_ce_onehot_fwd (one block, a thread per row)."""
    _softmax_ce_onehot_fwd[1, config.CUDA_BLOCK](logits, targets, loss, p)


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


@cuda_kernel
def _softmax_ce_onehot_bwd(dy, targets, p, dlogits):
    """dlogits = dy * (p * sum_j t_j - t) / n, a thread per row"""
    n, c = p.shape
    g = dy[()] / n
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        st = 0.0
        for j in range(c):
            st += targets[i, j]
        for j in range(c):
            dlogits[i, j] = g * (p[i, j] * st - targets[i, j])


def softmax_ce_onehot_bwd_cuda(dy, targets, p, dlogits):
    """Launch _softmax_ce_onehot_bwd (grid-stride over rows)."""
    _softmax_ce_onehot_bwd[config.grid_1d(p.shape[0])](dy, targets, p, dlogits)


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
    cuda_forward=softmax_ce_onehot_fwd_cuda, cuda_backward=softmax_ce_onehot_bwd_cuda,
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


@cuda_kernel
def _mse_fwd(pred, target, loss):
    """loss = mean (pred - target)^2, one block"""
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    t = cuda.threadIdx.x
    total = 0.0
    for i in range(t, pf.size, cuda.blockDim.x):
        d = pf[i] - tf[i]
        total += d * d
    total = _block_sum_device(total)
    if t == 0:
        loss[()] = total / pf.size


def mse_fwd_cuda(pred, target, loss):
    """Launch _mse_fwd (one block)."""
    _mse_fwd[1, config.CUDA_BLOCK](pred, target, loss)


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


@cuda_kernel
def _mse_grad(dy, a, b, da):
    """da = 2 dy (a - b) / N  (dpred with a = pred; dtarget with a, b swapped)"""
    af = a.reshape(-1)
    bf = b.reshape(-1)
    df = da.reshape(-1)
    g = 2.0 * dy[()] / af.size
    for i in range(cuda.grid(1), af.size, cuda.gridsize(1)):
        df[i] = g * (af[i] - bf[i])


def mse_bwd_cuda(dy, pred, target, dpred, dtarget):
    """Launch _mse_grad for each gradient wanted (grid-stride)."""
    if dpred is not None:
        _mse_grad[config.grid_1d(pred.size)](dy, pred, target, dpred)
    if dtarget is not None:
        _mse_grad[config.grid_1d(pred.size)](dy, target, pred, dtarget)


def _pair_sample(lo, hi):
    def sample(rng, dt):
        return (rng.uniform(lo, hi, (4, 3)).astype(dt), rng.uniform(lo, hi, (4, 3)).astype(dt)), {}
    return sample


register(Op(
    name="mse", inputs=("pred", "target"), outputs=("loss",), shape=_pair_shape("mse"),
    saves=("pred", "target"), forward=mse_fwd_cpu, backward=mse_bwd_cpu,
    cuda_forward=mse_fwd_cuda, cuda_backward=mse_bwd_cuda,
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


@cuda_kernel
def _binary_ce_fwd(pred, target, loss):
    """loss = -mean t log p + (1 - t) log(1 - p), p clipped into [EPS, 1 - EPS], one block"""
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    t = cuda.threadIdx.x
    total = 0.0
    for i in range(t, pf.size, cuda.blockDim.x):
        p = float(pf[i])  # clipped without min/max: numba 0.66+ fails on them for CUDA
        if p < EPS:
            p = EPS
        elif p > 1.0 - EPS:
            p = 1.0 - EPS
        total -= tf[i] * math.log(p) + (1.0 - tf[i]) * math.log(1.0 - p)
    total = _block_sum_device(total)
    if t == 0:
        loss[()] = total / pf.size


def binary_ce_fwd_cuda(pred, target, loss):
    """Launch _binary_ce_fwd (one block)."""
    _binary_ce_fwd[1, config.CUDA_BLOCK](pred, target, loss)


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


@cuda_kernel
def _binary_ce_bwd(dy, pred, target, dpred):
    """dpred = dy (p - t) / (p (1 - p)) / N inside the clip range, 0 outside"""
    pf = pred.reshape(-1)
    tf = target.reshape(-1)
    df = dpred.reshape(-1)
    g = dy[()] / pf.size
    for i in range(cuda.grid(1), pf.size, cuda.gridsize(1)):
        p = pf[i]
        if p < EPS or p > 1.0 - EPS:
            df[i] = 0.0
        else:
            df[i] = g * (p - tf[i]) / (p * (1.0 - p))


def binary_ce_bwd_cuda(dy, pred, target, dpred):
    """Launch _binary_ce_bwd (grid-stride)."""
    _binary_ce_bwd[config.grid_1d(pred.size)](dy, pred, target, dpred)


def _bce_ref(p, t):
    q = np.clip(p, EPS, 1 - EPS)
    return (np.asarray(-(t * np.log(q) + (1 - t) * np.log(1 - q)).mean(), p.dtype),)


register(Op(
    name="binary_ce", inputs=("pred", "target"), outputs=("loss",),
    shape=_pair_shape("binary_ce"), saves=("pred", "target"), diff=("pred",),
    forward=binary_ce_fwd_cpu, backward=binary_ce_bwd_cpu,
    cuda_forward=binary_ce_fwd_cuda, cuda_backward=binary_ce_bwd_cuda,
    sample=_pair_sample(0.1, 0.9), reference=_bce_ref,
))
