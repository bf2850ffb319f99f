"""Kernels made from scalar formulas: elementwise ops, in-place updates, fused bias + op.

An elementwise op is a formula and its derivative, plain Python on scalars::

    @elementwise("leaky_relu")
    def leaky_relu(x, alpha=0.3):
        return x if x > 0 else alpha * x

    @leaky_relu.derivative
    def leaky_relu_grad(x, alpha):        # dy/dx, from what the backward reads
        return 1.0 if x > 0 else alpha

The formula's parameters without defaults are the op's inputs, those with defaults its
attributes; the derivative's parameters say what the backward reads (inputs, ``y`` the
output, attributes), and so what the op saves. From them come the op's four kernels,
forward ``y[i] = f(x[i], alpha)`` and backward ``dx[i] = dy[i] * f'(x[i], alpha)`` on the
CPU (Numba loops, cached on disk) and on CUDA (grid-stride loops), the :class:`Op` record
(inputs of one shape and float dtype), and for one-input ops the fused kernel the planner
runs for ``bias_add`` followed by the op (:func:`fused_bias_forward`). Optimizer updates
are formulas too (:func:`map_kernels`, :func:`map_twin`): several arrays read and written
in one pass. A kernel of a fixed signature written around formulas (a loss's reduction, a
metric count) is a template copied once per formula (:func:`instantiate`).

How. The formula is a :func:`dlrun.ops.config.formula`, which Numba compiles for either
device. The loops around it are generated source, compiled under the formula's file name
and first line: Numba's on-disk cache then keeps each kernel under its own name (such as
``relu_fwd_cpu``) and drops it when the formula's file changes. (A closure over a compiled
formula never hits that cache: its key pickles the closure's cells.) A formula whose file
does not exist (typed at a prompt) gets kernels that are not cached.
"""
from __future__ import annotations

import inspect
import os
import re
import types
from typing import Callable

import numpy as np

from dlrun.ops import config
from dlrun.ops.registry import (Op, OpError, Spec, Twin, check_float, get, get_twin, register,
                                register_twin)

_LOOP = {"cpu": "for i in range({n}):",
         "cuda": "for i in range(cuda.grid(1), {n}, cuda.gridsize(1)):"}


# -- generating a kernel ------------------------------------------------------------------
def _where(fn) -> tuple[str, int, bool]:
    """(file, first line, whether Numba can cache kernels under that file)."""
    try:
        path = inspect.getfile(fn)
    except TypeError:
        path = "<unknown>"
    return path, fn.__code__.co_firstlineno, os.path.isfile(path)


def _describe(fn) -> str:
    path, line, _ = _where(fn)
    return f"{fn.__qualname__} ({path}:{line})"


def _source(name: str, params: list, top: list, loops: list, device: str) -> str:
    """``def name(params)``: flat views of the ``top`` arrays, then each loop ``(guard,
    arrays, lead, body)``: flat views of ``arrays`` and the ``body`` lines for every
    element ``i`` of ``lead``, skipped when the array ``guard`` is None."""
    lines = [f"def {name}({', '.join(params)}):"]
    lines += [f"    {a}_ = {a}.reshape(-1)" for a in top]
    for guard, arrays, lead, body in loops:
        pad = "    "
        if guard:
            lines.append(f"    if {guard} is not None:")
            pad = "        "
        lines += [f"{pad}{a}_ = {a}.reshape(-1)" for a in arrays]
        lines.append(pad + _LOOP[device].format(n=f"{lead}_.size"))
        lines += [f"{pad}    {b}" for b in body]
    return "\n".join(lines) + "\n"


def _compile(name: str, source: str, env: dict, anchor, device: str, doc: str,
             cache: bool = True):
    """The generated function, compiled for a device: a :func:`config.jit` kernel, or a
    :class:`config.cuda_kernel` (launched by the caller)."""
    path, line, cacheable = _where(anchor)
    scope = {"__name__": anchor.__module__, "cuda": None, **env}
    exec(compile("\n" * (line - 1) + source, path, "exec"), scope)  # noqa: S102
    fn = scope[name]
    fn.__doc__ = doc
    return _for_device(fn, device, cacheable and cache)


