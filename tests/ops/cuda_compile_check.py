"""Compile every CUDA kernel for a real GPU, without one: to PTX, through libNVVM.

The simulator runs kernels as Python, so it accepts code that Numba's CUDA compiler
refuses (``max(a, b)`` fails to compile for CUDA in numba 0.66+, for one). This script
calls every op's CUDA launchers and every twin's (optimizer updates, metric counts, the
planner's fused kernels: whatever the registry holds), with the records' sample inputs
(float32 and float64) as NumPy arrays, but each kernel launch compiles the kernel to PTX
for compute capability 8.0 with those argument types instead of running it.

Exit status: 0 all compiled, 1 a kernel failed to compile, 3 nothing to check here (a
GPU is present, where the parity check compiles the kernels for real; or libNVVM, or the
Numba internals this relies on, are missing)::

    python tests/ops/cuda_compile_check.py
"""
from __future__ import annotations

import os
import sys
import traceback
import types

import numpy as np

CC = (8, 0)
SKIP = 3


def prepare():
    """numba.cuda ready to compile with no GPU, or None (and a reason printed)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("skip: NUMBA_ENABLE_CUDASIM=1 is set")
        return None
    from numba import cuda

    if cuda.is_available():
        print("skip: a GPU is present; the parity check compiles the kernels for it")
        return None
    try:
        from numba.cuda import dispatcher
        from numba.cuda.cudadrv import nvvm

        nvvm.NVVM()
        dispatcher.get_current_device  # noqa: B018  (it must exist to be replaced)
    except Exception as e:  # noqa: BLE001  (any failure here means: cannot check)
        print(f"skip: cannot compile CUDA without a GPU here ({type(e).__name__}: {e})")
        return None
    # Device functions are compiled for "the current device" while a kernel is typed.
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)
    return cuda


def main() -> int:
    cuda = prepare()
    if cuda is None:
        return SKIP
    from numba import typeof

    from dlrun import ops
    from dlrun.ops import config
    from dlrun.ops.registry import Spec

    compiled, failures = set(), []

    def compile_instead(self, launch):
        def run(*args):
            sig = tuple(typeof(a) for a in args)
            if (self.__name__, sig) in compiled:
                return
            self.compiled()  # binds the module's `cuda`
            try:
                cuda.compile_ptx(self.fn, sig, cc=CC)
                compiled.add((self.__name__, sig))
            except Exception:  # noqa: BLE001  (report every kernel, then fail)
                failures.append(self.__name__)
                print(f"FAILED    {self.__name__}{tuple(str(s) for s in sig)}\n"
                      f"{traceback.format_exc(limit=0)}", flush=True)
        return run

    config.cuda_kernel.__getitem__ = compile_instead
    for name in ops.names():
        op = ops.get(name)
        for dt in (np.float32, np.float64):
            inputs, attrs = op.sample(np.random.default_rng(0), dt)
            attrs = op.resolve_attrs(attrs)
            seed = (1,) if op.rng else ()
            specs = op.infer([Spec(x.shape, x.dtype) for x in inputs], attrs)
            outs = [np.zeros(s.shape, s.dtype) for s in specs]
            op.cuda_forward(*inputs, *attrs.values(), *seed, *outs)
            if op.cuda_backward is not None:
                named = dict(zip(op.inputs, inputs)) | dict(zip(op.outputs, outs))
                dy = np.zeros(outs[0].shape, outs[0].dtype)
                grads = [np.zeros_like(named[d]) for d in op.diff]
                op.cuda_backward(dy, *(named[s] for s in op.saves), *attrs.values(), *grads)
    for name in ops.twin_names():
        twin = ops.get_twin(name)
        for dt in (np.float32, np.float64):
            if twin.cuda is not None:
                cases = twin.sample(np.random.default_rng(0), dt)
                for args in cases if isinstance(cases, list) else [cases]:
                    twin.cuda(*args)
    print(f"{len(compiled)} kernel specialisations compiled to PTX for cc {CC}; "
          f"{len(failures)} failed{': ' + ', '.join(failures) if failures else ''}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
