"""Recurrent layers' ops, each over a whole sequence: ``simple_rnn``, ``lstm``, and
``last_step`` (the final step of a sequence, what a layer without ``return_sequences``
returns).

Sequences are (batch, time, features); weights are Keras's: ``W (in, units)`` or
``(in, 4 units)``, ``U (units, units)`` or ``(units, 4 units)``, ``b``; the LSTM's gates
are laid out i, f, c, o along the last axis; the initial state is zero.

The batch is split between threads (``ops.blas.split_run``, one part per ``--threads``,
BLAS at one thread within each part): the sequences are independent, so each thread
runs its own rows through the whole time loop, one compiled kernel per part. In a part,
each step projects its input (``x_t @ W``) into its slice of the gates buffer, adds
``h_{t-1} @ U`` into it (``ops.blas.gemm`` with ``beta=1``: dlrun's sgemm or OpenBLAS)
and applies the gate arithmetic, fused, in a serial Numba loop. The backward runs the
steps in reverse, one small GEMM per step for ``dh_{t-1} = dz_t U^T`` (by a contiguous
copy of U^T made once), and after the loop one GEMM each for ``dW = X^T dZ``,
``dU = H_prev^T dZ`` and ``dX = dZ W^T`` over the part's rows (dW, dU, db as partials,
summed after the join). Sigmoid and tanh are the activation ops' formulas; on float32
their exp is a polynomial LLVM vectorizes (numba has no vector math library here): the
gate arithmetic costs a fifth of what libm's would.

The CUDA twins launch one fused kernel per step (a thread per (sample, unit), which also
takes the step's ``h_{t-1} @ U``), with the tiled matmul of :mod:`dlrun.ops.linear` for
the products over all steps.

One concern, so one module though a long one: the two recurrent ops' CPU and CUDA time
loops, forward and backward, share their gate layout and step structure.
"""
from __future__ import annotations

import numpy as np

from dlrun.ops import activations, config
from dlrun.ops.blas import gemm, split_run
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.conv import workspace
from dlrun.ops.linear import _matmul_cuda
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


# The activation ops' own formulas (one definition each, for both devices; on float32 in
# CPU kernels their exp is a polynomial LLVM vectorizes, see dlrun.ops.mathfn).
relu, relu_grad = activations.relu.formula, activations.relu_grad
sigmoid, sigmoid_grad = activations.sigmoid.formula, activations.sigmoid_grad
tanh, tanh_grad = activations.tanh.formula, activations.tanh_grad


# -- shared by both ops: shapes, and the products over all steps ----------------------------
def _recurrent_shape(op: str, gates: int):
    def shape(x: Spec, w: Spec, u: Spec, b: Spec, **_) -> list:
        check_float(op, x=x, w=w, u=u, b=b)
        n = u.shape[0] if len(u.shape) == 2 else -1
        if (len(x.shape) != 3 or w.shape != (x.shape[2], gates * n)
                or u.shape != (n, gates * n) or b.shape != (gates * n,)):
            raise OpError(f"{op} needs x (batch, time, features), W (features, {gates}*units), "
                          f"U (units, {gates}*units), b ({gates}*units,); got x {x.shape}, "
                          f"W {w.shape}, U {u.shape}, b {b.shape}")
        if len({x.dtype, w.dtype, u.dtype, b.dtype}) != 1:
            raise OpError(f"{op} inputs differ in dtype: x {x.dtype}, W {w.dtype}, "
                          f"U {u.dtype}, b {b.dtype}")
        if x.shape[1] < 1:
            raise OpError(f"{op} needs at least one time step; got x {x.shape}")
        return [Spec((x.shape[0], x.shape[1], n), x.dtype)]
    return shape


