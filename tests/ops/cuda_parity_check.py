"""CPU-vs-CUDA parity of every registered op and of the SGD update kernels.

Run in a process of its own (``tests/ops/test_cuda_parity.py`` does): whether the CUDA
kernels run on a GPU or under Numba's simulator is fixed when ``numba.cuda`` is first
imported. With a GPU visible they run on it; otherwise the script restarts itself with
``NUMBA_ENABLE_CUDASIM=1``. The block size is patched small so that several blocks, and
grid-stride loops that go round more than once, run even on tiny arrays. Every case
feeds the same inputs to both devices, pre-fills CUDA outputs with NaN so a skipped
element shows, and compares everything written. Prints one line per case and exits 1 on
any mismatch::

    python tests/ops/cuda_parity_check.py
"""
from __future__ import annotations

import os
import sys
import time
import traceback
import warnings

import numpy as np


def use_simulator_unless_gpu() -> None:
    """Re-run this script under the simulator unless a real GPU is available."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return
    from numba import cuda

    if not cuda.is_available():
        sys.stdout.flush()
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


import dlrun  # noqa: E402,F401  (import first: it must not import numba.cuda itself)

IMPORT_PULLS_CUDA = "numba.cuda" in sys.modules
use_simulator_unless_gpu()

from dlrun import ops  # noqa: E402
from dlrun.ops import config, counts, fused, updates  # noqa: E402
from dlrun.ops.registry import Spec  # noqa: E402
from numba import cuda  # noqa: E402

# The simulator runs the dropout hash as numpy uint64 scalars, whose wrap-around warns.
warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)

TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}
SEED = 20240611


def _x(rng, dt, shape, lo=-2.0, hi=2.0):
    x = rng.uniform(lo, hi, shape).astype(dt)
    x[np.abs(x) < 0.05] += 0.1  # away from kinks, like the ops' own samples
    return x


def _labels(rng, n, c):
    return rng.integers(0, c, n).astype(np.int64)


# Inputs bigger than one block (8 threads, at most 4 blocks here), per built-in op.
BIG = {
    "relu": lambda r, dt: ((_x(r, dt, (9, 11)),), {}),
    "sigmoid": lambda r, dt: ((_x(r, dt, (9, 11), -6, 6),), {}),
    "tanh": lambda r, dt: ((_x(r, dt, (9, 11)),), {}),
    "leaky_relu": lambda r, dt: ((_x(r, dt, (9, 11)),), {"alpha": 0.2}),
    "elu": lambda r, dt: ((_x(r, dt, (9, 11)),), {"alpha": 0.7}),
    "dropout": lambda r, dt: ((_x(r, dt, (9, 11)),), {"rate": 0.4}),
    "reshape": lambda r, dt: ((_x(r, dt, (9, 11)),), {"shape": (-1,)}),
    "softmax": lambda r, dt: ((_x(r, dt, (37, 6), -3, 3),), {}),
    "matmul": lambda r, dt: ((r.standard_normal((17, 19)).astype(dt),
                              r.standard_normal((19, 5)).astype(dt)), {}),
    "bias_add": lambda r, dt: ((r.standard_normal((37, 13)).astype(dt),
                                r.standard_normal(13).astype(dt)), {}),
    "softmax_ce": lambda r, dt: ((r.standard_normal((37, 6)).astype(dt), _labels(r, 37, 6)), {}),
    "softmax_ce_onehot": lambda r, dt: ((r.standard_normal((37, 6)).astype(dt),
                                         np.eye(6, dtype=dt)[_labels(r, 37, 6)]), {}),
    "mse": lambda r, dt: ((r.uniform(-1, 1, (9, 11)).astype(dt),
                           r.uniform(-1, 1, (9, 11)).astype(dt)), {}),
    "binary_ce": lambda r, dt: ((r.uniform(0.1, 0.9, (9, 11)).astype(dt),
                                 r.uniform(0.0, 1.0, (9, 11)).astype(dt)), {}),
    "sum": lambda r, dt: ((r.standard_normal((9, 11)).astype(dt),), {}),
    "mean": lambda r, dt: ((r.standard_normal((9, 11)).astype(dt),), {}),
    "concat": lambda r, dt: ((r.standard_normal((7, 3, 5)).astype(dt),
                              r.standard_normal((7, 2, 5)).astype(dt)), {"axis": -2}),
    "scale": lambda r, dt: ((r.standard_normal((9, 11)).astype(dt),), {"factor": -1.5}),
    "gate_mix": lambda r, dt: ((r.uniform(0, 1, (9, 11)).astype(dt),
                                r.standard_normal((9, 11)).astype(dt),
                                r.standard_normal((9, 11)).astype(dt)), {}),
}


def compare(got: np.ndarray, want: np.ndarray) -> float | None:
    """Largest error relative to max(1, |want|) if within tolerance, else None."""
    tol = TOL.get(np.dtype(want.dtype), 0)    # integer outputs (pooling's argmax) exactly
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    if got.shape != want.shape or not np.allclose(got, want, rtol=tol, atol=tol * scale):
        return None
    return float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0)) / scale


def nans_like(a: np.ndarray) -> np.ndarray:
    """NaN-filled; integer arrays get their most negative value, as visible."""
    fill = np.nan if a.dtype.kind == "f" else np.iinfo(a.dtype).min
    return np.full(a.shape, fill, a.dtype)


def check(results: list, name: str, got, want) -> None:
    """Record one comparison: (name, relative error or None when it mismatches)."""
    results.append((name, compare(got, want)))


def op_case(op, inputs, attrs, rng) -> list:
    """Forward, then backward with every gradient and with each one alone, on both devices."""
    attrs = op.resolve_attrs(attrs)
    seed = (SEED,) if op.rng else ()
    specs = op.infer([Spec(x.shape, x.dtype) for x in inputs], attrs)
    outs = [nans_like(np.empty(s.shape, s.dtype)) for s in specs]
    op.forward(*inputs, *attrs.values(), *seed, *outs)
    d_outs = [cuda.to_device(nans_like(o)) for o in outs]
    op.cuda_forward(*(cuda.to_device(x) for x in inputs), *attrs.values(), *seed, *d_outs)
    results = []
    for name, got, want in zip(op.outputs, d_outs, outs):
        check(results, name, got.copy_to_host(), want)
    if op.backward is None:
        return results

    # the backward of both devices reads the same (CPU) saved arrays
    named = dict(zip(op.inputs, inputs)) | dict(zip(op.outputs, outs))
    dy = np.asarray(rng.standard_normal(outs[0].shape), outs[0].dtype)
    wanted_sets = [set(op.diff)] + ([{d} for d in op.diff] if len(op.diff) > 1 else [])
    for wanted in wanted_sets:
        grads = [nans_like(named[d]) if d in wanted else None for d in op.diff]
        op.backward(dy, *(named[s] for s in op.saves), *attrs.values(), *grads)
        d_grads = [cuda.to_device(nans_like(named[d])) if d in wanted else None
                   for d in op.diff]
        op.cuda_backward(cuda.to_device(dy), *(cuda.to_device(named[s]) for s in op.saves),
                         *attrs.values(), *d_grads)
        tag = "" if len(wanted) == len(op.diff) else " alone"
        for d, got, want in zip(op.diff, d_grads, grads):
            if want is not None:
                check(results, f"d{d}{tag}", got.copy_to_host(), want)
    return results


def sgd_case(kind: str, shape, dt, rng) -> list:
    """One optimizer update kernel (or clip/decay helper) on both devices, same inputs."""
    w, g, a, b = (rng.standard_normal(shape).astype(dt) for _ in range(4))
    a2 = np.abs(a)                     # accumulators / second moments are >= 0
    host = {"w": w, "a": a if kind in ("momentum", "nesterov") else a2, "b": b}
    dev = {k: cuda.to_device(v) for k, v in host.items()}
    dg = cuda.to_device(g)
    if kind == "sgd":
        updates.sgd_update_cpu(w, g, 0.1)
        updates.sgd_update_cuda(dev["w"], dg, 0.1)
    elif kind in ("momentum", "nesterov"):
        nesterov = kind == "nesterov"
        updates.sgd_momentum_update_cpu(w, g, host["a"], 0.1, 0.9, nesterov)
        updates.sgd_momentum_update_cuda(dev["w"], dg, dev["a"], 0.1, 0.9, nesterov)
    elif kind == "adagrad":
        updates.adagrad_update_cpu(w, g, host["a"], 0.1, 1e-7)
        updates.adagrad_update_cuda(dev["w"], dg, dev["a"], 0.1, 1e-7)
    elif kind == "rmsprop":
        updates.rmsprop_update_cpu(w, g, host["a"], 0.01, 0.9, 1e-7)
        updates.rmsprop_update_cuda(dev["w"], dg, dev["a"], 0.01, 0.9, 1e-7)
    elif kind == "rmsprop momentum":
        updates.rmsprop_momentum_update_cpu(w, g, host["a"], b, 0.01, 0.9, 0.5, 1e-7)
        updates.rmsprop_momentum_update_cuda(dev["w"], dg, dev["a"], dev["b"], 0.01, 0.9,
                                             0.5, 1e-7)
    elif kind == "adam":
        updates.adam_update_cpu(w, g, b, host["a"], 0.003, 0.9, 0.999, 1e-7)
        updates.adam_update_cuda(dev["w"], dg, dev["b"], dev["a"], 0.003, 0.9, 0.999, 1e-7)
    elif kind == "decay":
        updates.decay_weights_cpu(w, 0.01)
        updates.decay_weights_cuda(dev["w"], 0.01)
    elif kind == "clip":
        updates.clip_gradient_cpu(g, 0.7, 0.5, w)
        updates.clip_gradient_cuda(dg, 0.7, 0.5, dev["w"])
    elif kind == "sum squares":
        out = cuda.to_device(np.full(1, np.nan))
        updates.sum_squares_cuda(dg, out)
        want = np.array([updates.sum_squares_cpu(g)])
        return [("sum", compare(out.copy_to_host(), want))]
    results = []
    for name in host:
        check(results, name, dev[name].copy_to_host(), host[name])
    return results


def fused_case(act: str, dt, rng) -> list:
    """The planner's fused bias + activation against its CPU twin, and against the two
    ops it replaces; then with z aliased to y (what the planner does when z is unneeded)."""
    kind = fused.ACTIVATIONS[act]
    x, b = _x(rng, dt, (9, 11)), _x(rng, dt, (11,))
    z, y = np.empty_like(x), np.empty_like(x)
    fused.bias_act_fwd_cpu(x, b, kind, 0.2, z, y)
    dz, dy = cuda.to_device(nans_like(x)), cuda.to_device(nans_like(x))
    fused.bias_act_fwd_cuda(cuda.to_device(x), cuda.to_device(b), kind, 0.2, dz, dy)
    op = ops.get(act)
    want = np.empty_like(x)
    op.forward(x + b, *([0.2] if op.attrs else []), want)
    results = []
    check(results, "z", dz.copy_to_host(), z)
    check(results, "y", dy.copy_to_host(), y)
    check(results, "y vs ops", y, want)
    alias = cuda.to_device(nans_like(x))
    fused.bias_act_fwd_cuda(cuda.to_device(x), cuda.to_device(b), kind, 0.2, alias, alias)
    check(results, "y (z aliased)", alias.copy_to_host(), y)
    return results


def counts_case(dt, rng) -> list:
    """Correct-prediction counts on the device against engine.metrics' CPU kernels."""
    from dlrun.engine import metrics

    p = rng.random((37, 5)).astype(dt)
    labels = rng.integers(0, 5, 37)
    onehot = np.eye(5, dtype=dt)[rng.integers(0, 5, 37)]
    out = cuda.to_device(np.full(3, -1, np.int64))
    dp = cuda.to_device(p)
    counts.correct_sparse_cuda(dp, cuda.to_device(labels), out, 0)
    counts.correct_onehot_cuda(dp, cuda.to_device(onehot), out, 1)
    counts.correct_binary_cuda(dp, cuda.to_device(onehot), out, 2)
    want = np.array([metrics.correct_sparse_cpu(p, labels),
                     metrics.correct_onehot_cpu(p, onehot),
                     metrics.correct_binary_cpu(p, onehot)], np.int64)
    return [("counts", compare(out.copy_to_host(), want))]


