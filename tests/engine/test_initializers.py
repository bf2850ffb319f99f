"""Initialisers: the orthogonal one (QR of a normal matrix, sign-fixed, any aspect ratio)."""
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
