"""Training checkpoints: everything needed to continue a run bit for bit.

A checkpoint is a saved model folder (``model.json`` + ``weights.npz``: config, weights,
optimizer state and iterations, the dropout seed and step) plus ``checkpoint.json``: the
number of epochs done, the state of the generator that shuffles each epoch, and the
SHA-256 of every file, so a truncated or edited checkpoint is refused rather than
silently resumed. Nothing is pickled. A checkpoint is written to a temporary folder and
renamed over the previous one, so a crash while saving leaves the previous one intact.

    model = dl.load_checkpoint("run/checkpoint")
    model.fit(x, y, epochs=20, initial_epoch=model.completed_epochs)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from dlrun.engine.models.training import ResumePoint
from dlrun.errors import DlrunError, ModelFileError

FORMAT = "dlrun.checkpoint"
VERSION = 1
FILES = ("model.json", "weights.npz")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _body_hash(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save_checkpoint(model, path, epoch: int) -> Path:
    """Save a resumable checkpoint of ``model`` after ``epoch`` completed epochs."""
    from dlrun.engine.models.saving import save_model

    state = model.training
    rng = state.shuffle_rng

    def add_checkpoint_json(folder: Path) -> None:
        meta = {"format": FORMAT, "format_version": VERSION, "epoch": int(epoch),
                "step": state.step, "seed": state.seed,
                "shuffle_rng": None if rng is None else rng.bit_generator.state}
        meta["sha256"] = {name: _sha256(folder / name) for name in FILES}
        meta["sha256"]["checkpoint.json"] = _body_hash(meta)
        (folder / "checkpoint.json").write_text(json.dumps(meta, indent=2))

    return save_model(model, Path(path), extra=add_checkpoint_json)


def read_checkpoint(path) -> dict:
    """The checkpoint's ``checkpoint.json``, after checking every file against its hash."""
    path = Path(path)
    if not (path / "checkpoint.json").is_file():
        raise ModelFileError(f"{path} is not a dlrun checkpoint: it has no checkpoint.json "
                             "(checkpoints are written by dlrun.callbacks.BackupAndRestore "
                             "and dlrun train)")
    try:
        meta = json.loads((path / "checkpoint.json").read_text())
        ok = isinstance(meta, dict) and meta.get("format") == FORMAT
        hashes = meta.get("sha256") if ok else None
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}/checkpoint.json cannot be read as JSON ({e}); the "
                             "checkpoint is damaged") from None
    if not ok or not isinstance(hashes, dict):
        raise ModelFileError(f"{path}/checkpoint.json does not describe a dlrun checkpoint")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > VERSION:
        raise ModelFileError(f"{path} was written by a newer dlrun (checkpoint format "
                             f"{meta.get('format_version')!r}); upgrade dlrun to resume it")
    if hashes.get("checkpoint.json") != _body_hash(meta):
        raise ModelFileError(f"{path}/checkpoint.json was modified after it was written "
                             "(its checksum does not match); refusing to resume from it")
    for name in FILES:
        f = path / name
        if not f.is_file():
            raise ModelFileError(f"checkpoint {path} lacks {name}; it is incomplete")
        if _sha256(f) != hashes.get(name):
            raise ModelFileError(f"{path}/{name} is truncated or was modified (its SHA-256 "
                                 "does not match the checkpoint's); refusing to resume from it")
    return meta


def _resume_point(path: Path, meta: dict) -> ResumePoint:
    """What ``fit`` needs to continue: the epoch and the shuffling generator's state."""
    try:
        epoch = int(meta["epoch"])
        state = meta["shuffle_rng"]
        if state is not None:
            if state.get("bit_generator") != "PCG64":
                raise ValueError(f"unknown generator {state.get('bit_generator')!r}")
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = state
            state = rng.bit_generator.state
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ModelFileError(f"{path}/checkpoint.json is malformed ({type(e).__name__}: "
                             f"{e})") from None
    return ResumePoint(epoch, state)


def load_checkpoint(path, custom_objects: dict | None = None):
    """A model rebuilt from a checkpoint, ready to continue training: call
    ``model.fit(..., initial_epoch=model.completed_epochs)`` with the same data and
    batch size, and it goes on exactly as the interrupted run would have.
    ``custom_objects``: the user functions the model names, as for ``load_model``."""
    from dlrun.engine.models.saving import load_model

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"no checkpoint at {path}")
    meta = read_checkpoint(path)
    model = load_model(path, custom_objects=custom_objects)
    if model.loss is None:
        raise ModelFileError(f"{path} holds an uncompiled model; a checkpoint needs its "
                             "optimizer to resume")
    model.training.resume = _resume_point(path, meta)
    model.completed_epochs = model.training.resume.epoch
    return model


def restore_checkpoint(model, path) -> int:
    """Put a checkpoint's weights, optimizer state and training position into ``model``
    (built and compiled like the one saved); returns the number of completed epochs."""
    from dlrun.engine.models.saving import load_model

    path = Path(path)
    meta = read_checkpoint(path)
    saved = load_model(path, custom_objects=user_functions(model))
    try:
        model.set_weights(saved.get_weights())
    except DlrunError as e:
        raise ModelFileError(f"checkpoint {path} does not fit this model ({e})") from None
    if model.optimizer is None or type(model.optimizer) is not type(saved.optimizer):
        raise ModelFileError(f"checkpoint {path} was trained with "
                             f"{type(saved.optimizer).__name__}; compile this model with it "
                             "to resume")
    # optimizer state is keyed by weight name; layer names differ between instances, so
    # map the saved weights to this model's by position
    ours = [p.name for p in model.weights_params()]
    theirs = [p.name for p in saved.weights_params()]
    model.optimizer.state = {mine: saved.optimizer.state[name]
                             for mine, name in zip(ours, theirs)
                             if name in saved.optimizer.state}
    model.optimizer.iterations = saved.optimizer.iterations
    model.optimizer.restore_learning_rate(saved.optimizer)
    model.training.seed, model.training.step = saved.training.seed, saved.training.step
    model.training.resume = _resume_point(path, meta)
    model.completed_epochs = model.training.resume.epoch
    return model.completed_epochs


def user_functions(model) -> dict:
    """``{name: function}`` of the user functions ``model`` names (its loss functions, its
    Lambda layers'): what loading a checkpoint of it needs."""
    from dlrun.engine.losses import UserLoss

    found = {}
    for loss in model.compiled_loss.loss_names if model.compiled_loss else ():
        if isinstance(loss, UserLoss):
            found[loss.name] = loss.fn
    for layer in model.layers:
        fn = getattr(layer, "function", None)
        if callable(fn):
            found[getattr(fn, "__name__", "")] = fn
    return found
