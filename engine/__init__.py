"""The graph engine: tensors, autodiff, planner and executor; layers, models, losses,
optimizers, metrics, callbacks and saving."""
from dlrun.engine.graph import Parameter, Placeholder, Tensor, apply
from dlrun.engine.model import Model, Sequential
from dlrun.engine.plan import Plan
from dlrun.engine.random import set_seed
from dlrun.engine.saving import load_model
from dlrun.engine.threads import set_threads

__all__ = ["Tensor", "Placeholder", "Parameter", "apply", "Plan", "Model", "Sequential",
           "set_seed", "load_model", "set_threads"]
