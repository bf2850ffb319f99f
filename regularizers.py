"""Keras' ``keras.regularizers``: ``from dlrun.regularizers import l2``."""
from dlrun.engine.regularizers import (L1, L1L2, L2, Regularizer, get, l1, l1_l2, l2,
                                       register_regularizer, serialize)

__all__ = ["L1", "L1L2", "L2", "Regularizer", "get", "l1", "l1_l2", "l2",
           "register_regularizer", "serialize"]
