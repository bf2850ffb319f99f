"""Keras' ``keras.models``: ``from dlrun.models import Sequential, Model, load_model``."""
from dlrun.engine.models.model import Model, Sequential
from dlrun.engine.models.saving import load_model, model_from_config, save_model

__all__ = ["Model", "Sequential", "load_model", "model_from_config", "save_model"]
