"""Models: compile, fit, evaluate, predict, weights, save/load (Keras conventions).

A model traces its layers into a graph (:meth:`Model.trace`), compiles to a device backend,
and runs a :class:`~dlrun.engine.models.program.Program` made once per (mode, batch size);
training goes through the one loop of :mod:`dlrun.engine.models.training`.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from dlrun.engine import optimizers as optimizers_mod
from dlrun.engine.callbacks import History
from dlrun.engine.core import device as device_mod
from dlrun.engine.core.graph import Placeholder, trainable_changes
from dlrun.engine.layers import Layer
from dlrun.engine.metrics import logs as metric_logs
from dlrun.engine.models import data, program, training
from dlrun.engine.models.compiled import compile_loss
from dlrun.engine.random import new_seed
from dlrun.errors import ConfigError, DataError, ShapeError
from dlrun.ops import Spec


class Model:
    """Base class of models; subclasses say how to trace the layers (:meth:`trace`).

    ``dl.Model(inputs, outputs)`` makes a functional model, as in Keras (see
    :class:`dlrun.engine.models.functional.Functional`). ``model.training`` is the public
    :class:`~dlrun.engine.models.training.TrainingState` (seed, step, completed epochs).
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
        self.compiled_loss = None          # losses and metrics settled by compile()
        self.stop_training = False
        self.training = training.TrainingState(seed=new_seed())
        self.input_shape = None            # per sample, without the batch axis
        self.device = None                 # 'cpu' or 'cuda', chosen by compile()
        self.backend = None                # the device's backend, made by compile()
        self._programs = {}
        # the weights' trainable flags the programs were made with, and the count of flag
        # changes (any model's) when they were last compared
        self._flags, self._flags_seen = None, -1

    @property
    def completed_epochs(self) -> int:
        """Whole epochs trained (a restored checkpoint's count included)."""
        return self.training.completed_epochs

    @completed_epochs.setter
    def completed_epochs(self, value: int) -> None:
        self.training.completed_epochs = int(value)

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
        return self.input_shape is not None and all(layer.built for layer in self.layers)

    def ensure_built(self) -> bool:
        """Build from the known input shape if not yet done; False if no shape is known."""
        if self.input_shape is None:
            return False
        if not self.built or not hasattr(self, "output_shape"):
            self.build(self.input_shape)
        return True

    def require_built(self) -> None:
        """Build if the input shape is known, else raise a ConfigError saying what to do."""
        if not self.ensure_built():
            raise ConfigError(f"model {self.name!r} has no weights yet: give the first layer "
                              "input_shape=..., call model.build(shape), or fit it first")

    def input_readers(self) -> list:
        """Per input, the layers that read it directly: they decide what it is fed as
        (:meth:`input_dtypes`) and check its samples (``Layer.check_data``)."""
        return [self.layers[:1]]

    def input_dtypes(self) -> list:
        """Per input, the dtype it is fed as: what the layers reading it take (float32;
        int32 indices for an Embedding)."""
        out = []
        for name, readers in zip(self.input_names, self.input_readers()):
            kinds = {layer.input_dtype for layer in readers} or {np.dtype(np.float32)}
            if len(kinds) > 1:
                raise ConfigError(f"input {name!r} of model {self.name!r} is read by layers "
                                  f"that take different dtypes ({sorted(map(str, kinds))}); "
                                  "give each its own dl.Input")
            out.append(kinds.pop())
        return out

    def _graph(self, batch: int, training: bool):
        """(input placeholders, output tensors), as lists, for batches of ``batch``."""
        shapes = self.input_shape if self._multi_input else [self.input_shape]
        xs = [Placeholder(Spec((batch, *s), dtype), name="x")
              for s, dtype in zip(shapes, self.input_dtypes())]
        out = self.trace(xs if self._multi_input else xs[0], training)
        return xs, (list(out) if self._multi_output else [out])

    def weights_params(self) -> list:
        return [p for layer in self.layers for p in layer.weights]

    def program(self, mode, batch: int, build=None) -> program.Program:
        """The :class:`~dlrun.engine.models.program.Program` for a mode ('train', 'eval',
        'predict') and batch size, made on first use (a step's lookup does no other work).
        Before making one, the backend takes charge of the weights; when they (or their
        trainable flags) changed since the others were made, those are dropped. An
        uncompiled model predicts on the CPU. Other programs (``dl.gradients``'s) are
        kept here too, under a mode of their own, made by ``build(model, batch)``."""
        key = (mode, batch)
        prog = self._programs.get(key)
        if prog is not None and self._flags_seen == trainable_changes():
            return prog
        # a weight was frozen or unfrozen somewhere since: remake this model's programs
        # only if it was one of its own (``layer.trainable = False`` after a fit)
        self._flags_seen = trainable_changes()
        params = self.weights_params()
        flags = tuple(p.trainable for p in params)
        if flags != self._flags:
            self._programs, self._flags, prog = {}, flags, None
        if self.backend is None:
            self.backend = device_mod.backend("cpu")
        if self.backend.attach(params, self.optimizer):
            self._programs, prog = {}, None
        if prog is None:
            prog = self._programs[key] = (build(self, batch) if build is not None
                                          else program.build(self, mode, batch))
        return prog

    def forget_programs(self) -> None:
        """Drop the programs made so far (after the weight arrays were replaced)."""
        self._programs = {}

    # -- compile ---------------------------------------------------------------------------
    def compile(self, optimizer="sgd", loss=None, metrics=None, loss_weights=None,
                device=None) -> None:
        """Choose the optimizer, the loss (by Keras name) and metrics (``['accuracy']``).

        A model of several outputs takes a loss per output: one name for all, a list in
        output order or a dict by output name; ``loss_weights`` likewise (1 for an output
        left out); the loss trained is ``sum_i loss_weights[i] * loss_i``. ``metrics`` (a
        list) are kept for every output, or per output as a dict. The logs then hold
        ``loss``, ``<output>_loss`` (unweighted) and ``<output>_<metric>``, as in Keras.

        ``device``: 'cpu', 'cuda' or 'auto' (the GPU when one is usable); by default the
        enclosing ``dl.device(...)`` block's, else 'cpu'.
        """
        compiled = compile_loss(self.output_names, loss, metrics, loss_weights)
        resolved = device_mod.resolve(device)
        self.sync_to_host()
        self.device, self.backend = resolved, device_mod.backend(resolved)
        self.optimizer = optimizers_mod.get(optimizer)
        self.compiled_loss, self.metrics = compiled, compiled.metrics
        self.loss = compiled.loss
        self.loss_weights = compiled.loss_weights_given
        self._programs = {}

    def compile_config(self) -> dict:
        """The compile arguments but the optimizer, as JSON (what saving and a Ray worker
        need to compile a copy)."""
        return self.compiled_loss.config()

    def require_compiled(self) -> None:
        if self.loss is None:
            raise ConfigError("the model is not compiled; call model.compile(optimizer=..., "
                              "loss=...) first")

    # -- training --------------------------------------------------------------------------
    def run_batch(self, mode: str, x, y, idx, sample_weight=None) -> training.BatchResult:
        """One step on rows ``idx`` of checked data ``x``, ``y`` (and per-sample loss
        weights): ``fit``'s own step (``mode='train'``) or ``evaluate``'s (``'eval'``); see
        :func:`dlrun.engine.models.training.run_batch`."""
        return training.run_batch(self, mode, x, y, idx, sample_weight)

    def fit(self, x=None, y=None, batch_size: int | None = None, epochs: int = 1,
            verbose="auto", callbacks=None, validation_split: float = 0.0,
            validation_data=None, shuffle: bool = True, initial_epoch: int = 0,
            sample_weight=None, class_weight=None, nb_epoch: int | None = None,
            workers: int | None = None, **cluster) -> History:
        """Train for ``epochs`` passes over ``(x, y)``, reshuffled every epoch.

        ``validation_split`` holds out the last fraction of the samples (before shuffling,
        as Keras does); ``validation_data=(x_val, y_val)`` (or ``(x_val, y_val,
        sample_weight_val)``) gives them explicitly. Returns the :class:`History`.
        ``nb_epoch`` is the Keras 1 spelling of ``epochs`` (deprecated).

        ``sample_weight`` (one weight per sample) and ``class_weight`` (``{label: weight}``,
        or ``'balanced'``; a model of one output) weigh each sample's loss, as Keras does:
        the loss is ``sum_i w_i loss_i / batch``, so a sample of weight 0 has no influence.

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
            if sample_weight is not None:
                raise ConfigError("fit(workers=N) weighs samples by class_weight only (its "
                                  "workers read the dataset themselves)")
            return self._fit_distributed(x, y, workers, epochs, batch_size, verbose,
                                         callbacks, validation_split, validation_data,
                                         class_weight, cluster)
        self.require_compiled()
        x, y = data.check_xy(self, x, y)
        batch_size = data.batch_size(batch_size)
        weights = data.sample_weights(self, y, data.count(x), sample_weight)
        x, y, weights, validation = self._hold_out(x, y, weights, validation_split,
                                                   validation_data)
        samples = data.count(x)
        # class weights ('balanced' counts classes) from the samples trained on only
        weights = data.sample_weights(self, y, samples, weights, class_weight)
        steps = math.ceil(samples / batch_size)
        loop = training.Loop(self, epochs, verbose, callbacks, {"steps": steps},
                             None if validation is None else
                             (*validation[:2], batch_size, validation[2]))
        rng = np.random.default_rng(new_seed())
        resume = loop.begin()              # BackupAndRestore may restore a checkpoint here
        initial_epoch, rng = training.shuffling(self, resume, initial_epoch, shuffle, rng)

        def step(idx):
            return lambda tally: tally.add_batch(self.run_batch("train", x, y, idx, weights))

        for epoch in range(initial_epoch, epochs):
            order = rng.permutation(samples) if shuffle else np.arange(samples)
            loop.run_epoch(epoch, [step(order[b * batch_size:(b + 1) * batch_size])
                                   for b in range(steps)])
            if self.stop_training:
                break
        return loop.end()

    def _fit_distributed(self, x, y, workers, epochs, batch_size, verbose, callbacks,
                         validation_split, validation_data, class_weight, cluster):
        """``fit(workers=N)``: the one place the engine reaches the cluster package."""
        from dlrun.cluster.driver import train_distributed

        if workers is None or y is not None or validation_split:
            raise ConfigError("fit(workers=N) trains on a dataset given by name or path "
                              "(x='mnist-5k'), without y or validation_split; "
                              f"got workers={workers!r}, options {sorted(cluster)}")
        return train_distributed(self, x, workers=workers, epochs=epochs,
                                 batch_size=data.batch_size(batch_size), verbose=verbose,
                                 callbacks=callbacks, validation_data=validation_data,
                                 class_weight=class_weight, **cluster)

    def _hold_out(self, x, y, weights, validation_split, validation_data):
        """(x, y, sample weights, validation (x, y, weights)): ``validation_split`` holds
        out the last samples, as Keras does; ``validation_data`` is checked."""
        if not 0.0 <= validation_split < 1.0:
            raise ConfigError(f"validation_split must be in [0, 1), got {validation_split}")
        if validation_data is None and validation_split > 0:
            # round first: 100 * 0.07 is 7.000000000000001, which must not hold out 8
            samples = data.count(x)
            cut = samples - int(math.ceil(round(samples * validation_split, 9)))
            if cut < 1:
                raise DataError(f"validation_split={validation_split} leaves no training "
                                f"samples out of {samples}")
            head, tail = slice(None, cut), slice(cut, None)
            return (data.rows(x, head), data.rows(y, head), data.rows(weights, head),
                    (data.rows(x, tail), data.rows(y, tail), data.rows(weights, tail)))
        if validation_data is not None:
            if len(validation_data) not in (2, 3):
                raise ConfigError("validation_data must be (x_val, y_val) or (x_val, y_val, "
                                  "sample_weight_val)")
            vx, vy = data.check_xy(self, *validation_data[:2])
            vw = data.sample_weights(self, vy, data.count(vx), *validation_data[2:])
            validation_data = (vx, vy, vw)
        return x, y, weights, validation_data

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None):
        """One update on one batch; returns the loss (and metrics, as Keras does).
        ``sample_weight`` and ``class_weight`` weigh each sample's loss, as in :meth:`fit`."""
        self.require_compiled()
        x, y = data.check_xy(self, x, y)
        n = data.count(x)
        weights = data.sample_weights(self, y, n, sample_weight, class_weight)
        result = self.run_batch("train", x, y, np.arange(n), weights)
        return _result(metric_logs(self.metrics, result.loss, result.counts))

    def evaluate(self, x=None, y=None, batch_size: int | None = None, verbose=0,
                 return_dict: bool = False, sample_weight=None):
        """Loss (and metrics) over ``(x, y)`` in inference mode (no dropout); the loss
        weighted by ``sample_weight`` when given."""
        self.require_compiled()
        x, y = data.check_xy(self, x, y)
        weights = data.sample_weights(self, y, data.count(x), sample_weight)
        logs = training.evaluate(self, x, y, data.batch_size(batch_size), weights).logs()
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        return logs if return_dict else _result(logs)

    def predict(self, x, batch_size: int | None = None, verbose=0, training: bool = False):
        """The model's outputs for ``x`` (a list of arrays for a model of several outputs),
        in inference mode; or with ``training=True`` in training behaviour, as Keras'
        ``model(x, training=True)``: dropout and the other random layers draw fresh masks
        at every call (Monte-Carlo dropout: the mean of many calls estimates the ensemble's
        prediction) and batch normalisation uses each batch's statistics; no weight and no
        moving statistic changes."""
        xs = data.check_x(self, x)
        xs = xs if self._multi_input else [xs]
        batch_size = data.batch_size(batch_size)
        mode = "predict_train" if training else "predict"
        seed = new_seed() if training else 0      # dl.set_seed makes the draws repeatable
        n = len(xs[0])
        outs = None
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            prog = self.program(mode, stop - start)
            for src, t in zip(xs, prog.xs):
                np.copyto(prog.plan.feed[t], src[start:stop])
            prog.feed_state(self.training)
            prog.plan.run(seed=seed + start)
            ys = prog.plan.fetch(*prog.outs)
            if outs is None:
                outs = [np.empty((n, *y.shape[1:]), y.dtype) for y in ys]
            for out, y in zip(outs, ys):
                out[start:stop] = y
        return outs if self._multi_output else outs[0]

    # -- weights ---------------------------------------------------------------------------
    def sync_to_host(self) -> None:
        """Bring the weights and optimizer state back from the GPU when it holds newer
        ones (the host owns them afterwards; the next step copies them up again). Reading
        ``p.value`` or ``optimizer.state`` does this by itself; code that reads or writes
        those arrays through other views of them calls it first."""
        if self.backend is not None:
            self.backend.sync_to_host()

    def get_weights(self) -> list:
        """Copies of every weight array, layer by layer, in the documented layouts."""
        self.require_built()
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights: list) -> None:
        """Set every weight from a list shaped like :meth:`get_weights`' result."""
        self.require_built()
        weights = list(weights)
        need = sum(len(layer.weights) for layer in self.layers)
        if len(weights) != need:
            raise ShapeError(f"model {self.name!r} has {need} weight arrays, got {len(weights)}")
        for layer in self.layers:
            k = len(layer.weights)
            layer.set_weights(weights[:k])
            weights = weights[k:]

    def count_params(self) -> int:
        self.require_built()
        return sum(p.value.size for p in self.weights_params())

    def summary(self, print_fn=print) -> None:
        """A table of layers, output shapes and weight counts."""
        self.require_built()
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
        self._programs = {}
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
                "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()}
                           for layer in self._layers],
                "input_shape": list(self.input_shape) if self.input_shape else None}


def _result(logs: dict):
    """Keras' return value: the loss alone, or the loss and the metrics as a list."""
    vals = list(logs.values())
    return vals[0] if len(vals) == 1 else vals
