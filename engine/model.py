"""Models: compile, fit, evaluate, predict, weights, save/load (Keras conventions)."""
from __future__ import annotations

import math
import warnings

import numpy as np

from dlrun.engine import device as device_mod
from dlrun.engine import losses as losses_mod
from dlrun.engine import metrics as metrics_mod
from dlrun.engine import optimizers as optimizers_mod
from dlrun.engine.callbacks import CallbackList, History, ProgressBar
from dlrun.engine.graph import Placeholder, apply
from dlrun.engine.layers import Layer
from dlrun.engine.plan import Plan
from dlrun.engine.random import new_seed
from dlrun.errors import ConfigError, DataError, ShapeError
from dlrun.ops import Spec


class Model:
    """Base class of models; subclasses say how to trace the layers (:meth:`trace`)."""

    def __init__(self, name: str | None = None):
        self.name = name or type(self).__name__.lower()
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self.stop_training = False
        self._plans = {}
        self._step = 0
        self._seed = new_seed()
        self.input_shape = None            # per sample, without the batch axis
        self._shuffle_rng = None           # the generator of fit's epoch permutations
        self._resume = None                # set by a checkpoint: epoch, generator state
        self.completed_epochs = 0
        self.device = None                 # 'cpu' or 'cuda', chosen by compile()
        self._store = None                 # on cuda: the weights' DeviceStore

    # -- tracing ---------------------------------------------------------------------------
    @property
    def layers(self) -> list:
        raise NotImplementedError

    def trace(self, x, training: bool):
        """Symbolic output for a symbolic input batch ``x``."""
        raise NotImplementedError

    def build(self, input_shape) -> None:
        """Create every layer's weights for samples of ``input_shape`` (no batch axis)."""
        input_shape = tuple(int(d) for d in input_shape)
        if self.input_shape is not None and input_shape != self.input_shape:
            raise ShapeError(f"model {self.name!r} expects samples of shape "
                             f"{self.input_shape}, got {input_shape}")
        self.input_shape = input_shape
        self.output_shape = self._graph(1, False)[1].shape[1:]

    @property
    def built(self) -> bool:
        return self.input_shape is not None and all(l.built for l in self.layers)

    def _ensure_built(self) -> bool:
        """Build from the known input shape if not yet done; False if no shape is known."""
        if self.input_shape is None:
            return False
        if not self.built or not hasattr(self, "output_shape"):
            self.build(self.input_shape)
        return True

    def _graph(self, batch: int, training: bool):
        x = Placeholder(Spec((batch, *self.input_shape), np.float32), name="x")
        return x, self.trace(x, training)

    def _plan(self, mode: str, batch: int) -> dict:
        """The plan for a mode ('train', 'eval', 'predict') and batch size, made once."""
        key = (mode, batch)
        if key not in self._plans:
            on = device_mod.plan_options(self)       # device, and its DeviceStore
            x, out = self._graph(batch, training=(mode == "train"))
            entry = {"x": x, "out": out}
            params = self.weights_params()
            if mode == "predict":
                entry["plan"] = Plan([x], [out], params, **on)
            else:
                y = losses_mod.target_placeholder(self.loss, out)
                loss, pred = losses_mod.loss_node(self.loss, out, y)
                loss = self._add_penalties(loss, params)
                entry.update(y=y, loss=loss, pred=pred)
                if mode == "train":
                    plan = Plan([x, y], [loss, pred], params, loss=loss, **on)
                    trainable = [p for p in params if p.id in plan.grads]
                    self.optimizer.build(trainable)
                    entry["updates"] = [(p, plan.grad(p)) for p in trainable]
                else:
                    plan = Plan([x, y], [loss, pred], params, **on)
                entry["plan"] = plan
            if on["store"] is not None:
                device_mod.prepare(self, entry, mode)
            self._plans[key] = entry
        return self._plans[key]

    @staticmethod
    def _add_penalties(loss, params):
        """The loss plus the penalty of every trainable weight that has a regularizer (as
        Keras does, in training and evaluation alike)."""
        for p in params:
            if p.regularizer is not None and p.trainable:
                loss = apply("add", loss, p.regularizer(p))
        return loss

    def weights_params(self) -> list:
        return [p for layer in self.layers for p in layer.weights]

    # -- compile ---------------------------------------------------------------------------
    def compile(self, optimizer="sgd", loss=None, metrics=None,
                device=None) -> None:
        """Choose the optimizer, the loss (by Keras name) and metrics (``['accuracy']``)."""
        if loss is None:
            raise ConfigError("compile() needs a loss, e.g. "
                              "loss='sparse_categorical_crossentropy'")
        # device: 'cpu', 'cuda' or 'auto' (the GPU when one is usable); by default the
        # enclosing dl.device(...) block's, else 'cpu'
        resolved = device_mod.resolve(device)
        self.sync_to_host()
        self._store, self.device = None, resolved
        self.optimizer = optimizers_mod.get(optimizer)
        self.loss = losses_mod.canonical(loss)
        self.metrics = [metrics_mod.get(m, self.loss) for m in (metrics or [])]
        self._plans = {}

    def _require_compiled(self):
        if self.loss is None:
            raise ConfigError("the model is not compiled; call model.compile(optimizer=..., "
                              "loss=...) first")

    # -- data checks -----------------------------------------------------------------------
    def _check_x(self, x) -> np.ndarray:
        if x is None:
            raise DataError("no input samples given (x is None)")
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise DataError(f"input samples must be numeric, got dtype {x.dtype}")
        if x.ndim < 2:
            raise ShapeError(f"input samples need a batch axis first: got shape {x.shape}; "
                             "for a single sample use x[None]")
        if not self._ensure_built():
            self.build(x.shape[1:])
        elif tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"model {self.name!r} expects input of shape "
                             f"(batch, {', '.join(map(str, self.input_shape))}), got "
                             f"{x.shape}")
        if len(x) == 0:
            raise DataError("no input samples given (x has length 0)")
        return np.ascontiguousarray(x, np.float32)

    def _check_xy(self, x, y):
        x = self._check_x(x)
        if y is None:
            raise DataError("no targets given (y is None)")
        y = np.asarray(y)
        if len(y) != len(x):
            raise DataError(f"x and y hold different numbers of samples: {len(x)} and "
                            f"{len(y)}")
        return x, losses_mod.check_targets(self.loss, y, self.output_shape)

    # -- training --------------------------------------------------------------------------
    def _run_batch(self, mode, x, y, idx):
        """Run one batch of rows ``idx``; returns (loss, correct counts per metric)."""
        e = self._plan(mode, len(idx))
        plan = e["plan"]
        np.take(x, idx, axis=0, out=plan.feed[e["x"]], mode="clip")
        np.take(y, idx, axis=0, out=plan.feed[e["y"]], mode="clip")
        if plan.device == "cuda":
            return device_mod.run_batch(self, e, mode, len(idx))
        plan.run(seed=self._seed + self._step)
        if mode == "train":
            self.optimizer.apply(e["updates"])
            self._step += 1
        loss = float(plan.value(e["loss"]))
        pred = plan.value(e["pred"])
        return loss, [m.count(pred, plan.feed[e["y"]]) for m in self.metrics]

    def fit(self, x=None, y=None, batch_size: int | None = None, epochs: int = 1,
            verbose="auto", callbacks=None, validation_split: float = 0.0,
            validation_data=None, shuffle: bool = True, initial_epoch: int = 0,
            nb_epoch: int | None = None, workers: int | None = None,
            **cluster) -> History:
        """Train for ``epochs`` passes over ``(x, y)``, reshuffled every epoch.

        ``validation_split`` holds out the last fraction of the samples (before shuffling,
        as Keras does); ``validation_data=(x_val, y_val)`` gives them explicitly. Returns the
        :class:`History`. ``nb_epoch`` is the Keras 1 spelling of ``epochs`` (deprecated).

        ``workers=N`` trains data-parallel on N Ray workers instead (Ray must be running:
        ``ray.init()``): ``x`` is then the name or path of a dataset every worker can
        open, and ``cluster`` holds :func:`dlrun.cluster.train_distributed`'s options
        (``average_every``, ``optimizer_state``, ``seed``...).
        """
        if nb_epoch is not None:
            warnings.warn("fit(nb_epoch=...) is the Keras 1 spelling; use epochs=",
                          DeprecationWarning, stacklevel=2)
            epochs = nb_epoch
        if workers is not None or cluster:
            from dlrun.cluster.driver import train_distributed

            if workers is None or y is not None or validation_split:
                raise ConfigError("fit(workers=N) trains on a dataset given by name or path "
                                  "(x='mnist-5k'), without y or validation_split; "
                                  f"got workers={workers!r}, options {sorted(cluster)}")
            return train_distributed(self, x, workers=workers, epochs=epochs,
                                     batch_size=_batch_size(batch_size), verbose=verbose,
                                     callbacks=callbacks, validation_data=validation_data,
                                     **cluster)
        self._require_compiled()
        x, y = self._check_xy(x, y)
        batch_size = _batch_size(batch_size)
        if not 0.0 <= validation_split < 1.0:
            raise ConfigError(f"validation_split must be in [0, 1), got {validation_split}")
        if validation_data is None and validation_split > 0:
            # round first: 100 * 0.07 is 7.000000000000001, which must not hold out 8
            cut = len(x) - int(math.ceil(round(len(x) * validation_split, 9)))
            if cut < 1:
                raise DataError(f"validation_split={validation_split} leaves no training "
                                f"samples out of {len(x)}")
            x, y, validation_data = x[:cut], y[:cut], (x[cut:], y[cut:])
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ConfigError("validation_data must be a pair (x_val, y_val)")
            validation_data = self._check_xy(*validation_data)

        verbose = 1 if verbose == "auto" else int(verbose)
        history = History()
        steps = math.ceil(len(x) / batch_size)
        cbs = list(callbacks or []) + [history]
        if verbose:
            cbs.append(ProgressBar(verbose))
        cbs = CallbackList(cbs, self, {"epochs": epochs, "steps": steps, "verbose": verbose})
        rng = np.random.default_rng(new_seed())
        self.stop_training = False
        cbs.on_train_begin()               # BackupAndRestore may restore a checkpoint here
        resume, self._resume = self._resume, None
        if resume is not None:
            if resume.get("override"):
                initial_epoch = resume["epoch"]
            if resume["epoch"] == initial_epoch and resume["shuffle_rng"] is not None:
                rng = np.random.Generator(np.random.PCG64())
                rng.bit_generator.state = resume["shuffle_rng"]
            elif shuffle:
                warnings.warn(f"this model was checkpointed after epoch {resume['epoch']} "
                              f"but fit starts at initial_epoch={initial_epoch}; the "
                              "shuffling will not continue the checkpointed run's",
                              RuntimeWarning, stacklevel=2)
        self._shuffle_rng = rng
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
            tot_loss, counts = 0.0, [[0, 0] for _ in self.metrics]
            for b in range(steps):
                idx = order[b * batch_size:(b + 1) * batch_size]
                cbs.on_train_batch_begin(b)
                loss, c = self._run_batch("train", x, y, idx)
                tot_loss += loss * len(idx)
                for acc, (k, n) in zip(counts, c):
                    acc[0] += k
                    acc[1] += n
                seen = min((b + 1) * batch_size, len(x))
                cbs.on_train_batch_end(b, self._logs(tot_loss / seen, counts))
                if self.stop_training:          # e.g. TerminateOnNaN, as Keras does
                    break
            logs = self._logs(tot_loss / seen, counts)
            if not math.isfinite(logs["loss"]):
                warnings.warn(f"the training loss became {logs['loss']} in epoch {epoch + 1}; "
                              "try a smaller learning rate", RuntimeWarning, stacklevel=2)
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=batch_size, return_dict=True)
                logs |= {"val_" + k: v for k, v in val.items()}
            if b == steps - 1:                  # not stopped in the middle
                self.completed_epochs = epoch + 1
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        self.sync_to_host()
        cbs.on_train_end()
        return history

    def _logs(self, loss, counts) -> dict:
        logs = {"loss": loss}
        for m, (k, n) in zip(self.metrics, counts):
            logs[m.name] = k / n if n else 0.0
        return logs

    def train_on_batch(self, x, y):
        """One update on one batch; returns the loss (and metrics, as Keras does)."""
        self._require_compiled()
        x, y = self._check_xy(x, y)
        loss, counts = self._run_batch("train", x, y, np.arange(len(x)))
        return self._result(self._logs(loss, counts))

    def evaluate(self, x=None, y=None, batch_size: int | None = None, verbose=0,
                 return_dict: bool = False):
        """Loss (and metrics) over ``(x, y)`` in inference mode (no dropout)."""
        self._require_compiled()
        x, y = self._check_xy(x, y)
        batch_size = _batch_size(batch_size)
        tot_loss, counts = 0.0, [[0, 0] for _ in self.metrics]
        for start in range(0, len(x), batch_size):
            idx = np.arange(start, min(start + batch_size, len(x)))
            loss, c = self._run_batch("eval", x, y, idx)
            tot_loss += loss * len(idx)
            for acc, (k, n) in zip(counts, c):
                acc[0] += k
                acc[1] += n
        logs = self._logs(tot_loss / len(x), counts)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        return logs if return_dict else self._result(logs)

    @staticmethod
    def _result(logs):
        vals = list(logs.values())
        return vals[0] if len(vals) == 1 else vals

    def predict(self, x, batch_size: int | None = None, verbose=0) -> np.ndarray:
        """The model's outputs for ``x``, in inference mode."""
        x = self._check_x(x)
        batch_size = _batch_size(batch_size)
        out = None
        for start in range(0, len(x), batch_size):
            stop = min(start + batch_size, len(x))
            e = self._plan("predict", stop - start)
            np.copyto(e["plan"].feed[e["x"]], x[start:stop])
            e["plan"].run()
            y = e["plan"].fetch(e["out"])[0]
            if out is None:
                out = np.empty((len(x), *y.shape[1:]), y.dtype)
            out[start:stop] = y
        return out

    # -- weights ---------------------------------------------------------------------------
    def _require_built(self):
        if not self._ensure_built():
            raise ConfigError(f"model {self.name!r} has no weights yet: give the first layer "
                              "input_shape=..., call model.build(shape), or fit it first")

    def sync_to_host(self) -> None:
        """Bring the weights and optimizer state back from the GPU when it holds newer
        ones (the host owns them afterwards; the next step copies them up again). Reading
        ``p.value`` or ``optimizer.state`` does this by itself; code that reads or writes
        those arrays through other views of them calls it first."""
        if self._store is not None:
            self._store.to_host()

    def get_weights(self) -> list:
        """Copies of every weight array, layer by layer, in the documented layouts."""
        self._require_built()
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights: list) -> None:
        """Set every weight from a list shaped like :meth:`get_weights`' result."""
        self._require_built()
        weights = list(weights)
        need = sum(len(layer.weights) for layer in self.layers)
        if len(weights) != need:
            raise ShapeError(f"model {self.name!r} has {need} weight arrays, got {len(weights)}")
        for layer in self.layers:
            k = len(layer.weights)
            layer.set_weights(weights[:k])
            weights = weights[k:]

    def count_params(self) -> int:
        self._require_built()
        return sum(p.value.size for p in self.weights_params())

    def summary(self, print_fn=print) -> None:
        """A table of layers, output shapes and weight counts."""
        self._require_built()
        shape = self.input_shape
        print_fn(f'Model "{self.name}"')
        print_fn(f"{'layer (type)':<32}{'output shape':<24}{'params':>10}")
        for layer in self.layers:
            shape = layer.compute_output_shape(shape)
            n = sum(p.value.size for p in layer.weights)
            print_fn(f"{layer.name + ' (' + type(layer).__name__ + ')':<32}"
                     f"{str((None, *shape)):<24}{n:>10,}")
        print_fn(f"total params: {self.count_params():,}")

    def save(self, path) -> None:
        """Write the model (config, weights, optimizer state) to a folder; no pickle."""
        from dlrun.engine.saving import save_model

        save_model(self, path)

    def save_weights(self, path) -> None:
        """Write the weights alone to one ``.npz`` file (by weight name; no pickle)."""
        from dlrun.engine.saving import save_weights

        save_weights(self, path)

    def load_weights(self, path) -> None:
        """Set the weights from a file written by :meth:`save_weights`."""
        from dlrun.engine.saving import load_weights

        load_weights(self, path)