def _for_device(fn, device: str, cacheable: bool):
    """``fn`` compiled (on first use) as a CPU kernel, or as a CUDA kernel to launch."""
    if device == "cpu":
        return config.jit(fn, cache=config.CACHE and cacheable)
    return config.cuda_kernel(fn)


def instantiate(template: Callable, name: str, anchor: Callable, device: str, **env):
    """A copy of the kernel ``template`` named ``name``, calling what ``env`` names (the
    formulas it is written around; the template's module holds them as None), compiled
    for ``device`` like the generated kernels: cached under ``anchor``'s file and line."""
    path, line, cacheable = _where(anchor)
    code = template.__code__.replace(co_name=name, co_qualname=name, co_filename=path,
                                     co_firstlineno=line)
    scope = {**template.__globals__, "__name__": anchor.__module__, "cuda": None, **env}
    fn = types.FunctionType(code, scope, name)
    fn.__doc__ = template.__doc__
    return _for_device(fn, device, cacheable)


def _launcher(make_kernel, lead: int, name: str, doc: str, what: str):
    """A CUDA kernel's launcher: a grid-stride grid over argument ``lead``'s elements. The
    kernel is made by ``make_kernel()`` at the first launch: a process that never uses the
    GPU never compiles its generated source."""
    from numba.core.errors import NumbaError

    kernel = []

    def launch(*args):
        if not kernel:
            kernel.append(make_kernel())
        try:
            kernel[0][config.grid_1d(args[lead].size)](*args)
        except NumbaError as e:
            raise OpError(f"Numba cannot compile {what} for CUDA: "
                          f"{str(e).strip().splitlines()[0]}") from None

    launch.__name__ = launch.__qualname__ = name
    launch.__doc__ = doc
    return launch


def _twins(name: str, params: list, top: list, loops: list, env: dict, anchor, doc: str,
           lead: int, what: str, cache: bool = True) -> tuple:
    """(CPU kernel, CUDA launcher) of one generated loop nest."""
    cpu = _compile(f"{name}_cpu", _source(f"{name}_cpu", params, top, loops, "cpu"), env,
                   anchor, "cpu", doc, cache)

    def cuda_kernel():
        return _compile(f"_{name}_cuda", _source(f"_{name}_cuda", params, top, loops, "cuda"),
                        env, anchor, "cuda", doc)
    return cpu, _launcher(cuda_kernel, lead, f"{name}_cuda", doc, what)


def _identifier(name: str) -> str:
    return re.sub(r"\W", "_", name)


# -- in-place updates and other maps (twins) -------------------------------------------------
def map_kernels(name: str, formula: Callable, arrays: tuple, writes: tuple,
                outputs: tuple = (), broadcast: tuple = (), index: str = "") -> tuple:
    """(CPU kernel, CUDA launcher): every element ``i`` of the ``arrays`` at once,
    ``writes[0][i], writes[1][i], ... = formula(...)``.

    The kernels take the formula's parameters (``arrays`` at element ``i``, the others as
    they are), then the ``outputs``: arrays written without being read. ``writes`` are
    arrays among both. Arrays in ``broadcast`` repeat along the others (element
    ``i % size``, as a bias does); the parameter named ``index`` (if any) is ``i`` itself,
    not a kernel argument. Example: ``map_kernels("sgd_update", sgd, ("w", "g"), ("w",))``
    with ``def sgd(w, g, lr): return w - lr * g`` is ``sgd_update_cpu(w, g, lr)``.
    """
    config.formula(formula)
    params = list(inspect.signature(formula).parameters)
    names = [p for p in params if p != index] + list(outputs)
    assert set(arrays) <= set(params) and set(writes) <= set(arrays) | set(outputs)
    var = {p: f"p{k}" for k, p in enumerate(names)} | {index: "i"}   # cannot collide
    at = {a: f"{var[a]}_[i % {var[a]}_.size]" if a in broadcast else f"{var[a]}_[i]"
          for a in list(arrays) + list(outputs)}
    args = ", ".join(at.get(p, var[p]) for p in params)
    body = [f"{', '.join(at[w] for w in writes)} = _f({args})"]
    flat = [var[a] for a in list(arrays) + list(outputs)]
    lead = next(a for a in names if a in arrays and a not in broadcast)
    return _twins(name, [var[p] for p in names], flat, [(None, [], var[lead], body)],
                  {"_f": formula}, formula, (formula.__doc__ or "").strip(),
                  names.index(lead), _describe(formula))


