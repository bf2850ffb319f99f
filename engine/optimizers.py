"""Optimizers: Keras names and arguments, fused in-place update kernels."""
from __future__ import annotations

import numpy as np

from dlrun.errors import ConfigError
from dlrun.ops.updates import sgd_momentum_update_cpu, sgd_update_cpu


class Optimizer:
    """Base class: one ``update_step`` per variable, state arrays kept per parameter."""

    def __init__(self, learning_rate: float = 0.01, lr: float | None = None):
        self.learning_rate = float(lr if lr is not None else learning_rate)
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.iterations = 0

    def build(self, params: list) -> None:
        """Create state arrays for parameters that have none yet (keyed by name)."""
        for p in params:
            if p.name not in self.state:
                self.state[p.name] = self.make_state(p.value)

    def make_state(self, w: np.ndarray) -> dict:
        return {}

    def apply(self, params_and_grads: list) -> None:
        """Update every (parameter, gradient) pair in place."""
        for p, g in params_and_grads:
            self.update_step(p.value, g, self.state[p.name])
        self.iterations += 1

    def update_step(self, w, g, state) -> None:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate}

    def get_state(self) -> dict:
        """Flat name -> array map of the optimizer state (for checkpoints)."""
        return {f"{p}/{k}": v for p, st in self.state.items() for k, v in st.items()}

    def set_state(self, flat: dict) -> None:
        for key, value in flat.items():
            p, k = key.rsplit("/", 1)
            self.state.setdefault(p, {})[k] = np.array(value)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, Keras' formulation:
    ``v = momentum * v - lr * g; w += v`` (Nesterov: ``w += momentum * v - lr * g``)."""

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, lr: float | None = None):
        super().__init__(learning_rate, lr)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0.0:
            raise ConfigError("nesterov=True needs a momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def make_state(self, w):
        return {"velocity": np.zeros_like(w)} if self.momentum else {}

    def update_step(self, w, g, state):
        if self.momentum:
            sgd_momentum_update_cpu(w, g, state["velocity"], self.learning_rate,
                                    self.momentum, self.nesterov)
        else:
            sgd_update_cpu(w, g, self.learning_rate)

    def get_config(self):
        return super().get_config() | {"momentum": self.momentum, "nesterov": self.nesterov}


OPTIMIZERS = {"sgd": SGD, "SGD": SGD}


def get(opt) -> Optimizer:
    """An optimizer instance, by name (with default settings) or as given."""
    if isinstance(opt, Optimizer):
        return opt
    if isinstance(opt, str) and opt in OPTIMIZERS:
        return OPTIMIZERS[opt]()
    raise ConfigError(f"unknown optimizer {opt!r}; expected one of "
                      f"{sorted(set(k.lower() for k in OPTIMIZERS))} or a dlrun optimizer")


def from_config(class_name: str, config: dict) -> Optimizer:
    if class_name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer class {class_name!r}")
    return OPTIMIZERS[class_name](**config)
