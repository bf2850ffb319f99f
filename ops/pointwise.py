"""Elementwise math for ``dlrun.backend`` (Keras' ``K.``): arithmetic between arrays of one
shape (``sub``, ``mul``, ``div``, ``maximum``, ``minimum``), with a Python number
(``affine``: ``factor x + offset``; ``scale`` is in :mod:`dlrun.ops.arith`), and functions
of one array (``square``, ``abs``, ``sqrt``, ``exp``, ``log``, ``clip``, ``pow``). Each is
a formula and its derivatives (:mod:`dlrun.ops.elementwise` makes the CPU and CUDA
kernels from them).

Where a function has a kink (``abs`` at 0, ``maximum`` where both are equal, ``clip`` at
its bounds) the derivative takes one side, as TensorFlow's does: ``maximum`` and
``minimum`` send the gradient of a tie to their first input, ``clip`` passes it on the
bounds.
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops import mathfn
from dlrun.ops.elementwise import elementwise, uniform_sample

INF = math.inf


def _uniform(lo, hi, inputs=1, **attrs):
    """``sample`` and ``big_sample`` (keywords): inputs uniform in [lo, hi), as
    uniform_sample."""
    return dict(sample=uniform_sample((3, 4), lo, hi, inputs, **attrs),
                big_sample=uniform_sample((9, 11), lo, hi, inputs, **attrs))


def _ref(fn):
    """A reference computing ``fn`` in float64, returned in the inputs' dtype."""
    def reference(*xs, **attrs):
        return (np.asarray(fn(*(x.astype(np.float64) for x in xs), **attrs), xs[0].dtype),)
    return reference


def _away_from(points, shape, lo=-2.0, hi=2.0):
    """``sample``: one input uniform in [lo, hi), kept 0.05 away from ``points`` (kinks)."""
    def sample(rng, dt):
        x = rng.uniform(lo, hi, shape)
        for p in points:
            x[np.abs(x - p) < 0.05] += 0.1
        return (x.astype(dt),), {}
    return sample


# -- two arrays of one shape ---------------------------------------------------------------
@elementwise("sub", **_uniform(-2.0, 2.0, 2), reference=_ref(lambda a, b: a - b), check=False)
def sub(a, b):
    """y = a - b"""
    return a - b


@sub.derivative("a")
def sub_grad_a():
    """dy/da = 1"""
    return 1.0


@sub.derivative("b")
def sub_grad_b():
    """dy/db = -1"""
    return -1.0


@elementwise("mul", **_uniform(-2.0, 2.0, 2), reference=_ref(lambda a, b: a * b), check=False)
def mul(a, b):
    """y = a * b"""
    return a * b


@mul.derivative("a")
def mul_grad_a(b):
    """dy/da = b"""
    return b


@mul.derivative("b")
def mul_grad_b(a):
    """dy/db = a"""
    return a


def _quotient_sample(shape):
    """a in [-2, 2), b kept 0.5 to 2 away from 0 (the pole)"""
    def sample(rng, dt):
        a = rng.uniform(-2.0, 2.0, shape)
        b = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        return (a.astype(dt), b.astype(dt)), {}
    return sample


@elementwise("div", sample=_quotient_sample((3, 4)), big_sample=_quotient_sample((9, 11)),
             reference=_ref(lambda a, b: a / b), check=False)
def div(a, b):
    """y = a / b"""
    return a / b


@div.derivative("a")
def div_grad_a(b):
    """dy/da = 1 / b"""
    return 1.0 / b


@div.derivative("b")
def div_grad_b(a, b):
    """dy/db = -a / b^2"""
    return -a / (b * b)


def _apart_sample(shape):
    """two inputs whose elements differ by 0.05 at least (maximum's kink is a = b)"""
    def sample(rng, dt):
        a, b = rng.uniform(-2.0, 2.0, shape), rng.uniform(-2.0, 2.0, shape)
        a[np.abs(a - b) < 0.05] += 0.1
        return (a.astype(dt), b.astype(dt)), {}
    return sample


@elementwise("maximum", sample=_apart_sample((3, 4)), big_sample=_apart_sample((9, 11)),
             reference=_ref(np.maximum), check=False)
