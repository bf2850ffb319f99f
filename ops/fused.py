"""Kernels the planner fuses on the GPU, where a launch costs more than a small layer's work.

Not graph ops (a graph says ``bias_add`` then ``relu``; the planner decides to run them as
one kernel): ``bias_act`` computes ``z = x + b`` and ``y = act(z)`` in one pass. Its CPU
twin exists so the parity check can compare the two.
"""
from __future__ import annotations

import math

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None

# activation op name -> the code bias_act takes (the op's attribute, if any, is ``alpha``)
RELU, SIGMOID, TANH, LEAKY_RELU, ELU = 1, 2, 3, 4, 5
ACTIVATIONS = {"relu": RELU, "sigmoid": SIGMOID, "tanh": TANH, "leaky_relu": LEAKY_RELU,
               "elu": ELU}


@jit
def bias_act_fwd_cpu(x, b, kind, alpha, z, y):
    """z[i, j] = x[i, j] + b[j] ; y = act(z)  (the same formulas as the activation ops)"""
    xf = x.reshape(-1)
    zf = z.reshape(-1)
    yf = y.reshape(-1)
    for i in range(xf.size):
        v = xf[i] + b[i % b.size]
        zf[i] = v
        if kind == RELU:
            yf[i] = v if v > 0 else 0.0
        elif kind == SIGMOID:
            if v >= 0:
                yf[i] = 1.0 / (1.0 + math.exp(-v))
            else:
                e = math.exp(v)
                yf[i] = e / (1.0 + e)
        elif kind == TANH:
            yf[i] = math.tanh(v)
        elif kind == LEAKY_RELU:
            yf[i] = v if v > 0 else alpha * v
        else:
            yf[i] = v if v > 0 else alpha * math.expm1(v)


@cuda_kernel
def _bias_act_fwd(x, b, kind, alpha, z, y):
    """z[i, j] = x[i, j] + b[j] ; y = act(z)  (grid-stride; z may be y when unneeded)"""
    xf = x.reshape(-1)
    zf = z.reshape(-1)
    yf = y.reshape(-1)
    for i in range(cuda.grid(1), xf.size, cuda.gridsize(1)):
        v = xf[i] + b[i % b.size]
        zf[i] = v
        if kind == RELU:
            yf[i] = v if v > 0 else 0.0
        elif kind == SIGMOID:
            if v >= 0:
                yf[i] = 1.0 / (1.0 + math.exp(-v))
            else:
                e = math.exp(v)
                yf[i] = e / (1.0 + e)
        elif kind == TANH:
            yf[i] = math.tanh(v)
        elif kind == LEAKY_RELU:
            yf[i] = v if v > 0 else alpha * v
        else:
            yf[i] = v if v > 0 else alpha * math.expm1(v)


def bias_act_fwd_cuda(x, b, kind, alpha, z, y):
    """Launch _bias_act_fwd (grid-stride). Pass ``z=y`` when nothing reads ``z``: each
    element is written as z, then overwritten as y by the same thread."""
    _bias_act_fwd[config.grid_1d(x.size)](x, b, kind, alpha, z, y)
