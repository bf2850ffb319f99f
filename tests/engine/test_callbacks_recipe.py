"""The training-recipe callbacks: LearningRateScheduler, ReduceLROnPlateau, ModelCheckpoint,
CSVLogger, TerminateOnNaN (Keras 3 semantics), and stopping in the middle of an epoch."""
from __future__ import annotations

import csv

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, ModelFileError


def assert_same(ws, vs):
    assert len(ws) == len(vs)
    for w, v in zip(ws, vs):
        np.testing.assert_array_equal(w, v)


# -- LearningRateScheduler ------------------------------------------------------------------
@pytest.mark.parametrize("fn", [lambda epoch: 0.2 * 0.5 ** epoch,
                                lambda epoch, lr: lr * 0.5 if epoch else 0.2],
                         ids=["epoch", "epoch_lr"])
def test_scheduler_sets_each_epochs_rate(data, fn, make_model):
    x, y = data
    model = make_model()
    hist = model.fit(x, y, batch_size=10, epochs=4, shuffle=False, verbose=0,
                     callbacks=[dl.callbacks.LearningRateScheduler(fn)])
    want = [0.2 * 0.5 ** e for e in range(4)]
    assert hist.history["learning_rate"] == pytest.approx(want, rel=1e-15)
    # the same updates by hand: one full batch per epoch at that epoch's rate
    by_hand = make_model()
    for lr in want:
        by_hand.optimizer.learning_rate = lr
        by_hand.train_on_batch(x, y)
    assert_same(model.get_weights(), by_hand.get_weights())


def test_scheduler_errors(data, make_model):
    bad = dl.callbacks.LearningRateScheduler(lambda epoch: "fast")
    with pytest.raises(ConfigError, match="'fast'"):
        make_model().fit(*data, epochs=1, callbacks=[bad], verbose=0)
    scheduled = make_model(optimizer=dl.optimizers.SGD(dl.schedules.InverseSqrtDecay(0.1)))
    with pytest.raises(ConfigError, match="InverseSqrtDecay"):
        scheduled.fit(*data, epochs=1, verbose=0,
                      callbacks=[dl.callbacks.LearningRateScheduler(lambda e: 0.1)])
    with pytest.raises(ConfigError, match="0.1"):
        dl.callbacks.LearningRateScheduler(0.1)


# -- ReduceLROnPlateau ----------------------------------------------------------------------
def test_reduce_lr_on_plateau_patience_cooldown_min_lr(data, make_model, scripted):
    scores = [5, 4, 4, 4, 4, 4, 3, 3, 3, 3]
    model = make_model(lr=0.1)
    reduce = dl.callbacks.ReduceLROnPlateau(monitor="score", factor=0.5, patience=2,
                                            cooldown=1, min_delta=0.0, min_lr=0.02)
    hist = model.fit(*data, epochs=len(scores), verbose=0,
                     callbacks=[scripted(scores), reduce])
    # logged at each epoch's end, before that epoch's reduction (as Keras 3 logs it)
    assert hist.history["learning_rate"] == pytest.approx(
        [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.025, 0.02])
    assert model.optimizer.learning_rate == pytest.approx(0.02)


def test_reduce_lr_on_plateau_max_mode_and_errors(data, make_model, scripted):
    model = make_model(lr=0.1)
    reduce = dl.callbacks.ReduceLROnPlateau(monitor="score", factor=0.1, patience=1,
                                            mode="max")
    model.fit(*data, epochs=3, verbose=0, callbacks=[scripted([1, 2, 3]), reduce])
    assert model.optimizer.learning_rate == 0.1               # rising score: no reduction
    with pytest.raises(ConfigError, match="factor.*1.5"):
        dl.callbacks.ReduceLROnPlateau(factor=1.5)
    with pytest.raises(ConfigError, match="val_loss"):
        make_model().fit(*data, epochs=1, verbose=0,
                         callbacks=[dl.callbacks.ReduceLROnPlateau()])


# -- ModelCheckpoint ------------------------------------------------------------------------
def test_checkpoint_every_epoch_with_a_templated_path(data, tmp_path, make_model, scripted):
    script = scripted([0.0] * 3)
    ckpt = dl.callbacks.ModelCheckpoint(tmp_path / "m-{epoch:02d}-{loss:.2f}")
    hist = make_model().fit(*data, epochs=3, verbose=0, callbacks=[script, ckpt])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"m-{e + 1:02d}-{hist.history['loss'][e]:.2f}" for e in range(3)]
    for e, name in enumerate(names):
        loaded = dl.load_model(tmp_path / name)
        assert_same(loaded.get_weights(), script.weights[e])
        assert loaded.optimizer.iterations == (e + 1) * 1     # 10 samples, batch 32


