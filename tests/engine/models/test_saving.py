"""Saving and loading: round trips, resumed training, the file layout (no pickle), and
every way a path can fail to hold a model."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine.core.graph import apply
from dlrun.errors import ConfigError, ModelFileError


def make_model(seed=0, optimizer=None, rate=0.0):
    dl.set_seed(seed)
    model = dl.Sequential([dl.layers.Dense(5, activation="relu", input_shape=(6,)),
                           dl.layers.Dropout(rate),
                           dl.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=optimizer or dl.optimizers.SGD(learning_rate=0.1, momentum=0.9,
                                                           nesterov=True),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build((6,))                     # draw the weights now, while the seed is fresh
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, 8)


def assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


def test_round_trip(tmp_path, data):
    x, y = data
    model = make_model()
    for _ in range(3):
        model.train_on_batch(x, y)
    model.save(tmp_path / "m")
    loaded = dl.load_model(tmp_path / "m")
    assert_same_weights(model, loaded)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.get_config() == model.get_config()
    assert loaded.loss == model.loss
    assert [m.name for m in loaded.metrics] == ["accuracy"]
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.iterations == model.optimizer.iterations == 3
    sa, sb = model.optimizer.get_state(), loaded.optimizer.get_state()
    assert sorted(sa) == sorted(sb) and len(sa) == 4           # one velocity per weight
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
        assert np.any(sa[k] != 0)
    assert loaded.evaluate(x, y) == model.evaluate(x, y)


@pytest.mark.parametrize("opt,rate", [(dict(lr=0.1, momentum=0.9, nesterov=True), 0.0),
                                      (dict(lr=0.2), 0.0),
                                      (dict(lr=0.1, momentum=0.5), 0.4)],
                         ids=["nesterov", "plain", "with_dropout"])
def test_resumed_training_equals_uninterrupted(tmp_path, data, opt, rate):
    """Train 3 steps, save, load, train 3 more == train 6 steps. With dropout, the
    per-step dropout seeds must continue where they left off too."""
    x, y = data
    straight = make_model(optimizer=dl.optimizers.SGD(**opt), rate=rate)
    resumed = make_model(optimizer=dl.optimizers.SGD(**opt), rate=rate)
    for _ in range(3):
        straight.train_on_batch(x, y)
        resumed.train_on_batch(x, y)
    resumed.save(tmp_path / "ckpt")
    resumed = dl.load_model(tmp_path / "ckpt")
    for _ in range(3):
        a = straight.train_on_batch(x[:5], y[:5])
        b = resumed.train_on_batch(x[:5], y[:5])
        assert a == b
    assert_same_weights(straight, resumed)


OPTIMIZERS = {
    "adam_schedule": lambda: dl.optimizers.Adam(
        learning_rate=dl.schedules.LinearWarmup(dl.schedules.CosineDecay(0.01, 10), 2)),
    "adamw_clipnorm": lambda: dl.optimizers.AdamW(learning_rate=0.01, clipnorm=0.5),
    "rmsprop_momentum": lambda: dl.optimizers.RMSprop(momentum=0.5, clipvalue=0.1),
    "adagrad_decay": lambda: dl.optimizers.Adagrad(learning_rate=0.05, weight_decay=0.01,
                                                   global_clipnorm=1.0),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_resumes_bitwise(tmp_path, data, name):
    """Optimizer state, iterations (Adam's bias correction, the schedule's step) and
    config survive a save: 3 steps + save/load + 3 steps == 6 steps, bitwise."""
    x, y = data
    straight = make_model(optimizer=OPTIMIZERS[name](), rate=0.3)
    resumed = make_model(optimizer=OPTIMIZERS[name](), rate=0.3)
    for _ in range(3):
        straight.train_on_batch(x, y)
        resumed.train_on_batch(x, y)
    resumed.save(tmp_path / "ckpt")
    resumed = dl.load_model(tmp_path / "ckpt")
    assert type(resumed.optimizer) is type(straight.optimizer)
    assert resumed.optimizer.get_config() == straight.optimizer.get_config()
    assert resumed.optimizer.learning_rate == straight.optimizer.learning_rate
    for _ in range(3):
        assert straight.train_on_batch(x, y) == resumed.train_on_batch(x, y)
    assert_same_weights(straight, resumed)


def test_file_layout_is_json_and_npz_without_pickle(tmp_path, data):
    model = make_model()
    model.train_on_batch(*data)
    path = tmp_path / "m"
    model.save(path)
    assert sorted(os.listdir(path)) == ["model.json", "weights.npz"]
    assert sorted(os.listdir(tmp_path)) == ["m"]                # no temporary left behind
    meta = json.loads((path / "model.json").read_text())
    assert meta["class_name"] == "Sequential"
    assert [e["class_name"] for e in meta["config"]["layers"]] == ["Dense", "Dropout", "Dense"]
    with np.load(path / "weights.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert all(a.dtype != object for a in arrays.values())
    weights = model.get_weights()
    stored = [arrays[k] for k in sorted((k for k in arrays if k.startswith("w")),
                                        key=lambda k: int(k[1:]))]
    assert len(stored) == len(weights)
    for s, w in zip(stored, weights):
        np.testing.assert_array_equal(s, w)


def test_load_without_compile(tmp_path, data):
    model = make_model()
    model.save(tmp_path / "m")
    loaded = dl.load_model(tmp_path / "m", compile=False)
    assert loaded.loss is None
    np.testing.assert_array_equal(loaded.predict(data[0]), model.predict(data[0]))


def test_uncompiled_model_saves_and_loads(tmp_path, data):
    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Dense(2, input_shape=(6,))])
    model.save(tmp_path / "m")
    loaded = dl.load_model(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(data[0]), model.predict(data[0]))


def test_unbuilt_model_cannot_be_saved(tmp_path):
    with pytest.raises(ConfigError, match="input_shape"):
        dl.Sequential([dl.layers.Dense(2)]).save(tmp_path / "m")


# -- paths that do not hold a model ---------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m"
    make_model().save(path)
    return path


def test_missing_path(tmp_path):
    with pytest.raises(ModelFileError, match="no saved model"):
        dl.load_model(tmp_path / "nothing")


def test_not_a_model_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hello")
    (tmp_path / "f").write_text("hello")
    for p in (tmp_path / "d", tmp_path / "f"):
        with pytest.raises(ModelFileError, match="model.json"):
            dl.load_model(p)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"format": "other"}', "\xff\xfe",
                                  '{"format": "dlrun.model", "format_version": "1"}'])
def test_corrupt_or_foreign_json(saved, text):
    (saved / "model.json").write_text(text, encoding="latin-1")
    with pytest.raises(ModelFileError, match="model.json"):
        dl.load_model(saved)


def test_malformed_json_config(saved):
    meta = json.loads((saved / "model.json").read_text())
    del meta["config"]["layers"][0]["config"]["units"]
    (saved / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=str(saved)):
        dl.load_model(saved)
    meta = json.loads((saved / "model.json").read_text())
    del meta["config"]
    (saved / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="config"):
        dl.load_model(saved)


def test_newer_format_is_refused(saved):
    meta = json.loads((saved / "model.json").read_text())
    meta["format_version"] = 99
    (saved / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="newer"):
        dl.load_model(saved)


def rewrite_npz(path, change):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def damage_truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def damage_garbage(p):
    p.write_bytes(b"this is not an npz file at all" * 10)


def damage_flip_bytes(p):
    b = bytearray(p.read_bytes())
    for i in range(60, len(b) - 200, 7):             # inside the stored members
        b[i] ^= 0xFF
    p.write_bytes(bytes(b))


DAMAGES = {
    "deleted": lambda p: p.unlink(),
    "empty": lambda p: p.write_bytes(b""),
    "garbage": damage_garbage,
    "truncated": damage_truncate,
    "flipped_bytes": damage_flip_bytes,
    "array_missing": lambda p: rewrite_npz(p, lambda a: a.pop("w1")),
    "wrong_shape": lambda p: rewrite_npz(p, lambda a: a.update(w0=np.zeros((2, 2), np.float32))),
    "pickled_array": lambda p: p.write_bytes(_pickled_npz()),
}


def _pickled_npz() -> bytes:
    import io
    buf = io.BytesIO()
    np.savez(buf, w0=np.array([{"a": 1}], dtype=object))
    return buf.getvalue()


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_weights(saved, damage):
    DAMAGES[damage](saved / "weights.npz")
    with pytest.raises(ModelFileError, match="weights"):
        dl.load_model(saved)


# -- overwriting ----------------------------------------------------------------------------
def test_save_replaces_an_existing_model(tmp_path, data):
    path = tmp_path / "m"
    first, second = make_model(seed=1), make_model(seed=2)
    first.save(path)
    second.save(path)
    np.testing.assert_array_equal(dl.load_model(path).predict(data[0]), second.predict(data[0]))
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_save_into_an_empty_folder(tmp_path, data):
    (tmp_path / "m").mkdir()
    model = make_model()
    model.save(tmp_path / "m")
    assert_same_weights(dl.load_model(tmp_path / "m"), model)


def test_save_refuses_to_overwrite_something_else(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("precious")
    (tmp_path / "f").write_text("precious too")
    model = make_model()
    for p in (tmp_path / "d", tmp_path / "f"):
        with pytest.raises(ModelFileError, match="refusing"):
            model.save(p)
    assert (tmp_path / "d" / "thesis.tex").read_text() == "precious"
    assert (tmp_path / "f").read_text() == "precious too"


def boom(*args, **kwargs):
    raise OSError("disk full (simulated)")


@pytest.mark.parametrize("target", ["savez", "json"])
def test_failed_save_leaves_the_previous_model_intact(tmp_path, data, monkeypatch, target):
    path = tmp_path / "m"
    old = make_model(seed=1)
    old.save(path)
    before = {n: (path / n).read_bytes() for n in os.listdir(path)}
    if target == "savez":
        monkeypatch.setattr(np, "savez", boom)
    else:
        monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(OSError, match="simulated"):
        make_model(seed=2).save(path)
    monkeypatch.undo()
    assert {n: (path / n).read_bytes() for n in os.listdir(path)} == before
    assert sorted(os.listdir(tmp_path)) == ["m"]
    np.testing.assert_array_equal(dl.load_model(path).predict(data[0]), old.predict(data[0]))


def test_frozen_layers_stay_frozen_after_loading(tmp_path, data):
    model = make_model()
    model.layers[0].trainable = False
    model.save(tmp_path / "m")
    loaded = dl.load_model(tmp_path / "m")
    assert loaded.layers[0].trainable is False
    before = loaded.get_weights()
    loaded.train_on_batch(*data)
    after = loaded.get_weights()
    np.testing.assert_array_equal(after[0], before[0])
    assert not np.array_equal(after[2], before[2])


def test_custom_layer_loads_once_registered(tmp_path, data, monkeypatch):
    monkeypatch.setattr(dl.layers, "LAYERS", dict(dl.layers.LAYERS))

    class Halve(dl.layers.Layer):
        def call(self, x, training):
            return apply("leaky_relu", x, alpha=0.5)

    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Dense(3, input_shape=(6,)), Halve()])
    model.save(tmp_path / "m")
    with pytest.raises(ModelFileError, match="Halve.*register_layer"):
        dl.load_model(tmp_path / "m")
    dl.layers.register_layer(Halve)
    np.testing.assert_array_equal(dl.load_model(tmp_path / "m").predict(data[0]),
                                  model.predict(data[0]))


def test_npz_is_a_zip_of_npy_members(saved):
    # the format other tools rely on: a plain zip whose members are .npy arrays
    with zipfile.ZipFile(saved / "weights.npz") as z:
        assert all(n.endswith(".npy") for n in z.namelist())
