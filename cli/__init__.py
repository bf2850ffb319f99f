"""dlrun's programs, the top of the import order (nothing else in dlrun imports them).

* ``main.py``, ``data.py``, ``info.py``: the ``dlrun`` command line (click); heavy imports
  happen inside the commands, so ``dlrun --help`` answers at once.
* ``runs.py``: a training run as ``dlrun train`` does it (dataset, model, fit, run folder).
* ``lectures.py``, ``plot.py``: the lectures' demonstrations
  (``python -m dlrun.cli.lectures``) and the PNG curves they draw.
* ``bench/``: the benchmarks behind ``dlrun bench`` and ``dlrun data bench``.
"""
