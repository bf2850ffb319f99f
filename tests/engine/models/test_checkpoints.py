"""Checkpoints and resume: a run interrupted after epoch k and resumed ends bitwise equal
to the uninterrupted run; damaged checkpoints are refused; the previous one is kept."""
from __future__ import annotations

import json

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine.models import checkpoints
from dlrun.errors import ModelFileError

EPOCHS = 4


def make_model(seed=0, optimizer=None):
    dl.set_seed(seed)
    model = dl.Sequential([dl.layers.Dense(6, activation="relu", input_shape=(5,),
                                           kernel_regularizer=dl.regularizers.l2(1e-3)),
                           dl.layers.Dropout(0.3),
                           dl.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=optimizer or dl.optimizers.Adam(
                      learning_rate=dl.schedules.ExponentialDecay(0.01, 5, 0.9)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 5)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)


def fit(model, data, **kw):
    x, y = data
    return model.fit(x, y, batch_size=8, validation_data=(x[:10], y[:10]), verbose=0, **kw)


@pytest.fixture(scope="module")
def straight(data):
    """The uninterrupted run: final weights and history."""
    model = make_model()
    hist = fit(model, data, epochs=EPOCHS)
    return model.get_weights(), hist.history


def assert_bitwise(weights, other):
    assert len(weights) == len(other)
    for a, b in zip(weights, other):
        np.testing.assert_array_equal(a, b)


class Crash(dl.callbacks.Callback):
    """Interrupts training at the end of epoch ``k`` (after the callbacks before it)."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.k:
            raise KeyboardInterrupt


@pytest.mark.parametrize("k", [1, 2])
def test_load_checkpoint_and_initial_epoch_resume_bitwise(data, straight, tmp_path, k):
    first = make_model()
    fit(first, data, epochs=k, callbacks=[
        dl.callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False)])
    model = dl.load_checkpoint(tmp_path / "latest")
    assert model.completed_epochs == k
    hist = fit(model, data, epochs=EPOCHS, initial_epoch=model.completed_epochs)
    assert_bitwise(model.get_weights(), straight[0])
    for key, values in straight[1].items():
        assert hist.history[key] == values[k:], key


def test_backup_and_restore_continues_an_interrupted_run(data, straight, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), data, epochs=EPOCHS,
            callbacks=[dl.callbacks.BackupAndRestore(tmp_path / "b"), Crash(1)])
    assert checkpoints.read_checkpoint(tmp_path / "b" / "latest")["epoch"] == 2
    assert checkpoints.read_checkpoint(tmp_path / "b" / "previous")["epoch"] == 1
    # a new process would build and compile the same model, then fit with the callback
    model = make_model(seed=123)
    backup = dl.callbacks.BackupAndRestore(tmp_path / "b")
    hist = fit(model, data, epochs=EPOCHS, callbacks=[backup])
    assert backup.restored_epoch == 2 and hist.epoch == [2, 3]
    assert_bitwise(model.get_weights(), straight[0])
    assert not (tmp_path / "b").exists()              # deleted once training ended


def flip_byte(path):
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0x01
    path.write_bytes(bytes(b))


def truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def edit_epoch(path):
    meta = json.loads(path.read_text())
    meta["epoch"] = 3
    path.write_text(json.dumps(meta))


def edit_weights_json(path):
    meta = json.loads(path.read_text())
    meta["training"]["step"] += 1
    path.write_text(json.dumps(meta))


DAMAGES = [("weights.npz", flip_byte, "weights.npz is truncated or was modified"),
           ("weights.npz", truncate, "weights.npz is truncated or was modified"),
           ("model.json", edit_weights_json, "model.json is truncated or was modified"),
           ("checkpoint.json", edit_epoch, "checkpoint.json was modified"),
           ("checkpoint.json", truncate, "cannot be read as JSON"),
           ("weights.npz", lambda p: p.unlink(), "lacks weights.npz")]


@pytest.mark.parametrize("name, damage, message", DAMAGES,
                         ids=[f"{n}-{d.__name__}" for n, d, _ in DAMAGES])
def test_damaged_checkpoint_is_refused_and_the_previous_one_used(data, straight, tmp_path,
                                                                 name, damage, message):
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), data, epochs=EPOCHS,
            callbacks=[dl.callbacks.BackupAndRestore(tmp_path), Crash(1)])
    damage(tmp_path / "latest" / name)
    with pytest.raises(ModelFileError, match=message):
        dl.load_checkpoint(tmp_path / "latest")
    model = make_model(seed=5)
    backup = dl.callbacks.BackupAndRestore(tmp_path)
    with pytest.warns(RuntimeWarning, match="previous checkpoint"):
        fit(model, data, epochs=EPOCHS, callbacks=[backup])
    assert backup.restored_epoch == 1
    assert_bitwise(model.get_weights(), straight[0])


def test_without_a_previous_checkpoint_damage_is_an_error(data, tmp_path):
    fit(make_model(), data, epochs=1, callbacks=[
        dl.callbacks.BackupAndRestore(tmp_path, double_checkpoint=False,
                                      delete_checkpoint=False)])
    flip_byte(tmp_path / "latest" / "weights.npz")
    with pytest.raises(ModelFileError, match="refusing to resume"):
        fit(make_model(), data, epochs=2, callbacks=[dl.callbacks.BackupAndRestore(tmp_path)])
    with pytest.raises(ModelFileError, match="no checkpoint"):
        dl.load_checkpoint(tmp_path / "nothing")
    with pytest.raises(ModelFileError, match="checkpoint.json"):
        make_model().save(tmp_path / "plain")
        dl.load_checkpoint(tmp_path / "plain")


def test_a_crash_while_saving_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    backup = dl.callbacks.BackupAndRestore(tmp_path, double_checkpoint=False,
                                           delete_checkpoint=False)
    fit(make_model(), data, epochs=1, callbacks=[backup])
    before = {p.name: p.read_bytes() for p in (tmp_path / "latest").iterdir()}

    def broken(path):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "_sha256", broken)
    model = make_model()
    with pytest.raises(OSError, match="disk full"):
        fit(model, data, epochs=3, callbacks=[backup])
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (tmp_path / "latest").iterdir()}
    assert after == before
    assert checkpoints.read_checkpoint(tmp_path / "latest")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]   # no temporaries


def test_nan_epochs_are_not_checkpointed(data, tmp_path, poison_after):
    poison = poison_after(1)
    backup = dl.callbacks.BackupAndRestore(tmp_path)
    with pytest.warns(RuntimeWarning):
        fit(make_model(), data, epochs=EPOCHS, callbacks=[backup, poison,
                                                          dl.callbacks.TerminateOnNaN(0)])
    model = dl.load_checkpoint(tmp_path / "latest")     # kept: training ended on NaN
    assert model.completed_epochs == 2
    assert_bitwise(model.get_weights(), poison.good)


def test_checkpoint_holds_json_and_npz_only(data, tmp_path):
    fit(make_model(), data, epochs=1, callbacks=[
        dl.callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False)])
    latest = tmp_path / "latest"
    assert sorted(p.name for p in latest.iterdir()) == ["checkpoint.json", "model.json",
                                                         "weights.npz"]
    meta = json.loads((latest / "checkpoint.json").read_text())
    assert meta["epoch"] == 1 and meta["shuffle_rng"]["bit_generator"] == "PCG64"
    with np.load(latest / "weights.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
