"""Helpers that test modules all over the tree share, as fixtures (with
``--import-mode=importlib`` test modules cannot import each other or a helper module).

Each fixture says which tests use it; a folder's own helpers are in its conftest.py
(``tests/engine/layers/conftest.py``: the layer-test harness)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import dlrun as dl


class Naive:
    """Independent numpy references of the activations, in float64 (no dlrun code)."""

    @staticmethod
    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    @staticmethod
    def softmax(z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    # by ``activation=`` name; leaky_relu's slope 0.3 and elu's alpha 1.0 are the Keras
    # layer defaults (LeakyReLU(alpha=0.3), ELU(alpha=1.0))
    ACTIVATIONS = {
        None: lambda z: z,
        "linear": lambda z: z,
        "relu": lambda z: np.maximum(z, 0),
        "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
        "tanh": np.tanh,
        "softmax": lambda z: Naive.softmax(z),
        "leaky_relu": lambda z: np.where(z > 0, z, 0.3 * z),
        "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
    }


@pytest.fixture
def naive():
    """:class:`Naive`: numpy references of the activations (layer and model tests)."""
    return Naive


@pytest.fixture
def one_thread():
    """One Numba and BLAS thread for the test, then the default again (the cluster tests,
    whose workers must match a single process bit for bit)."""
    dl.set_threads(1)
    yield
    dl.set_threads()


@pytest.fixture
def heavy_imports():
    """``heavy_imports(args, modules)``: which of ``modules`` a fresh Python process has
    imported after running ``dlrun args`` through click's CliRunner (the CLI tests: help
    must stay instant)."""
    def run(args: list, modules: tuple) -> list:
        code = ("import json, sys; from click.testing import CliRunner; "
                "from dlrun.cli.main import main; "
                f"r = CliRunner().invoke(main, {list(args)!r}); assert r.exit_code == 0; "
                f"print(json.dumps([m for m in {tuple(modules)!r} if m in sys.modules]))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        return json.loads(out)
    return run