UPDATE_KINDS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "rmsprop momentum",
                "adam", "decay", "clip", "sum squares")


def report(failures: list, label: str, case, *args) -> None:
    """Run case(*args), print its line and note a failure."""
    t0 = time.perf_counter()
    try:
        results = case(*args)
    except Exception:  # noqa: BLE001  (report it, go on with the other cases)
        failures.append(label)
        print(f"ERROR     {label}\n{traceback.format_exc()}", flush=True)
        return
    bad = [n for n, err in results if err is None]
    worst = max((err for _, err in results if err is not None), default=0.0)
    status = "MISMATCH" if bad else "ok"
    if bad:
        failures.append(label)
    detail = f"wrong: {', '.join(bad)}" if bad else f"max rel err {worst:.1e}"
    print(f"{status:9s} {label:44s} {detail:28s} {time.perf_counter() - t0:6.2f}s", flush=True)


def main() -> int:
    failures = []
    where = "simulator" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "GPU"
    print(f"CUDA parity on the {where}, with CUDA_BLOCK 8 then 6 and CUDA_MAX_BLOCKS 4")
    if IMPORT_PULLS_CUDA:
        failures.append("import dlrun")
        print("MISMATCH  import dlrun imported numba.cuda (it must stay lazy)")
    checked = []
    for name in ops.names():
        op = ops.get(name)
        if op.cuda_forward is None or (op.backward and op.cuda_backward is None):
            failures.append(name)
            print(f"MISSING   {name}: no CUDA forward/backward kernel")
        else:
            checked.append(op)
    config.CUDA_MAX_BLOCKS = 4
    for block in (8, 6):  # a power of two, and not: the reduction trees take any size
        config.CUDA_BLOCK = block
        for op in checked:
            name = op.name
            for dt in (np.float32, np.float64):
                rng = np.random.default_rng(0)
                cases = [("sample", op.sample(rng, dt))]
                if name in BIG and block == 8:
                    cases.append(("big", BIG[name](rng, dt)))
                for case, (inputs, attrs) in cases:
                    label = f"{name} {case} {np.dtype(dt).name} block={block}"
                    report(failures, label, op_case, op, inputs, attrs, rng)
    config.CUDA_BLOCK = 8
    for kind in UPDATE_KINDS:
        for dt in (np.float32, np.float64):
            for shape in ((4, 5), (9, 11)):
                rng = np.random.default_rng(1)
                label = f"{kind} update {shape} {np.dtype(dt).name}"
                report(failures, label, sgd_case, kind, shape, dt, rng)
    for act in fused.ACTIVATIONS:
        for dt in (np.float32, np.float64):
            report(failures, f"bias+{act} fused {np.dtype(dt).name}", fused_case, act, dt,
                   np.random.default_rng(2))
    for dt in (np.float32, np.float64):
        report(failures, f"metric counts {np.dtype(dt).name}", counts_case, dt,
               np.random.default_rng(3))
    print(f"{len(failures)} failing: {', '.join(failures)}" if failures else "all match")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
