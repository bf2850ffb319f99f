"""Shape ops: reshape (what Flatten and Reshape lower to)."""
from __future__ import annotations

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.registry import Op, OpError, Spec, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


def _reshape_shape(x: Spec, shape: tuple = (-1,)) -> list:
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(x.shape))
    known = int(np.prod([d for d in shape if d != -1]))
    if shape.count(-1) > 1 or (known and size % known) or (-1 not in shape and known != size):
        raise OpError(f"cannot reshape an array of shape {x.shape} into {shape}")
    out = tuple(size // known if d == -1 else d for d in shape) if known else shape
    return [Spec(out, x.dtype)]


@jit
def copy_cpu(x, y):
    """y.flat = x.flat"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.size):
        yf[i] = xf[i]


@cuda_kernel
def _copy(x, y):
    """y.flat = x.flat (grid-stride)"""
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        yf[i] = xf[i]


def copy_cuda(x, y):
    """Launch _copy (grid-stride)."""
    _copy[config.grid_1d(x.size)](x, y)


def reshape_fwd_cpu(x, shape, y):
    """y = x.reshape(shape) (a copy into the engine's buffer)"""
    copy_cpu(x, y)


def reshape_fwd_cuda(x, shape, y):
    """y = x.reshape(shape), by copy_cuda"""
    copy_cuda(x, y)


def reshape_bwd_cpu(dy, shape, dx):
    """dx = dy.reshape(x.shape)"""
    copy_cpu(dy, dx)


def reshape_bwd_cuda(dy, shape, dx):
    """dx = dy.reshape(x.shape), by copy_cuda"""
    copy_cuda(dy, dx)


register(Op(
    name="reshape", inputs=("x",), shape=_reshape_shape, attrs={"shape": (-1,)},
    forward=reshape_fwd_cpu, backward=reshape_bwd_cpu,
    cuda_forward=reshape_fwd_cuda, cuda_backward=reshape_bwd_cuda,
    sample=lambda rng, dt: ((rng.standard_normal((2, 3, 4)).astype(dt),), {"shape": (2, -1)}),
    reference=lambda x, shape: (x.reshape(shape),),
))