def map_twin(name: str, formula: Callable, arrays: tuple, writes: tuple, sample: Callable,
             outputs: tuple = ()) -> Twin:
    """Register the twin ``name`` whose kernels are :func:`map_kernels`'."""
    cpu, cuda = map_kernels(name, formula, arrays, writes, outputs)
    names = [p for p in inspect.signature(formula).parameters] + list(outputs)
    return register_twin(Twin(name, cpu, cuda, writes=tuple(names.index(w) for w in writes),
                              outputs=tuple(names.index(o) for o in outputs), sample=sample))


# -- elementwise ops ----------------------------------------------------------------------
def _same_float(name: str, inputs: tuple):
    """Shape rule: float inputs of one shape and dtype; the output is like them."""
    def shape(*specs, **_) -> list:
        check_float(name, **dict(zip(inputs, specs)))
        if any(s.shape != specs[0].shape or s.dtype != specs[0].dtype for s in specs):
            got = ", ".join(f"{x} {s.shape} {s.dtype}" for x, s in zip(inputs, specs))
            raise OpError(f"op {name!r} takes inputs {', '.join(inputs)} of one shape and "
                          f"dtype; got {got}")
        return [Spec(specs[0].shape, specs[0].dtype)]
    return shape


def uniform_sample(shape=(4, 5), lo=-2.0, hi=2.0, inputs=1, **attrs):
    """``sample(rng, dtype)``: ``inputs`` arrays uniform in [lo, hi), kept 0.05 away from
    0 (the kink of relu-like formulas, where finite differences mean nothing)."""
    def sample(rng, dtype):
        xs = []
        for _ in range(inputs):
            x = rng.uniform(lo, hi, shape).astype(dtype)
            x[np.abs(x) < 0.05] += 0.1
            xs.append(x)
        return tuple(xs), dict(attrs)
    return sample