def maximum(a, b):
    """y = max(a, b) (a where equal)"""
    return a if a >= b else b


@maximum.derivative("a")
def maximum_grad_a(a, b):
    """dy/da = 1 where a >= b"""
    return 1.0 if a >= b else 0.0


@maximum.derivative("b")
def maximum_grad_b(a, b):
    """dy/db = 1 where b > a"""
    return 0.0 if a >= b else 1.0


@elementwise("minimum", sample=_apart_sample((3, 4)), big_sample=_apart_sample((9, 11)),
             reference=_ref(np.minimum), check=False)
def minimum(a, b):
    """y = min(a, b) (a where equal)"""
    return a if a <= b else b


@minimum.derivative("a")
def minimum_grad_a(a, b):
    """dy/da = 1 where a <= b"""
    return 1.0 if a <= b else 0.0


@minimum.derivative("b")
def minimum_grad_b(a, b):
    """dy/db = 1 where b < a"""
    return 0.0 if a <= b else 1.0


# -- one array, and Python numbers (attributes) ------------------------------------------------
@elementwise("affine", **_uniform(-2.0, 2.0, factor=-1.5, offset=0.25),
             reference=_ref(lambda x, factor, offset: factor * x + offset), check=False)
def affine(x, factor=1.0, offset=0.0):
    """y = factor * x + offset"""
    return factor * x + offset


@affine.derivative
def affine_grad(factor):
    """dy/dx = factor"""
    return factor


@elementwise("square", **_uniform(-2.0, 2.0), reference=_ref(np.square), check=False)
def square(x):
    """y = x^2"""
    return x * x


@square.derivative
def square_grad(x):
    """dy/dx = 2 x"""
    return 2.0 * x


@elementwise("abs", sample=_away_from([0.0], (3, 4)), big_sample=_away_from([0.0], (9, 11)),
             reference=_ref(np.abs), check=False)
def absolute(x):
    """y = |x|"""
    return x if x >= 0 else -x


@absolute.derivative
def absolute_grad(x):
    """dy/dx = sign(x) (1 at 0)"""
    return 1.0 if x >= 0 else -1.0


@elementwise("sqrt", **_uniform(0.2, 3.0), reference=_ref(np.sqrt), check=False)
def sqrt(x):
    """y = sqrt(x) (NaN for x < 0)"""
    return math.sqrt(x) if x >= 0 else math.nan


@sqrt.derivative
def sqrt_grad(y):
    """dy/dx = 1 / (2 y)"""
    return 0.5 / y


@elementwise("exp", **_uniform(-2.0, 2.0), reference=_ref(np.exp), check=False)
def exp(x):
    """y = e^x"""
    return mathfn.exp(x)


@exp.derivative
def exp_grad(y):
    """dy/dx = y"""
    return y


@elementwise("log", **_uniform(0.2, 3.0), reference=_ref(np.log), check=False)
def log(x):
    """y = ln x (-inf at 0, NaN below)"""
    if x > 0:
        return math.log(x)
    return -INF if x == 0 else math.nan


@log.derivative
def log_grad(x):
    """dy/dx = 1 / x"""
    return 1.0 / x


@elementwise("clip", sample=_away_from([-1.0, 0.5], (3, 4)),
             big_sample=_away_from([-1.0, 0.5], (9, 11)),
             reference=_ref(lambda x, lo, hi: np.clip(x, lo, hi)), check=False)
def clip(x, lo=-1.0, hi=0.5):
    """y = x clipped into [lo, hi]"""
    if x < lo:
        return lo
    return hi if x > hi else x


@clip.derivative
def clip_grad(x, lo, hi):
    """dy/dx = 1 inside [lo, hi], 0 outside"""
    return 1.0 if lo <= x <= hi else 0.0


@elementwise("pow", **_uniform(0.2, 3.0, exponent=2.5),
             reference=_ref(lambda x, exponent: np.power(x, exponent)), check=False)
def power(x, exponent=2.0):
    """y = x ** exponent (NaN for x < 0 and an exponent that is not an integer)"""
    return x ** exponent


@power.derivative
def power_grad(x, exponent):
    """dy/dx = exponent x ** (exponent - 1)"""
    return exponent * x ** (exponent - 1.0)
