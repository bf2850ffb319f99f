"""engine/layers/augment.py: RandomTranslation, RandomRotation and RandomZoom through the
harness (the identity at inference), shifts as the lectures make them, rotations and zooms
that keep shapes and values, deterministic for a seed and new each step, configs in saved
models, and the errors."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.errors import ConfigError, ShapeError

L = dl.layers


def shifted(img, dy, dx, fill):
    """img (C, H, W) moved down by dy and right by dx, uncovered pixels = fill."""
    _, h, w = img.shape
    out = np.full_like(img, fill)
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


# -- through the harness: the identity at inference ----------------------------------------------
# (their training forward draws pixels, which has no gradient: checked at inference)
def test_random_translation(check_layer):
    check_layer(L.RandomTranslation, (2, 5, 4), lambda x: x, training=False,
                height_factor=0.2)
    check_layer(L.RandomTranslation, (1, 4, 4), lambda x: x, training=False,
                height_factor=0.1, width_factor=0.3, fill_value=0.5)


def test_random_rotation(check_layer):
    check_layer(L.RandomRotation, (1, 4, 5), lambda x: x, training=False, factor=0.1,
                fill_value=-1.0)


def test_random_zoom(check_layer):
    check_layer(L.RandomZoom, (3, 4, 4), lambda x: x, training=False, factor=0.3)


# -- in training ---------------------------------------------------------------------------------
def test_translation_is_a_whole_pixel_shift_within_the_factor(run_layer):
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, (64, 2, 10, 8)).astype(np.float32)   # no pixel equals fill
    y = run_layer(L.RandomTranslation(0.2, 0.25, fill_value=-1.0), x, training=True, seed=3)
    assert y.shape == x.shape and y.dtype == x.dtype
    seen = set()
    for a, b in zip(x, y):
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if np.array_equal(shifted(a, dy, dx, -1.0), b)]
        assert len(hits) == 1, "every image is one shift of at most 2 pixels either way"
        seen.add(hits[0])
    assert len(seen) > 15                        # most of the 25 shifts occur in 64 draws


def test_rotation_and_zoom_move_pixels_but_keep_values(run_layer):
    x = np.arange(8 * 1 * 9 * 9, dtype=np.float32).reshape(8, 1, 9, 9) + 1
    for layer in (L.RandomRotation(0.1), L.RandomZoom(0.3)):
        y = run_layer(layer, x, training=True, seed=11)
        assert y.shape == x.shape
        assert not np.array_equal(y, x)
        assert set(np.unique(y)) <= set(np.unique(x)) | {0.0}    # nearest pixel or fill
        assert y[0, 0, 4, 4] == x[0, 0, 4, 4]                      # the centre stays


def test_deterministic_for_a_seed_new_each_step_and_off_at_evaluation(run_layer):
    x = np.random.default_rng(1).uniform(1, 2, (6, 1, 8, 8)).astype(np.float32)
    layer = L.RandomTranslation(0.25)
    a, b, c = (run_layer(layer, x, training=True, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

    def model(seed):
        dl.set_seed(seed)
        m = dl.Sequential([L.RandomTranslation(0.2, input_shape=(1, 8, 8)),
                           L.RandomRotation(0.02), L.Flatten(),
                           L.Dense(3, activation="softmax")])
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
    plain = dl.Sequential([L.Flatten(input_shape=(1, 8, 8)), L.Dense(3, activation="softmax")])
    plain.set_weights(m1.get_weights())
    np.testing.assert_array_equal(m1.predict(x), plain.predict(x))


def test_saved_models_keep_the_configs(tmp_path):
    m = dl.Sequential([L.RandomTranslation(0.1, 0.2, fill_value=0.5, input_shape=(1, 8, 8)),
                       L.RandomZoom(0.1), L.Flatten(), L.Dense(2, activation="softmax")])
    m.save(tmp_path / "m")
    loaded = dl.load_model(tmp_path / "m")
    assert [la.get_config() for la in loaded.layers] == [la.get_config() for la in m.layers]


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="1.5"):
        L.RandomTranslation(1.5)
    with pytest.raises(ConfigError, match="'big'"):
        L.RandomZoom("big")
    with pytest.raises(ConfigError, match=r"zoom factor must be in \[0, 1\)"):
        L.RandomZoom(1.0)
    with pytest.raises(ShapeError, match="channels, height, width"):
        dl.Sequential([L.RandomRotation(0.1, input_shape=(64,))])