@jit
def _products_bwd(x, w, h, dz, dx, dw, du, db):
    """After the time loop, with dz the gradient of every step's pre-activations:
    dW = X^T dZ ; dU = sum_t h_{t-1}^T dz_t ; db = sum dZ ; dX = dZ W^T
    (an empty array stands for a gradient not wanted)"""
    nb, nt, nin = x.shape
    rows = nb * nt
    z2 = dz.reshape(rows, dz.shape[2])
    if dw.size:
        gemm(x.reshape(rows, nin), z2, dw, 1.0, 0.0, True, False)
    if du.size:
        # row r of H pairs with row r + 1 of dZ: one product over all rows, less the pairs
        # that straddle two samples (h of a sample's last step, dz of the next one's first)
        du[:] = 0.0
        if rows > 1:
            gemm(h.reshape(rows, h.shape[2])[:rows - 1], z2[1:], du, 1.0, 0.0, True, False)
        if nb > 1:
            gemm(h[:nb - 1, nt - 1, :], dz[1:, 0, :], du, -1.0, 1.0, True, False)
    if db.size:
        db[:] = 0.0
        for r in range(rows):
            for k in range(db.size):
                db[k] += z2[r, k]
    if dx.size:
        gemm(z2, w, dx.reshape(rows, nin), 1.0, 0.0, False, True)


def _or_empty(a, ndim: int, like):
    """The gradient buffer, or an empty one of the same rank when it is not wanted (one
    compiled signature either way)."""
    return a if a is not None else np.empty((0,) * ndim, like.dtype)


def _grads_or_empty(x, dx, dw, du, db):
    return (_or_empty(dx, 3, x), _or_empty(dw, 2, x), _or_empty(du, 2, x),
            _or_empty(db, 1, x))


# -- splitting the batch between threads ----------------------------------------------------
# The sequences of a batch are independent, so each thread runs its own rows through the
# whole time loop (``blas.split_run``: one part per thread, OpenBLAS at one thread in each):
# no hand-off per step, where one call with OpenBLAS's own threads hands half of every
# small per-step GEMM to the second thread and waits for it. The products over all steps
# (input projection, dW, dU, dX) run inside the parts too: measured at 2 threads (128 x 28
# x 128), the projection as one 2-thread GEMM outside cost the forward +0.5 ms (3.7 vs
# 3.2), dW/dU/dX outside the backward +2.7 ms (8.4 vs 5.7).
MIN_PER_PART = 4                   # rows; below 2x this a batch is one call


def _transposed(u, tag: str):
    """U^T as a contiguous array, made once per backward: every step multiplies by it, and
    a transposed operand would be rearranged by the product at every step (measured: the
    LSTM's 27 backward step products 3.3 ms that way, 2.4 ms from U^T)."""
    u_t = workspace(tag, u.shape[::-1], u.dtype)
    np.copyto(u_t, u.T)
    return u_t


def _backward_split(tag, steps, x, w, h, dz, dx, dw, du, db, dz_rec=None):
    """``steps(s, e)`` (the backward time loop of rows s:e, writing dz[s:e]) on parts of
    the batch in parallel, each followed by the products over its own rows: dX of those
    rows, and dW, dU, db as partials summed after the join (the part of row 0 writes
    into the outputs themselves, so one part is one call as before).

    ``dz_rec`` is for the GRU, whose recurrent products get gradients of their own (the
    reset gate multiplies one of them): dU and db's second row come from ``dz_rec``, dW,
    dX and db's first row from ``dz``."""
    dx_, dw_, du_, db_ = _grads_or_empty(x, dx, dw, du, db)
    partials = []

    def products(s, e, pdw, pdu, pdb):
        xs, hs, dxs = x[s:e], h[s:e], dx_[s:e] if dx_.size else dx_
        if dz_rec is None:
            _products_bwd(xs, w, hs, dz[s:e], dxs, pdw, pdu, pdb)
            return
        b_in, b_rec = (pdb[0], pdb[1]) if pdb.size else (pdb, pdb)
        _products_bwd(xs, w, hs, dz[s:e], dxs, pdw, _or_empty(None, 2, x), b_in)
        _products_bwd(xs, w, hs, dz_rec[s:e], _or_empty(None, 3, x), _or_empty(None, 2, x),
                      pdu, b_rec)

    def part(s, e):
        steps(s, e)
        if s == 0:
            pdw, pdu, pdb = dw_, du_, db_
        else:
            # named after the part, not only the thread: one pool thread may run two parts
            sizes = np.cumsum([0, dw_.size, du_.size, db_.size])
            buf = workspace(f"{tag}.partials.{s}", (sizes[-1],), x.dtype)
            pdw, pdu, pdb = (buf[sizes[i]:sizes[i + 1]].reshape(a.shape)
                             for i, a in enumerate((dw_, du_, db_)))
            partials.append((s, pdw, pdu, pdb))
        products(s, e, pdw, pdu, pdb)

    split_run(part, x.shape[0], MIN_PER_PART)
    for _, pdw, pdu, pdb in sorted(partials, key=lambda p: p[0]):
        for total, p in ((dw_, pdw), (du_, pdu), (db_, pdb)):
            if total.size:
                total += p


