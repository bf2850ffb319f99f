"""Keras' ``keras.layers``: every dlrun layer (``from dlrun.layers import Dense``), and
Keras 2's sub-modules by family (``from dlrun.layers.core import Dense, Activation``), so
lecture code written for Keras imports unchanged. The layers live in
:mod:`dlrun.engine.layers`; this package names them."""
from dlrun.engine import layers as _engine_layers

# the engine's public names, listed once there (its __all__)
globals().update({name: getattr(_engine_layers, name) for name in _engine_layers.__all__})
__all__ = list(_engine_layers.__all__)
