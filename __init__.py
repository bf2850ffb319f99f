"""dlrun: a small, fast, distributed deep-learning framework built on Numba."""
__version__ = "0.1.0"