# -- simple_rnn ----------------------------------------------------------------------------
@jit
def _rnn_steps(x, w, u, b, use_relu, h):
    """h_t = act(x_t @ W + h_{t-1} @ U + b) ; act = tanh, or ReLU when relu ; h_{-1} = 0.
    Each step's input projection is made just before its recurrent product, into the same
    rows, so both products find them in cache (measured on the LSTM: 3.8 ms forward, 4.2
    with the projection of all steps as one product first)."""
    nb, nt, n = h.shape
    for t in range(nt):
        gemm(x[:, t, :], w, h[:, t, :], 1.0, 0.0, False, False)
        if t > 0:
            gemm(h[:, t - 1, :], u, h[:, t, :], 1.0, 1.0, False, False)
        for s in range(nb):
            for j in range(n):
                v = h[s, t, j] + b[j]
                if use_relu:
                    h[s, t, j] = relu(v)
                else:
                    h[s, t, j] = tanh(v)


def simple_rnn_fwd_cpu(x, w, u, b, activation, h):
    """h_t = act(x_t @ W + h_{t-1} @ U + b) for every step: the time loop
    (:func:`_rnn_steps`), the batch split between threads"""
    relu = activation == "relu"

    def part(s, e):
        _rnn_steps(x[s:e], w, u, b, relu, h[s:e])

    split_run(part, x.shape[0], MIN_PER_PART)


@jit
def _rnn_bwd_steps(dy, u_t, h, use_relu, dz, dh):
    """dz_t = (dy_t + dz_{t+1} @ U^T) * act'(h_t), from the last step back (``u_t`` is U^T,
    contiguous)"""
    nb, nt, n = h.shape
    dh[:] = 0.0
    for t in range(nt - 1, -1, -1):
        if t < nt - 1:
            gemm(dz[:, t + 1, :], u_t, dh, 1.0, 0.0, False, False)
        for s in range(nb):
            for j in range(n):
                d = dy[s, t, j] + dh[s, j]
                if use_relu:
                    dz[s, t, j] = d * relu_grad(h[s, t, j])
                else:
                    dz[s, t, j] = d * tanh_grad(h[s, t, j])


def simple_rnn_bwd_cpu(dy, x, w, u, h, activation, dx, dw, du, db):
    """Backpropagation through time: dx, dW, dU, db of simple_rnn (the batch split
    between threads, :func:`_backward_split`)"""
    relu = activation == "relu"
    dz = workspace("simple_rnn.dz", h.shape, h.dtype)
    dh = workspace("simple_rnn.dh", h.shape[::2], h.dtype)
    u_t = _transposed(u, "simple_rnn.u_t")

    def steps(s, e):
        _rnn_bwd_steps(dy[s:e], u_t, h[s:e], relu, dz[s:e], dh[s:e])

    _backward_split("simple_rnn", steps, x, w, h, dz, dx, dw, du, db)


