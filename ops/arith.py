"""Elementwise arithmetic: ``add`` (a regularisation penalty joining the loss, and later
residual connections)."""
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
