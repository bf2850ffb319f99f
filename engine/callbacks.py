"""Callbacks (Keras' hooks): History, EarlyStopping, ModelCheckpoint, CSVLogger,
TerminateOnNaN, LearningRateScheduler, ReduceLROnPlateau, the progress display, and the
base class."""
from __future__ import annotations

import csv
import inspect
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from dlrun.errors import ConfigError


class Callback:
    """Subclass and override any hook. ``self.model`` is the model being trained and
    ``self.params`` holds ``epochs``, ``steps`` (batches per epoch) and ``verbose``."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_batch_begin(self, batch, logs=None): ...
    def on_train_batch_end(self, batch, logs=None): ...


class CallbackList:
    """Calls one hook on every callback in order."""

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise ConfigError(f"callbacks must be dlrun.callbacks.Callback instances, "
                                  f"got {cb!r}")
            cb.set_model(model)
            cb.set_params(params)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args):
            for cb in self.callbacks:
                getattr(cb, hook)(*args)
        return call


class History(Callback):
    """Records every epoch's logs: ``history.history['loss']``, ``history.epoch``."""

    def on_train_begin(self, logs=None):
        self.epoch = []
        self.history = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs;
    optionally put back the weights of the best epoch."""

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False, verbose: int = 0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"EarlyStopping mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.monitor, self.patience, self.mode = monitor, int(patience), mode
        self.min_delta = abs(float(min_delta))
        self.restore_best_weights, self.verbose = restore_best_weights, verbose

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best_epoch = 0, None, None
        self.best = np.inf if self.mode == "min" else -np.inf
        self.best_weights = None

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ConfigError(f"EarlyStopping monitors {self.monitor!r}, which this run does "
                              f"not log; available: {sorted(logs or {})}")
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
        if self.stopped_epoch is not None and self.verbose:
            print(f"Early stopping after epoch {self.stopped_epoch + 1}: best "
                  f"{self.monitor} {self.best:.4f} at epoch {self.best_epoch + 1}")


def _mode(cls: str, mode: str, monitor: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ConfigError(f"{cls} mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _monitored(cls: str, monitor: str, logs) -> float:
    value = (logs or {}).get(monitor)
    if value is None:
        raise ConfigError(f"{cls} monitors {monitor!r}, which this run does not log; "
                          f"available: {sorted(logs or {})}")
    return float(value)


class ModelCheckpoint(Callback):
    """Save the model (or with ``save_weights_only`` its weights) after every epoch.

    ``filepath`` may name the epoch and logged values, Keras-style:
    ``"ckpt/model-{epoch:02d}-{val_loss:.3f}"``. With ``save_best_only`` only an epoch
    whose ``monitor`` improves on the best so far is saved. An epoch whose loss is NaN or
    infinite is never saved, so the last good checkpoint survives a diverging run
    (with :class:`TerminateOnNaN` to stop it). A model is a folder (:meth:`Model.save`,
    optimizer state included); weights only are one ``.npz`` file. Both are written under
    a temporary name and renamed into place.
    """

    def __init__(self, filepath, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, save_weights_only: bool = False,
                 mode: str = "auto"):
        super().__init__()
        self.filepath = str(filepath)
        self.monitor, self.verbose = monitor, verbose
        self.save_best_only, self.save_weights_only = bool(save_best_only), \
            bool(save_weights_only)
        self.mode = _mode("ModelCheckpoint", mode, monitor)
        self.best = np.inf if self.mode == "min" else -np.inf
        self.last_saved = None

    def _path(self, epoch, logs) -> Path:
        try:
            return Path(self.filepath.format(epoch=epoch + 1, **logs))
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"ModelCheckpoint filepath {self.filepath!r} cannot be "
                              f"filled from epoch and {sorted(logs)} ({e})") from None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            warnings.warn(f"ModelCheckpoint: not saving epoch {epoch + 1}, whose loss is "
                          f"{loss}; the last checkpoint stays", RuntimeWarning, stacklevel=2)
            return
        if self.save_best_only:
            value = _monitored("ModelCheckpoint", self.monitor, logs)
            better = value < self.best if self.mode == "min" else value > self.best
            if not (better and math.isfinite(value)):
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                      f"{value:.5f}, saving the model")
            self.best = value
        path = self._path(epoch, logs)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        self.last_saved = path
        if self.verbose and not self.save_best_only:
            print(f"Epoch {epoch + 1}: saving the model to {path}")


class CSVLogger(Callback):
    """One CSV row per epoch (Keras' format: ``epoch`` from 0, then the logs sorted by
    name), flushed as it goes so an interrupted run keeps its log. ``append=True``
    continues an existing file (its header is kept)."""

    def __init__(self, filename, separator: str = ",", append: bool = False):
        super().__init__()
        self.filename, self.sep, self.append = Path(filename), separator, bool(append)
        self.file = None

    def on_train_begin(self, logs=None):
        header = True
        if self.append and self.filename.exists():
            with open(self.filename) as f:
                header = not f.readline()
        self.filename.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.filename, "a" if self.append else "w", newline="")
        self.header, self.writer, self.keys = header, None, None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            self.writer = csv.DictWriter(self.file, fieldnames=["epoch"] + self.keys,
                                         delimiter=self.sep, extrasaction="ignore")
            if self.header:
                self.writer.writeheader()
        self.writer.writerow({"epoch": epoch} | {k: logs.get(k, "NA") for k in self.keys})
        self.file.flush()

    def on_train_end(self, logs=None):
        if self.file is not None:
            self.file.close()
            self.file = None


class TerminateOnNaN(Callback):
    """Stop training at the first batch whose loss is NaN or infinite."""

    def __init__(self, verbose: int = 1):
        super().__init__()
        self.verbose = verbose
        self.stopped_batch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.stopped_batch = (self.epoch, batch)
            self.model.stop_training = True
            if self.verbose:
                print(f"Epoch {self.epoch + 1}, batch {batch + 1}: the loss is {loss}; "
                      "terminating training")


def _current_lr(model) -> float:
    return float(model.optimizer.learning_rate)


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of every epoch from ``schedule(epoch)`` or
    ``schedule(epoch, lr)`` (epochs counted from 0); logs it as ``learning_rate``."""

    def __init__(self, schedule, verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise ConfigError(f"LearningRateScheduler takes a function of the epoch, got "
                              f"{schedule!r}")
        self.schedule, self.verbose = schedule, verbose
        try:
            params = inspect.signature(schedule).parameters.values()
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                          p.POSITIONAL_OR_KEYWORD)]
            self._with_lr = len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL
                                                        for p in params)
        except (TypeError, ValueError):          # builtins without a signature
            self._with_lr = False

    def on_epoch_begin(self, epoch, logs=None):
        lr = _current_lr(self.model)
        new = self.schedule(epoch, lr) if self._with_lr else self.schedule(epoch)
        if isinstance(new, bool) or not isinstance(new, (int, float, np.floating,
                                                         np.integer)):
            raise ConfigError(f"the LearningRateScheduler function must return a number; "
                              f"for epoch {epoch} it returned {new!r}")
        self.model.optimizer.learning_rate = float(new)
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler sets the learning rate to "
                  f"{float(new):.6g}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _current_lr(self.model)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` once ``monitor`` has not improved by
    ``min_delta`` for ``patience`` epochs; then wait ``cooldown`` epochs before counting
    again; never below ``min_lr``. Logs the rate as ``learning_rate`` (Keras 3 semantics).
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 verbose: int = 0, mode: str = "auto", min_delta: float = 1e-4,
                 cooldown: int = 0, min_lr: float = 0.0):
        super().__init__()
        if not 0.0 < float(factor) < 1.0:
            raise ConfigError(f"ReduceLROnPlateau factor must be in (0, 1), got {factor!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), int(patience)
        self.verbose, self.min_delta = verbose, abs(float(min_delta))
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self.mode = _mode("ReduceLROnPlateau", mode, monitor)

    def on_train_begin(self, logs=None):
        self.best = np.inf if self.mode == "min" else -np.inf
        self.wait, self.cooldown_counter = 0, 0

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = _current_lr(self.model)
        value = _monitored("ReduceLROnPlateau", self.monitor, logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best, self.wait = value, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = _current_lr(self.model)
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    self.model.optimizer.learning_rate = new
                    if self.verbose:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reduces the learning "
                              f"rate to {new:.6g}")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class BackupAndRestore(Callback):
    """Checkpoint the whole training state every epoch into ``backup_dir``; when ``fit``
    starts and a checkpoint is there, restore it and continue from the epoch after it.

    An interrupted run (killed, crashed) started again with the same callback, data and
    batch size then ends with the same weights, bit for bit, as if never interrupted:
    weights, optimizer state, dropout seeds and the shuffling generator are restored
    (see :mod:`dlrun.engine.models.checkpoints`). With ``double_checkpoint`` the previous epoch's
    checkpoint is kept too, and used when the latest is damaged. Epochs whose loss is NaN
    or infinite are not saved. ``delete_checkpoint`` removes the backup once training ends
    normally (Keras' default).
    """

    def __init__(self, backup_dir, double_checkpoint: bool = True,
                 delete_checkpoint: bool = True):
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.double_checkpoint, self.delete_checkpoint = double_checkpoint, delete_checkpoint
        self.restored_epoch = None

    @property
    def latest(self) -> Path:
        return self.backup_dir / "latest"

    @property
    def previous(self) -> Path:
        return self.backup_dir / "previous"

    def on_train_begin(self, logs=None):
        from dlrun.engine.models.checkpoints import restore_checkpoint
        from dlrun.errors import ModelFileError

        self.restored_epoch, self._last_loss = None, None
        if not (self.latest.exists() or self.previous.exists()):
            return
        try:
            epoch = restore_checkpoint(self.model, self.latest)
        except ModelFileError as e:
            if not (self.double_checkpoint and self.previous.exists()):
                raise
            warnings.warn(f"{e}; resuming from the previous checkpoint instead",
                          RuntimeWarning, stacklevel=2)
            epoch = restore_checkpoint(self.model, self.previous)
        self.model.training.resume.forced = True       # fit continues there
        self.restored_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        from dlrun.engine.models.checkpoints import save_checkpoint
        from dlrun.engine.models.saving import _replace_dir

        self._last_loss = (logs or {}).get("loss")
        if self._last_loss is not None and not math.isfinite(self._last_loss):
            warnings.warn(f"BackupAndRestore: not saving epoch {epoch + 1}, whose loss is "
                          f"{self._last_loss}; the last checkpoint stays", RuntimeWarning,
                          stacklevel=2)
            return
        if self.model.completed_epochs != epoch + 1:
            return                                 # stopped mid-epoch: nothing to resume
        if self.double_checkpoint and self.latest.exists():
            _replace_dir(self.latest, self.previous)
        save_checkpoint(self.model, self.latest, epoch + 1)

    def on_train_end(self, logs=None):
        import shutil

        finite = self._last_loss is None or math.isfinite(self._last_loss)
        if self.delete_checkpoint and finite:
            shutil.rmtree(self.backup_dir, ignore_errors=True)


def format_logs(logs: dict) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


class ProgressBar(Callback):
    """A live bar on a terminal; one compact line per epoch otherwise (or ``verbose=2``)."""

    def __init__(self, verbose: int = 1, stream=None, interval: float = 0.1):
        super().__init__()
        self.stream = stream or sys.stdout
        self.live = verbose == 1 and getattr(self.stream, "isatty", lambda: False)()
        self.interval = interval

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = self.last = time.perf_counter()
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if not self.live or now - self.last < self.interval:
            return
        self.last = now
        steps = self.params.get("steps") or 1
        width = 24
        done = int(width * (batch + 1) / steps)
        bar = "=" * max(done - 1, 0) + (">" if done < width else "=") + "." * (width - done)
        self.stream.write(f"\rEpoch {self.epoch + 1}/{self.params['epochs']} [{bar}] "
                          f"{batch + 1}/{steps} - {format_logs(logs or {})} ")
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        dt = time.perf_counter() - self.t0
        line = f"Epoch {epoch + 1}/{self.params['epochs']} - {dt:.1f}s - {format_logs(logs)}"
        if self.live:
            line = "\r" + line + " " * 10
        self.stream.write(line + "\n")
        self.stream.flush()
