"""Every op's CUDA kernels agree with its CPU kernels, and compile for a real GPU.

Both checks run in child processes (cuda_parity_check.py, cuda_compile_check.py): the
simulator has to be switched on or off before ``numba.cuda`` is first imported, and this
process must not import it at all. The parity child picks a real GPU when it sees one,
the simulator otherwise.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def run_check(script: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(HERE / script)], capture_output=True,
                          text=True, timeout=900, check=False)
    print(proc.stdout)
    return proc


@pytest.mark.slow
def test_cuda_kernels_match_cpu_kernels():
    proc = run_check("cuda_parity_check.py")
    assert proc.returncode == 0, (
        f"CUDA parity check failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def test_cuda_kernels_compile_for_a_real_gpu():
    # The simulator runs kernels as Python and accepts what Numba's CUDA compiler refuses.
    proc = run_check("cuda_compile_check.py")
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, (
        f"CUDA compile check failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
