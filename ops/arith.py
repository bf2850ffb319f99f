"""Elementwise arithmetic: ``add`` (a regularisation penalty joining the loss, residual
connections), ``scale`` (a weighted loss of a multi-output model) and ``gate_mix`` (a
highway layer's gate between its transform and its input). Each is a formula and its
derivatives (:mod:`dlrun.ops.elementwise` makes the kernels)."""
from __future__ import annotations

from dlrun.ops.elementwise import elementwise


def _normal(*shapes, **attrs):
    """``sample``: standard normal arrays of the given shapes, and ``attrs``."""
    def sample(rng, dt):
        return tuple(rng.standard_normal(s).astype(dt) for s in shapes), dict(attrs)
    return sample


@elementwise("add", sample=_normal((3, 4), (3, 4)), big_sample=_normal((9, 11), (9, 11)),
             reference=lambda a, b: (a + b,), check=False)
def add(a, b):
    """y = a + b"""
    return a + b


@add.derivative("a")
def add_grad_a():
    """dy/da = 1"""
    return 1.0


@add.derivative("b")
def add_grad_b():
    """dy/db = 1"""
    return 1.0


@elementwise("scale", sample=_normal((3, 4), factor=0.75),
             big_sample=_normal((9, 11), factor=-1.5),
             reference=lambda x, factor: ((factor * x).astype(x.dtype),), check=False)
def scale(x, factor=1.0):
    """y = factor * x"""
    return factor * x


@scale.derivative
def scale_grad(factor):
    """dy/dx = factor"""
    return factor


def _gate_mix_sample(shape):
    def sample(rng, dt):
        g = rng.uniform(0.05, 0.95, shape).astype(dt)
        (a, b), _ = _normal(shape, shape)(rng, dt)
        return (g, a, b), {}
    return sample


@elementwise("gate_mix", sample=_gate_mix_sample((3, 4)), big_sample=_gate_mix_sample((9, 11)),
             reference=lambda g, a, b: (g * a + (1 - g) * b,), check=False)
def gate_mix(g, a, b):
    """y = g * a + (1 - g) * b  =  b + g * (a - b)"""
    return b + g * (a - b)


@gate_mix.derivative("g")
def gate_mix_grad_g(a, b):
    """dy/dg = a - b"""
    return a - b


@gate_mix.derivative("a")
def gate_mix_grad_a(g):
    """dy/da = g"""
    return g


@gate_mix.derivative("b")
def gate_mix_grad_b(g):
    """dy/db = 1 - g"""
    return 1.0 - g
