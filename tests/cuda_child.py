"""What the scripts that tests run in a child process to check CUDA code share
(``tests/engine/core/device_fit_check.py``; ``tests/ops/cuda_parity_check.py`` and
``cuda_compile_check.py`` hold a copy of it still). Such a script puts this folder on its
``sys.path`` and imports this module before anything that imports ``numba.cuda``: whether
``numba.cuda`` drives a GPU or the simulator is fixed when it is first imported."""
from __future__ import annotations

import os
import sys


def use_simulator_unless_gpu() -> None:
    """Re-run this script under the simulator (``NUMBA_ENABLE_CUDASIM=1``) unless a real
    GPU is available."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return
    from numba import cuda

    if not cuda.is_available():
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