@cuda_kernel
def _rnn_step_fwd(u, b, t, use_relu, h):
    """h[:, t] = act(h[:, t] + h[:, t-1] @ U + b), h[:, t] holding x_t @ W on entry
    (a thread per (sample, unit))"""
    n = u.shape[0]
    for k in range(cuda.grid(1), h.shape[0] * n, cuda.gridsize(1)):
        s = k // n
        j = k - s * n
        v = h[s, t, j] + b[j]
        if t > 0:
            for m in range(n):
                v += h[s, t - 1, m] * u[m, j]
        if use_relu:
            h[s, t, j] = relu(v)
        else:
            h[s, t, j] = tanh(v)


@cuda_kernel
def _rnn_step_bwd(dy, u, h, t, use_relu, dz):
    """dz[:, t] = (dy[:, t] + dz[:, t+1] @ U^T) * act'(h[:, t])  (a thread per (sample,
    unit))"""
    n = u.shape[0]
    for k in range(cuda.grid(1), h.shape[0] * n, cuda.gridsize(1)):
        s = k // n
        j = k - s * n
        d = dy[s, t, j]
        if t < h.shape[1] - 1:
            for m in range(n):
                d += dz[s, t + 1, m] * u[j, m]
        if use_relu:
            dz[s, t, j] = d * relu_grad(h[s, t, j])
        else:
            dz[s, t, j] = d * tanh_grad(h[s, t, j])


def simple_rnn_fwd_cuda(x, w, u, b, activation, h):
    """_matmul_tiled for x @ W over all steps, then one _rnn_step_fwd per step."""
    nb, nt, nin = x.shape
    n = u.shape[0]
    _matmul_cuda(x.reshape(nb * nt, nin), w, h.reshape(nb * nt, n), False, False)
    for t in range(nt):
        _rnn_step_fwd[config.grid_1d(nb * n)](u, b, t, activation == "relu", h)


def simple_rnn_bwd_cuda(dy, x, w, u, h, activation, dx, dw, du, db):
    """One _rnn_step_bwd per step, last first; then the products over all steps."""
    nb, nt, _ = x.shape
    dz = _scratch(h, "simple_rnn.dz", h.shape)
    for t in range(nt - 1, -1, -1):
        _rnn_step_bwd[config.grid_1d(nb * h.shape[2])](dy, u, h, t, activation == "relu", dz)
    _products_bwd_cuda(x, w, h, dz, dx, dw, du, db)


def simple_rnn_reference(x, w, u, b, activation="tanh"):
    """Plain numpy, one step at a time."""
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0))
    h = np.zeros((x.shape[0], u.shape[0]), x.dtype)
    out = []
    for t in range(x.shape[1]):
        h = act(x[:, t] @ w + h @ u + b)
        out.append(h)
    return (np.stack(out, axis=1),)


def _rnn_sample(rng, dtype):
    x = rng.standard_normal((2, 4, 3)).astype(dtype)
    w = (0.5 * rng.standard_normal((3, 5))).astype(dtype)
    u = (0.5 * rng.standard_normal((5, 5))).astype(dtype)
    b = (0.1 * rng.standard_normal(5)).astype(dtype)
    return (x, w, u, b), {"activation": "tanh"}


def _simple_rnn_shape(x, w, u, b, activation="tanh"):
    if activation not in ("tanh", "relu"):
        raise OpError(f"simple_rnn activation must be 'tanh' or 'relu', got {activation!r}")
    return _recurrent_shape("simple_rnn", 1)(x, w, u, b)


register(Op(
    name="simple_rnn", inputs=("x", "w", "u", "b"), shape=_simple_rnn_shape,
    saves=("x", "w", "u", "h"), outputs=("h",), attrs={"activation": "tanh"},
    forward=simple_rnn_fwd_cpu, backward=simple_rnn_bwd_cpu,
    cuda_forward=simple_rnn_fwd_cuda, cuda_backward=simple_rnn_bwd_cuda,
    sample=_rnn_sample, reference=simple_rnn_reference,
))


# -- lstm ----------------------------------------------------------------------------------
def _lstm_shape(x, w, u, b):
    (h,) = _recurrent_shape("lstm", 4)(x, w, u, b)
    n = u.shape[0]
    return [h, Spec((x.shape[0], x.shape[1], 4 * n), x.dtype), h, h]


