"""The model a ``dlrun train`` run trains: a zoo model with the run's recipe, or the model
a user's Python file defines (``--model FILE.py``)."""
from __future__ import annotations

from pathlib import Path

from dlrun.errors import ConfigError


def is_model_file(model: str) -> bool:
    """Whether ``--model`` names a Python file rather than a built-in model."""
    return model.endswith(".py") or "/" in model or "\\" in model


def model_from_file(path, input_shape: tuple, classes: int):
    """The model a user's Python file defines (what ``dlrun train --model FILE.py`` uses).

    The file is executed as a module (so it runs whatever code it holds: use only files
    you trust), with its own folder on ``sys.path`` for its imports. It defines either

    * ``build_model(input_shape, classes)``, called with the shape of one sample (no batch
      axis, e.g. ``(784,)`` or ``(1, 28, 28)``) and the number of classes, returning a
      dlrun model (``dl.Sequential`` or ``dl.Model``) whose output is a softmax over
      ``classes``; or
    * a module-level ``model``, such a model built already (used when there is no
      ``build_model``).

    The model may come compiled or not: ``dlrun train`` compiles it with the run's
    optimizer options, sparse categorical cross-entropy and accuracy. Every failure is a
    :class:`ConfigError` naming the file.
    """
    import importlib.util
    import sys

    from dlrun.engine.models.model import Model

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--model {path}: no such file (give a built-in model name or the "
                          "path of a Python file defining build_model(input_shape, classes))")
    spec = importlib.util.spec_from_file_location(f"dlrun_user_model_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--model {path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001  (the user's code: report whatever it raised)
        raise ConfigError(f"--model {path}: running the file raised {type(e).__name__}: "
                          f"{e}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    build = getattr(module, "build_model", None)
    if build is not None:
        if not callable(build):
            raise ConfigError(f"--model {path}: build_model is a {type(build).__name__}, "
                              "not a function")
        try:
            model = build(tuple(input_shape), int(classes))
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"--model {path}: build_model{(tuple(input_shape), classes)} "
                              f"raised {type(e).__name__}: {e}") from None
        what = "build_model returned"
    elif hasattr(module, "model"):
        model, what = module.model, "its module-level model is"
    else:
        raise ConfigError(f"--model {path} defines neither build_model(input_shape, classes) "
                          "nor a module-level model")
    if not isinstance(model, Model):
        raise ConfigError(f"--model {path}: {what} a {type(model).__name__}, not a dlrun "
                          "model (dl.Sequential or dl.Model)")
    if not model.ensure_built():
        model.build(input_shape)
    return model


def build_run_model(cfg, input_shape: tuple, classes: int):
    """The model ``cfg.model`` names: a zoo model with the run's recipe, or a file's."""
    from dlrun.engine.models import zoo

    if not is_model_file(cfg.model):
        return zoo.build(cfg.model, input_shape, classes, l2=cfg.l2, dropout=cfg.dropout,
                         shift=cfg.augment)
    given = [f"--{k}" for k in ("l2", "dropout", "augment") if getattr(cfg, k)]
    if given:
        raise ConfigError(f"{', '.join(given)} configure the built-in models; build them "
                          f"into the model in {cfg.model} instead")
    return model_from_file(cfg.model, input_shape, classes)
