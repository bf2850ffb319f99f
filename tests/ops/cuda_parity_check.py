"""CPU-vs-CUDA parity of every registered op and of every twin (the kernels outside the
op registry: optimizer updates, metric counts, fused kernels), all found in the records.

Run in a process of its own (``tests/ops/test_cuda_parity.py`` does): whether the CUDA
kernels run on a GPU or under Numba's simulator is fixed when ``numba.cuda`` is first
imported. With a GPU visible they run on it; otherwise the script restarts itself with
``NUMBA_ENABLE_CUDASIM=1``. The block size is patched small so that several blocks, and
grid-stride loops that go round more than once, run even on tiny arrays; each op's
``big_sample`` adds inputs larger than a block, and each twin's ``sample`` is. Every case
feeds the same inputs to both devices, pre-fills outputs with NaN so a skipped element
shows, and compares everything written. Prints one line per case and exits 1 on
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
from dlrun.ops import config  # noqa: E402
from dlrun.ops.registry import Spec  # noqa: E402
from numba import cuda  # noqa: E402

# The simulator runs the dropout hash as numpy uint64 scalars, whose wrap-around warns.
warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)

TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}
SEED = 20240611


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


def twin_case(twin, args) -> list:
    """A twin's kernels on the same arguments, on both devices: its outputs pre-filled with
    NaN (on both, so an element either leaves unwritten shows), every written array
    compared."""
    host = [nans_like(a) if k in twin.outputs else
            a.copy() if isinstance(a, np.ndarray) else a for k, a in enumerate(args)]
    dev = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in host]
    twin.cpu(*host)
    twin.cuda(*dev)
    results = []
    for k in twin.writes:
        check(results, f"arg {k}", dev[k].copy_to_host(), host[k])
    return results


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
            for dt in (np.float32, np.float64):
                rng = np.random.default_rng(0)
                cases = [("sample", op.sample(rng, dt))]
                if op.big_sample is not None and block == 8:
                    cases.append(("big", op.big_sample(rng, dt)))
                for case, (inputs, attrs) in cases:
                    label = f"{op.name} {case} {np.dtype(dt).name} block={block}"
                    report(failures, label, op_case, op, inputs, attrs, rng)
        for name in ops.twin_names():
            twin = ops.get_twin(name)
            if twin.cuda is None:
                print(f"cpu only  {name}: {twin.no_cuda}")
                continue
            for dt in (np.float32, np.float64):
                cases = twin.sample(np.random.default_rng(1), dt)
                for k, args in enumerate(cases if isinstance(cases, list) else [cases]):
                    label = f"{name} case {k} {np.dtype(dt).name} block={block}"
                    report(failures, label, twin_case, twin, args)
    print(f"{len(failures)} failing: {', '.join(failures)}" if failures else "all match")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