# The gate arithmetic runs as several short loops over a row of units rather than one:
# LLVM vectorizes a loop only when it can check at run time that the arrays it writes do
# not overlap the others, and gives up when one loop writes several arrays (the fused
# single loop ran at a quarter of the speed).
@jit
def _lstm_steps(x, w, u, b, h, gates, c, tanh_c):
    """The time loop: z = x_t @ W + h_{t-1} @ U + b (the projection step by step, as in
    :func:`_rnn_steps`) ;
    i, f, o = sigmoid(z_i, z_f, z_o) ; g = tanh(z_c) ; c_t = f c_{t-1} + i g ;
    h_t = o tanh(c_t) ; saves the gates (i, f, g, o), c, tanh(c)"""
    nb, nt, _ = h.shape
    n = u.shape[0]
    for t in range(nt):
        gemm(x[:, t, :], w, gates[:, t, :], 1.0, 0.0, False, False)
        if t > 0:
            gemm(h[:, t - 1, :], u, gates[:, t, :], 1.0, 1.0, False, False)
        for s in range(nb):
            # (loops from 0, offsets in the index: LLVM vectorizes those, not range(2n, 3n))
            for k in range(2 * n):          # i, f
                gates[s, t, k] = sigmoid(gates[s, t, k] + b[k])
            for k in range(n):              # g
                gates[s, t, 2 * n + k] = tanh(gates[s, t, 2 * n + k] + b[2 * n + k])
            for k in range(n):              # o
                gates[s, t, 3 * n + k] = sigmoid(gates[s, t, 3 * n + k] + b[3 * n + k])
            if t > 0:
                for j in range(n):
                    c[s, t, j] = (gates[s, t, n + j] * c[s, t - 1, j]
                                  + gates[s, t, j] * gates[s, t, 2 * n + j])
            else:
                for j in range(n):
                    c[s, t, j] = gates[s, t, j] * gates[s, t, 2 * n + j]
            for j in range(n):
                tanh_c[s, t, j] = tanh(c[s, t, j])
            for j in range(n):
                h[s, t, j] = gates[s, t, 3 * n + j] * tanh_c[s, t, j]


def lstm_fwd_cpu(x, w, u, b, h, gates, c, tanh_c):
    """The LSTM over every step: the time loop (:func:`_lstm_steps`), the batch split
    between threads"""
    def part(s, e):
        _lstm_steps(x[s:e], w, u, b, h[s:e], gates[s:e], c[s:e], tanh_c[s:e])

    split_run(part, x.shape[0], MIN_PER_PART)


@jit
def _lstm_bwd_steps(dy, u_t, gates, c, tanh_c, dz, dh, dc):
    """From the last step back: dh = dy_t + dz_{t+1} @ U^T ; dc += dh o (1 - tanh(c)^2) ;
    dz = (dc g i(1-i), dc c_{t-1} f(1-f), dc i (1-g^2), dh tanh(c) o(1-o)) ; the carry
    dc f goes to step t-1 (``u_t`` is U^T, contiguous)"""
    nb, nt, _ = dy.shape
    n = u_t.shape[1]
    dh[:] = 0.0
    dc[:] = 0.0
    for t in range(nt - 1, -1, -1):
        if t < nt - 1:
            gemm(dz[:, t + 1, :], u_t, dh, 1.0, 0.0, False, False)
        for s in range(nb):
            for j in range(n):
                dh[s, j] += dy[s, t, j]
            for j in range(n):
                dc[s, j] += dh[s, j] * gates[s, t, 3 * n + j] * tanh_grad(tanh_c[s, t, j])
            for j in range(n):
                dz[s, t, 3 * n + j] = dh[s, j] * tanh_c[s, t, j] * sigmoid_grad(
                    gates[s, t, 3 * n + j])
            for j in range(n):
                dz[s, t, j] = dc[s, j] * gates[s, t, 2 * n + j] * sigmoid_grad(gates[s, t, j])
            for j in range(n):
                dz[s, t, 2 * n + j] = dc[s, j] * gates[s, t, j] * tanh_grad(
                    gates[s, t, 2 * n + j])
            if t > 0:
                for j in range(n):
                    dz[s, t, n + j] = dc[s, j] * c[s, t - 1, j] * sigmoid_grad(
                        gates[s, t, n + j])
            else:
                for j in range(n):
                    dz[s, t, n + j] = 0.0
            for j in range(n):
                dc[s, j] *= gates[s, t, n + j]


