"""Keras' ``keras.losses``: the loss names ``compile(loss=...)`` takes, and how they are
resolved (:mod:`dlrun.engine.losses` builds them into the training graph)."""
from dlrun.engine.losses import ALIASES, LOSSES, canonical

__all__ = ["ALIASES", "LOSSES", "canonical"]
