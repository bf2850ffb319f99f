"""dlrun: a small, fast, distributed deep-learning framework built on Numba.

>>> import dlrun as dl
>>> model = dl.Sequential([dl.layers.Dense(10, activation="softmax", input_shape=(64,))])
"""
__version__ = "0.1.0"

from dlrun import errors, ops  # noqa: E402
from dlrun.engine import callbacks, initializers, layers, losses, optimizers  # noqa: E402
from dlrun.engine.model import Model, Sequential  # noqa: E402
from dlrun.engine.random import set_seed  # noqa: E402
from dlrun.engine.saving import load_model  # noqa: E402
from dlrun.engine.threads import set_threads  # noqa: E402
from dlrun.errors import DlrunError  # noqa: E402

__all__ = ["Sequential", "Model", "layers", "optimizers", "losses", "callbacks",
           "initializers", "ops", "errors", "DlrunError", "load_model", "set_seed",
           "set_threads", "__version__"]