def lstm_bwd_cpu(dy, x, w, u, h, gates, c, tanh_c, dx, dw, du, db):
    """Backpropagation through time: dx, dW, dU, db of lstm (the batch split between
    threads, :func:`_backward_split`)"""
    dz = workspace("lstm.dz", gates.shape, h.dtype)
    dh = workspace("lstm.dh", h.shape[::2], h.dtype)
    dc = workspace("lstm.dc", h.shape[::2], h.dtype)
    u_t = _transposed(u, "lstm.u_t")

    def steps(s, e):
        _lstm_bwd_steps(dy[s:e], u_t, gates[s:e], c[s:e], tanh_c[s:e], dz[s:e], dh[s:e],
                        dc[s:e])

    _backward_split("lstm", steps, x, w, h, dz, dx, dw, du, db)


@cuda_kernel
def _lstm_step_fwd(u, b, t, h, gates, c, tanh_c):
    """z = gates[:, t] (x_t @ W) + h[:, t-1] @ U + b ; gates[:, t] = (i, f, g, o) ;
    c_t = f c_{t-1} + i g ; h_t = o tanh(c_t)  (a thread per (sample, unit))"""
    n = u.shape[0]
    for k in range(cuda.grid(1), h.shape[0] * n, cuda.gridsize(1)):
        s = k // n
        j = k - s * n
        zi = gates[s, t, j] + b[j]
        zf = gates[s, t, n + j] + b[n + j]
        zc = gates[s, t, 2 * n + j] + b[2 * n + j]
        zo = gates[s, t, 3 * n + j] + b[3 * n + j]
        cp = c.dtype.type(0)
        if t > 0:
            for m in range(n):
                hm = h[s, t - 1, m]
                zi += hm * u[m, j]
                zf += hm * u[m, n + j]
                zc += hm * u[m, 2 * n + j]
                zo += hm * u[m, 3 * n + j]
            cp = c[s, t - 1, j]
        ig = sigmoid(zi)
        fg = sigmoid(zf)
        cg = tanh(zc)
        og = sigmoid(zo)
        ct = fg * cp + ig * cg
        tc = tanh(ct)
        gates[s, t, j] = ig
        gates[s, t, n + j] = fg
        gates[s, t, 2 * n + j] = cg
        gates[s, t, 3 * n + j] = og
        c[s, t, j] = ct
        tanh_c[s, t, j] = tc
        h[s, t, j] = og * tc


@cuda_kernel
def _lstm_step_bwd(dy, u, t, gates, c, tanh_c, dz, dc):
    """dh = dy[:, t] + dz[:, t+1] @ U^T ; dz[:, t] as lstm_bwd_cpu ; dc carried to t-1
    (a thread per (sample, unit))"""
    n = u.shape[0]
    for k in range(cuda.grid(1), dy.shape[0] * n, cuda.gridsize(1)):
        s = k // n
        j = k - s * n
        d = dy[s, t, j]
        dct = c.dtype.type(0)
        if t < dy.shape[1] - 1:
            for m in range(4 * n):
                d += dz[s, t + 1, m] * u[j, m]
            dct = dc[s, j]
        cp = c[s, t - 1, j] if t > 0 else c.dtype.type(0)
        ig = gates[s, t, j]
        fg = gates[s, t, n + j]
        cg = gates[s, t, 2 * n + j]
        og = gates[s, t, 3 * n + j]
        tc = tanh_c[s, t, j]
        dct += d * og * tanh_grad(tc)
        dz[s, t, j] = dct * cg * sigmoid_grad(ig)
        dz[s, t, n + j] = dct * cp * sigmoid_grad(fg)
        dz[s, t, 2 * n + j] = dct * ig * tanh_grad(cg)
        dz[s, t, 3 * n + j] = d * tc * sigmoid_grad(og)
        dc[s, j] = dct * fg


