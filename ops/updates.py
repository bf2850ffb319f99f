"""Optimizer update kernels: fused and in place, one call per parameter.

These are not graph ops (they have no gradient): each is a formula of one element of the
weights, the gradient and the optimizer's state, from which :func:`map_twin` makes the
twin record (CPU and CUDA kernels taking the formula's arguments, arrays first). The
engine's optimizers call them after the backward pass: ``get_twin("adam_update")
.kernel(device)(w, g, m, v, alpha, beta_1, beta_2, epsilon)``. Keras' formulation, so
learning curves match Keras/PyTorch runs. Also here: what every optimizer may do before
its update, decoupled weight decay and gradient clipping (``sum_squares`` for the norms).
"""
from __future__ import annotations

import math

import numpy as np

from dlrun.ops import config
from dlrun.ops.config import cuda_kernel, jit
from dlrun.ops.elementwise import map_twin
from dlrun.ops.reduce import block_sum
from dlrun.ops.registry import Twin, register_twin

# numba.cuda, bound on first launch by config.cuda_kernel (importing dlrun never imports it).
cuda = None


def _arrays(n: int, state: tuple = ()):
    """``sample`` of an update: n arrays of one shape (accumulators at ``state`` >= 0),
    then the scalars given to the returned function."""
    def with_scalars(*scalars):
        def sample(rng, dtype):
            arrays = [rng.standard_normal((9, 11)).astype(dtype) for _ in range(n)]
            for k in state:
                arrays[k] = np.abs(arrays[k])
            return (*arrays, *scalars)
        return sample
    return with_scalars


def sgd_update(w, g, lr):
    """w -= lr * g"""
    return w - lr * g


def sgd_momentum_update(w, g, v, lr, momentum, nesterov):
    """v = momentum * v - lr * g ; w += v, or w += momentum * v - lr * g (Nesterov)"""
    step = -lr * g
    v = momentum * v + step
    if nesterov:
        return w + (momentum * v + step), v
    return w + v, v


def adagrad_update(w, g, acc, lr, epsilon):
    """acc += g^2 ; w -= lr * g / sqrt(acc + epsilon)"""
    acc = acc + g * g
    return w - lr * g / math.sqrt(acc + epsilon), acc


def rmsprop_update(w, g, v, lr, rho, epsilon):
    """v = rho * v + (1 - rho) * g^2 ; w -= lr * g / sqrt(v + epsilon)"""
    v = rho * v + (1.0 - rho) * g * g
    return w - lr * g / math.sqrt(v + epsilon), v


def rmsprop_momentum_update(w, g, v, m, lr, rho, momentum, epsilon):
    """v = rho v + (1 - rho) g^2 ; m = momentum m + lr g / sqrt(v + epsilon) ; w -= m"""
    v = rho * v + (1.0 - rho) * g * g
    m = momentum * m + lr * g / math.sqrt(v + epsilon)
    return w - m, v, m


def adam_update(w, g, m, v, alpha, beta_1, beta_2, epsilon):
    """m += (1 - b1)(g - m) ; v += (1 - b2)(g^2 - v) ; w -= alpha m / (sqrt(v) + epsilon),
    ``alpha = lr sqrt(1 - b2^t) / (1 - b1^t)`` carrying Adam's bias correction (Keras 3)"""
    m = m + (g - m) * (1.0 - beta_1)
    v = v + (g * g - v) * (1.0 - beta_2)
    return w - alpha * m / (math.sqrt(v) + epsilon), m, v


def decay_weights(w, factor):
    """w -= factor * w   (factor = learning_rate * weight_decay)"""
    return w - factor * w


def clip_gradient(g, scale, clipvalue):
    """out = clip(scale * g, -clipvalue, clipvalue)"""
    v = scale * g
    if v > clipvalue:
        v = clipvalue
    elif v < -clipvalue:
        v = -clipvalue
    return v


SGD = map_twin("sgd_update", sgd_update, ("w", "g"), ("w",), _arrays(2)(0.1))
def _momentum_sample(rng, dtype):
    return [_arrays(3)(0.1, 0.9, nesterov)(rng, dtype) for nesterov in (False, True)]


def _clip_sample(rng, dtype):
    g = rng.standard_normal((9, 11)).astype(dtype)
    return [(g, 0.7, 0.5, np.empty_like(g)), (g, 0.3, math.inf, np.empty_like(g))]


MOMENTUM = map_twin("sgd_momentum_update", sgd_momentum_update, ("w", "g", "v"), ("w", "v"),
                    _momentum_sample)
ADAGRAD = map_twin("adagrad_update", adagrad_update, ("w", "g", "acc"), ("w", "acc"),
                   _arrays(3, (2,))(0.1, 1e-7))
RMSPROP = map_twin("rmsprop_update", rmsprop_update, ("w", "g", "v"), ("w", "v"),
                   _arrays(3, (2,))(0.01, 0.9, 1e-7))
RMSPROP_MOMENTUM = map_twin("rmsprop_momentum_update", rmsprop_momentum_update,
                            ("w", "g", "v", "m"), ("w", "v", "m"),
                            _arrays(4, (2,))(0.01, 0.9, 0.5, 1e-7))
ADAM = map_twin("adam_update", adam_update, ("w", "g", "m", "v"), ("w", "m", "v"),
                _arrays(4, (3,))(0.003, 0.9, 0.999, 1e-7))
DECAY = map_twin("decay_weights", decay_weights, ("w",), ("w",), _arrays(1)(0.01))
CLIP = map_twin("clip_gradient", clip_gradient, ("g",), ("out",), _clip_sample,
                outputs=("out",))


# -- the sum of squares (clipnorm, global_clipnorm) ------------------------------------------
@jit
def sum_squares_into_cpu(g, out, slot):
    """out[slot] = sum g^2, accumulated in float64 (``out`` a float64 array)"""
    total = 0.0
    for v in g.reshape(-1):
        total += np.float64(v) * v
    out[slot] = total


@cuda_kernel
def _sum_squares(g, out, slot):
    """out[slot] = sum g^2, in one block"""
    gf = g.reshape(-1)
    t = cuda.threadIdx.x
    total = 0.0
    for i in range(t, gf.size, cuda.blockDim.x):
        gi = float(gf[i])              # square in float64, as the CPU kernel does
        total += gi * gi
    total = block_sum(total)
    if t == 0:
        out[slot] = total


def sum_squares_into_cuda(g, out, slot):
    """Launch _sum_squares (one block)."""
    _sum_squares[1, config.CUDA_BLOCK](g, out, slot)


def _squares_sample(rng, dtype):
    return rng.standard_normal((9, 11)).astype(dtype), np.full(3, -1.0), 1


SUM_SQUARES = register_twin(Twin("sum_squares", sum_squares_into_cpu, sum_squares_into_cuda,
                                 writes=(1,), sample=_squares_sample))
