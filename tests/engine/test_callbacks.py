"""Callbacks: the hook protocol, History, EarlyStopping (Keras semantics), progress output."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError


class Recorder(dl.callbacks.Callback):
    """Logs every hook call, with a copy of its logs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def _rec(self, hook, *args):
        self.calls.append((hook, *[dict(a) if isinstance(a, dict) else a for a in args]))

    def on_train_begin(self, logs=None): self._rec("train_begin")
    def on_train_end(self, logs=None): self._rec("train_end")
    def on_epoch_begin(self, epoch, logs=None): self._rec("epoch_begin", epoch)
    def on_epoch_end(self, epoch, logs=None): self._rec("epoch_end", epoch, logs)
    def on_train_batch_begin(self, batch, logs=None): self._rec("batch_begin", batch)
    def on_train_batch_end(self, batch, logs=None): self._rec("batch_end", batch, logs)


def test_custom_callback_receives_hooks_in_order(data, make_model):
    model = make_model()
    rec = Recorder()
    hist = model.fit(*data, batch_size=4, epochs=2, callbacks=[rec], verbose=0)
    expected = ["train_begin"]
    for e in range(2):
        expected += [("epoch_begin", e)]
        for b in range(3):                       # 10 samples in batches of 4
            expected += [("batch_begin", b), ("batch_end", b)]
        expected += [("epoch_end", e)]
    expected += ["train_end"]
    got = [c[0] if c[0].startswith("train_") else c[:2] for c in rec.calls]
    assert got == expected
    assert rec.model is model
    assert rec.params == {"epochs": 2, "steps": 3, "verbose": 0}
    epoch_logs = [c[2] for c in rec.calls if c[0] == "epoch_end"]
    assert [e["loss"] for e in epoch_logs] == hist.history["loss"]
    assert [e["accuracy"] for e in epoch_logs] == hist.history["accuracy"]
    assert all("loss" in c[2] for c in rec.calls if c[0] == "batch_end")


def test_callback_can_stop_training(data, make_model):
    class StopAfterTwo(dl.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    hist = make_model().fit(*data, epochs=10, callbacks=[StopAfterTwo()], verbose=0)
    assert hist.epoch == [0, 1]


def test_history_and_initial_epoch(data, make_model):
    hist = make_model().fit(*data, epochs=4, initial_epoch=1, validation_data=data, verbose=0)
    assert hist.epoch == [1, 2, 3]
    assert {k: len(v) for k, v in hist.history.items()} == \
        {"loss": 3, "accuracy": 3, "val_loss": 3, "val_accuracy": 3}


def test_non_callback_is_refused(data, make_model):
    with pytest.raises(ConfigError, match="print"):
        make_model().fit(*data, callbacks=[print], verbose=0)


# -- EarlyStopping ----------------------------------------------------------------------------
SCORES = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 4.1, 4.2, 4.3]


@pytest.mark.parametrize("patience", [1, 2, 4])
def test_early_stopping_after_patience_epochs_without_improvement(data, patience, make_model,
                                                                  scripted):
    """Keras: 'number of epochs with no improvement after which training will be
    stopped'. Best at epoch 2, so training stops at epoch 2 + patience."""
    script = scripted(SCORES)
    stop = dl.callbacks.EarlyStopping(monitor="score", patience=patience)
    hist = make_model().fit(*data, epochs=len(SCORES), callbacks=[script, stop], verbose=0)
    assert hist.epoch == list(range(2 + patience + 1))
    assert stop.stopped_epoch == 2 + patience and stop.best_epoch == 2 and stop.best == 3.0


def test_early_stopping_patience_zero_stops_at_first_non_improvement(data, make_model, scripted):
    script = scripted(SCORES)
    stop = dl.callbacks.EarlyStopping(monitor="score", patience=0)
    hist = make_model().fit(*data, epochs=len(SCORES), callbacks=[script, stop], verbose=0)
    assert hist.epoch == [0, 1, 2, 3]


def test_early_stopping_min_delta_and_max_mode(data, make_model, scripted):
    # improvements smaller than min_delta do not count
    script = scripted([5.0, 4.95, 4.9, 4.85, 4.8, 4.75])
    stop = dl.callbacks.EarlyStopping(monitor="score", patience=1, min_delta=0.1)
    hist = make_model().fit(*data, epochs=6, callbacks=[script, stop], verbose=0)
    assert stop.best_epoch == 0 and len(hist.epoch) < 6
    # mode="max": rising is improving
    script = scripted([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    stop = dl.callbacks.EarlyStopping(monitor="score", patience=0, mode="max")
    hist = make_model().fit(*data, epochs=6, callbacks=[script, stop], verbose=0)
    assert hist.epoch == list(range(6)) and stop.best_epoch == 5


def test_restore_best_weights(data, make_model, scripted):
    script = scripted(SCORES)
    stop = dl.callbacks.EarlyStopping(monitor="score", patience=3, restore_best_weights=True)
    model = make_model()
    model.fit(*data, epochs=len(SCORES), callbacks=[script, stop], verbose=0)
    assert len(script.weights) > 3
    for w, best in zip(model.get_weights(), script.weights[2]):
        np.testing.assert_array_equal(w, best)
    assert not np.array_equal(script.weights[2][0], script.weights[-1][0])


def test_without_restore_the_last_weights_stay(data, make_model, scripted):
    script = scripted(SCORES)
    stop = dl.callbacks.EarlyStopping(monitor="score", patience=1)
    model = make_model()
    model.fit(*data, epochs=len(SCORES), callbacks=[script, stop], verbose=0)
    for w, last in zip(model.get_weights(), script.weights[-1]):
        np.testing.assert_array_equal(w, last)


def test_early_stopping_on_val_loss_and_missing_monitor(data, make_model):
    stop = dl.callbacks.EarlyStopping(patience=0)             # monitors val_loss
    make_model().fit(*data, epochs=2, validation_data=data, callbacks=[stop], verbose=0)
    with pytest.raises(ConfigError, match="val_loss.*loss"):
        make_model().fit(*data, epochs=2, callbacks=[dl.callbacks.EarlyStopping()],
                         verbose=0)
    with pytest.raises(ConfigError, match="'maximum'"):
        dl.callbacks.EarlyStopping(mode="maximum")


# -- progress output ---------------------------------------------------------------------------
@pytest.mark.parametrize("verbose", [2, 1, "auto"])
def test_one_line_per_epoch_when_not_a_terminal(data, capsys, verbose, make_model):
    model = make_model()
    capsys.readouterr()
    model.fit(*data, batch_size=2, epochs=3, validation_data=data, verbose=verbose)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert "\r" not in out
    for e, line in enumerate(lines):
        assert line.startswith(f"Epoch {e + 1}/3")
        assert "loss:" in line and "accuracy:" in line and "val_loss:" in line


def test_verbose_zero_prints_nothing(data, capsys, make_model):
    model = make_model()
    capsys.readouterr()
    model.fit(*data, epochs=2, validation_split=0.2, verbose=0)
    model.evaluate(*data)
    model.predict(data[0])
    assert capsys.readouterr().out == ""


def test_live_bar_on_a_terminal(data, make_model):
    class Tty:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    tty = Tty()
    bar = dl.callbacks.ProgressBar(verbose=1, stream=tty, interval=0.0)
    make_model().fit(*data, batch_size=2, epochs=2, callbacks=[bar], verbose=0)
    assert tty.text.count("\n") == 2                 # one finished line per epoch
    assert tty.text.count("\r") > 2                  # redrawn in place between
    assert "5/5" in tty.text and "Epoch 2/2" in tty.text