def lstm_fwd_cuda(x, w, u, b, h, gates, c, tanh_c):
    """_matmul_tiled for x @ W over all steps, then one _lstm_step_fwd per step."""
    nb, nt, nin = x.shape
    n = u.shape[0]
    _matmul_cuda(x.reshape(nb * nt, nin), w, gates.reshape(nb * nt, 4 * n), False, False)
    for t in range(nt):
        _lstm_step_fwd[config.grid_1d(nb * n)](u, b, t, h, gates, c, tanh_c)


def lstm_bwd_cuda(dy, x, w, u, h, gates, c, tanh_c, dx, dw, du, db):
    """One _lstm_step_bwd per step, last first; then the products over all steps."""
    nb, nt, _ = x.shape
    n = u.shape[0]
    dz = _scratch(h, "lstm.dz", gates.shape)
    dc = _scratch(h, "lstm.dc", (nb, n))
    for t in range(nt - 1, -1, -1):
        _lstm_step_bwd[config.grid_1d(nb * n)](dy, u, t, gates, c, tanh_c, dz, dc)
    _products_bwd_cuda(x, w, h, dz, dx, dw, du, db)


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def lstm_reference(x, w, u, b):
    """Plain numpy, one step at a time: (h, gates, c, tanh(c)) for every step."""
    n = u.shape[0]
    h = np.zeros((x.shape[0], n), x.dtype)
    c = np.zeros((x.shape[0], n), x.dtype)
    hs, gs, cs, tcs = [], [], [], []
    for t in range(x.shape[1]):
        z = x[:, t] @ w + h @ u + b
        i, f, g, o = _sig(z[:, :n]), _sig(z[:, n:2 * n]), np.tanh(z[:, 2 * n:3 * n]), \
            _sig(z[:, 3 * n:])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
        gs.append(np.concatenate([i, f, g, o], axis=1))
        cs.append(c)
        tcs.append(np.tanh(c))
    return tuple(np.stack(a, axis=1).astype(x.dtype) for a in (hs, gs, cs, tcs))


def _lstm_sample(rng, dtype):
    x = rng.standard_normal((2, 4, 3)).astype(dtype)
    w = (0.5 * rng.standard_normal((3, 12))).astype(dtype)
    u = (0.5 * rng.standard_normal((3, 12))).astype(dtype)
    b = (0.1 * rng.standard_normal(12)).astype(dtype)
    return (x, w, u, b), {}


register(Op(
    name="lstm", inputs=("x", "w", "u", "b"), shape=_lstm_shape,
    outputs=("h", "gates", "c", "tanh_c"),
    saves=("x", "w", "u", "h", "gates", "c", "tanh_c"),
    forward=lstm_fwd_cpu, backward=lstm_bwd_cpu,
    cuda_forward=lstm_fwd_cuda, cuda_backward=lstm_bwd_cuda,
    sample=_lstm_sample, reference=lstm_reference,
))


# -- the products over all steps, on CUDA ---------------------------------------------------
_device_scratch: dict = {}


def _scratch(like, tag: str, shape: tuple):
    """Scratch memory for a CUDA launcher, kept per (tag, shape, dtype) and reused; NumPy
    memory when the launcher is handed NumPy arrays (the compile check does that)."""
    if isinstance(like, np.ndarray):
        return workspace(tag, shape, like.dtype)
    key = (tag, tuple(shape), np.dtype(like.dtype).str)
    if key not in _device_scratch:
        from numba import cuda as numba_cuda

        _device_scratch[key] = numba_cuda.device_array(shape, like.dtype)
    return _device_scratch[key]


