"""What a model runs for one mode (``train``, ``eval``, ``predict``, ``predict_train``) and
batch size: a plan and the tensors that feed and read it, made once and kept by the model.

``predict_train`` is ``predict(x, training=True)``'s (Monte-Carlo dropout): the forward
traced in training behaviour but as :data:`~dlrun.engine.layers.base.FORWARD_ONLY`, so
that nothing a training forward would update changes (see that constant).

A :class:`Program` is built from the model's graph: the traced outputs, a loss per output
(weighted and summed, plus the weights' penalties), the plan on the model's backend (with
the plain-SGD rewrite offered when the optimizer allows it), what the optimizer updates
and what the metrics count.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dlrun.engine import losses as losses_mod
from dlrun.engine import optimizers
from dlrun.engine.core.graph import Placeholder, apply, state_feeds
from dlrun.engine.core.plan import Plan
from dlrun.engine.layers.base import FORWARD_ONLY
from dlrun.engine.metrics import Counter
from dlrun.ops import Spec


@dataclass
class Program:
    """A model's plan for one mode and batch size, and what feeds and reads it.

    ``xs``/``ys`` are the input and target placeholders (one per input / output),
    ``weights`` the per-sample loss weights' (every output's loss reads it; ones unless a
    step is given weights: ``unit_weights`` says whether it holds ones), ``outs`` the
    outputs, ``loss`` the trained scalar, ``parts`` the loss of each output and ``preds``
    what the metrics read per output. ``lr`` is the placeholder of the learning
    rate when plain SGD is fused into the plan (fed before each step); ``updates`` what
    the optimizer updates (train); ``counter`` the metric counts (train, eval); ``feeds``
    the placeholders the model fills from its training state before each run
    (:meth:`feed_state`).
    """

    mode: str
    plan: Plan
    xs: list
    outs: list
    ys: list = field(default_factory=list)
    weights: Placeholder | None = None
    unit_weights: bool = True
    loss: object = None
    parts: list = field(default_factory=list)
    preds: list = field(default_factory=list)
    lr: Placeholder | None = None
    updates: object = None
    counter: Counter | None = None
    feeds: list = field(default_factory=list)

    def feed_state(self, state) -> None:
        """Fill the :class:`~dlrun.engine.core.graph.StateFeed` placeholders from the
        model's training state (call before every run)."""
        for t in self.feeds:
            self.plan.feed[t][...] = t.source(state)


# the ``training`` argument the layers' ``call`` receives in each mode
TRAINING = {"train": True, "eval": False, "predict": False, "predict_train": FORWARD_ONLY}


def plain_sgd(optimizer) -> bool:
    """Whether ``optimizer``'s update is plain ``w -= lr * g`` (which the CPU may fuse)."""
    return (type(optimizer) is optimizers.SGD and not optimizer.momentum
            and not optimizer.weight_decay and optimizer.clipnorm is None
            and optimizer.clipvalue is None and optimizer.global_clipnorm is None)


def build(model, mode: str, batch: int) -> Program:
    """The program of ``model`` (built, compiled) for ``mode`` and batches of ``batch``."""
    backend, params = model.backend, model.weights_params()
    xs, outs = model._graph(batch, training=TRAINING[mode])
    feeds = state_feeds(outs)
    if mode in ("predict", "predict_train"):
        return Program(mode, Plan(xs + feeds, outs, params, backend=backend), xs, outs,
                       feeds=feeds)
    ys, weights, loss, parts, preds = loss_graph(model, outs, params)
    keep = [loss, *preds] + (parts if len(outs) > 1 else [])
    lr, updates = None, None
    if mode == "train":
        sgd_lr = Placeholder(Spec((1,), np.float64), name="lr") \
            if plain_sgd(model.optimizer) else None
        plan = Plan(xs + ys + [weights] + feeds, keep, params, loss=loss, backend=backend,
                    options={"sgd_lr": sgd_lr})
        trained = [p for p in params if p.id in plan.grads]
        model.optimizer.build(trained)
        updates = backend.updates(plan, trained)
        lr = sgd_lr if "fuse_sgd" in plan.fused else None
    else:
        plan = Plan(xs + ys + [weights] + feeds, keep, params, backend=backend)
    plan.feed[weights][...] = 1
    counter = Counter(backend, model.metrics, model.compiled_loss.metric_outputs,
                      [plan.value(t) for t in preds],
                      [losses_mod.metric_targets(plan.value(t), plan.value(p))
                       for t, p in zip(ys, preds)],
                      [plan.value(t) for t in parts])
    return Program(mode, plan, xs, outs, ys, weights, True, loss, parts, preds, lr, updates,
                   counter, feeds)


def loss_graph(model, outs: list, params: list) -> tuple:
    """(target placeholders, the per-sample weights' placeholder, the loss, the loss of
    each output, what the metrics read per output) of a compiled model whose traced
    outputs are ``outs``: ``sum_i loss_weights[i] * loss_i`` plus the weights' penalties."""
    c = model.compiled_loss
    ys, parts, preds = [], [], []
    weights = losses_mod.weights_placeholder(outs[0])
    for out, name in zip(outs, c.loss_names):
        y = losses_mod.target_placeholder(name, out)
        part, pred = losses_mod.loss_node(name, out, y, weights)
        ys.append(y)
        parts.append(part)
        preds.append(pred)
    loss = _add_penalties(_weighted_sum(parts, c.loss_weights), params)
    return ys, weights, loss, parts, preds


def _add_penalties(loss, params):
    """The loss plus the penalty of every trainable weight that has a regularizer (as
    Keras does, in training and evaluation alike)."""
    for p in params:
        if p.regularizer is not None and p.trainable:
            loss = apply("add", loss, p.regularizer(p))
    return loss


def _weighted_sum(parts: list, weights: list):
    """sum_i weights[i] * parts[i] as graph nodes (a weight of 1 adds no node)."""
    total = None
    for part, w in zip(parts, weights):
        term = part if w == 1.0 else apply("scale", part, factor=float(w))
        total = term if total is None else apply("add", total, term)
    return total
