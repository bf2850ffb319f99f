"""engine/layers/merge.py: Add and Concatenate through the harness (called on lists of
tensors) against numpy, and their shape errors."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, ShapeError

L = dl.layers


def test_add(check_layer):
    check_layer(L.Add, [(5,), (5,)], lambda xs: xs[0] + xs[1])
    check_layer(L.Add, [(2, 3), (2, 3), (2, 3)], lambda xs: xs[0] + xs[1] + xs[2])


@pytest.mark.parametrize("axis, shapes", [(-1, [(3,), (5,)]), (1, [(2, 3, 3), (4, 3, 3)]),
                                          (-1, [(2, 3, 1), (2, 3, 4), (2, 3, 2)]),
                                          (2, [(2, 1, 3), (2, 5, 3)])])
def test_concatenate(check_layer, axis, shapes):
    check_layer(L.Concatenate, shapes, lambda xs: np.concatenate(xs, axis=axis), axis=axis)


def test_shape_errors_say_what_was_received():
    with pytest.raises(ShapeError, match=r"one shape.*\(None, 4\) and \(None, 3\)"):
        L.Add().compute_output_shape([(4,), (3,)])
    with pytest.raises(ShapeError, match="list of at least two"):
        L.Add().compute_output_shape([(4,)])
    with pytest.raises(ShapeError, match="same number of axes"):
        L.Concatenate().compute_output_shape([(2, 3), (3,)])
    with pytest.raises(ShapeError, match="every other axis must match"):
        L.Concatenate(axis=1).compute_output_shape([(2, 3), (2, 4)])
    with pytest.raises(ShapeError, match="axis 3"):
        L.Concatenate(axis=3).compute_output_shape([(2, 3), (2, 3)])
    with pytest.raises(ConfigError, match="axis.*'last'"):
        L.Concatenate(axis="last")
