"""Optimizers: Keras 3 names, arguments and update rules, as fused in-place kernels.

Every update runs as Keras 3 does it: the gradients are clipped (``clipnorm`` per
variable, or ``global_clipnorm`` over all of them, or ``clipvalue`` elementwise; one of
the three at most), the weights decay (``w -= lr * weight_decay * w``, decoupled from the
gradient), then each variable takes its ``update_step``. The learning rate may be a
:mod:`~dlrun.engine.schedules` schedule, evaluated at ``iterations`` before each update.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from dlrun.engine import schedules
from dlrun.errors import ConfigError


def _number(name: str, value, *, positive=False, below_one=False, optional=False):
    """``value`` as a float >= 0 (> 0 if ``positive``, < 1 if ``below_one``; None allowed
    if ``optional``), or a ConfigError naming the value received."""
    if value is None and optional:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(x) and (x > 0 if positive else x >= 0) and (x < 1 or not below_one)):
        need = "in [0, 1)" if below_one else "> 0" if positive else ">= 0"
        raise ConfigError(f"{name} must be {need}, got {value!r}")
    return x


class Optimizer:
    """Base class: clipping, weight decay, the learning rate (or schedule), and one
    ``update_step`` per variable with state arrays kept per parameter name.

    Parameters
    ----------
    learning_rate : a number > 0 or a :class:`dlrun.schedules.LearningRateSchedule`
        (``lr`` is accepted as its old name).
    weight_decay : decoupled weight decay: before each update ``w -= lr * weight_decay * w``.
    clipnorm : scale each gradient down to an L2 norm of at most this.
    clipvalue : clip each gradient element to ``[-clipvalue, clipvalue]``.
    global_clipnorm : scale all gradients together down to a joint L2 norm of at most this.
    """

    def __init__(self, learning_rate=0.01, lr=None, *, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None):
        if lr is not None:
            warnings.warn(f"{type(self).__name__}(lr=...) is the Keras 1 spelling; use "
                          "learning_rate=", DeprecationWarning, stacklevel=3)
        self.learning_rate = lr if lr is not None else learning_rate
        self.weight_decay = _number("weight_decay", weight_decay, optional=True)
        self.clipnorm = _number("clipnorm", clipnorm, positive=True, optional=True)
        self.clipvalue = _number("clipvalue", clipvalue, positive=True, optional=True)
        self.global_clipnorm = _number("global_clipnorm", global_clipnorm,
                                       positive=True, optional=True)
        given = [k for k in ("clipnorm", "clipvalue", "global_clipnorm")
                 if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"give at most one of clipnorm, clipvalue and global_clipnorm; "
                              f"got {', '.join(f'{k}={getattr(self, k)}' for k in given)}")
        # Where newer state is held (a GPU's DeviceStore, while the model trains there),
        # or None; ``host_state`` is the host's dict itself, read without that check.
        self.holder = None
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.iterations = 0

    # -- the learning rate -----------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        """The learning rate of the next update (a schedule is evaluated at ``iterations``)."""
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            return float(self._learning_rate(self.iterations))
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        if isinstance(value, schedules.LearningRateSchedule):
            self._learning_rate = value
            return
        if isinstance(getattr(self, "_learning_rate", None), schedules.LearningRateSchedule):
            raise ConfigError(f"this optimizer's learning rate follows the schedule "
                              f"{self._learning_rate!r}; it cannot be set to {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating,
                                                             np.integer)):
            raise ConfigError(f"learning_rate must be a number > 0 or a "
                              f"dlrun.schedules.LearningRateSchedule, got {value!r}")
        self._learning_rate = _number("learning_rate", value, positive=True)

    def restore_learning_rate(self, other: "Optimizer") -> None:
        """Take ``other``'s learning rate or schedule as it is (a checkpoint's, which may
        differ from the one this optimizer was made with: ReduceLROnPlateau lowers it)."""
        self._learning_rate = other._learning_rate

    @property
    def schedule(self) -> "schedules.LearningRateSchedule | None":
        lr = self._learning_rate
        return lr if isinstance(lr, schedules.LearningRateSchedule) else None

    # -- state -----------------------------------------------------------------------------
    @property
    def state(self) -> dict:
        """Parameter name -> {state name: host array}. While a GPU holds newer state (a
        model training on ``cuda``), reading it copies the state back first."""
        if self.holder is not None:
            self.holder.to_host()
        return self.host_state

    @state.setter
    def state(self, value: dict) -> None:
        if self.holder is not None:
            self.holder.to_host()
        self.host_state = value

    def build(self, params: list) -> None:
        """Create state arrays for parameters that have none yet (keyed by name)."""
        for p in params:
            if p.name not in self.state:
                self.state[p.name] = self.make_state(p.value)

    def make_state(self, w: np.ndarray) -> dict:
        return {}

    # -- one update ------------------------------------------------------------------------
    def update(self, updates) -> None:
        """One step over what ``updates`` holds (a backend's
        :class:`~dlrun.engine.core.backend.Updates`: weights, gradients and state on one
        device, and that device's kernels); the gradients are not changed."""
        k = updates.kernels
        lr = self.learning_rate
        clipped = self._clip(updates)
        for w, g, state in updates.units(self, clipped):
            if self.weight_decay:
                k.decay(w, lr * self.weight_decay)
            self.update_step(w, g, state, lr, k)
        self.iterations += 1

    def apply(self, params_and_grads) -> None:
        """Update every (parameter, gradient) pair of host arrays in place."""
        from dlrun.engine.core.backend import CpuBackend, Updates

        pairs = list(params_and_grads)
        self.build([p for p, _ in pairs])
        self.update(Updates(CpuBackend(), [p for p, _ in pairs], [g for _, g in pairs]))

    def _clipping(self) -> bool:
        return not (self.clipnorm is None and self.clipvalue is None
                    and self.global_clipnorm is None)

    def _scales(self, squares: list) -> list:
        """Each gradient's scale, from the sums of its squares (clipnorm, global_clipnorm)."""
        if self.global_clipnorm is not None:
            norm = math.sqrt(sum(squares))
            scales = [min(1.0, self.global_clipnorm / norm) if norm > 0 else 1.0] * len(squares)
            if not math.isfinite(norm):     # Keras: an inf/NaN norm makes every update NaN
                scales = [math.nan] * len(squares)
            return scales
        if self.clipnorm is not None:
            return [self.clipnorm / max(math.sqrt(sq), self.clipnorm) for sq in squares]
        return [1.0] * len(squares)

    def _clip(self, updates) -> bool:
        """Clip the gradients into ``updates.clipped``; False when nothing is clipped. The
        norms come back to the host (on a GPU, one small copy and a wait per step)."""
        if not self._clipping():
            return False
        k, n = updates.kernels, len(updates.grads)
        squares = [0.0] * n
        if self.clipnorm is not None or self.global_clipnorm is not None:
            for i, g in enumerate(updates.grads):
                k.sum_squares(g, updates.squares, i)
            squares = [float(v) for v in updates.read(updates.squares)[:n]]
        limit = self.clipvalue if self.clipvalue is not None else math.inf
        for g, s, out in zip(updates.grads, self._scales(squares), updates.clipped):
            k.clip(g, s, limit, out)
        return True

    def update_step(self, w, g, state, lr: float, kernels) -> None:
        """Update one variable ``w`` in place from its gradient ``g`` and ``state``, with
        ``kernels`` of the device the arrays are on (``Updates.kernels``)."""
        raise NotImplementedError

    # -- config and checkpoints ------------------------------------------------------------
    def get_config(self) -> dict:
        lr = self._learning_rate
        return {"learning_rate": schedules.serialize(lr) if self.schedule else lr,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "clipvalue": self.clipvalue, "global_clipnorm": self.global_clipnorm}

    @classmethod
    def from_config(cls, config: dict) -> "Optimizer":
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        return cls(**config)

    def get_state(self) -> dict:
        """Flat name -> array map of the optimizer state (for checkpoints)."""
        return {f"{p}/{k}": v for p, st in self.state.items() for k, v in st.items()}

    def set_state(self, flat: dict) -> None:
        for key, value in flat.items():
            p, k = key.rsplit("/", 1)
            self.state.setdefault(p, {})[k] = np.array(value)

    def __repr__(self):
        return f"{type(self).__name__}(learning_rate={self._learning_rate!r})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, Keras' formulation:
    ``v = momentum * v - lr * g; w += v`` (Nesterov: ``w += momentum * v - lr * g``)."""

    def __init__(self, learning_rate=0.01, momentum: float = 0.0, nesterov: bool = False,
                 lr=None, **kw):
        super().__init__(learning_rate, lr, **kw)
        self.momentum = _number("momentum", momentum, below_one=True)
        if nesterov and self.momentum == 0.0:
            raise ConfigError("nesterov=True needs a momentum > 0")
        self.nesterov = bool(nesterov)

    def make_state(self, w):
        return {"velocity": np.zeros_like(w)} if self.momentum else {}

    def update_step(self, w, g, state, lr, kernels):
        if self.momentum:
            kernels.momentum(w, g, state["velocity"], lr, self.momentum, self.nesterov)
        else:
            kernels.sgd(w, g, lr)

    def get_config(self):
        return super().get_config() | {"momentum": self.momentum, "nesterov": self.nesterov}


class Adagrad(Optimizer):
    """Adagrad (Keras 3): ``acc += g^2; w -= lr * g / sqrt(acc + epsilon)``, with the
    accumulator starting at ``initial_accumulator_value``."""

    def __init__(self, learning_rate=0.001, initial_accumulator_value: float = 0.1,
                 epsilon: float = 1e-7, lr=None, **kw):
        super().__init__(learning_rate, lr, **kw)
        self.initial_accumulator_value = _number("initial_accumulator_value",
                                                 initial_accumulator_value)
        self.epsilon = _number("epsilon", epsilon)

    def make_state(self, w):
        return {"accumulator": np.full_like(w, self.initial_accumulator_value)}

    def update_step(self, w, g, state, lr, kernels):
        kernels.adagrad(w, g, state["accumulator"], lr, self.epsilon)

    def get_config(self):
        return super().get_config() | {
            "initial_accumulator_value": self.initial_accumulator_value,
            "epsilon": self.epsilon}


class RMSprop(Optimizer):
    """RMSprop (Keras 3): ``v = rho v + (1 - rho) g^2``, then ``w -= lr g / sqrt(v + eps)``;
    with ``momentum`` the step goes through ``m = momentum m + lr g / sqrt(v + eps)``."""

    def __init__(self, learning_rate=0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7, lr=None, **kw):
        super().__init__(learning_rate, lr, **kw)
        self.rho = _number("rho", rho, below_one=True)
        self.momentum = _number("momentum", momentum, below_one=True)
        self.epsilon = _number("epsilon", epsilon)

    def make_state(self, w):
        state = {"velocity": np.zeros_like(w)}
        if self.momentum:
            state["momentum"] = np.zeros_like(w)
        return state

    def update_step(self, w, g, state, lr, kernels):
        if self.momentum:
            kernels.rmsprop_momentum(w, g, state["velocity"], state["momentum"], lr,
                                     self.rho, self.momentum, self.epsilon)
        else:
            kernels.rmsprop(w, g, state["velocity"], lr, self.rho, self.epsilon)

    def get_config(self):
        return super().get_config() | {"rho": self.rho, "momentum": self.momentum,
                                       "epsilon": self.epsilon}


class Adam(Optimizer):
    """Adam (Keras 3): ``m += (1 - b1)(g - m); v += (1 - b2)(g^2 - v)``, then
    ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)`` at step ``t``
    (counted from 1): the bias correction folded into the step size."""

    def __init__(self, learning_rate=0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, lr=None, **kw):
        super().__init__(learning_rate, lr, **kw)
        self.beta_1 = _number("beta_1", beta_1, below_one=True)
        self.beta_2 = _number("beta_2", beta_2, below_one=True)
        self.epsilon = _number("epsilon", epsilon)

    def make_state(self, w):
        return {"momentum": np.zeros_like(w), "velocity": np.zeros_like(w)}

    def update_step(self, w, g, state, lr, kernels):
        t = self.iterations + 1
        alpha = lr * math.sqrt(1.0 - self.beta_2 ** t) / (1.0 - self.beta_1 ** t)
        kernels.adam(w, g, state["momentum"], state["velocity"], alpha, self.beta_1,
                     self.beta_2, self.epsilon)

    def get_config(self):
        return super().get_config() | {"beta_1": self.beta_1, "beta_2": self.beta_2,
                                       "epsilon": self.epsilon}


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras 3's AdamW: ``weight_decay=0.004``)."""

    def __init__(self, learning_rate=0.001, weight_decay: float = 0.004, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, lr=None, **kw):
        if weight_decay is None:
            raise ConfigError("AdamW needs a weight_decay (a number >= 0), got None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, lr,
                         weight_decay=weight_decay, **kw)


OPTIMIZERS = {c.__name__: c for c in (SGD, Adagrad, RMSprop, Adam, AdamW)}
NAMES = {name.lower(): cls for name, cls in OPTIMIZERS.items()}


def get(opt) -> Optimizer:
    """An optimizer instance, by name (``"adam"``, with default settings) or as given."""
    if isinstance(opt, Optimizer):
        return opt
    if isinstance(opt, str):
        cls = OPTIMIZERS.get(opt) or NAMES.get(opt.lower())
        if cls is not None:
            return cls()
    raise ConfigError(f"unknown optimizer {opt!r}; expected one of {sorted(NAMES)} "
                      "or a dlrun optimizer")


def from_config(class_name: str, config: dict) -> Optimizer:
    if class_name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer class {class_name!r}; known: "
                          f"{sorted(OPTIMIZERS)}")
    return OPTIMIZERS[class_name].from_config(config)
