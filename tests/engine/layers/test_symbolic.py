"""engine/layers/symbolic.py: InputLayer through the harness, ``dl.Input`` and the symbolic
tensors layers are called on (shapes, the calls they record), and the errors a user meets
there."""
from __future__ import annotations

import re

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine.layers import InputLayer
from dlrun.errors import ConfigError, ShapeError

L = dl.layers


def test_input_layer(check_layer):
    check_layer(InputLayer, (3,), lambda x: x, shape=(3,))
    check_layer(InputLayer, (2, 4), lambda x: x, shape=(2, 4), name="pixels")


def test_input_is_a_symbolic_tensor_with_a_batch_axis():
    x = dl.Input(shape=(2, 5), name="seq")
    assert x.shape == (None, 2, 5) and x.sample_shape == (2, 5) and x.name == "seq"
    assert isinstance(x.call.layer, InputLayer) and x.call.layer.output is x
    assert "(None, 2, 5)" in repr(x)


def test_a_call_records_the_output_shape_from_a_trace():
    x = dl.Input(shape=(1, 6, 6))
    y = L.Conv2D(3, 3, strides=2)(x)
    z = L.Flatten()(y)
    assert (y.shape, z.shape) == ((None, 3, 2, 2), (None, 12))
    assert z.call.inputs == [y] and not z.call.as_list
    both = L.Concatenate()([z, z])
    assert both.call.as_list and both.call.inputs == [z, z] and both.shape == (None, 24)


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="float32.*'float64'"):
        dl.Input(shape=(3,), dtype="float64")
    for bad in ((0, 3), (), "abc", None):
        with pytest.raises(ConfigError, match=r"shape=\(784,\).*" + re.escape(repr(bad))):
            dl.Input(shape=bad)
    with pytest.raises(ConfigError, match="numpy.ndarray.*dl.Input"):
        L.Dense(3)(np.zeros((2, 4), np.float32))
    with pytest.raises(ConfigError, match="InputLayer cannot be called"):
        InputLayer((3,))(dl.Input(shape=(3,)))
    with pytest.raises(ShapeError, match="Flatten"):                 # from the layer's build
        L.Dense(3)(dl.Input(shape=(1, 2, 3)))          # images; sequences are taken
