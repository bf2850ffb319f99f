"""Convolution on NCHW images: conv2d (im2col by Numba, the product by BLAS), conv2d_bias
(the same with the bias, and optionally ReLU, applied to each sample's product while it is
in cache: what Conv2D uses) and a per-channel bias add.

The CPU forward lays the receptive fields of a chunk of samples out as columns
(``im2col``), multiplies them by the weights with numpy's BLAS, and scatters the product
into NCHW order, adding the bias (and applying ReLU) on the way; the backward does the
reverse (``col2im``). Chunks are sized so the columns stay in cache yet each BLAS call is
large; they live in per-thread workspaces reused from step to step, so a step allocates
nothing after its first. The CUDA twins are direct convolutions,
one thread per output element.

One concern, so one module though a long one: the convolution's CPU and CUDA kernels,
forward and backward, share their geometry and index arithmetic.
"""
from __future__ import annotations

import threading

import numpy as np

from dlrun.ops import config
from dlrun.ops.blas import gemm, split_run
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.registry import Op, OpError, Spec, check_float, register
from dlrun.ops.shape import copy_cuda

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None

_workspaces: dict = {}


def workspace(tag: str, shape: tuple, dtype) -> np.ndarray:
    """A scratch array of ``shape`` for a kernel driver, kept per (tag, dtype, thread) and
    grown on demand: reused from step to step, so drivers do not allocate per call."""
    key = (tag, np.dtype(dtype), threading.get_ident())
    size = int(np.prod(shape))
    buf = _workspaces.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype)
        _workspaces[key] = buf
    return buf[:size].reshape(shape)


def window_geometry(size: int, k: int, stride: int, padding: str) -> tuple[int, int]:
    """(output size, padding before) along one axis, as Keras/TensorFlow define them:
    ``valid`` uses whole windows only; ``same`` gives ceil(size / stride) outputs, padding
    split evenly with the odd element after."""
    if padding == "valid":
        return (size - k) // stride + 1, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2


