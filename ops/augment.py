"""Data augmentation of image batches (NCHW): random shifts, rotations and zooms.

``random_affine`` moves each image by a whole number of pixels, rotates it about its
centre and zooms it, with nearest-neighbour sampling and ``fill`` where the source falls
outside the image. Every sample's draw comes from a hash of (seed, sample index), as
dropout's mask does, so a seed gives the same batch on every device and thread count;
the engine passes a new seed each step. It has no backward: it sits at a model's input,
where nothing needs a gradient.
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.dropout import uniform_hash, uniform_hash_np
from dlrun.ops.registry import Op, OpError, Spec, check_float, register

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


def _shape(x: Spec, shift_h=0.0, shift_w=0.0, rotation=0.0, zoom=0.0, fill=0.0) -> list:
    check_float("random_affine", x=x)
    if len(x.shape) != 4:
        raise OpError(f"op 'random_affine' takes image batches (N, C, H, W), got {x.shape}")
    for name, v in (("shift_h", shift_h), ("shift_w", shift_w), ("rotation", rotation)):
        if not 0.0 <= v <= 1.0:
            raise OpError(f"random_affine {name} must be a fraction in [0, 1], got {v}")
    if not 0.0 <= zoom < 1.0:
        raise OpError(f"random_affine zoom must be in [0, 1), got {zoom}")
    return [Spec(x.shape, x.dtype)]


@config.formula
def affine_params(u0, u1, u2, u3, h, w, shift_h, shift_w, rotation, zoom):
    """(ty, tx, cos, sin, 1/z): whole-pixel shifts up to shift * size, an angle up to
    rotation * 2 pi either way, a zoom z in [1 - zoom, 1 + zoom], from four uniforms"""
    mh = int(math.floor(shift_h * h + 0.5))
    mw = int(math.floor(shift_w * w + 0.5))
    ty = int(math.floor(u0 * (2 * mh + 1))) - mh
    tx = int(math.floor(u1 * (2 * mw + 1))) - mw
    angle = (2.0 * u2 - 1.0) * rotation * 2.0 * math.pi
    z = 1.0 + (2.0 * u3 - 1.0) * zoom
    return ty, tx, math.cos(angle), math.sin(angle), 1.0 / z


@config.formula
def draw(seed, n, h, w, shift_h, shift_w, rotation, zoom):
    """sample n's affine_params, from the hash's uniforms 4n to 4n + 3"""
    k = 4 * n
    return affine_params(uniform_hash(seed, k), uniform_hash(seed, k + 1),
                         uniform_hash(seed, k + 2), uniform_hash(seed, k + 3), h, w,
                         shift_h, shift_w, rotation, zoom)


@config.formula
def source_pixel(i, j, h, w, ty, tx, c, s, inv_z):
    """The nearest source pixel (si, sj) of output pixel (i, j): the inverse of
    zoom-rotate about the centre then shift; (-1, -1) when it falls outside"""
    ci = (h - 1) / 2.0
    cj = (w - 1) / 2.0
    a = i - ci - ty
    b = j - cj - tx
    si = int(math.floor(ci + (c * a + s * b) * inv_z + 0.5))
    sj = int(math.floor(cj + (c * b - s * a) * inv_z + 0.5))
    if si < 0 or si >= h or sj < 0 or sj >= w:
        return -1, -1
    return si, sj


@jit
def random_affine_fwd_cpu(x, shift_h, shift_w, rotation, zoom, fill, seed, y):
    """y[n] = x[n] shifted, rotated and zoomed by sample n's draw (nearest pixel)"""
    n_, ch, h, w = x.shape
    for n in range(n_):
        ty, tx, c, s, inv_z = draw(seed, n, h, w, shift_h, shift_w, rotation, zoom)
        for i in range(h):
            for j in range(w):
                si, sj = source_pixel(i, j, h, w, ty, tx, c, s, inv_z)
                for q in range(ch):
                    y[n, q, i, j] = fill if si < 0 else x[n, q, si, sj]


@cuda_kernel
def _random_affine_fwd(x, shift_h, shift_w, rotation, zoom, fill, seed, y):
    """y[n] = x[n] shifted, rotated and zoomed by sample n's draw; a thread per pixel"""
    n_, ch, h, w = x.shape
    for p in range(cuda.grid(1), n_ * h * w, cuda.gridsize(1)):
        n = p // (h * w)
        i = (p // w) % h
        j = p % w
        ty, tx, c, s, inv_z = draw(seed, n, h, w, shift_h, shift_w, rotation, zoom)
        si, sj = source_pixel(i, j, h, w, ty, tx, c, s, inv_z)
        for q in range(ch):
            y[n, q, i, j] = fill if si < 0 else x[n, q, si, sj]


def random_affine_fwd_cuda(x, shift_h, shift_w, rotation, zoom, fill, seed, y):
    """Launch _random_affine_fwd (grid-stride over output pixels)."""
    n_, _, h, w = x.shape
    _random_affine_fwd[config.grid_1d(n_ * h * w)](x, shift_h, shift_w, rotation, zoom,
                                                   fill, seed, y)


def _reference(x, shift_h, shift_w, rotation, zoom, fill, seed):
    """The same transform in plain numpy, one sample at a time."""
    n_, _, h, w = x.shape
    u = uniform_hash_np(seed, 4 * n_).reshape(n_, 4)
    y = np.empty_like(x)
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for n in range(n_):
        mh, mw = int(np.floor(shift_h * h + 0.5)), int(np.floor(shift_w * w + 0.5))
        ty = int(np.floor(u[n, 0] * (2 * mh + 1))) - mh
        tx = int(np.floor(u[n, 1] * (2 * mw + 1))) - mw
        angle = (2 * u[n, 2] - 1) * rotation * 2 * np.pi
        z = 1 + (2 * u[n, 3] - 1) * zoom
        a, b = ii - (h - 1) / 2 - ty, jj - (w - 1) / 2 - tx
        si = np.floor((h - 1) / 2 + (np.cos(angle) * a + np.sin(angle) * b) / z + 0.5)
        sj = np.floor((w - 1) / 2 + (np.cos(angle) * b - np.sin(angle) * a) / z + 0.5)
        inside = (si >= 0) & (si < h) & (sj >= 0) & (sj < w)
        src = x[n][:, np.where(inside, si, 0).astype(int), np.where(inside, sj, 0).astype(int)]
        y[n] = np.where(inside, src, fill)
    return (y,)


def _sample(rng, dt):
    x = rng.standard_normal((5, 2, 6, 7)).astype(dt)
    return (x,), {"shift_h": 0.2, "shift_w": 0.3, "rotation": 0.05, "zoom": 0.2, "fill": 0.5}


register(Op(name="random_affine", inputs=("x",), shape=_shape, rng=True, diff=(),
            attrs={"shift_h": 0.0, "shift_w": 0.0, "rotation": 0.0, "zoom": 0.0,
                   "fill": 0.0},
            forward=random_affine_fwd_cpu, cuda_forward=random_affine_fwd_cuda,
            sample=_sample, reference=_reference))