class Elementwise:
    """An elementwise op made from a scalar formula (see the module docstring).

    Calling it evaluates the formula in Python. ``op`` is the registered record;
    :meth:`derivative` adds the derivative with respect to an input.
    """

    def __init__(self, name: str, formula: Callable, *, sample=None, big_sample=None,
                 reference=None, replace: bool = False, check: bool = True):
        self.name, self.formula, self.check = name, formula, check
        self.inputs, self.attrs = _signature(name, formula)
        self.partials: dict[str, Callable] = {}
        n = len(self.inputs)
        self.sample = sample or uniform_sample(inputs=n, **self.attrs)
        self.big_sample = big_sample or uniform_sample((9, 11), inputs=n, **self.attrs)
        self.reference = reference or self._python_reference
        if check:
            _check_compiles(name, formula, self.inputs + tuple(self.attrs), self.attrs)
        config.formula(formula)
        ident = _identifier(name)
        xs = [f"x{k}" for k in range(n)]
        args = ", ".join([f"{x}_[i]" for x in xs] + [f"a{k}" for k in range(len(self.attrs))])
        doc = f"y = {formula.__name__}({', '.join(self.inputs + tuple(self.attrs))})"
        self._forward = _twins(f"{ident}_fwd", xs + self._attr_params() + ["y"], xs + ["y"],
                               [(None, [], "y", [f"y_[i] = _f({args})"])], {"_f": formula},
                               formula, doc, 0, _describe(formula))
        self._register(replace)
        if n == 1:
            _register_fused(self)

    def __call__(self, *args, **attrs):
        return self.formula(*args, **attrs)

    def __repr__(self) -> str:
        return f"<elementwise op {self.name!r}: {_describe(self.formula)}>"

    @property
    def op(self) -> Op:
        return get(self.name)

    def derivative(self, fn_or_input):
        """Decorator: ``@op.derivative`` (one input) or ``@op.derivative("b")``; the
        function returns dy/d(input) from the names it takes (inputs, ``y``, attributes)."""
        if callable(fn_or_input):
            if len(self.inputs) != 1:
                raise OpError(f"op {self.name!r} has inputs {self.inputs}: say which one "
                              f"a derivative is for, as @{self.name}.derivative('name')")
            return self._add(self.inputs[0], fn_or_input)
        if fn_or_input not in self.inputs:
            raise OpError(f"op {self.name!r} has no input {fn_or_input!r}; its inputs "
                          f"are {self.inputs}")
        return lambda fn: self._add(fn_or_input, fn)

    # -- internals ---------------------------------------------------------------------
    def _attr_params(self) -> list:
        return [f"a{k}" for k in range(len(self.attrs))]

    def _add(self, wrt: str, fn: Callable) -> Callable:
        known = self.inputs + ("y",) + tuple(self.attrs)
        params = list(inspect.signature(fn).parameters)
        bad = [p for p in params if p not in known]
        if bad:
            raise OpError(f"derivative {_describe(fn)} of op {self.name!r} takes {bad}; "
                          f"a derivative may take the inputs {self.inputs}, 'y' (the "
                          f"output) and the attributes {tuple(self.attrs)}")
        if self.check:
            _check_compiles(self.name, fn, params, self.attrs)
        config.formula(fn)
        self.partials[wrt] = fn
        self._register(replace=True)
        return fn

    def _register(self, replace: bool) -> None:
        diff = tuple(x for x in self.inputs if x in self.partials)
        read = {p for d in diff for p in inspect.signature(self.partials[d]).parameters}
        saves = tuple(s for s in self.inputs + ("y",) if s in read)
        backward = self._backward(diff, saves) if diff else (None, None)
        register(Op(
            name=self.name, inputs=self.inputs, shape=_same_float(self.name, self.inputs),
            forward=self._forward[0], backward=backward[0], cuda_forward=self._forward[1],
            cuda_backward=backward[1], saves=saves, diff=diff, attrs=dict(self.attrs),
            sample=self.sample, big_sample=self.big_sample, reference=self.reference,
            pointwise=self), replace=replace)

    def _backward(self, diff: tuple, saves: tuple) -> tuple:
        """(CPU, CUDA) backward: ``d<x>[i] = dy[i] * f'(...)`` for each gradient wanted."""
        var = {x: f"x{k}" for k, x in enumerate(self.inputs)} | {"y": "y"}
        var |= {a: f"a{k}" for k, a in enumerate(self.attrs)}
        loops, env = [], {}
        for k, x in enumerate(diff):
            fn = self.partials[x]
            args = ", ".join(f"{var[p]}_[i]" if p in saves else var[p]
                             for p in inspect.signature(fn).parameters)
            loops.append((f"g{k}", [f"g{k}"], "dy", [f"g{k}_[i] = dy_[i] * _d{k}({args})"]))
            env[f"_d{k}"] = fn
        fns = [self.partials[x] for x in diff]
        params = ["dy"] + [var[s] for s in saves] + self._attr_params() + \
            [f"g{k}" for k in range(len(diff))]
        doc = "; ".join(f"d{x} = dy * {self.partials[x].__name__}" for x in diff)
        # Numba's cache checks one file for changes: derivatives from several, no cache
        return _twins(f"{_identifier(self.name)}_bwd", params, ["dy"] + [var[s] for s in saves],
                      loops, env, fns[0], doc, 0, ", ".join(_describe(f) for f in fns),
                      cache=len({_where(f)[0] for f in fns}) == 1)

    def _python_reference(self, *inputs, **attrs):
        """The formula evaluated element by element in Python (for ops given no
        reference: it checks the kernels, not the formula)."""
        y = np.vectorize(lambda *xs: self.formula(*xs, **attrs), otypes=[np.float64])(*inputs)
        return (np.asarray(y, inputs[0].dtype),)


def _signature(name: str, formula: Callable) -> tuple:
    """(inputs, attrs): the formula's parameters without defaults, and with them."""
    inputs, attrs = [], {}
    for p in inspect.signature(formula).parameters.values():
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            raise OpError(f"formula {_describe(formula)} of op {name!r}: parameter "
                          f"{p.name!r} must be a plain one (no *args, **kwargs or *)")
        if p.default is p.empty:
            inputs.append(p.name)
        elif isinstance(p.default, (bool, int, float)):
            attrs[p.name] = p.default
        else:
            raise OpError(f"formula {_describe(formula)} of op {name!r}: attribute "
                          f"{p.name!r} must default to a number, got {p.default!r}")
    if not inputs:
        raise OpError(f"formula {_describe(formula)} of op {name!r} takes no input: "
                      "inputs are its parameters without defaults")
    if "y" in inputs:
        raise OpError(f"formula {_describe(formula)} of op {name!r}: 'y' names the output "
                      "(derivatives read it); call the input something else")
    return tuple(inputs), attrs


