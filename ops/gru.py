"""The ``gru`` op: a gated recurrent unit over a whole sequence, organised as
:mod:`dlrun.ops.recurrent`'s SimpleRNN and LSTM are (a sibling module only to keep each
module short): on the CPU the batch split between threads, each part's time loop one
compiled kernel with the products by ``ops.blas.gemm``, the backward through time one
kernel, then the products over all steps; on CUDA one fused kernel per step.

Keras 2's layout and gate order (``reset_after=True``, as cuDNN and PyTorch compute it):
``W (in, 3 units)`` and ``U (units, 3 units)`` hold the gates z (update), r (reset) and h
(candidate) in that order along the last axis; ``b (2, 3 units)`` is the input bias (row
0) then the recurrent bias (row 1). With ``x_* = x_t W_* + b_0*`` and
``u_* = h_{t-1} U_* + b_1*``::

    z = sigmoid(x_z + u_z)    r = sigmoid(x_r + u_r)    hh = tanh(x_h + r * u_h)
    h_t = z * h_{t-1} + (1 - z) * hh                    (h_{-1} = 0)

The forward saves the gates (z, r, hh) and ``u_h``. Going back, the input products and
the recurrent ones get different gradients (r multiplies ``u_h``): ``dz`` for the input
side (dW, dX, b's row 0) and ``dz_rec`` for the recurrent side (dU, dh_{t-1}, b's row 1),
equal but in their h columns (``dz_rec = r * dz`` there).
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.blas import gemm, split_run
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.conv import workspace
from dlrun.ops.linear import _matmul_cuda
from dlrun.ops.recurrent import (MIN_PER_PART, _backward_split, _products_bwd_cuda,
                                 _recurrent_shape, _scratch, _sig, _transposed, sigmoid,
                                 sigmoid_grad, tanh, tanh_grad)
from dlrun.ops.registry import Op, OpError, Spec, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


def _gru_shape(x: Spec, w: Spec, u: Spec, b: Spec) -> list:
    if len(b.shape) != 2 or b.shape[0] != 2:
        raise OpError(f"gru needs b of shape (2, 3*units): the input bias, then the "
                      f"recurrent one; got b {b.shape}")
    (h,) = _recurrent_shape("gru", 3)(x, w, u, Spec(b.shape[1:], b.dtype))
    return [h, Spec((*h.shape[:2], 3 * u.shape[0]), h.dtype), h]


@jit
def _gru_steps(x, w, u, b, h, gates, rec_h, rec):
    """The time loop: gates[:, t] = x_t @ W (step by step, as ``_rnn_steps``) ;
    rec = h_{t-1} @ U ; z, r = sigmoid(x_z|r + b_0 + rec + b_1) ; rec_h = rec_h + b_1h ;
    hh = tanh(x_h + b_0h + r rec_h) ; h_t = z h_{t-1} + (1 - z) hh"""
    nb, nt, n = h.shape
    for t in range(nt):
        gemm(x[:, t, :], w, gates[:, t, :], 1.0, 0.0, False, False)
        if t > 0:
            gemm(h[:, t - 1, :], u, rec, 1.0, 0.0, False, False)
        else:
            rec[:] = 0.0
        for s in range(nb):
            for k in range(2 * n):                # z, r
                gates[s, t, k] = sigmoid(gates[s, t, k] + b[0, k] + (rec[s, k] + b[1, k]))
            for j in range(n):
                rec_h[s, t, j] = rec[s, 2 * n + j] + b[1, 2 * n + j]
            for j in range(n):                    # hh
                gates[s, t, 2 * n + j] = tanh(gates[s, t, 2 * n + j] + b[0, 2 * n + j]
                                              + gates[s, t, n + j] * rec_h[s, t, j])
            if t > 0:
                for j in range(n):
                    z = gates[s, t, j]
                    h[s, t, j] = z * h[s, t - 1, j] + (1.0 - z) * gates[s, t, 2 * n + j]
            else:
                for j in range(n):
                    h[s, t, j] = (1.0 - gates[s, t, j]) * gates[s, t, 2 * n + j]


def gru_fwd_cpu(x, w, u, b, h, gates, rec_h):
    """The GRU over every step: the time loop (:func:`_gru_steps`), the batch split
    between threads"""
    rec = workspace("gru.rec", (x.shape[0], u.shape[1]), x.dtype)

    def part(s, e):
        _gru_steps(x[s:e], w, u, b, h[s:e], gates[s:e], rec_h[s:e], rec[s:e])

    split_run(part, x.shape[0], MIN_PER_PART)


@config.formula
def gate_grads(d, hp, gates, rec_h, dz, dz_rec, s, t, j):
    """dz and dz_rec of unit j of sample s at step t (see _gru_bwd_steps), from d = dL/dh_t
    and hp = h_{t-1}; returns z d, the part of dL/dh_{t-1} that does not pass through U"""
    n = gates.shape[2] // 3
    z = gates[s, t, j]
    r = gates[s, t, n + j]
    hh = gates[s, t, 2 * n + j]
    dzp = d * (hp - hh) * sigmoid_grad(z)
    da = d * (1 - z) * tanh_grad(hh)
    drp = da * rec_h[s, t, j] * sigmoid_grad(r)
    dz[s, t, j] = dzp
    dz[s, t, n + j] = drp
    dz[s, t, 2 * n + j] = da
    dz_rec[s, t, j] = dzp
    dz_rec[s, t, n + j] = drp
    dz_rec[s, t, 2 * n + j] = da * r
    return z * d


@jit
def _gru_bwd_steps(dy, u_t, h, gates, rec_h, dz, dz_rec, dh):
    """From the last step back, with d = dy_t + dh (dh carried from step t+1):
    dz = (d (h_{t-1} - hh) z(1-z), da rec_h r(1-r), da) with da = d (1-z) (1-hh^2) ;
    dz_rec = dz but da r in its h column ; dh_{t-1} = z d + dz_rec @ U^T (``u_t`` is U^T,
    contiguous)"""
    nb, nt, n = h.shape
    dh[:] = 0.0
    for t in range(nt - 1, -1, -1):
        for s in range(nb):
            for j in range(n):
                hp = h[s, t - 1, j] if t > 0 else 0.0
                dh[s, j] = gate_grads(dy[s, t, j] + dh[s, j], hp, gates, rec_h, dz, dz_rec,
                                      s, t, j)
        if t > 0:
            gemm(dz_rec[:, t, :], u_t, dh, 1.0, 1.0, False, False)


def gru_bwd_cpu(dy, x, w, u, h, gates, rec_h, dx, dw, du, db):
    """Backpropagation through time: dx, dW, dU, db of gru (the batch split between
    threads, ``recurrent._backward_split`` with the recurrent side's own dz)"""
    dz = workspace("gru.dz", gates.shape, h.dtype)
    dz_rec = workspace("gru.dz_rec", gates.shape, h.dtype)
    dh = workspace("gru.dh", h.shape[::2], h.dtype)
    u_t = _transposed(u, "gru.u_t")

    def steps(s, e):
        _gru_bwd_steps(dy[s:e], u_t, h[s:e], gates[s:e], rec_h[s:e], dz[s:e], dz_rec[s:e],
                       dh[s:e])

    _backward_split("gru", steps, x, w, h, dz, dx, dw, du, db, dz_rec)


@cuda_kernel
def _gru_step_fwd(u, b, t, h, gates, rec_h):
    """gates[:, t] = (z, r, hh) from x_t @ W (there on entry), h[:, t-1] @ U and b ;
    h_t = z h_{t-1} + (1 - z) hh  (a thread per (sample, unit))"""
    n = u.shape[0]
    for k in range(cuda.grid(1), h.shape[0] * n, cuda.gridsize(1)):
        s = k // n
        j = k - s * n
        uz = b[1, j]
        ur = b[1, n + j]
        uh = b[1, 2 * n + j]
        hp = h.dtype.type(0)
        if t > 0:
            for m in range(n):
                hm = h[s, t - 1, m]
                uz += hm * u[m, j]
                ur += hm * u[m, n + j]
                uh += hm * u[m, 2 * n + j]
            hp = h[s, t - 1, j]
        z = sigmoid(gates[s, t, j] + b[0, j] + uz)
        r = sigmoid(gates[s, t, n + j] + b[0, n + j] + ur)
        hh = tanh(gates[s, t, 2 * n + j] + b[0, 2 * n + j] + r * uh)
        gates[s, t, j] = z
        gates[s, t, n + j] = r
        gates[s, t, 2 * n + j] = hh
        rec_h[s, t, j] = uh
        h[s, t, j] = z * hp + (1 - z) * hh


@cuda_kernel
def _gru_step_bwd(dy, u, h, t, gates, rec_h, dz, dz_rec, dc):
    """d = dy[:, t] + dc + dz_rec[:, t+1] @ U^T ; dz[:, t], dz_rec[:, t] as gru_bwd_cpu ;
    dc = z d, carried to step t-1  (a thread per (sample, unit))"""
    n = u.shape[0]
    for k in range(cuda.grid(1), h.shape[0] * n, cuda.gridsize(1)):
        s = k // n
        j = k - s * n
        d = dy[s, t, j]
        if t < h.shape[1] - 1:
            d += dc[s, j]
            for m in range(3 * n):
                d += dz_rec[s, t + 1, m] * u[j, m]
        hp = h[s, t - 1, j] if t > 0 else h.dtype.type(0)
        dc[s, j] = gate_grads(d, hp, gates, rec_h, dz, dz_rec, s, t, j)


def gru_fwd_cuda(x, w, u, b, h, gates, rec_h):
    """_matmul_tiled for x @ W over all steps, then one _gru_step_fwd per step."""
    nb, nt, nin = x.shape
    n = u.shape[0]
    _matmul_cuda(x.reshape(nb * nt, nin), w, gates.reshape(nb * nt, 3 * n), False, False)
    for t in range(nt):
        _gru_step_fwd[config.grid_1d(nb * n)](u, b, t, h, gates, rec_h)


def gru_bwd_cuda(dy, x, w, u, h, gates, rec_h, dx, dw, du, db):
    """One _gru_step_bwd per step, last first; then the products over all steps, those of
    the input side from dz, those of the recurrent side from dz_rec."""
    nb, nt, _ = x.shape
    n = u.shape[0]
    dz = _scratch(h, "gru.dz", gates.shape)
    dz_rec = _scratch(h, "gru.dz_rec", gates.shape)
    dc = _scratch(h, "gru.dc", (nb, n))
    for t in range(nt - 1, -1, -1):
        _gru_step_bwd[config.grid_1d(nb * n)](dy, u, h, t, gates, rec_h, dz, dz_rec, dc)
    _products_bwd_cuda(x, w, h, dz, dx, dw, None, None if db is None else db[0])
    _products_bwd_cuda(x, w, h, dz_rec, None, None, du, None if db is None else db[1])


def gru_reference(x, w, u, b):
    """Plain numpy, one step at a time: (h, gates (z, r, hh), u_h) for every step."""
    n = u.shape[0]
    h = np.zeros((x.shape[0], n), x.dtype)
    hs, gs, uhs = [], [], []
    for t in range(x.shape[1]):
        xp = x[:, t] @ w + b[0]
        up = h @ u + b[1]
        z = _sig(xp[:, :n] + up[:, :n])
        r = _sig(xp[:, n:2 * n] + up[:, n:2 * n])
        hh = np.tanh(xp[:, 2 * n:] + r * up[:, 2 * n:])
        h = z * h + (1 - z) * hh
        hs.append(h)
        gs.append(np.concatenate([z, r, hh], axis=1))
        uhs.append(up[:, 2 * n:])
    return tuple(np.stack(a, axis=1).astype(x.dtype) for a in (hs, gs, uhs))


def _gru_sample(nb: int, nt: int, nin: int, n: int):
    def sample(rng, dtype):
        x = rng.standard_normal((nb, nt, nin)).astype(dtype)
        w = (0.5 * rng.standard_normal((nin, 3 * n))).astype(dtype)
        u = (0.5 * rng.standard_normal((n, 3 * n))).astype(dtype)
        b = (0.3 * rng.standard_normal((2, 3 * n))).astype(dtype)
        return (x, w, u, b), {}
    return sample


register(Op(
    name="gru", inputs=("x", "w", "u", "b"), shape=_gru_shape,
    outputs=("h", "gates", "rec_h"), saves=("x", "w", "u", "h", "gates", "rec_h"),
    forward=gru_fwd_cpu, backward=gru_bwd_cpu,
    cuda_forward=gru_fwd_cuda, cuda_backward=gru_bwd_cuda,
    sample=_gru_sample(2, 4, 3, 3), big_sample=_gru_sample(5, 3, 4, 3),
    reference=gru_reference,
))
