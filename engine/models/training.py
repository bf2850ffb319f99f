"""The one training loop: the step, the epoch, metric accumulation, callbacks, and the
public training state that checkpoints save and restore.

``Model.fit`` runs epochs of batches through :class:`Loop`; the cluster's driver runs
epochs of rounds through the same :class:`Loop`, and each worker's round is steps of
:func:`run_batch` summed by a :class:`~dlrun.engine.metrics.Tally`, as ``fit``'s batches
are. Everything that touches training (a new metric, sample weights, an outer optimizer)
is written here once.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from dlrun.engine.callbacks import CallbackList, History, ProgressBar
from dlrun.engine.metrics import Tally


@dataclass
class ResumePoint:
    """Where a restored checkpoint left off: the epochs it had completed and the state of
    the generator that shuffles each epoch (``None``: not saved). ``forced``: the next
    ``fit`` starts there whatever its ``initial_epoch`` says (BackupAndRestore)."""

    epoch: int
    shuffle_state: dict | None = None
    forced: bool = False


@dataclass
class TrainingState:
    """Where a model's training stands. ``seed`` and ``step`` (batches trained so far)
    give every dropout and augmentation draw; ``epoch`` is the epoch being trained (fit's
    epoch index, as callbacks see it; what an annealed dropout rate follows);
    ``completed_epochs`` counts whole epochs;
    ``shuffle_rng`` is the generator of ``fit``'s epoch orders (its state goes into
    checkpoints); ``resume``, set when a checkpoint is restored, is taken by the next
    training run."""

    seed: int
    step: int = 0
    epoch: int = 0
    completed_epochs: int = 0
    shuffle_rng: np.random.Generator | None = None
    resume: ResumePoint | None = field(default=None, repr=False)

    def take_resume(self) -> ResumePoint | None:
        """The resume point, once: the run that takes it continues from it."""
        point, self.resume = self.resume, None
        return point


@dataclass
class BatchResult:
    """One batch: its mean loss, its samples and ``[numerator, denominator]`` per metric."""

    loss: float
    samples: int
    counts: list


def run_batch(model, mode: str, x, y, idx, sample_weight=None) -> BatchResult:
    """Run rows ``idx`` of ``x``, ``y`` (lists with several inputs or outputs) and
    ``sample_weight`` (per-sample loss weights, or None for ones) through ``model``'s
    program for ``mode`` ('train' also updates the weights): feed, run, count the metrics
    on the device, and bring back the loss and the counts (one wait)."""
    prog = model.program(mode, len(idx))
    plan, backend = prog.plan, model.backend
    for src, t in zip(x if len(prog.xs) > 1 else [x], prog.xs):
        np.take(src, idx, axis=0, out=plan.feed[t], mode="clip")
    for src, t in zip(y if len(prog.ys) > 1 else [y], prog.ys):
        np.take(src, idx, axis=0, out=plan.feed[t], mode="clip")
    if sample_weight is not None:
        np.take(sample_weight, idx, out=plan.feed[prog.weights], mode="clip")
        prog.unit_weights = False
    elif not prog.unit_weights:
        plan.feed[prog.weights][...] = 1
        prog.unit_weights = True
    state = model.training
    train = mode == "train"
    if train and prog.lr is not None:
        plan.feed[prog.lr][0] = model.optimizer.learning_rate
    prog.feed_state(state)
    launches = backend.launches()
    plan.run(seed=state.seed + state.step)
    if train:
        model.optimizer.update(prog.updates)
        state.step += 1
    counter = prog.counter
    counter.launch()
    if launches is not None:
        plan.kernels_per_step = backend.launches() - launches
    loss, out, *parts = plan.fetch(prog.loss, counter.out, *counter.parts)
    return BatchResult(float(loss), len(idx), counter.counts(out, parts, len(idx)))


def evaluate(model, x, y, batch_size: int, sample_weight=None) -> Tally:
    """The loss and metrics of checked ``(x, y)`` in inference mode, batch by batch."""
    samples = len(x[0]) if isinstance(x, list) else len(x)
    tally = Tally(model.metrics)
    for start in range(0, samples, batch_size):
        tally.add_batch(run_batch(model, "eval", x, y,
                                  np.arange(start, min(start + batch_size, samples)),
                                  sample_weight))
    return tally


class Loop:
    """Epochs of units (a batch; on a cluster, a round of every worker), with callbacks.

    Parameters
    ----------
    model : the model being trained (callbacks see it; its ``stop_training`` is obeyed
        after every unit).
    epochs, verbose, callbacks : as for ``fit``; a :class:`History` (returned by
        :meth:`end`) and, with ``verbose``, a progress display join the callbacks.
    params : more of what callbacks read in ``self.params`` (``steps``: units per epoch).
    validation : ``(x, y, batch_size, sample_weight)`` evaluated after every epoch
        (``val_`` logs).
    """

    def __init__(self, model, epochs: int, verbose, callbacks=None, params=None,
                 validation=None):
        self.model, self.epochs, self.validation = model, epochs, validation
        self.verbose = 1 if verbose == "auto" else int(verbose)
        self.history = History()
        cbs = list(callbacks or []) + [self.history]
        if self.verbose:
            cbs.append(ProgressBar(self.verbose))
        self.params = {"epochs": epochs, "steps": None, "verbose": self.verbose} | (params or {})
        self.callbacks = CallbackList(cbs, model, self.params)

    def begin(self) -> ResumePoint | None:
        """Start the run; callbacks may restore a checkpoint now (BackupAndRestore), whose
        resume point is returned (and taken from the model)."""
        self.model.stop_training = False
        self.callbacks.on_train_begin()
        return self.model.training.take_resume()

    def run_epoch(self, epoch: int, units, extra_logs=None) -> dict:
        """Run ``units`` (callables adding their results to the epoch's Tally) as epoch
        ``epoch``; returns its logs, with ``extra_logs()`` and validation added."""
        model, cbs = self.model, self.callbacks
        model.training.epoch = epoch
        cbs.on_epoch_begin(epoch)
        tally = Tally(model.metrics)
        done = 0
        for b, unit in enumerate(units):
            cbs.on_train_batch_begin(b)
            unit(tally)
            done = b + 1
            cbs.on_train_batch_end(b, tally.logs())
            if model.stop_training:          # e.g. TerminateOnNaN, as Keras does
                break
        logs = tally.logs() | (extra_logs() if extra_logs else {})
        if not math.isfinite(logs["loss"]):
            warnings.warn(f"the training loss became {logs['loss']} in epoch {epoch + 1}; "
                          "try a smaller learning rate", RuntimeWarning, stacklevel=3)
        if self.validation is not None:
            val = evaluate(model, *self.validation).logs()
            logs |= {"val_" + k: v for k, v in val.items()}
        if done == len(units):               # not stopped in the middle
            model.training.completed_epochs = epoch + 1
        cbs.on_epoch_end(epoch, logs)
        return logs

    def end(self) -> History:
        self.model.sync_to_host()
        self.callbacks.on_train_end()
        return self.history


def shuffling(model, resume: ResumePoint | None, initial_epoch: int, shuffle: bool,
              rng: np.random.Generator):
    """(first epoch, the generator of epoch orders) for a ``fit`` that may continue a
    checkpoint: its epoch, when forced; its generator, when it starts where the checkpoint
    stopped (else a warning: the orders will differ from the interrupted run's); else
    ``initial_epoch`` and ``rng``."""
    if resume is not None:
        if resume.forced:
            initial_epoch = resume.epoch
        if resume.epoch == initial_epoch and resume.shuffle_state is not None:
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = resume.shuffle_state
        elif shuffle:
            warnings.warn(f"this model was checkpointed after epoch {resume.epoch} but fit "
                          f"starts at initial_epoch={initial_epoch}; the shuffling will not "
                          "continue the checkpointed run's", RuntimeWarning, stacklevel=3)
    model.training.shuffle_rng = rng
    return initial_epoch, rng
