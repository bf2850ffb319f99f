"""Callbacks (Keras' hooks): History, EarlyStopping, the progress display, and the base."""
from __future__ import annotations

import sys
import time

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