def test_checkpoint_save_best_only_keeps_the_best_epoch(data, tmp_path, make_model, scripted):
    script = scripted([3.0, 2.0, 2.5, 1.0, 1.5])
    ckpt = dl.callbacks.ModelCheckpoint(tmp_path / "best", monitor="score",
                                        save_best_only=True)
    make_model().fit(*data, epochs=5, verbose=0, callbacks=[script, ckpt])
    assert ckpt.best == 1.0
    assert_same(dl.load_model(tmp_path / "best").get_weights(), script.weights[3])
    # mode max, weights only
    script = scripted([0.5, 0.9, 0.7])
    ckpt = dl.callbacks.ModelCheckpoint(tmp_path / "w.npz", monitor="score", mode="max",
                                        save_best_only=True, save_weights_only=True)
    make_model(seed=1).fit(*data, epochs=3, verbose=0, callbacks=[script, ckpt])
    fresh = make_model(seed=2)
    fresh.load_weights(tmp_path / "w.npz")
    assert_same(fresh.get_weights(), script.weights[1])
    with pytest.raises(ConfigError, match="'maybe'"):
        dl.callbacks.ModelCheckpoint(tmp_path / "x", mode="maybe")
    with pytest.raises(ConfigError, match="nope"):
        make_model().fit(*data, epochs=1, verbose=0, callbacks=[
            dl.callbacks.ModelCheckpoint(tmp_path / "x", monitor="nope", save_best_only=True)])


# -- TerminateOnNaN, with a checkpoint --------------------------------------------------------
def test_terminate_on_nan_stops_at_once_and_the_last_good_checkpoint_stays(data, tmp_path,
                                                                          make_model,
                                                                          poison_after):
    x, y = data
    batches = []

    class Count(dl.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append(batch)

    poison = poison_after(1)
    ckpt = dl.callbacks.ModelCheckpoint(tmp_path / "ckpt")
    stop = dl.callbacks.TerminateOnNaN(verbose=0)
    with pytest.warns(RuntimeWarning) as caught:
        hist = make_model().fit(x, y, batch_size=4, epochs=10, verbose=0,
                                callbacks=[ckpt, poison, Count(), stop])
    assert any("not saving epoch 3" in str(w.message) for w in caught)
    assert hist.epoch == [0, 1, 2]
    assert batches == [0, 1, 2, 0, 1, 2, 0]            # stopped after epoch 3's first batch
    assert stop.stopped_batch == (2, 0)
    assert np.isnan(hist.history["loss"][-1])
    assert_same(dl.load_model(tmp_path / "ckpt").get_weights(), poison.good)


# -- CSVLogger --------------------------------------------------------------------------------
def test_csv_logger_rows_and_append(data, tmp_path, make_model):
    path = tmp_path / "log.csv"
    hist = make_model().fit(*data, epochs=2, validation_data=data, verbose=0,
                            callbacks=[dl.callbacks.CSVLogger(path)])
    rows = list(csv.DictReader(open(path)))
    assert list(rows[0]) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for key in ("loss", "val_accuracy"):
        assert [float(r[key]) for r in rows] == pytest.approx(hist.history[key])
    make_model().fit(*data, epochs=3, initial_epoch=2, validation_data=data, verbose=0,
                     callbacks=[dl.callbacks.CSVLogger(path, append=True)])
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("epoch,") and lines[3].startswith("2,")
    make_model().fit(*data, epochs=1, verbose=0,
                     callbacks=[dl.callbacks.CSVLogger(path, separator=";")])
    assert path.read_text().splitlines()[0] == "epoch;accuracy;loss"


def test_load_weights_refuses_what_does_not_fit(data, tmp_path, make_model):
    model = make_model()
    model.save_weights(tmp_path / "w.npz")
    other = dl.Sequential([dl.layers.Dense(5, input_shape=(3,)),
                           dl.layers.Dense(2, activation="softmax")])
    with pytest.raises(ModelFileError, match="does not fit"):
        other.load_weights(tmp_path / "w.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelFileError, match="bad.npz"):
        model.load_weights(tmp_path / "bad.npz")
    single = dl.Sequential([dl.layers.Dense(2, activation="softmax", input_shape=(3,))])
    with pytest.raises(ModelFileError, match="needs 2"):
        single.load_weights(tmp_path / "w.npz")
