"""Weight regularisers (Keras names): ``kernel_regularizer=dl.regularizers.l2(0.01)``.

A regulariser adds a penalty on one weight to the loss the model reports and trains on;
its gradient joins the weight's gradient. For ``L2(l2)`` the penalty is ``l2 * sum w^2``,
so one SGD step is ``w := w - lr * dL/dw - 2 * lr * l2 * w``. In the graph it is the op
``l1_l2_penalty`` on the weight, added to the loss (:meth:`Model._plan`); any layer that
passes ``regularizer=`` to :meth:`Layer.add_weight` gets it.
"""
from __future__ import annotations

import math

from dlrun.errors import ConfigError


def _factor(name: str, value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"regularisation factor {name} must be a number >= 0, got "
                          f"{value!r}") from None
    if not (x >= 0 and math.isfinite(x)):
        raise ConfigError(f"regularisation factor {name} must be a number >= 0, got {value!r}")
    return x


class Regularizer:
    """Base class: ``regularizer(w)`` adds the penalty's node for weight tensor ``w``."""

    def __call__(self, w):
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict) -> "Regularizer":
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class L1L2(Regularizer):
    """``l1 * sum |w| + l2 * sum w^2``."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1, self.l2 = _factor("l1", l1), _factor("l2", l2)

    def __call__(self, w):
        from dlrun.engine.core.graph import apply

        return apply("l1_l2_penalty", w, l1=self.l1, l2=self.l2)

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """``l1 * sum |w|`` (its gradient pushes weights to exactly zero)."""

    def __init__(self, l1: float = 0.01):
        super().__init__(l1=l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    """``l2 * sum w^2`` (weight decay through the gradient: ``2 * l2 * w``)."""

    def __init__(self, l2: float = 0.01):
        super().__init__(l2=l2)

    def get_config(self):
        return {"l2": self.l2}


# Keras' function-style spellings: dl.regularizers.l2(0.01)
l1, l2, l1_l2 = L1, L2, L1L2

REGULARIZERS = {c.__name__: c for c in (L1, L2, L1L2)}
NAMES = {"l1": L1, "l2": L2, "l1_l2": L1L2}


def register_regularizer(cls):
    """Make a user's regulariser class loadable from a saved model's JSON."""
    REGULARIZERS[cls.__name__] = cls
    return cls


def get(value) -> Regularizer | None:
    """None, a regulariser, a name (``"l2"``: default factor) or a serialized dict."""
    if value is None or isinstance(value, Regularizer):
        return value
    if isinstance(value, str) and value in NAMES:
        return NAMES[value]()
    if isinstance(value, dict) and value.get("class_name") in REGULARIZERS:
        return REGULARIZERS[value["class_name"]].from_config(value.get("config", {}))
    raise ConfigError(f"unknown regularizer {value!r}; expected one of {sorted(NAMES)}, "
                      "or dlrun.regularizers.l2(0.01) and the like")


def serialize(reg: Regularizer | None) -> dict | None:
    if reg is None:
        return None
    return {"class_name": type(reg).__name__, "config": reg.get_config()}