def _check_compiles(name: str, fn: Callable, params, attrs: dict) -> None:
    """Compile ``fn`` once for the CPU (float64 arrays' elements, the attributes' types),
    so a formula Numba cannot compile is reported where it is defined."""
    import numba
    from numba.core.errors import NumbaError

    sig = tuple(numba.typeof(attrs[p]) if p in attrs else numba.float64 for p in params)
    try:
        disp = numba.njit(fn)
        disp.compile(sig)
    except NumbaError as e:
        first = str(e).strip().splitlines()[0]
        raise OpError(f"Numba cannot compile {_describe(fn)} for op {name!r}: {first}. "
                      "A formula may use arithmetic, comparisons, if/else and math.*; "
                      "functions it calls must be Numba-compiled too") from None
    returned = disp.nopython_signatures[-1].return_type
    if not isinstance(returned, (numba.types.Number, numba.types.Boolean)):
        raise OpError(f"{_describe(fn)} of op {name!r} must return one number; it returns "
                      f"{returned}")


def elementwise(name: str, *, sample=None, big_sample=None, reference=None,
                replace: bool = False, check: bool = True) -> Callable:
    """Decorator: make and register the elementwise op ``name`` from its scalar formula.

    Parameters
    ----------
    name : the op's registry name.
    sample, big_sample, reference : as in :class:`dlrun.ops.Op` (defaults: uniform
        inputs in [-2, 2) away from 0; the formula evaluated in Python).
    replace : replace an op registered under ``name``.
    check : compile the formula (and each derivative) once when it is defined, so one
        Numba cannot compile raises an ``OpError`` naming it there.

    Returns the :class:`Elementwise`; add derivatives with ``@<it>.derivative``.
    """
    def make(formula: Callable) -> Elementwise:
        return Elementwise(name, formula, sample=sample, big_sample=big_sample,
                           reference=reference, replace=replace, check=check)
    return make


# -- bias_add followed by an elementwise op, fused ---------------------------------------------
def _fused_name(op: str) -> str:
    return f"bias_add+{op}"


def _register_fused(ew: Elementwise) -> None:
    """The twin ``bias_add+<op>``: ``(x, b, *attrs, z, y)`` writes ``z = x + b[i % b.size]``
    and ``y = f(z)`` in one pass."""
    n = len(ew.attrs)
    attrs = ew._attr_params()
    body = ["v = x_[i] + b[i % b.size]", "z_[i] = v",
            f"y_[i] = _f({', '.join(['v'] + attrs)})"]
    doc = f"z = x + b ; y = {ew.formula.__name__}(z) (z may be y when nothing reads it)"
    cpu, cuda = _twins(f"{_identifier(_fused_name(ew.name))}_fwd", ["x", "b"] + attrs + ["z", "y"],
                       ["x", "z", "y"], [(None, [], "x", body)], {"_f": ew.formula}, ew.formula,
                       doc, 0, _describe(ew.formula))
    attr_values = tuple(ew.attrs.values())

    def sample(rng, dtype):
        # the op's own large inputs, so x + b stays in its domain (log, sqrt: x > 0)
        (x,), _ = ew.big_sample(rng, dtype)
        b = rng.uniform(-0.1, 0.1, x.shape[-1]).astype(dtype)
        return (x, b, *attr_values, np.empty_like(x), np.empty_like(x))

    register_twin(Twin(_fused_name(ew.name), cpu, cuda, writes=(2 + n, 3 + n),
                       outputs=(2 + n, 3 + n), sample=sample, of=ew.name), replace=True)


def fused_bias_forward(op) -> Twin:
    """The fused kernels for ``bias_add`` followed by the one-input elementwise ``op`` (a
    name or record): ``kernel(x, b, *attr_values, z, y)`` writes ``z = x + b[i % b.size]``
    and ``y = op(z)``; pass ``z=y`` when nothing reads z (each element is written as z,
    then as y, by the same thread)."""
    record = get(op)
    if record.pointwise is None or len(record.inputs) != 1:
        raise OpError(f"op {record.name!r} is not a one-input elementwise op; only those "
                      "fuse with bias_add")
    return get_twin(_fused_name(record.name))