# -- index arithmetic the window kernels share (conv and pooling, both devices) -----------
@config.formula
def unravel4(t, a):
    """(i0, i1, i2, i3), the index of element t of the 4-D array a (row-major)"""
    i3 = t % a.shape[3]
    i2 = (t // a.shape[3]) % a.shape[2]
    i1 = (t // (a.shape[3] * a.shape[2])) % a.shape[1]
    return t // (a.shape[3] * a.shape[2] * a.shape[1]), i1, i2, i3


@config.formula
def tap_source(pos, pad, tap, stride, count):
    """The output p whose window reads input ``pos`` with its tap ``tap`` (p * stride +
    tap - pad = pos), or -1 when none of the ``count`` outputs does"""
    pp = pos + pad - tap
    if pp >= 0 and pp % stride == 0 and pp // stride < count:
        return pp // stride
    return -1


@config.formula
def window_span(p, stride, pad, k, size):
    """(lo, hi): the inputs [lo, hi) that window p (k wide) covers inside [0, size)"""
    lo = p * stride - pad
    hi = lo + k
    if lo < 0:
        lo = 0
    if hi > size:
        hi = size
    return lo, hi


def check_window_attrs(op: str, kernel: tuple, strides: tuple, padding: str) -> None:
    if padding not in ("valid", "same"):
        raise OpError(f"op {op!r}: padding must be 'valid' or 'same', got {padding!r}")
    if len(strides) != 2 or min(strides) < 1 or len(kernel) != 2 or min(kernel) < 1:
        raise OpError(f"op {op!r}: window {tuple(kernel)} and strides {tuple(strides)} must "
                      "be two positive integers each")


# -- conv2d ------------------------------------------------------------------------------
def _conv2d_shape(x: Spec, w: Spec, strides=(1, 1), padding="valid") -> list:
    check_float("conv2d", x=x, w=w)
    if len(x.shape) != 4 or len(w.shape) != 4 or x.shape[1] != w.shape[1]:
        raise OpError(f"conv2d needs x (batch, channels, height, width) and w (out, "
                      f"channels, kh, kw) with the same channels; got {x.shape} and {w.shape}")
    if x.dtype != w.dtype:
        raise OpError(f"conv2d inputs differ in dtype: {x.dtype} and {w.dtype}")
    check_window_attrs("conv2d", w.shape[2:], strides, padding)
    oh, _ = window_geometry(x.shape[2], w.shape[2], strides[0], padding)
    ow, _ = window_geometry(x.shape[3], w.shape[3], strides[1], padding)
    if oh < 1 or ow < 1:
        raise OpError(f"conv2d: a {w.shape[2]}x{w.shape[3]} kernel does not fit images of "
                      f"{x.shape[2]}x{x.shape[3]} with padding 'valid'; use padding='same'")
    return [Spec((x.shape[0], w.shape[0], oh, ow), x.dtype)]


def _conv2d_geometry(x, w, y, strides, padding):
    _, pt = window_geometry(x.shape[2], w.shape[2], strides[0], padding)
    _, pl = window_geometry(x.shape[3], w.shape[3], strides[1], padding)
    return w.shape[2], w.shape[3], strides[0], strides[1], pt, pl, y.shape[2], y.shape[3]


@jit
def im2col_cpu(x, kh, kw, sh, sw, pt, pl, oh, ow, cols):
    """cols[(c*kh + i)*kw + j, (g*oh + p)*ow + q] = x[g, c, p*sh + i - pt, q*sw + j - pl],
    0 outside the image; ``x`` is a chunk of samples, laid side by side in ``cols``"""
    nb, ch, h, wd = x.shape
    for g in range(nb):
        for c in range(ch):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for p in range(oh):
                        r = p * sh + i - pt
                        at = (g * oh + p) * ow
                        for q in range(ow):
                            col = q * sw + j - pl
                            inside = 0 <= r < h and 0 <= col < wd
                            cols[row, at + q] = x[g, c, r, col] if inside else 0.0


@jit
def col2im_cpu(cols, kh, kw, sh, sw, pt, pl, oh, ow, dx):
    """dx[g, c, p*sh + i - pt, q*sw + j - pl] += cols[(c*kh + i)*kw + j, (g*oh + p)*ow + q]
    (dx zeroed first): the adjoint of im2col_cpu"""
    nb, ch, h, wd = dx.shape
    dxf = dx.reshape(-1)
    for k in range(dxf.size):
        dxf[k] = 0.0
    for g in range(nb):
        for c in range(ch):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for p in range(oh):
                        r = p * sh + i - pt
                        if r < 0 or r >= h:
                            continue
                        at = (g * oh + p) * ow
                        for q in range(ow):
                            col = q * sw + j - pl
                            if 0 <= col < wd:
                                dx[g, c, r, col] += cols[row, at + q]


@jit
def scatter_bias_relu_cpu(t, b, relu, y):
    """y[g, o, k] = act(t[o, g*P + k] + b[o]) ; act = ReLU when relu ; no bias if b is empty"""
    nb, no, np_ = y.shape
    for g in range(nb):
        for o in range(no):
            bias = b[o] if b.size else 0.0
            for k in range(np_):
                v = t[o, g * np_ + k] + bias
                y[g, o, k] = v if v > 0 or not relu else 0.0


@jit
def gather_relu_mask_cpu(dy, y, relu, t, db):
    """t[o, g*P + k] = dy[g, o, k] * (y[g, o, k] > 0 if relu) ; db[o] += sum (if db given)"""
    nb, no, np_ = dy.shape
    for g in range(nb):
        for o in range(no):
            s = 0.0
            for k in range(np_):
                v = dy[g, o, k] if not relu or y[g, o, k] > 0 else 0.0
                t[o, g * np_ + k] = v
                s += v
            if db.size:
                db[o] += s


def _chunk(n: int, k: int, p: int) -> int:
    """Samples per BLAS call: enough to make the products large (few calls, so few thread
    wake-ups at 2+ threads), few enough that one chunk's columns (k x chunk*p) stay within
    ~2 MB of float32. Measured on the MNIST CNN (2 cores): 1 to 8 samples per call of its
    second convolution time alike at 1 thread, 16 is 10-15% slower."""
    return max(1, min(n, (1 << 19) // max(1, k * p)))


@jit
def _pointwise(geo):
    """A 1x1 kernel with stride 1 and no padding (the lectures' "network in network")"""
    kh, kw, sh, sw, pt, pl, oh, ow = geo
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0


@jit
def conv_fwd_part_cpu(x, w2, b, relu, geo, step, cols_ws, t_ws, y3):
    """y3[n] = act(w2 @ im2col(x[n]) + b) for the samples of ``x``, ``step`` per product;
    the workspaces are flat and reshaped per chunk (the last chunk may be shorter)"""
    kh, kw, sh, sw, pt, pl, oh, ow = geo
    pix = oh * ow
    if _pointwise(geo):                 # 1x1: a sample's columns are the sample itself
        for n in range(x.shape[0]):
            gemm(w2, x[n].reshape((x.shape[1], pix)), y3[n], 1.0, 0.0, False, False)
            scatter_bias_relu_cpu(y3[n], b, relu, y3[n:n + 1])    # in place
        return
    for n0 in range(0, x.shape[0], step):
        m = min(step, x.shape[0] - n0)
        cols = cols_ws[:w2.shape[1] * m * pix].reshape((w2.shape[1], m * pix))
        t = t_ws[:w2.shape[0] * m * pix].reshape((w2.shape[0], m * pix))
        im2col_cpu(x[n0:n0 + m], kh, kw, sh, sw, pt, pl, oh, ow, cols)
        gemm(w2, cols, t, 1.0, 0.0, False, False)
        scatter_bias_relu_cpu(t, b, relu, y3[n0:n0 + m])


@jit
def conv_bwd_part_cpu(dy3, y3, x, w2, relu, geo, step, cols_ws, t_ws, want_dw, want_dx,
                      dw2, db, dx):
    """For the samples of ``x``: t = dy masked by y > 0 (when relu), db += sum t,
    dw2 = sum over chunks t @ im2col(x).T, dx = col2im(w2.T @ t), ``step`` per product"""
    kh, kw, sh, sw, pt, pl, oh, ow = geo
    pix = oh * ow
    if _pointwise(geo):                 # 1x1: products straight from and into the samples
        t = t_ws[:w2.shape[0] * pix].reshape((w2.shape[0], pix))
        for n in range(x.shape[0]):
            gather_relu_mask_cpu(dy3[n:n + 1], y3[n:n + 1], relu, t, db)
            if want_dw:
                gemm(t, x[n].reshape((x.shape[1], pix)), dw2, 1.0, 0.0 if n == 0 else 1.0,
                     False, True)
            if want_dx:
                gemm(w2, t, dx[n].reshape((x.shape[1], pix)), 1.0, 0.0, True, False)
        return
    for n0 in range(0, x.shape[0], step):
        m = min(step, x.shape[0] - n0)
        cols = cols_ws[:w2.shape[1] * m * pix].reshape((w2.shape[1], m * pix))
        t = t_ws[:w2.shape[0] * m * pix].reshape((w2.shape[0], m * pix))
        gather_relu_mask_cpu(dy3[n0:n0 + m], y3[n0:n0 + m], relu, t, db)
        if want_dw:
            im2col_cpu(x[n0:n0 + m], kh, kw, sh, sw, pt, pl, oh, ow, cols)
            gemm(t, cols, dw2, 1.0, 0.0 if n0 == 0 else 1.0, False, True)
        if want_dx:
            gemm(w2, t, cols, 1.0, 0.0, True, False)    # the columns' gradient, scattered
            col2im_cpu(cols, kh, kw, sh, sw, pt, pl, oh, ow, dx[n0:n0 + m])


def _conv_forward(x, w, b, relu, strides, padding, y):
    """y = act(conv(x, w) + b): the batch split between threads (``blas.split_run``), each
    part a compiled loop over chunks of samples, one BLAS product per chunk"""
    geo = _conv2d_geometry(x, w, y, strides, padding)
    w2 = w.reshape(w.shape[0], -1)
    y3 = y.reshape(y.shape[0], y.shape[1], geo[6] * geo[7])
    pix = geo[6] * geo[7]
    step = _chunk(x.shape[0], w2.shape[1], pix)

    def part(s, e):
        cols = workspace("conv2d.cols", (w2.shape[1] * step * pix,), x.dtype)
        t = workspace("conv2d.t", (w2.shape[0] * step * pix,), x.dtype)
        conv_fwd_part_cpu(x[s:e], w2, b, relu, geo, step, cols, t, y3[s:e])

    split_run(part, x.shape[0])


def _conv_backward(dy, x, w, y, relu, strides, padding, dx, dw, db):
    """db = sum dy (masked by y > 0 when relu) ; dw = sum over samples ; dx = col2im: the
    batch split between threads, each with its own partial dw and db, summed after"""
    geo = _conv2d_geometry(x, w, dy, strides, padding)
    w2 = w.reshape(w.shape[0], -1)
    pix = geo[6] * geo[7]
    dy3 = dy.reshape(dy.shape[0], dy.shape[1], pix)
    y3 = y.reshape(dy3.shape)
    step = _chunk(x.shape[0], w2.shape[1], pix)
    none = np.empty(0, x.dtype)
    partials = []

    def part(s, e):
        cols = workspace("conv2d.cols", (w2.shape[1] * step * pix,), x.dtype)
        t = workspace("conv2d.t", (w2.shape[0] * step * pix,), x.dtype)
        # partials named by the part's first row: one pool thread may run two parts
        pdw = workspace(f"conv2d.dw{s}", w2.shape, x.dtype) if dw is not None else none
        pdb = workspace(f"conv2d.db{s}", (w2.shape[0],), x.dtype) if db is not None else none
        pdb[...] = 0.0
        conv_bwd_part_cpu(dy3[s:e], y3[s:e], x[s:e], w2, relu, geo, step, cols, t,
                          dw is not None, dx is not None, pdw.reshape(w2.shape) if
                          dw is not None else none.reshape(0, 0), pdb,
                          dx[s:e] if dx is not None else x[:0])
        partials.append((s, pdw, pdb))

    split_run(part, x.shape[0])
    # summed in the order of the parts' rows, whichever thread finished first
    partials = [(pdw, pdb) for _, pdw, pdb in sorted(partials, key=lambda p: p[0])]
    if dw is not None:
        np.copyto(dw.reshape(w2.shape), partials[0][0])
        for pdw, _ in partials[1:]:
            dw.reshape(w2.shape)[...] += pdw
    if db is not None:
        np.copyto(db, partials[0][1])
        for _, pdb in partials[1:]:
            db += pdb


def conv2d_fwd_cpu(x, w, strides, padding, y):
    """y = w.reshape(out, -1) @ im2col(x), by chunks of samples (im2col Numba, product BLAS)"""
    _conv_forward(x, w, np.empty(0, x.dtype), False, strides, padding, y)


def conv2d_bwd_cpu(dy, x, w, strides, padding, dx, dw):
    """dw = dy @ im2col(x).T ; dx = col2im(w.reshape(out, -1).T @ dy), by chunks"""
    _conv_backward(dy, x, w, dy, False, strides, padding, dx, dw, None)


@cuda_kernel
def _conv2d_fwd(x, w, sh, sw, pt, pl, y):
    """y[n, o, p, q] = sum_{c,i,j} w[o, c, i, j] * x[n, c, p*sh + i - pt, q*sw + j - pl]"""
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, o, p, q = unravel4(t, y)
        acc = y.dtype.type(0)
        for c in range(x.shape[1]):
            for i in range(w.shape[2]):
                r = p * sh + i - pt
                if 0 <= r < x.shape[2]:
                    for j in range(w.shape[3]):
                        col = q * sw + j - pl
                        if 0 <= col < x.shape[3]:
                            acc += w[o, c, i, j] * x[n, c, r, col]
        y[n, o, p, q] = acc


def conv2d_fwd_cuda(x, w, strides, padding, y):
    """Launch _conv2d_fwd (grid-stride over the outputs)."""
    _, _, sh, sw, pt, pl, _, _ = _conv2d_geometry(x, w, y, strides, padding)
    _conv2d_fwd[config.grid_1d(y.size)](x, w, sh, sw, pt, pl, y)


@cuda_kernel
def _conv2d_bwd_x(dy, y, relu, w, sh, sw, pt, pl, dx):
    """dx[n, c, r, s] = sum over (o, i, j) with r = p*sh + i - pt, s = q*sw + j - pl of
    w[o, c, i, j] * g[n, o, p, q] ; g = dy * (y > 0) if relu else dy"""
    for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, r, s = unravel4(t, dx)
        acc = dx.dtype.type(0)
        for i in range(w.shape[2]):
            p = tap_source(r, pt, i, sh, dy.shape[2])
            if p < 0:
                continue
            for j in range(w.shape[3]):
                q = tap_source(s, pl, j, sw, dy.shape[3])
                if q < 0:
                    continue
                for o in range(w.shape[0]):
                    if not relu or y[n, o, p, q] > 0:
                        acc += w[o, c, i, j] * dy[n, o, p, q]
        dx[n, c, r, s] = acc


@cuda_kernel
def _conv2d_bwd_w(dy, y, relu, x, sh, sw, pt, pl, dw):
    """dw[o, c, i, j] = sum_{n,p,q} g[n, o, p, q] * x[n, c, p*sh + i - pt, q*sw + j - pl] ;
    g = dy * (y > 0) if relu else dy"""
    for t in range(cuda.grid(1), dw.size, cuda.gridsize(1)):
        o, c, i, j = unravel4(t, dw)
        acc = dw.dtype.type(0)
        for n in range(dy.shape[0]):
            for p in range(dy.shape[2]):
                r = p * sh + i - pt
                if 0 <= r < x.shape[2]:
                    for q in range(dy.shape[3]):
                        col = q * sw + j - pl
                        if 0 <= col < x.shape[3] and (not relu or y[n, o, p, q] > 0):
                            acc += dy[n, o, p, q] * x[n, c, r, col]
        dw[o, c, i, j] = acc


def _conv2d_bwd_cuda(dy, y, relu, x, w, strides, padding, dx, dw):
    _, _, sh, sw, pt, pl, _, _ = _conv2d_geometry(x, w, dy, strides, padding)
    if dx is not None:
        _conv2d_bwd_x[config.grid_1d(dx.size)](dy, y, relu, w, sh, sw, pt, pl, dx)
    if dw is not None:
        _conv2d_bwd_w[config.grid_1d(dw.size)](dy, y, relu, x, sh, sw, pt, pl, dw)


def conv2d_bwd_cuda(dy, x, w, strides, padding, dx, dw):
    """Launch _conv2d_bwd_x (one thread per input element) and _conv2d_bwd_w (one per
    weight)."""
    _conv2d_bwd_cuda(dy, dy, False, x, w, strides, padding, dx, dw)


def conv2d_reference(x, w, strides=(1, 1), padding="valid"):
    """Plain numpy: pad, then sum the kernel's taps as shifted, strided slices."""
    kh, kw = w.shape[2:]
    oh, pt = window_geometry(x.shape[2], kh, strides[0], padding)
    ow, pl = window_geometry(x.shape[3], kw, strides[1], padding)
    pb = max((oh - 1) * strides[0] + kh - x.shape[2] - pt, 0)
    pr = max((ow - 1) * strides[1] + kw - x.shape[3] - pl, 0)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    y = np.zeros((x.shape[0], w.shape[0], oh, ow), np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + strides[0] * oh:strides[0], j:j + strides[1] * ow:strides[1]]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return (y,)


def _conv2d_sample(rng, dtype):
    x = rng.standard_normal((2, 3, 5, 6)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 2)).astype(dtype)
    return (x, w), {"strides": (2, 1), "padding": "same"}


register(Op(
    name="conv2d", inputs=("x", "w"), shape=_conv2d_shape, saves=("x", "w"),
    attrs={"strides": (1, 1), "padding": "valid"},
    forward=conv2d_fwd_cpu, backward=conv2d_bwd_cpu,
    cuda_forward=conv2d_fwd_cuda, cuda_backward=conv2d_bwd_cuda,
    sample=_conv2d_sample, reference=conv2d_reference,
))


# -- conv2d_bias: conv2d, bias and optionally ReLU in one pass -------------------------------
def _conv2d_bias_shape(x: Spec, w: Spec, b: Spec, strides=(1, 1), padding="valid",
                       relu=False) -> list:
    out = _conv2d_shape(x, w, strides, padding)
    if b.shape != (w.shape[0],) or b.dtype != w.dtype:
        raise OpError(f"conv2d_bias needs a bias of shape ({w.shape[0]},) and dtype "
                      f"{w.dtype} for weights {w.shape}; got {b.shape} {b.dtype}")
    return out


def conv2d_bias_fwd_cpu(x, w, b, strides, padding, relu, y):
    """y = act(w.reshape(out, -1) @ im2col(x) + b), act = ReLU or identity; the bias and
    ReLU are applied as each chunk's product is scattered into place"""
    _conv_forward(x, w, b, relu, strides, padding, y)


def conv2d_bias_bwd_cpu(dy, x, w, y, strides, padding, relu, dx, dw, db):
    """t = dy * (y > 0) (or dy) ; db = sum t ; dw = t @ im2col(x).T ;
    dx = col2im(w.reshape(out, -1).T @ t)"""
    _conv_backward(dy, x, w, y, relu, strides, padding, dx, dw, db)


@cuda_kernel
def _bias_relu(y, b, relu):
    """y[n, c, ...] += b[c], then y = max(y, 0) when relu  (grid-stride, in place)"""
    yf = y.reshape(-1)
    inner = yf.size // (y.shape[0] * b.size)
    for i in range(cuda.grid(1), yf.size, cuda.gridsize(1)):
        v = yf[i] + b[(i // inner) % b.size]
        yf[i] = v if v > 0 or not relu else 0.0


@cuda_kernel
def _masked_channel_sums(dy, y, relu, db):
    """db[c] = sum_{n, ...} g[n, c, ...] ; g = dy * (y > 0) if relu else dy  (per channel)"""
    dyf = dy.reshape(-1)
    yf = y.reshape(-1)
    inner = dyf.size // (dy.shape[0] * db.size)
    for c in range(cuda.grid(1), db.size, cuda.gridsize(1)):
        s = dy.dtype.type(0)
        for n in range(dy.shape[0]):
            base = (n * db.size + c) * inner
            for k in range(inner):
                if not relu or yf[base + k] > 0:
                    s += dyf[base + k]
        db[c] = s


def conv2d_bias_fwd_cuda(x, w, b, strides, padding, relu, y):
    """Launch _conv2d_fwd, then _bias_relu on its output."""
    conv2d_fwd_cuda(x, w, strides, padding, y)
    _bias_relu[config.grid_1d(y.size)](y, b, relu)


def conv2d_bias_bwd_cuda(dy, x, w, y, strides, padding, relu, dx, dw, db):
    """Launch _conv2d_bwd_x, _conv2d_bwd_w and _masked_channel_sums, each masking dy by
    y > 0 as it reads it when relu."""
    _conv2d_bwd_cuda(dy, y, relu, x, w, strides, padding, dx, dw)
    if db is not None:
        _masked_channel_sums[config.grid_1d(db.size)](dy, y, relu, db)


def conv2d_bias_reference(x, w, b, strides=(1, 1), padding="valid", relu=False):
    (y,) = conv2d_reference(x, w, strides, padding)
    y = y + b.reshape(1, -1, 1, 1)
    return (np.maximum(y, 0) if relu else y,)


def _conv2d_bias_sample(rng, dtype):
    (x, w), attrs = _conv2d_sample(rng, dtype)
    b = rng.standard_normal(w.shape[0]).astype(dtype)
    return (x, w, b), attrs | {"relu": True}


register(Op(
    name="conv2d_bias", inputs=("x", "w", "b"), shape=_conv2d_bias_shape,
    saves=("x", "w", "y"), attrs={"strides": (1, 1), "padding": "valid", "relu": False},
    forward=conv2d_bias_fwd_cpu, backward=conv2d_bias_bwd_cpu,
    cuda_forward=conv2d_bias_fwd_cuda, cuda_backward=conv2d_bias_bwd_cuda,
    sample=_conv2d_bias_sample, reference=conv2d_bias_reference,
))


# -- channel_bias_add --------------------------------------------------------------------
def _channel_bias_add_shape(x: Spec, b: Spec) -> list:
    check_float("channel_bias_add", x=x, b=b)
    if len(x.shape) < 2 or len(b.shape) != 1 or x.shape[1] != b.shape[0]:
        raise OpError(f"channel_bias_add needs a bias of shape ({x.shape[1:2]}) for input "
                      f"{x.shape} (batch, channels, ...); got {b.shape}")
    return [Spec(x.shape, x.dtype)]


@jit
def channel_bias_add_fwd_cpu(x, b, y):
    """y[n, c, ...] = x[n, c, ...] + b[c]  (bias along axis 1)"""
    x3 = x.reshape(x.shape[0], b.size, x.size // (x.shape[0] * b.size))
    y3 = y.reshape(x3.shape)
    for n in range(x3.shape[0]):
        for c in range(b.size):
            for s in range(x3.shape[2]):
                y3[n, c, s] = x3[n, c, s] + b[c]


@cuda_kernel
def _channel_bias_add_fwd(x, b, y):
    """y[n, c, ...] = x[n, c, ...] + b[c]  (grid-stride over the elements)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    inner = xf.size // (x.shape[0] * b.size)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        yf[i] = xf[i] + b[(i // inner) % b.size]


def channel_bias_add_fwd_cuda(x, b, y):
    """Launch _channel_bias_add_fwd (grid-stride)."""
    _channel_bias_add_fwd[config.grid_1d(x.size)](x, b, y)


@jit
def channel_bias_add_bwd_cpu(dy, dx, db):
    """dx = dy ; db[c] = sum_{n, ...} dy[n, c, ...]"""
    c_ = dy.shape[1]
    dy3 = dy.reshape(dy.shape[0], c_, dy.size // (dy.shape[0] * c_))
    if dx is not None:
        dyf = dy.reshape(-1)
        dxf = dx.reshape(-1)
        for k in range(dyf.size):
            dxf[k] = dyf[k]
    if db is not None:
        for c in range(c_):
            s = 0.0
            for n in range(dy3.shape[0]):
                for k in range(dy3.shape[2]):
                    s += dy3[n, c, k]
            db[c] = s


@cuda_kernel
def _channel_sums(dy, db):
    """db[c] = sum_{n, ...} dy[n, c, ...]  (one thread per channel)"""
    dyf = dy.reshape(-1)
    inner = dyf.size // (dy.shape[0] * db.size)
    for c in range(cuda.grid(1), db.size, cuda.gridsize(1)):
        s = dy.dtype.type(0)
        for n in range(dy.shape[0]):
            base = (n * db.size + c) * inner
            for k in range(inner):
                s += dyf[base + k]
        db[c] = s


def channel_bias_add_bwd_cuda(dy, dx, db):
    """dx = dy by copy_cuda ; db by _channel_sums."""
    if dx is not None:
        copy_cuda(dy, dx)
    if db is not None:
        _channel_sums[config.grid_1d(db.size)](dy, db)


def _channel_bias_add_sample(rng, dtype):
    return (rng.standard_normal((2, 3, 4, 5)).astype(dtype),
            rng.standard_normal(3).astype(dtype)), {}


register(Op(
    name="channel_bias_add", inputs=("x", "b"), shape=_channel_bias_add_shape,
    forward=channel_bias_add_fwd_cpu, backward=channel_bias_add_bwd_cpu,
    cuda_forward=channel_bias_add_fwd_cuda, cuda_backward=channel_bias_add_bwd_cuda,
    sample=_channel_bias_add_sample,
    reference=lambda x, b: (x + b.reshape((1, -1) + (1,) * (x.ndim - 2)),),
))
