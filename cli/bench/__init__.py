"""The benchmarks behind ``dlrun bench``, one module each, each run through the CLI:

* ``models``: ``dlrun bench mlp|cnn|lstm``, training samples/s beside PyTorch and numpy;
* ``gemm``: ``dlrun bench gemm``, dlrun's float32 matrix product beside OpenBLAS;
* ``cluster``: ``dlrun bench cluster``, N Ray workers beside one process;
* ``loader``: ``dlrun data bench`` (or ``dlrun bench loader``), the dataset loader.

``models`` and ``cluster`` time each measurement in a child process of their own
(``python -m dlrun.cli.bench.models`` / ``.cluster``, which print one JSON line). They take
the machine's cores for minutes: run them on a machine nobody else is using.
"""
