"""Elementwise arithmetic: ``add`` (a regularisation penalty joining the loss, residual
connections), ``scale`` (a weighted loss of a multi-output model) and ``gate_mix`` (a
highway layer's gate between its transform and its input)."""
from __future__ import annotations

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.registry import Op, OpError, Spec, check_float, register
from dlrun.ops.shape import copy_cpu, copy_cuda

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


def _same(a: Spec, b: Spec) -> list:
    check_float("add", a=a, b=b)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise OpError(f"op 'add' takes two arrays of one shape and dtype, got "
                      f"{a.shape} {a.dtype} and {b.shape} {b.dtype}")
    return [Spec(a.shape, a.dtype)]


@jit
def add_fwd_cpu(a, b, y):
    """y = a + b"""
    af = a.reshape(-1)
    bf = b.reshape(-1)
    yf = y.reshape(-1)
    for i in range(af.size):
        yf[i] = af[i] + bf[i]


@cuda_kernel
def _add_fwd(a, b, y):
    """y = a + b"""
    af = a.reshape(-1)
    bf = b.reshape(-1)
    yf = y.reshape(-1)
    for i in range(cuda.grid(1), af.size, cuda.gridsize(1)):
        yf[i] = af[i] + bf[i]


def add_fwd_cuda(a, b, y):
    """Launch _add_fwd (grid-stride)."""
    _add_fwd[config.grid_1d(a.size)](a, b, y)


def add_bwd_cpu(dy, da, db):
    """da = dy ; db = dy"""
    if da is not None:
        copy_cpu(dy, da)
    if db is not None:
        copy_cpu(dy, db)


def add_bwd_cuda(dy, da, db):
    """da = dy ; db = dy, by copy_cuda"""
    if da is not None:
        copy_cuda(dy, da)
    if db is not None:
        copy_cuda(dy, db)


def _add_sample(rng, dtype):
    return (rng.standard_normal((3, 4)).astype(dtype),
            rng.standard_normal((3, 4)).astype(dtype)), {}


register(Op(name="add", inputs=("a", "b"), shape=_same, forward=add_fwd_cpu,
            backward=add_bwd_cpu, cuda_forward=add_fwd_cuda, cuda_backward=add_bwd_cuda,
            sample=_add_sample, reference=lambda a, b: (a + b,)))


# -- scale -------------------------------------------------------------------------------
def _float_like(x: Spec, **_) -> list:
    check_float("scale", x=x)
    return [Spec(x.shape, x.dtype)]


@jit
def scale_fwd_cpu(x, factor, y):
    """y = factor * x"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.size):
        yf[i] = factor * xf[i]


@cuda_kernel
def _scale(x, factor, y):
    """y = factor * x (grid-stride)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        yf[i] = factor * xf[i]


def scale_fwd_cuda(x, factor, y):
    """Launch _scale (grid-stride)."""
    _scale[config.grid_1d(x.size)](x, factor, y)


def scale_bwd_cpu(dy, factor, dx):
    """dx = factor * dy"""
    scale_fwd_cpu(dy, factor, dx)


def scale_bwd_cuda(dy, factor, dx):
    """dx = factor * dy, by _scale"""
    scale_fwd_cuda(dy, factor, dx)


register(Op(name="scale", inputs=("x",), shape=_float_like, attrs={"factor": 1.0},
            forward=scale_fwd_cpu, backward=scale_bwd_cpu, cuda_forward=scale_fwd_cuda,
            cuda_backward=scale_bwd_cuda,
            sample=lambda rng, dt: ((rng.standard_normal((3, 4)).astype(dt),),
                                    {"factor": 0.75}),
            reference=lambda x, factor: ((factor * x).astype(x.dtype),)))


# -- gate_mix ----------------------------------------------------------------------------
def _gate_mix_shape(g: Spec, a: Spec, b: Spec) -> list:
    check_float("gate_mix", g=g, a=a, b=b)
    if not g.shape == a.shape == b.shape or not g.dtype == a.dtype == b.dtype:
        raise OpError(f"op 'gate_mix' takes three arrays of one shape and dtype, got "
                      f"{g.shape} {g.dtype}, {a.shape} {a.dtype} and {b.shape} {b.dtype}")
    return [Spec(a.shape, a.dtype)]


