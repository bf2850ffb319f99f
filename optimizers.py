"""Keras' ``keras.optimizers``: ``from dlrun.optimizers import SGD, Adam``."""
from dlrun.engine.optimizers import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, get

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "get"]