class Sequential(Model):
    """A plain stack of layers, each feeding the next."""

    def __init__(self, layers=None, name: str | None = None):
        super().__init__(name)
        self._layers = []
        for layer in layers or []:
            self.add(layer)

    @property
    def layers(self) -> list:
        return list(self._layers)

    def add(self, layer: Layer) -> None:
        if not isinstance(layer, Layer):
            raise ConfigError(f"Sequential takes dlrun layers, got {layer!r}")
        if not self._layers and layer.input_shape is not None:
            self.input_shape = layer.input_shape
        self._layers.append(layer)
        self._plans = {}
        if self.input_shape is not None:
            # draw the weights now (as Keras does), so that set_seed() just before
            # construction fixes them whatever else draws random numbers later
            self.build(self.input_shape)

    def trace(self, x, training):
        out = x
        for layer in self._layers:
            layer.ensure_built(out.shape[1:])
            out = layer.call(out, training)
        return out

    def build(self, input_shape) -> None:
        if not self._layers:
            raise ConfigError("a Sequential model needs at least one layer")
        super().build(input_shape)

    def get_config(self) -> dict:
        return {"name": self.name,
                "layers": [{"class_name": type(l).__name__, "config": l.get_config()}
                           for l in self._layers],
                "input_shape": list(self.input_shape) if self.input_shape else None}


def _batch_size(batch_size) -> int:
    if batch_size is None:
        return 32
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)