@cuda_kernel
def _recurrent_grad(h, dz, du):
    """du[m, k] = sum_s sum_{t >= 1} h[s, t-1, m] dz[s, t, k]  (a thread per weight)"""
    cols = du.shape[1]
    for q in range(cuda.grid(1), du.size, cuda.gridsize(1)):
        m = q // cols
        k = q - m * cols
        acc = du.dtype.type(0)
        for s in range(h.shape[0]):
            for t in range(1, h.shape[1]):
                acc += h[s, t - 1, m] * dz[s, t, k]
        du[m, k] = acc


@cuda_kernel
def _step_sums(dz, db):
    """db[k] = sum_{s, t} dz[s, t, k]  (a thread per bias)"""
    for k in range(cuda.grid(1), db.size, cuda.gridsize(1)):
        acc = db.dtype.type(0)
        for s in range(dz.shape[0]):
            for t in range(dz.shape[1]):
                acc += dz[s, t, k]
        db[k] = acc


def _products_bwd_cuda(x, w, h, dz, dx, dw, du, db):
    """dW = X^T dZ and dX = dZ W^T by _matmul_tiled ; dU by _recurrent_grad ; db by
    _step_sums."""
    nb, nt, nin = x.shape
    z2 = dz.reshape(nb * nt, dz.shape[2])
    if dw is not None:
        _matmul_cuda(x.reshape(nb * nt, nin), z2, dw, True, False)
    if du is not None:
        _recurrent_grad[config.grid_1d(du.size)](h, dz, du)
    if db is not None:
        _step_sums[config.grid_1d(db.size)](dz, db)
    if dx is not None:
        _matmul_cuda(z2, w, dx.reshape(nb * nt, nin), False, True)


# -- last_step -----------------------------------------------------------------------------
def _last_step_shape(x: Spec) -> list:
    if len(x.shape) != 3 or x.shape[1] < 1:
        raise OpError(f"last_step needs a sequence (batch, time, features) of at least one "
                      f"step; got {x.shape}")
    return [Spec((x.shape[0], x.shape[2]), x.dtype)]


@jit
def last_step_fwd_cpu(x, y):
    """y = x[:, -1, :]"""
    t = x.shape[1] - 1
    for s in range(x.shape[0]):
        for j in range(x.shape[2]):
            y[s, j] = x[s, t, j]


@jit
def last_step_bwd_cpu(dy, dx):
    """dx[:, -1, :] = dy ; dx = 0 at every other step"""
    last = dx.shape[1] - 1
    for s in range(dx.shape[0]):
        for t in range(last):
            for j in range(dx.shape[2]):
                dx[s, t, j] = 0.0
        for j in range(dx.shape[2]):
            dx[s, last, j] = dy[s, j]


@cuda_kernel
def _last_step_fwd(x, y):
    """y = x[:, -1, :]  (grid-stride over y)"""
    n = y.shape[1]
    for k in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        s = k // n
        y[s, k - s * n] = x[s, x.shape[1] - 1, k - s * n]


@cuda_kernel
def _last_step_bwd(dy, dx):
    """dx[:, -1, :] = dy, 0 elsewhere  (grid-stride over dx)"""
    nt = dx.shape[1]
    n = dx.shape[2]
    for k in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        s = k // (nt * n)
        t = (k // n) % nt
        j = k % n
        dx[s, t, j] = dy[s, j] if t == nt - 1 else dx.dtype.type(0)


def last_step_fwd_cuda(x, y):
    """Launch _last_step_fwd."""
    _last_step_fwd[config.grid_1d(y.size)](x, y)


def last_step_bwd_cuda(dy, dx):
    """Launch _last_step_bwd."""
    _last_step_bwd[config.grid_1d(dx.size)](dy, dx)


register(Op(
    name="last_step", inputs=("x",), shape=_last_step_shape,
    forward=last_step_fwd_cpu, backward=last_step_bwd_cpu,
    cuda_forward=last_step_fwd_cuda, cuda_backward=last_step_bwd_cuda,
    sample=lambda rng, dt: ((rng.standard_normal((2, 3, 4)).astype(dt),), {}),
    reference=lambda x: (x[:, -1, :],),
))
