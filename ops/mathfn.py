"""Scalar math for formulas, on both devices: ``exp``, ``expm1``, ``tanh`` and ``one``.

Each is ``math``'s function everywhere (libm on the CPU, libdevice on CUDA, Python under
the simulator) except on float32 inside CPU kernels, where a polynomial that LLVM can
vectorize takes its place: numba has no vector math library here, and libm's scalar
calls cost the LSTM's gate arithmetic five times what the polynomial does. Error about
1 ulp for ``exp`` and ``expm1``, a few for ``tanh``; NaN stays NaN; float32 arguments
past exp's range are clamped to it, so no result is inf.

``one(x)`` is 1 in ``x``'s type: a formula written ``one(x) / (one(x) + exp(-x))`` stays
in float32 for float32 arrays, where a literal ``1.0`` would make it float64.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from dlrun.ops.config import FASTMATH, jit

_CPU = {"fastmath": FASTMATH, "error_model": "numpy"}


def exp(x):
    """e^x"""
    return math.exp(x)


def expm1(x):
    """e^x - 1, without cancellation near 0"""
    return math.expm1(x)


def tanh(x):
    """tanh(x)"""
    return math.tanh(x)


def one(x):
    """1 in the type of x"""
    return type(x)(1)


# -- the float32 polynomials (CPU) ---------------------------------------------------------
@intrinsic
def _int32_as_float32(typingctx, bits):
    """The float32 whose bit pattern is the int32 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@jit
def _expm1_parts_f32(x):
    """(q, s) with e^x = s (q + 1), q = e^r - 1, s = 2^k, x = k ln 2 + r: a degree-7
    polynomial for q; x clamped into [-87, 88]"""
    if x < np.float32(-87.0):
        x = np.float32(-87.0)
    if x > np.float32(88.0):
        x = np.float32(88.0)
    k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))    # float32
    r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    s = _int32_as_float32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
    return p * r * r + r, s


@jit
def _exp_f32(x):
    """e^x = s (q + 1)"""
    q, s = _expm1_parts_f32(x)
    return s * (q + np.float32(1.0))


@jit
def _expm1_f32(x):
    """e^x - 1 = s q + (s - 1): exactly q when k = 0, so no cancellation near 0"""
    q, s = _expm1_parts_f32(x)
    return s * q + (s - np.float32(1.0))


@jit
def _tanh_f32(x):
    """tanh x = e / (e + 2), e = e^(2x) - 1 (x past 44 gives e^88: still 1)"""
    e = _expm1_f32(x + x)
    return e / (e + np.float32(2.0))


def _typed(fn, float32_impl):
    """CPU: ``float32_impl`` for float32, ``fn``'s math otherwise; CUDA: ``fn``'s math."""
    @overload(fn, target="cpu", jit_options=_CPU)
    def _on_cpu(x):
        if x == types.float32:
            return lambda x: float32_impl(x)
        return fn

    @overload(fn, target="cuda")
    def _on_cuda(x):
        return fn


_typed(exp, _exp_f32)
_typed(expm1, _expm1_f32)
_typed(tanh, _tanh_f32)


@overload(one)
def _one(x):
    if x == types.float32:
        return lambda x: np.float32(1.0)
    if isinstance(x, types.Float):
        return lambda x: 1.0
    return lambda x: 1
