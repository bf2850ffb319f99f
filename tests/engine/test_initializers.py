"""Initialisers: Keras' variance scaling (glorot and he, uniform and normal) and the orthogonal
one (QR of a normal matrix, sign-fixed, any aspect ratio)."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError


@pytest.mark.parametrize("shape", [(6, 6), (4, 12), (12, 4), (2, 3, 5)])
def test_orthogonal_rows_or_columns_are_orthonormal(shape):
    w = dl.initializers.get("orthogonal")(shape, np.float64, rng=np.random.default_rng(0))
    assert w.shape == shape and w.dtype == np.float64
    m = w.reshape(-1, shape[-1])
    small = min(m.shape)
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-12)


def test_orthogonal_gain_dtype_and_seed():
    a = dl.initializers.orthogonal((5, 5), np.float32, rng=np.random.default_rng(1), gain=2.0)
    b = dl.initializers.orthogonal((5, 5), np.float32, rng=np.random.default_rng(1), gain=2.0)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a @ a.T, 4 * np.eye(5), atol=1e-5)


def test_orthogonal_is_not_biased_by_the_qr_signs():
    """With R's signs folded in, Q is uniformly (Haar) distributed: over many draws the
    diagonal entries average to zero instead of leaning to one sign."""
    rng = np.random.default_rng(2)
    diag = np.mean([np.diag(dl.initializers.orthogonal((3, 3), np.float64, rng=rng))
                    for _ in range(2000)], axis=0)
    assert np.all(np.abs(diag) < 0.05)


def test_orthogonal_needs_two_axes():
    with pytest.raises(ConfigError, match="at least 2 axes"):
        dl.initializers.orthogonal((4,))


@pytest.mark.parametrize("name,shape", [
    ("glorot_uniform", (60, 40)), ("he_uniform", (60, 40)), ("glorot_normal", (60, 40)),
    ("he_normal", (60, 40)), ("glorot_uniform", (8, 3, 5, 5)), ("he_normal", (8, 3, 5, 5)),
])
def test_variance_scaling_initializers(name, shape):
    """Keras' variance scaling: fans of (in, out) or (out_ch, in_ch, kh, kw); uniform on
    [-l, l] with l = sqrt(3 var); normals truncated at two (pre-truncation) deviations."""
    field = int(np.prod(shape[2:]))
    fan_in, fan_out = (shape[0], shape[1]) if len(shape) == 2 else \
        (shape[1] * field, shape[0] * field)
    var = 2 / (fan_in + fan_out) if name.startswith("glorot") else 2 / fan_in
    dl.set_seed(0)
    w = dl.initializers.get(name)(shape, np.float32)
    assert w.shape == shape and w.dtype == np.float32
    assert w.std() == pytest.approx(np.sqrt(var), rel=0.06)
    assert abs(w.mean()) < 0.1 * np.sqrt(var)
    if name.endswith("uniform"):
        assert np.abs(w).max() <= np.sqrt(3 * var) * (1 + 1e-6)
    else:
        assert np.abs(w).max() <= 2 * np.sqrt(var) / 0.87962566103423978 * (1 + 1e-6)