@jit
def gate_mix_fwd_cpu(g, a, b, y):
    """y = g * a + (1 - g) * b  =  b + g * (a - b)"""
    gf = g.reshape(-1)
    af = a.reshape(-1)
    bf = b.reshape(-1)
    yf = y.reshape(-1)
    for i in range(gf.size):
        yf[i] = bf[i] + gf[i] * (af[i] - bf[i])


@jit
def gate_mix_bwd_cpu(dy, g, a, b, dg, da, db):
    """dg = dy * (a - b) ; da = dy * g ; db = dy * (1 - g)"""
    dyf = dy.reshape(-1)
    gf = g.reshape(-1)
    if dg is not None:
        af = a.reshape(-1)
        bf = b.reshape(-1)
        dgf = dg.reshape(-1)
        for i in range(dyf.size):
            dgf[i] = dyf[i] * (af[i] - bf[i])
    if da is not None:
        daf = da.reshape(-1)
        for i in range(dyf.size):
            daf[i] = dyf[i] * gf[i]
    if db is not None:
        dbf = db.reshape(-1)
        for i in range(dyf.size):
            dbf[i] = dyf[i] * (1.0 - gf[i])


@cuda_kernel
def _gate_mix(g, a, b, y):
    """y = b + g * (a - b) (grid-stride)"""
    gf = g.reshape(-1)
    af = a.reshape(-1)
    bf = b.reshape(-1)
    yf = y.reshape(-1)
    for i in range(cuda.grid(1), gf.size, cuda.gridsize(1)):
        yf[i] = bf[i] + gf[i] * (af[i] - bf[i])


@cuda_kernel
def _times_difference(dy, a, b, out):
    """out = dy * (a - b) (grid-stride)"""
    dyf = dy.reshape(-1)
    af = a.reshape(-1)
    bf = b.reshape(-1)
    of = out.reshape(-1)
    for i in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        of[i] = dyf[i] * (af[i] - bf[i])


@cuda_kernel
def _times_gate(dy, g, complement, out):
    """out = dy * g, or dy * (1 - g) with ``complement`` (grid-stride)"""
    dyf = dy.reshape(-1)
    gf = g.reshape(-1)
    of = out.reshape(-1)
    for i in range(cuda.grid(1), dyf.size, cuda.gridsize(1)):
        of[i] = dyf[i] * (1.0 - gf[i] if complement else gf[i])


def gate_mix_fwd_cuda(g, a, b, y):
    """Launch _gate_mix (grid-stride)."""
    _gate_mix[config.grid_1d(g.size)](g, a, b, y)


def gate_mix_bwd_cuda(dy, g, a, b, dg, da, db):
    """dg by _times_difference ; da, db by _times_gate (each grid-stride, when wanted)."""
    grid = config.grid_1d(dy.size)
    if dg is not None:
        _times_difference[grid](dy, a, b, dg)
    if da is not None:
        _times_gate[grid](dy, g, False, da)
    if db is not None:
        _times_gate[grid](dy, g, True, db)


def _gate_mix_sample(rng, dt):
    g = rng.uniform(0.05, 0.95, (3, 4)).astype(dt)
    return (g, rng.standard_normal((3, 4)).astype(dt), rng.standard_normal((3, 4)).astype(dt)), {}


register(Op(name="gate_mix", inputs=("g", "a", "b"), shape=_gate_mix_shape,
            saves=("g", "a", "b"), forward=gate_mix_fwd_cpu, backward=gate_mix_bwd_cpu,
            cuda_forward=gate_mix_fwd_cuda, cuda_backward=gate_mix_bwd_cuda,
            sample=_gate_mix_sample, reference=lambda g, a, b: (g * a + (1 - g) * b,)))
