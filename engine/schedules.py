"""Learning-rate schedules: the learning rate as a function of the update step.

Give one as an optimizer's ``learning_rate``; the optimizer evaluates it before every
update at ``optimizer.iterations`` (0 for the first update), as Keras 3 does::

    opt = dl.optimizers.SGD(learning_rate=dl.schedules.CosineDecay(0.1, decay_steps=1000))
    warm = dl.schedules.LinearWarmup(dl.schedules.ExponentialDecay(0.1, 100, 0.9), 50)

A schedule is a plain object with a ``get_config()``, so a saved model records it as JSON.
"""
from __future__ import annotations

import math

from dlrun.errors import ConfigError


class LearningRateSchedule:
    """Base class: ``schedule(step) -> learning rate`` for a step counted from 0."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict) -> "LearningRateSchedule":
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _positive(name: str, value, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not (value >= 0 if allow_zero else value > 0) or not math.isfinite(value):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def _steps(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


class Constant(LearningRateSchedule):
    """``lr`` at every step."""

    def __init__(self, learning_rate: float):
        self.learning_rate = _positive("learning_rate", learning_rate)

    def __call__(self, step):
        return self.learning_rate

    def get_config(self):
        return {"learning_rate": self.learning_rate}


class StepDecay(LearningRateSchedule):
    """``lr * factor ** floor(step / step_size)``: drop by ``factor`` every ``step_size``
    steps."""

    def __init__(self, initial_learning_rate: float, step_size: int, factor: float = 0.5):
        self.initial_learning_rate = _positive("initial_learning_rate", initial_learning_rate)
        self.step_size = _steps("step_size", step_size)
        self.factor = _positive("factor", factor)

    def __call__(self, step):
        return self.initial_learning_rate * self.factor ** (step // self.step_size)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "step_size": self.step_size, "factor": self.factor}


class ExponentialDecay(LearningRateSchedule):
    """Keras' ``lr * decay_rate ** (step / decay_steps)``; with ``staircase=True`` the
    exponent is floored (a step decay)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float,
                 staircase: bool = False):
        self.initial_learning_rate = _positive("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _steps("decay_steps", decay_steps)
        self.decay_rate = _positive("decay_rate", decay_rate)
        self.staircase = bool(staircase)

    def __call__(self, step):
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase}


class InverseSqrtDecay(LearningRateSchedule):
    """The lectures' ``lr / sqrt(t + 1)``, with ``t = step / decay_steps`` (so
    ``decay_steps`` = batches per epoch makes ``t`` the epoch)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int = 1):
        self.initial_learning_rate = _positive("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _steps("decay_steps", decay_steps)

    def __call__(self, step):
        return self.initial_learning_rate / math.sqrt(step / self.decay_steps + 1.0)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps}


class CosineDecay(LearningRateSchedule):
    """Keras' cosine decay (without restarts) from ``initial_learning_rate`` to
    ``alpha * initial_learning_rate`` over ``decay_steps``, constant after:
    ``lr * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)``.
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0):
        self.initial_learning_rate = _positive("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _steps("decay_steps", decay_steps)
        self.alpha = _positive("alpha", alpha, allow_zero=True)
        if self.alpha > 1:
            raise ConfigError(f"alpha must be in [0, 1], got {alpha!r}")

    def __call__(self, step):
        done = min(step, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * done))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha}


class LinearWarmup(LearningRateSchedule):
    """Rise linearly from ``initial_learning_rate`` to ``after``'s first value over
    ``warmup_steps``, then follow ``after`` (a schedule or a number) started afresh:
    ``step < W: lr0 + (after(0) - lr0) * step / W``; else ``after(step - W)``."""

    def __init__(self, after, warmup_steps: int, initial_learning_rate: float = 0.0):
        self.after = get(after)
        self.warmup_steps = _steps("warmup_steps", warmup_steps)
        self.initial_learning_rate = _positive("initial_learning_rate",
                                               initial_learning_rate, allow_zero=True)

    def __call__(self, step):
        if step < self.warmup_steps:
            target = self.after(0)
            lr0 = self.initial_learning_rate
            return lr0 + (target - lr0) * step / self.warmup_steps
        return self.after(step - self.warmup_steps)

    def get_config(self):
        return {"after": serialize(self.after), "warmup_steps": self.warmup_steps,
                "initial_learning_rate": self.initial_learning_rate}

    def __repr__(self):
        return (f"LinearWarmup({self.after!r}, warmup_steps={self.warmup_steps}, "
                f"initial_learning_rate={self.initial_learning_rate})")

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["after"] = deserialize(config["after"])
        return cls(**config)


SCHEDULES = {c.__name__: c for c in (Constant, StepDecay, ExponentialDecay, InverseSqrtDecay,
                                     CosineDecay, LinearWarmup)}


def register_schedule(cls):
    """Make a user's schedule class loadable from a saved model's JSON."""
    SCHEDULES[cls.__name__] = cls
    return cls


def get(value) -> LearningRateSchedule:
    """A schedule as given, or :class:`Constant` for a number."""
    if isinstance(value, LearningRateSchedule):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Constant(value)
    raise ConfigError(f"expected a learning rate (a number > 0) or a "
                      f"dlrun.schedules.LearningRateSchedule, got {value!r}")


def serialize(schedule: LearningRateSchedule) -> dict:
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(data: dict) -> LearningRateSchedule:
    try:
        cls = SCHEDULES[data["class_name"]]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown learning-rate schedule {data!r}; known: "
                          f"{sorted(SCHEDULES)} (register your own with "
                          "dlrun.schedules.register_schedule)") from None
    return cls.from_config(data.get("config", {}))
