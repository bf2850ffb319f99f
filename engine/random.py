"""The one seeded generator behind initial weights, shuffling and dropout seeds."""
from __future__ import annotations

import numpy as np

_state = {"rng": np.random.default_rng()}


def set_seed(seed: int | None) -> None:
    """Make weight initialisation, shuffling and dropout reproducible (``None``: random)."""
    _state["rng"] = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _state["rng"]


def new_seed() -> int:
    """A fresh 62-bit seed from the global generator."""
    return int(_state["rng"].integers(0, 2**62))
