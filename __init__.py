"""dlrun: a small, fast, distributed deep-learning framework built on Numba.

>>> import dlrun as dl
>>> model = dl.Sequential([dl.layers.Dense(10, activation="softmax", input_shape=(64,))])

Keras' module paths are real modules here (``from dlrun.layers import Dense``,
``from dlrun.models import Sequential``, ``from dlrun.optimizers import SGD``,
``from dlrun.utils import to_categorical``, ``dlrun.losses``, ``dlrun.metrics``,
``dlrun.callbacks``, ``dlrun.regularizers``), so lecture code written for Keras runs with
``keras`` replaced by ``dlrun`` in its import lines.

The names below are imported on first use, so ``import dlrun`` (and ``dlrun --help``)
stays instant; Numba loads when the first model or op is touched.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute or None for the module itself)
_EXPORTS = {
    "Sequential": ("dlrun.engine.models.model", "Sequential"),
    "Model": ("dlrun.engine.models.model", "Model"),
    "Input": ("dlrun.engine.layers", "Input"),
    "load_model": ("dlrun.engine.models.saving", "load_model"),
    "load_checkpoint": ("dlrun.engine.models.checkpoints", "load_checkpoint"),
    "gradients": ("dlrun.engine.models.gradients", "gradients"),
    "set_seed": ("dlrun.engine.random", "set_seed"),
    "set_threads": ("dlrun.ops.threads", "set_threads"),
    "device": ("dlrun.engine.core.device", "device"),
    "layers": ("dlrun.layers", None),
    "optimizers": ("dlrun.optimizers", None),
    "losses": ("dlrun.losses", None),
    "callbacks": ("dlrun.callbacks", None),
    "schedules": ("dlrun.engine.schedules", None),
    "regularizers": ("dlrun.regularizers", None),
    "initializers": ("dlrun.engine.initializers", None),
    "models": ("dlrun.models", None),
    "metrics": ("dlrun.metrics", None),
    "utils": ("dlrun.utils", None),
    "backend": ("dlrun.backend", None),
    "ops": ("dlrun.ops", None),
    "datasets": ("dlrun.datasets", None),
    "cluster": ("dlrun.cluster", None),
    "errors": ("dlrun.errors", None),
    "DlrunError": ("dlrun.errors", "DlrunError"),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'dlrun' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__():
    return __all__
