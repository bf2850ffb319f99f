"""Keras' functional API: ``dl.Input``, layers called on symbolic tensors, and the model
that the graph from inputs to outputs describes (residual, highway, multi-input and
multi-output networks).

Calling a layer on a :class:`SymbolicTensor` builds the layer (its weights are drawn then,
as in Keras), works out the output shape by tracing the layer once on a batch of one, and
records the call. ``dl.Model(inputs, outputs)`` collects the calls that lead from the
inputs to the outputs; the model traces them in that order each time it makes a plan.
A layer called twice is one layer: both calls use its weights, and their gradients add
up (the planner sums a value's gradient contributions).

A model's config lists its layers, each with the calls it receives (``inbound_nodes``:
per call, ``[layer name, call index, 0]`` of every input, one input for a plain call,
several for a list), and the model's inputs and outputs the same way; that is all
:func:`from_config` needs to rebuild it.
"""
from __future__ import annotations


from dlrun.engine.layers import layer_from_config
from dlrun.engine.layers.symbolic import InputLayer, SymbolicTensor
from dlrun.engine.models.model import Model
from dlrun.errors import ConfigError, ShapeError


class Functional(Model):
    """A model given by its inputs and outputs: ``dl.Model(inputs=inp, outputs=out)``.

    ``inputs`` and ``outputs`` are symbolic tensors or lists of them. With several
    outputs, ``predict`` returns a list, ``fit`` takes a list (in output order) or a dict
    (by output name, the name of the layer that makes it) of target arrays, and
    ``compile`` takes a loss, metrics and ``loss_weights`` per output; the loss trained
    is ``sum_i loss_weights[i] * loss_i``. Several inputs are given as a list or a dict by
    input name.
    """

    def __init__(self, inputs, outputs, name: str | None = None):
        super().__init__(name)
        self._multi_input = isinstance(inputs, (list, tuple)) and len(inputs) != 1
        self._multi_output = isinstance(outputs, (list, tuple)) and len(outputs) != 1
        self.inputs = _tensors(inputs, "inputs")
        self.outputs = _tensors(outputs, "outputs")
        for t in self.inputs:
            if not isinstance(t.call.layer, InputLayer):
                raise ConfigError(f"model inputs must be dl.Input(...) tensors; "
                                  f"{t.name!r} is the output of a "
                                  f"{type(t.call.layer).__name__} layer")
        if len({id(t) for t in self.inputs}) != len(self.inputs):
            raise ConfigError("the same Input is given twice in inputs")
        self._calls = _calls_between(self.inputs, self.outputs)
        layers = [t.call.layer for t in self.inputs]
        for c in self._calls:
            if c.layer not in layers:
                layers.append(c.layer)
        names = [layer.name for layer in layers]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"two different layers are named {twice[0]!r} in model "
                              f"{self.name!r}; give every layer its own name")
        self._layers = layers
        self._input_names = [t.name for t in self.inputs]
        self._output_names = _unique([t.name for t in self.outputs])
        shapes = [t.sample_shape for t in self.inputs]
        self.input_shape = shapes if self._multi_input else shapes[0]
        self.build(self.input_shape)

    @property
    def layers(self) -> list:
        return list(self._layers)

    @property
    def input_names(self) -> list:
        return list(self._input_names)

    def input_readers(self) -> list:
        return [[c.layer for c in self._calls if any(t is inp for t in c.inputs)]
                for inp in self.inputs]

    @property
    def output_names(self) -> list:
        return list(self._output_names)

    def build(self, input_shape=None) -> None:
        if input_shape is not None:
            given = _shapes(input_shape, self._multi_input)
            if given != _shapes(self.input_shape, self._multi_input):
                raise ShapeError(f"model {self.name!r} expects samples of shape "
                                 f"{self.input_shape}, got {input_shape}")
        outs = self._graph(1, False)[1]
        shapes = [o.shape[1:] for o in outs]
        self.output_shape = shapes if self._multi_output else shapes[0]

    def trace(self, x, training):
        xs = x if self._multi_input else [x]
        values = {id(t): v for t, v in zip(self.inputs, xs)}
        for c in self._calls:
            args = [values[id(t)] for t in c.inputs]
            values[id(c.output)] = c.layer.call(args if c.as_list else args[0], training)
        outs = [values[id(t)] for t in self.outputs]
        return outs if self._multi_output else outs[0]

    # -- config ----------------------------------------------------------------------------
    def get_config(self) -> dict:
        ref = self._ref
        layers = []
        for layer in self._layers:
            calls = [c for c in layer.calls if c in self._calls]
            layers.append({"class_name": type(layer).__name__, "name": layer.name,
                           "config": layer.get_config(),
                           "inbound_nodes": [[ref(t) for t in c.inputs] for c in calls]})
        return {"name": self.name, "layers": layers,
                "input_layers": [ref(t) for t in self.inputs],
                "output_layers": [ref(t) for t in self.outputs],
                "multi_input": self._multi_input, "multi_output": self._multi_output,
                "input_shape": (list(map(list, self.input_shape)) if self._multi_input
                                else list(self.input_shape))}

    def _ref(self, t: SymbolicTensor) -> list:
        """[layer name, index of the call among those in this model, 0]"""
        calls = [c for c in t.call.layer.calls
                 if c in self._calls or isinstance(c.layer, InputLayer)]
        return [t.call.layer.name, calls.index(t.call), 0]

    @classmethod
    def from_config(cls, config: dict) -> "Functional":
        return from_config(config)

    def summary(self, print_fn=print) -> None:
        """A table of layer calls: output shape, weight count, the layers it reads."""
        rows = [t.call for t in self.inputs] + self._calls
        names = [f"{c.layer.name} ({type(c.layer).__name__})" for c in rows]
        width = max(32, max(map(len, names)) + 2)
        print_fn(f'Model "{self.name}"')
        print_fn(f"{'layer (type)':<{width}}{'output shape':<22}{'params':>10}  connected to")
        seen = set()
        for c, name in zip(rows, names):
            n = 0 if id(c.layer) in seen else sum(p.value.size for p in c.layer.weights)
            seen.add(id(c.layer))
            src = ", ".join(t.name for t in c.inputs)
            print_fn(f"{name:<{width}}{str(c.output.shape):<22}{n:>10,}  {src}")
        print_fn(f"total params: {self.count_params():,}")


