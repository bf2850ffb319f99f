"""Augmentation layers: shifts as the lectures make them, rotations and zooms; shapes and
labels kept, deterministic for a seed, off at evaluation."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine.core.graph import Placeholder
from dlrun.engine.core.plan import Plan
from dlrun.errors import ConfigError, ShapeError
from dlrun.ops import Spec


def augment(layer, x, seed):
    """One training-mode pass of ``layer`` over the batch ``x`` with the engine's seed."""
    ph = Placeholder(Spec(x.shape, np.float32))
    layer.ensure_built(x.shape[1:])
    out = layer.call(ph, training=True)
    plan = Plan([ph], [out])
    np.copyto(plan.feed[ph], x)
    plan.run(seed=seed)
    return plan.value(out).copy()


def shifted(img, dy, dx, fill):
    """img (C, H, W) moved down by dy and right by dx, uncovered pixels = fill."""
    c, h, w = img.shape
    out = np.full_like(img, fill)
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_translation_is_a_whole_pixel_shift_within_the_factor():
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, (64, 2, 10, 8)).astype(np.float32)   # no pixel equals fill
    y = augment(dl.layers.RandomTranslation(0.2, 0.25, fill_value=-1.0), x, seed=3)
    assert y.shape == x.shape and y.dtype == x.dtype
    seen = set()
    for a, b in zip(x, y):
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if np.array_equal(shifted(a, dy, dx, -1.0), b)]
        assert len(hits) == 1, "every image is one shift of at most 2 pixels either way"
        seen.add(hits[0])
    assert len(seen) > 15                        # most of the 25 shifts occur in 64 draws


def test_rotation_and_zoom_move_pixels_but_keep_values():
    x = np.arange(8 * 1 * 9 * 9, dtype=np.float32).reshape(8, 1, 9, 9) + 1
    for layer in (dl.layers.RandomRotation(0.1), dl.layers.RandomZoom(0.3)):
        y = augment(layer, x, seed=11)
        assert y.shape == x.shape
        assert not np.array_equal(y, x)
        assert set(np.unique(y)) <= set(np.unique(x)) | {0.0}    # nearest pixel or fill
        assert y[0, 0, 4, 4] == x[0, 0, 4, 4]                      # the centre stays


def test_deterministic_for_a_seed_new_each_step_and_off_at_evaluation():
    x = np.random.default_rng(1).uniform(1, 2, (6, 1, 8, 8)).astype(np.float32)
    layer = dl.layers.RandomTranslation(0.25)
    a, b, c = augment(layer, x, 5), augment(layer, x, 5), augment(layer, x, 6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

    def model(seed):
        dl.set_seed(seed)
        m = dl.Sequential([dl.layers.RandomTranslation(0.2, input_shape=(1, 8, 8)),
                           dl.layers.RandomRotation(0.02), dl.layers.Flatten(),
                           dl.layers.Dense(3, activation="softmax")])
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return m

    labels = np.array([0, 1, 2, 0, 1, 2])
    m1 = model(0)
    h1 = m1.fit(x, labels, epochs=3, batch_size=3, verbose=0).history["loss"]
    m2 = model(0)
    h2 = m2.fit(x, labels, epochs=3, batch_size=3, verbose=0).history["loss"]
    assert h1 == h2
    for w1, w2 in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    # inference ignores the augmentation: same as the plain model with those weights
    plain = dl.Sequential([dl.layers.Flatten(input_shape=(1, 8, 8)),
                           dl.layers.Dense(3, activation="softmax")])
    plain.set_weights(m1.get_weights())
    np.testing.assert_array_equal(m1.predict(x), plain.predict(x))


def test_config_round_trip_and_errors(tmp_path):
    m = dl.Sequential([dl.layers.RandomTranslation(0.1, 0.2, fill_value=0.5,
                                                   input_shape=(1, 8, 8)),
                       dl.layers.RandomZoom(0.1), dl.layers.Flatten(),
                       dl.layers.Dense(2, activation="softmax")])
    m.save(tmp_path / "m")
    loaded = dl.load_model(tmp_path / "m")
    assert [l.get_config() for l in loaded.layers] == [l.get_config() for l in m.layers]
    with pytest.raises(ConfigError, match="1.5"):
        dl.layers.RandomTranslation(1.5)
    with pytest.raises(ConfigError, match="'big'"):
        dl.layers.RandomZoom("big")
    with pytest.raises(ShapeError, match="channels, height, width"):
        dl.Sequential([dl.layers.RandomRotation(0.1, input_shape=(64,))])
