"""Models: compile, fit, evaluate, predict, weights, save/load (Keras conventions)."""
from __future__ import annotations

import math
import warnings

import numpy as np

from dlrun.engine.core import device as device_mod
from dlrun.engine.core import rewrites as fusion
from dlrun.engine import losses as losses_mod
from dlrun.engine import metrics as metrics_mod
from dlrun.engine import optimizers as optimizers_mod
from dlrun.engine.callbacks import CallbackList, History, ProgressBar
from dlrun.engine.core.graph import Placeholder, apply
from dlrun.engine.layers import Layer
from dlrun.engine.core.plan import Plan
from dlrun.engine.random import new_seed
from dlrun.errors import ConfigError, DataError, ShapeError
from dlrun.ops import Spec


class Model:
    """Base class of models; subclasses say how to trace the layers (:meth:`trace`).

    ``dl.Model(inputs, outputs)`` makes a functional model, as in Keras (see
    :class:`dlrun.engine.models.functional.Functional`).
    """

    # set by a functional model of several inputs / outputs: its data then come as lists
    _multi_input = False
    _multi_output = False

    def __new__(cls, *args, **kwargs):
        if cls is Model and (args or "inputs" in kwargs or "outputs" in kwargs):
            from dlrun.engine.models.functional import Functional

            return super().__new__(Functional)
        return super().__new__(cls)

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
        """Symbolic output for a symbolic input batch ``x`` (lists with several inputs or
        outputs)."""
        raise NotImplementedError

    @property
    def input_names(self) -> list:
        """Names of the inputs: the keys of ``x`` given as a dict."""
        return ["x"]

    @property
    def output_names(self) -> list:
        """Names of the outputs (the layers that make them): the keys of ``y``, ``loss``,
        ``loss_weights`` and ``metrics`` given as dicts."""
        layers = self.layers
        return [layers[-1].name] if layers else ["output"]

    def build(self, input_shape) -> None:
        """Create every layer's weights for samples of ``input_shape`` (no batch axis)."""
        input_shape = tuple(int(d) for d in input_shape)
        if self.input_shape is not None and input_shape != self.input_shape:
            raise ShapeError(f"model {self.name!r} expects samples of shape "
                             f"{self.input_shape}, got {input_shape}")
        self.input_shape = input_shape
        self.output_shape = self._graph(1, False)[1][0].shape[1:]

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
        """(input placeholders, output tensors), as lists, for batches of ``batch``."""
        shapes = self.input_shape if self._multi_input else [self.input_shape]
        xs = [Placeholder(Spec((batch, *s), np.float32), name="x") for s in shapes]
        out = self.trace(xs if self._multi_input else xs[0], training)
        return xs, (list(out) if self._multi_output else [out])

    def _plan(self, mode: str, batch: int) -> dict:
        """The plan for a mode ('train', 'eval', 'predict') and batch size, made once."""
        key = (mode, batch)
        if key not in self._plans:
            on = device_mod.plan_options(self)       # device, and its DeviceStore
            xs, outs = self._graph(batch, training=(mode == "train"))
            entry = {"x": xs[0], "out": outs[0], "xs": xs, "outs": outs}
            params = self.weights_params()
            if mode == "predict":
                entry["plan"] = Plan(xs, outs, params, **on)
            else:
                ys, parts, preds = [], [], []
                for out, name in zip(outs, self._loss_names):
                    y = losses_mod.target_placeholder(name, out)
                    part, pred = losses_mod.loss_node(name, out, y)
                    ys.append(y)
                    parts.append(part)
                    preds.append(pred)
                loss = self._add_penalties(_weighted_sum(parts, self._loss_weights), params)
                entry.update(y=ys[0], ys=ys, loss=loss, parts=parts, pred=preds[0],
                             preds=preds)
                keep = [loss, *preds] + (parts if self._multi_output else [])
                if mode == "train":
                    plan = Plan(xs + ys, keep, params, loss=loss, **on)
                    trainable = [p for p in params if p.id in plan.grads]
                    self.optimizer.build(trainable)
                    entry["updates"] = [(p, plan.grad(p)) for p in trainable]
                    if on["store"] is None and fusion.sgd_fusable(self.optimizer):
                        entry["updates"], entry["lr"] = fusion.fuse_sgd(plan,
                                                                        entry["updates"])
                else:
                    plan = Plan(xs + ys, keep, params, **on)
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
    def compile(self, optimizer="sgd", loss=None, metrics=None, loss_weights=None,
                device=None) -> None:
        """Choose the optimizer, the loss (by Keras name) and metrics (``['accuracy']``).

        A model of several outputs takes a loss per output: one name for all, a list in
        output order or a dict by output name; ``loss_weights`` likewise (1 for an output
        left out); the loss trained is ``sum_i loss_weights[i] * loss_i``. ``metrics`` (a
        list) are kept for every output, or per output as a dict. The logs then hold
        ``loss``, ``<output>_loss`` (unweighted) and ``<output>_<metric>``, as in Keras.
        """
        if loss is None:
            raise ConfigError("compile() needs a loss, e.g. "
                              "loss='sparse_categorical_crossentropy'")
        # device: 'cpu', 'cuda' or 'auto' (the GPU when one is usable); by default the
        # enclosing dl.device(...) block's, else 'cpu'
        resolved = device_mod.resolve(device)
        self.sync_to_host()
        self._store, self.device = None, resolved
        names, multi = self.output_names, self._multi_output
        loss_names = [losses_mod.canonical(v) for v in _per_output(loss, names, "loss")]
        weights = [1.0] * len(names) if loss_weights is None else \
            [_loss_weight(w, n) for w, n in
             zip(_per_output(loss_weights, names, "loss_weights", missing=1.0), names)]
        per = _per_output_metrics(metrics, names)
        tracked, at, kept = [], [], []
        if multi:
            for i, n in enumerate(names):
                tracked.append(metrics_mod.OutputLoss(f"{n}_loss"))
                at.append(i)
        for i, (n, ms) in enumerate(zip(names, per)):
            kept.append([])
            for m in ms:
                metric = metrics_mod.get(m, loss_names[i])
                kept[-1].append(metric.name)
                if multi:
                    metric.name = f"{n}_{metric.name}"
                tracked.append(metric)
                at.append(i)
        self.optimizer = optimizers_mod.get(optimizer)
        self._loss_names, self._loss_weights = loss_names, weights
        self.loss = dict(zip(names, loss_names)) if multi else loss_names[0]
        self.loss_weights = None if loss_weights is None else dict(zip(names, weights))
        self.metrics, self._metric_outputs = tracked, at
        self._metric_names = dict(zip(names, kept)) if multi else kept[0]
        self._plans = {}

    def _compile_config(self) -> dict:
        """The compile arguments but the optimizer, as JSON (what saving and a Ray worker
        need to compile a copy)."""
        cfg = {"loss": self.loss, "metrics": self._metric_names}
        if self.loss_weights is not None:
            cfg["loss_weights"] = self.loss_weights
        return cfg

    def _require_compiled(self):
        if self.loss is None:
            raise ConfigError("the model is not compiled; call model.compile(optimizer=..., "
                              "loss=...) first")

    # -- data checks -----------------------------------------------------------------------
    def _check_x(self, x):
        """The input samples as float32 arrays: one, or a list with several inputs."""
        if x is None:
            raise DataError("no input samples given (x is None)")
        if self._multi_input:
            xs = _by_name(x, self.input_names, "input", "x")
            xs = [self._check_input(a, shape, name) for a, shape, name in
                  zip(xs, self.input_shape, self.input_names)]
            if len({len(a) for a in xs}) > 1:
                raise DataError(f"the inputs hold different numbers of samples: "
                                f"{dict(zip(self.input_names, map(len, xs)))}")
            return xs
        if isinstance(x, dict):
            x = _by_name(x, self.input_names, "input", "x")[0]
        return self._check_input(x)

    def _check_input(self, x, shape=None, name=None) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise DataError(f"input samples must be numeric, got dtype {x.dtype}")
        if x.ndim < 2:
            raise ShapeError(f"input samples need a batch axis first: got shape {x.shape}; "
                             "for a single sample use x[None]")
        if name is not None:                  # one input of several
            if tuple(x.shape[1:]) != tuple(shape):
                raise ShapeError(f"input {name!r} of model {self.name!r} expects samples "
                                 f"of shape (batch, {', '.join(map(str, shape))}), got "
                                 f"{x.shape}")
        elif not self._ensure_built():
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
        n = _count(x)
        if y is None:
            raise DataError("no targets given (y is None)")
        names = self.output_names
        if not self._multi_output:
            if isinstance(y, dict):
                y = _by_name(y, names, "output", "y")[0]
            y = np.asarray(y)
            if len(y) != n:
                raise DataError(f"x and y hold different numbers of samples: {n} and "
                                f"{len(y)}")
            return x, losses_mod.check_targets(self.loss, y, self.output_shape)
        ys = []
        for t, name, loss, shape in zip(_by_name(y, names, "output", "y"), names,
                                        self._loss_names, self.output_shape):
            t = np.asarray(t)
            if t.ndim == 0 or len(t) != n:
                raise DataError(f"the targets of output {name!r} hold "
                                f"{len(t) if t.ndim else 'no'} samples; x holds {n}")
            try:
                ys.append(losses_mod.check_targets(loss, t, shape))
            except DataError as e:
                raise DataError(f"output {name!r}: {e}") from None
        return x, ys

    # -- training --------------------------------------------------------------------------
    def _run_batch(self, mode, x, y, idx):
        """Run one batch of rows ``idx`` (of each array, with several inputs or outputs);
        returns (loss, [numerator, denominator] per tracked metric)."""
        e = self._plan(mode, len(idx))
        plan = e["plan"]
        for src, t in zip(x if self._multi_input else [x], e["xs"]):
            np.take(src, idx, axis=0, out=plan.feed[t], mode="clip")
        for src, t in zip(y if self._multi_output else [y], e["ys"]):
            np.take(src, idx, axis=0, out=plan.feed[t], mode="clip")
        if plan.device == "cuda":
            return device_mod.run_batch(self, e, mode, len(idx))
        if mode == "train" and e.get("lr") is not None:
            e["lr"][0] = self.optimizer.learning_rate     # read by the fused SGD steps
        plan.run(seed=self._seed + self._step)
        if mode == "train":
            self.optimizer.apply(e["updates"])
            self._step += 1
        loss = float(plan.value(e["loss"]))
        counts = []
        for m, i in zip(self.metrics, self._metric_outputs):
            if isinstance(m, metrics_mod.OutputLoss):
                counts.append(m.count(plan.value(e["parts"][i]), len(idx)))
            else:
                counts.append(m.count(plan.value(e["preds"][i]), plan.feed[e["ys"][i]]))
        return loss, counts

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
            samples = _count(x)
            cut = samples - int(math.ceil(round(samples * validation_split, 9)))
            if cut < 1:
                raise DataError(f"validation_split={validation_split} leaves no training "
                                f"samples out of {samples}")
            head, tail = slice(None, cut), slice(cut, None)
            x, y, validation_data = (_rows(x, head), _rows(y, head),
                                     (_rows(x, tail), _rows(y, tail)))
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ConfigError("validation_data must be a pair (x_val, y_val)")
            validation_data = self._check_xy(*validation_data)

        verbose = 1 if verbose == "auto" else int(verbose)
        history = History()
        samples = _count(x)
        steps = math.ceil(samples / batch_size)
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
            order = rng.permutation(samples) if shuffle else np.arange(samples)
            tot_loss, counts = 0.0, [[0, 0] for _ in self.metrics]
            for b in range(steps):
                idx = order[b * batch_size:(b + 1) * batch_size]
                cbs.on_train_batch_begin(b)
                loss, c = self._run_batch("train", x, y, idx)
                tot_loss += loss * len(idx)
                for acc, (k, n) in zip(counts, c):
                    acc[0] += k
                    acc[1] += n
                seen = min((b + 1) * batch_size, samples)
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
        loss, counts = self._run_batch("train", x, y, np.arange(_count(x)))
        return self._result(self._logs(loss, counts))

    def evaluate(self, x=None, y=None, batch_size: int | None = None, verbose=0,
                 return_dict: bool = False):
        """Loss (and metrics) over ``(x, y)`` in inference mode (no dropout)."""
        self._require_compiled()
        x, y = self._check_xy(x, y)
        batch_size = _batch_size(batch_size)
        samples = _count(x)
        tot_loss, counts = 0.0, [[0, 0] for _ in self.metrics]
        for start in range(0, samples, batch_size):
            idx = np.arange(start, min(start + batch_size, samples))
            loss, c = self._run_batch("eval", x, y, idx)
            tot_loss += loss * len(idx)
            for acc, (k, n) in zip(counts, c):
                acc[0] += k
                acc[1] += n
        logs = self._logs(tot_loss / samples, counts)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        return logs if return_dict else self._result(logs)

    @staticmethod
    def _result(logs):
        vals = list(logs.values())
        return vals[0] if len(vals) == 1 else vals

    def predict(self, x, batch_size: int | None = None, verbose=0):
        """The model's outputs for ``x``, in inference mode (a list of arrays for a model
        of several outputs)."""
        xs = self._check_x(x)
        xs = xs if self._multi_input else [xs]
        batch_size = _batch_size(batch_size)
        n = len(xs[0])
        outs = None
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            e = self._plan("predict", stop - start)
            for src, t in zip(xs, e["xs"]):
                np.copyto(e["plan"].feed[t], src[start:stop])
            e["plan"].run()
            ys = e["plan"].fetch(*e["outs"])
            if outs is None:
                outs = [np.empty((n, *y.shape[1:]), y.dtype) for y in ys]
            for out, y in zip(outs, ys):
                out[start:stop] = y
        return outs if self._multi_output else outs[0]

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

    @classmethod
    def from_config(cls, config: dict) -> "Model":
        """A model with fresh weights from a :meth:`get_config` dict (a functional model's
        graph, or a Sequential's layers)."""
        from dlrun.engine.models.saving import model_from_config

        kind = "Functional" if "input_layers" in config else "Sequential"
        return model_from_config(kind, config)

    def save(self, path) -> None:
        """Write the model (config, weights, optimizer state) to a folder; no pickle."""
        from dlrun.engine.models.saving import save_model

        save_model(self, path)

    def save_weights(self, path) -> None:
        """Write the weights alone to one ``.npz`` file (by weight name; no pickle)."""
        from dlrun.engine.models.saving import save_weights

        save_weights(self, path)

    def load_weights(self, path) -> None:
        """Set the weights from a file written by :meth:`save_weights`."""
        from dlrun.engine.models.saving import load_weights

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


