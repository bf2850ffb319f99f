"""engine/layers/base.py and the registry (engine/layers/__init__.py): every registered layer
has a harness case in the test module of its family; the harness itself fails on a wrong
reference, a wrong gradient and a config that loses an argument; what every layer
inherits (weights, freezing, building once, the registry's errors)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine.core.graph import apply
from dlrun.engine.layers import BUILT_IN, LAYERS, Layer, layer_from_config, register_layer
from dlrun.errors import ConfigError, DlrunError, ShapeError
from dlrun.ops import Op, same_shape

L = dl.layers
HERE = Path(__file__).parent


def harness_cases(path: Path) -> set:
    """Names of the layer classes given to ``check_layer(...)`` in a test module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check_layer" \
                and node.args:
            first = node.args[0]
            found.add(first.attr if isinstance(first, ast.Attribute) else
                      getattr(first, "id", None))
    return found


@pytest.mark.parametrize("cls", BUILT_IN, ids=lambda c: c.__name__)
def test_every_registered_layer_has_a_harness_case_in_its_family_module(cls):
    assert LAYERS[cls.__name__] is cls
    family = cls.__module__.rsplit(".", 1)[-1]           # dlrun.engine.layers.<family>
    module = HERE / f"test_{family}.py"
    assert module.exists(), f"no test module {module.name} for engine/layers/{family}.py"
    assert cls.__name__ in harness_cases(module), \
        f"{module.name} has no check_layer({cls.__name__}, ...) case"


def test_the_registry_is_every_built_in_layer():
    assert {c.__name__ for c in BUILT_IN} <= set(LAYERS)
    layer_modules = {p.stem for p in (HERE.parents[2] / "engine" / "layers").glob("*.py")}
    assert {c.__module__.rsplit(".", 1)[-1] for c in BUILT_IN} <= layer_modules


# -- the harness can fail ----------------------------------------------------------------------
def _wrong_backward_op():
    def forward(x, y):
        np.multiply(x, 2.0, out=y)

    def backward(dy, dx):
        np.multiply(dy, 3.0, out=dx)                     # should be 2 dy

    return Op(name="double_with_a_wrong_gradient", inputs=("x",), shape=same_shape,
              forward=forward, backward=backward)


class Doubler(Layer):
    """y = 2 x, through an op whose backward is wrong (the harness must notice)."""

    def __init__(self, forgotten: float = 1.0, **kw):
        super().__init__(**kw)
        self.forgotten = forgotten                       # and get_config leaves it out

    def call(self, x, training):
        return apply(_wrong_backward_op(), x)


def test_the_harness_refuses_a_wrong_reference(check_layer):
    with pytest.raises(AssertionError, match="reference"):
        check_layer(L.Activation, (3,), lambda x: np.tanh(x) + 1e-3, activation="tanh")


def test_the_harness_refuses_a_wrong_gradient(check_layer, monkeypatch):
    monkeypatch.setitem(LAYERS, "Doubler", Doubler)
    with pytest.raises(AssertionError, match="derivative|gradient"):
        check_layer(Doubler, (3,), lambda x: 2 * x)


def test_the_harness_refuses_a_config_that_loses_an_argument(check_layer, monkeypatch):
    class Scaler(Layer):
        def __init__(self, factor: float = 1.0, **kw):
            super().__init__(**kw)
            self.factor = factor

        def call(self, x, training):
            return apply("scale", x, factor=self.factor)

    monkeypatch.setitem(LAYERS, "Scaler", Scaler)
    check_layer(Scaler, (3,), lambda x: x)                        # the default survives
    with pytest.raises(AssertionError, match="rebuilt from its config"):
        check_layer(Scaler, (3,), lambda x: 2 * x, factor=2.0)


def test_the_harness_wants_registered_layers(check_layer):
    with pytest.raises(AssertionError, match="registry"):
        check_layer(Doubler, (3,), lambda x: 2 * x)


# -- what every layer inherits -----------------------------------------------------------------
def test_frozen_layer_weights_are_not_trainable():
    layer = L.Dense(2, trainable=False)
    dl.Sequential([L.Dense(3, input_shape=(4,)), layer]).build((4,))
    assert [p.trainable for p in layer.weights] == [False, False]
    layer.trainable = True
    assert [p.trainable for p in layer.weights] == [True, True]


def test_layer_reused_with_another_shape():
    layer = L.Dense(3)
    dl.Sequential([layer]).build((4,))
    with pytest.raises(ShapeError, match=r"\(4,\).*\(5,\)"):
        dl.Sequential([layer]).build((5,))


def test_set_weights_checks_shapes_and_counts():
    layer = L.Dense(3)
    dl.Sequential([layer]).build((4,))
    with pytest.raises(ShapeError, match=r"\(4, 3\).*\(3, 4\)"):
        layer.set_weights([np.zeros((3, 4)), np.zeros(3)])
    with pytest.raises(ShapeError, match="2 weight arrays, got 1"):
        layer.set_weights([np.zeros((4, 3))])


def test_names_are_snake_case_and_unique():
    a, b = L.MaxPooling2D(), L.MaxPooling2D()
    assert a.name.startswith("max_pooling2_d_") and a.name != b.name
    assert L.Dense(2, name="out").name == "out"


def test_calls_on_symbolic_tensors_are_recorded_in_order():
    layer = L.Dense(2)
    assert layer.calls == []
    a, b = dl.Input(shape=(3,)), dl.Input(shape=(3,))
    ya, yb = layer(a), layer(b)
    assert [(c.index, c.inputs, c.output) for c in layer.calls] == [(0, [a], ya), (1, [b], yb)]
    layer.calls.clear()                                  # a copy: the record stays
    assert len(layer.calls) == 2


def test_unknown_layer_class():
    with pytest.raises(ConfigError, match="'Dence'.*register_layer"):
        layer_from_config("Dence", {})
    assert issubclass(ConfigError, DlrunError)


def test_register_layer_makes_a_user_layer_loadable(monkeypatch):
    monkeypatch.setitem(LAYERS, "Doubler", None)         # taken out again after the test
    assert register_layer(Doubler) is Doubler
    again = layer_from_config("Doubler", {"name": "twice"})
    assert type(again) is Doubler and again.name == "twice"
