"""What ``compile`` settles besides the optimizer: a loss per output, the loss weights, and
the metrics each output reports (Keras' rules for a model of one or several outputs)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from dlrun.engine import losses as losses_mod
from dlrun.engine import metrics as metrics_mod
from dlrun.errors import ConfigError


@dataclass
class CompiledLoss:
    """A compiled model's losses and metrics.

    ``loss_names``/``loss_weights``: the canonical loss name (a
    :class:`~dlrun.engine.losses.UserLoss` for a function) and weight of each output;
    ``metrics``: what the logs report (per-output losses first with several outputs) and
    ``metric_outputs`` the output each reads; ``loss``, ``loss_weights_given`` and
    ``metric_names`` are the compile arguments as saved (a name, or a dict by output).
    """

    loss_names: list
    loss_weights: list
    metrics: list
    metric_outputs: list
    loss: object
    loss_weights_given: dict | None
    metric_names: object

    def config(self) -> dict:
        """The compile arguments but the optimizer, as JSON (what saving and a Ray worker
        need to compile a copy)."""
        lambdas = [n for n in self.loss_names if str(n) == "<lambda>"]
        if lambdas:
            raise ConfigError("a loss given as a lambda cannot be saved (a saved model names "
                              "its loss function): define it with def, then load the model "
                              "with load_model(path, custom_objects={'name': function})")
        cfg = {"loss": self.loss, "metrics": self.metric_names}
        if self.loss_weights_given is not None:
            cfg["loss_weights"] = self.loss_weights_given
        return cfg


def compile_loss(names: list, loss, metrics, loss_weights) -> CompiledLoss:
    """Interpret ``compile``'s ``loss``, ``metrics`` and ``loss_weights`` for a model whose
    outputs are ``names``. A model of several outputs takes a loss per output: one name for
    all, a list in output order or a dict by output name; ``loss_weights`` likewise (1 for
    an output left out). ``metrics`` (a list) are kept for every output, or per output as a
    dict; the logs then hold ``<output>_loss`` (unweighted) and ``<output>_<metric>``."""
    if loss is None:
        raise ConfigError("compile() needs a loss, e.g. "
                          "loss='sparse_categorical_crossentropy'")
    multi = len(names) > 1
    loss_names = [losses_mod.canonical(v) for v in _per_output(loss, names, "loss")]
    weights = [1.0] * len(names) if loss_weights is None else \
        [_loss_weight(w, n) for w, n in
         zip(_per_output(loss_weights, names, "loss_weights", missing=1.0), names)]
    tracked, at, kept = [], [], []
    if multi:
        for i, n in enumerate(names):
            tracked.append(metrics_mod.OutputLoss(f"{n}_loss"))
            at.append(i)
    for i, (n, ms) in enumerate(zip(names, _per_output_metrics(metrics, names))):
        kept.append([])
        for m in ms:
            metric = metrics_mod.get(m, loss_names[i], losses_mod.target_kind(loss_names[i]))
            kept[-1].append(metric.name)
            if multi:
                metric.name = f"{n}_{metric.name}"
            tracked.append(metric)
            at.append(i)
    saved = [losses_mod.saved_name(v) for v in loss_names]
    return CompiledLoss(
        loss_names, weights, tracked, at,
        loss=dict(zip(names, saved)) if multi else saved[0],
        loss_weights_given=None if loss_weights is None else dict(zip(names, weights)),
        metric_names=dict(zip(names, kept)) if multi else kept[0])


def _per_output(value, names: list, what: str, missing=None) -> list:
    """One value per output from a dict by output name, a list in output order, or one
    value for all; a dict may leave outputs out only when ``missing`` is given."""
    if isinstance(value, dict):
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ConfigError(f"{what} names an unknown output {unknown[0]!r}; this model's "
                              f"outputs are {names}")
        left = [n for n in names if n not in value]
        if left and missing is None:
            raise ConfigError(f"{what} has no entry for output {left[0]!r}; give one for "
                              f"each of {names}")
        return [value.get(n, missing) for n in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ConfigError(f"{what} lists {len(value)} values for {len(names)} outputs "
                              f"{names}; give one per output, or a dict by output name")
        return list(value)
    return [value] * len(names)


def _per_output_metrics(metrics, names: list) -> list:
    """A list of metric names per output: a dict by output name, or one list for all."""
    if metrics is None:
        return [[] for _ in names]
    if isinstance(metrics, dict):
        per = _per_output(metrics, names, "metrics", missing=[])
        return [[m] if isinstance(m, str) else list(m) for m in per]
    return [[metrics] if isinstance(metrics, str) else list(metrics) for _ in names]


def _loss_weight(w, name) -> float:
    try:
        value = float(w)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"loss_weights for output {name!r} must be a number >= 0, got "
                          f"{w!r}")
    return value