def _weighted_sum(parts: list, weights: list):
    """sum_i weights[i] * parts[i] as graph nodes (a weight of 1 adds no node)."""
    total = None
    for part, w in zip(parts, weights):
        term = part if w == 1.0 else apply("scale", part, factor=float(w))
        total = term if total is None else apply("add", total, term)
    return total


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


def _by_name(value, names: list, what: str, arg: str) -> list:
    """One array per input (or output) from a list in order or a dict by name."""
    if isinstance(value, dict):
        unknown = [k for k in value if k not in names]
        if unknown:
            raise DataError(f"{arg} names an unknown {what} {unknown[0]!r}; this model's "
                            f"{what}s are {names}")
        left = [n for n in names if n not in value]
        if left:
            raise DataError(f"{arg} has no arrays for {what} {left[0]!r}; give one for each "
                            f"of {names}")
        return [value[n] for n in names]
    if isinstance(value, (list, tuple)) and len(value) == len(names) and \
            all(hasattr(v, "shape") or isinstance(v, (list, tuple)) for v in value):
        return list(value)
    if len(names) == 1:
        return [value]
    got = f"{len(value)} arrays" if isinstance(value, (list, tuple)) else \
        f"one {type(value).__name__}"
    raise DataError(f"this model has {len(names)} {what}s {names}: give {arg} as a list of "
                    f"{len(names)} arrays in that order, or a dict by {what} name; got {got}")


def _count(x) -> int:
    """Samples in checked input data (one array, or a list with several inputs)."""
    return len(x[0]) if isinstance(x, list) else len(x)


def _rows(data, rows: slice):
    return [a[rows] for a in data] if isinstance(data, list) else data[rows]


def _batch_size(batch_size) -> int:
    if batch_size is None:
        return 32
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)