def _tensors(value, what: str) -> list:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ConfigError(f"a model needs at least one tensor in {what}")
    for t in items:
        if not isinstance(t, SymbolicTensor):
            raise ConfigError(f"Model {what} must be dl.Input(...) tensors or what layers "
                              f"called on them returned; got {type(t).__name__}")
    return items


def _shapes(value, multi: bool) -> list:
    items = value if multi else [value]
    return [tuple(int(d) for d in s) for s in items]


def _unique(names: list) -> list:
    """Names made distinct by a suffix (one layer's output given twice)."""
    out = []
    for n in names:
        k, name = 1, n
        while name in out:
            name, k = f"{n}_{k}", k + 1
        out.append(name)
    return out


def _calls_between(inputs: list, outputs: list) -> list:
    """The calls that ``outputs`` depend on, each after the calls it reads (iterative
    DFS, inputs in order); every path must start at one of ``inputs``."""
    given = {id(t) for t in inputs}
    order, done, reached = [], set(), set()
    stack = [(t.call, False) for t in reversed(outputs)]
    while stack:
        call, expanded = stack.pop()
        if id(call) in done:
            continue
        if isinstance(call.layer, InputLayer):
            if id(call.output) not in given:
                raise ConfigError(
                    f"the model's outputs depend on Input {call.layer.name!r}, which is "
                    f"not among its inputs ({', '.join(t.name for t in inputs)}); add it "
                    "to inputs=[...]")
            reached.add(id(call.output))
            done.add(id(call))
            continue
        if expanded:
            done.add(id(call))
            order.append(call)
            continue
        stack.append((call, True))
        for t in reversed(call.inputs):
            if id(t.call) not in done:
                stack.append((t.call, False))
    unused = [t.name for t in inputs if id(t) not in reached]
    if unused:
        raise ConfigError(f"no output of the model depends on input {unused[0]!r}; every "
                          "input must lead to an output (remove it from inputs, or connect "
                          "it)")
    return order


def from_config(config: dict) -> Functional:
    """The model a :meth:`Functional.get_config` dict describes, with fresh weights."""
    layers, pending = {}, []
    for entry in config["layers"]:
        layer = layer_from_config(entry["class_name"], entry["config"])
        layers[layer.name] = layer
        pending += [(layer, k, refs) for k, refs in enumerate(entry.get("inbound_nodes", []))]
    for _, _, refs in pending:
        unknown = [r[0] for r in refs if r[0] not in layers]
        if unknown:
            raise ConfigError(f"a layer reads an unknown layer {unknown[0]!r}")

    def tensor(ref):
        calls = layers[ref[0]].calls
        index = int(ref[1])
        return calls[index].output if index < len(calls) else None

    # a call is made once the calls it reads exist, and after the same layer's earlier
    # calls (a shared layer's later call may read layers listed after it)
    while pending:
        left = []
        for layer, k, refs in pending:
            args = [tensor(r) for r in refs]
            if any(a is None for a in args) or len(layer.calls) != k:
                left.append((layer, k, refs))
            else:
                layer(args if len(args) > 1 else args[0])
        if len(left) == len(pending):
            raise ConfigError("the model's layer connections form a cycle or refer to "
                              "calls that do not exist")
        pending = left
    ins = [tensor(r) for r in config["input_layers"]]
    outs = [tensor(r) for r in config["output_layers"]]
    if any(t is None for t in ins + outs):
        raise ConfigError("the model's inputs or outputs refer to calls that do not exist")
    multi_in = config.get("multi_input", len(ins) > 1)
    multi_out = config.get("multi_output", len(outs) > 1)
    return Functional(ins if multi_in else ins[0], outs if multi_out else outs[0],
                      name=config.get("name"))


