"""Saving and loading models: a folder with ``model.json`` and ``weights.npz``.

Nothing is pickled: the JSON describes the model (class, layer configs, compile
settings) and the arrays are read with ``allow_pickle=False``, so loading a model cannot
run code. A save is written under a temporary name and renamed into place, so a crash
mid-save leaves the previous model intact.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from dlrun.errors import DlrunError, ModelFileError, ShapeError

FORMAT = "dlrun.model"
VERSION = 1


def save_model(model, path, extra=None) -> Path:
    """Write ``model`` to the folder ``path`` (see the module docstring); ``extra(tmp)``,
    if given, adds files to the folder before it is renamed into place."""
    from dlrun import __version__

    model.require_built()
    path = Path(path)
    if path.exists() and not (path.is_dir() and ((path / "model.json").exists()
                                                 or not any(path.iterdir()))):
        raise ModelFileError(f"{path} exists and is not a dlrun model folder; "
                             "refusing to overwrite it")
    params = model.weights_params()
    arrays = {f"w{i}": p.value for i, p in enumerate(params)}
    opt_keys = []
    if model.optimizer is not None:
        for i, (k, v) in enumerate(sorted(model.optimizer.get_state().items())):
            arrays[f"o{i}"] = v
            opt_keys.append(k)
    meta = {
        "format": FORMAT, "format_version": VERSION, "dlrun_version": __version__,
        "class_name": type(model).__name__, "config": model.get_config(),
        "weights": [p.name for p in params],
        "training": {"seed": model.training.seed, "step": model.training.step,
                     "epoch": model.training.epoch},
        "compile": None if model.loss is None else model.compile_config() | {
            "optimizer": {"class_name": type(model.optimizer).__name__,
                          "config": model.optimizer.get_config(),
                          "iterations": model.optimizer.iterations},
            "optimizer_state": opt_keys},
    }
    write_dir_atomically(path, lambda tmp: _write_files(tmp, arrays, meta, extra))
    return path


def _write_files(folder: Path, arrays: dict, meta: dict, extra=None) -> None:
    with open(folder / "weights.npz", "wb") as f:
        np.savez(f, **arrays)
    (folder / "model.json").write_text(json.dumps(meta, indent=2))
    if extra is not None:
        extra(folder)


def write_dir_atomically(path: Path, write) -> None:
    """Call ``write(tmp)`` to fill a temporary folder beside ``path``, then rename it into
    place; until that rename, whatever was at ``path`` stays untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is swapped out first, then removed."""
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def read_meta(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"no saved model at {path}")
    if not path.is_dir() or not (path / "model.json").is_file():
        raise ModelFileError(f"{path} is not a dlrun model: expected a folder with "
                             "model.json and weights.npz (written by model.save)")
    try:
        meta = json.loads((path / "model.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}/model.json cannot be read as JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}/model.json does not describe a dlrun model")
    if not isinstance(meta.get("format_version", 0), int):
        raise ModelFileError(f"{path}/model.json has a malformed format_version "
                             f"{meta['format_version']!r}")
    if meta.get("format_version", 0) > VERSION:
        raise ModelFileError(f"{path} was written by a newer dlrun (format "
                             f"{meta['format_version']}); upgrade dlrun to load it")
    return meta


def load_model(path, compile: bool = True, custom_objects: dict | None = None):
    """Rebuild a model saved with ``model.save(path)``: layers, weights, and (with
    ``compile=True``) its loss, metrics, optimizer and optimizer state.

    ``custom_objects``: ``{name: function}`` for the user functions the model names (its
    loss function, a ``Lambda`` layer's function), as Keras takes them: a saved model holds
    no code."""
    from dlrun.engine import optimizers
    from dlrun.engine.custom_objects import custom_object_scope

    path = Path(path)
    meta = read_meta(path)
    if meta.get("class_name") not in MODEL_CLASSES:
        raise ModelFileError(f"{path}: unknown model class {meta.get('class_name')!r}")
    try:
        with custom_object_scope(custom_objects):
            model = model_from_config(meta["class_name"], meta["config"])
            c = meta.get("compile")
            if compile and c:
                opt = optimizers.from_config(c["optimizer"]["class_name"],
                                             c["optimizer"]["config"])
                model.compile(optimizer=opt, loss=c["loss"], metrics=c["metrics"],
                              loss_weights=c.get("loss_weights"))
        t = meta.get("training") if isinstance(meta.get("training"), dict) else {}
        model.training.seed = int(t.get("seed", model.training.seed))
        model.training.step = int(t.get("step", 0))
        model.training.epoch = int(t.get("epoch", 0))     # an annealed rate's epoch
    except DlrunError as e:
        raise ModelFileError(f"{path}: the saved model cannot be rebuilt: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}/model.json is malformed ({type(e).__name__}: {e})") \
            from None
    try:
        with np.load(path / "weights.npz", allow_pickle=False) as z:
            n = len(meta["weights"])
            weights = [z[f"w{i}"] for i in range(n)]
            if compile and c:
                model.optimizer.set_state({k: z[f"o{i}"] for i, k
                                           in enumerate(c.get("optimizer_state", []))})
                model.optimizer.iterations = c["optimizer"].get("iterations", 0)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{path}/weights.npz is missing or damaged ({e})") from None
    if model.input_shape is not None:
        try:
            model.set_weights(weights)
        except ShapeError as e:
            raise ModelFileError(f"{path}/weights.npz does not fit the model ({e})") from None
    return model


MODEL_CLASSES = ("Sequential", "Functional")


def model_from_config(class_name: str, config: dict):
    """A model with fresh weights from its ``get_config()`` dict: a Sequential's layers
    (built when the config has its input shape), or a functional model's graph."""
    from dlrun.engine import layers as layers_mod
    from dlrun.engine.models.model import Sequential

    if class_name == "Functional":
        from dlrun.engine.models.functional import from_config

        return from_config(config)
    if class_name != "Sequential":
        raise ModelFileError(f"unknown model class {class_name!r}; expected one of "
                             f"{', '.join(MODEL_CLASSES)}")
    model = Sequential([layers_mod.layer_from_config(e["class_name"], e["config"])
                        for e in config["layers"]], name=config.get("name"))
    if config.get("input_shape"):
        model.build(config["input_shape"])
    return model


def save_weights(model, path) -> Path:
    """Write every weight array, in :meth:`Model.get_weights` order, to one ``.npz`` file
    (``w0``, ``w1``, ...) via a temporary name and a rename, so a crash mid-write leaves
    the previous file intact."""
    model.require_built()
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder; save_weights writes one .npz file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **{f"w{i}": p.value for i, p in enumerate(model.weights_params())})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_weights(model, path) -> None:
    """Set a model's weights from a file written by :func:`save_weights` (same layers)."""
    model.require_built()
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{path} is not a readable weights file ({e})") from None
    need = len(model.weights_params())
    if sorted(arrays) != sorted(f"w{i}" for i in range(need)):
        raise ModelFileError(f"{path} holds {len(arrays)} arrays {sorted(arrays)[:4]}...; "
                             f"this model needs {need} (w0..w{need - 1}, from save_weights)")
    try:
        model.set_weights([arrays[f"w{i}"] for i in range(need)])
    except ShapeError as e:
        raise ModelFileError(f"{path} does not fit the model ({e})") from None
