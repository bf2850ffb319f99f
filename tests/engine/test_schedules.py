"""Learning-rate schedules: values against their formulas, composition, config, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

import dlrun as dl
from dlrun.engine import schedules
from dlrun.errors import ConfigError

STEPS = [0, 1, 2, 5, 9, 10, 11, 37, 100, 1000]


def values(s):
    return np.array([s(t) for t in STEPS])


def test_constant():
    np.testing.assert_array_equal(values(dl.schedules.Constant(0.3)), 0.3)


def test_step_decay():
    s = dl.schedules.StepDecay(0.8, step_size=10, factor=0.5)
    want = [0.8 * 0.5 ** (t // 10) for t in STEPS]
    np.testing.assert_allclose(values(s), want, rtol=1e-15)
    assert s(9) == 0.8 and s(10) == 0.4


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential_decay(staircase):
    s = dl.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.96, staircase=staircase)
    want = [0.1 * 0.96 ** ((t // 10) if staircase else t / 10) for t in STEPS]
    np.testing.assert_allclose(values(s), want, rtol=1e-15)


def test_inverse_sqrt_decay_is_the_lectures_rule():
    s = dl.schedules.InverseSqrtDecay(0.5)
    np.testing.assert_allclose(values(s), [0.5 / math.sqrt(t + 1) for t in STEPS], rtol=1e-15)
    per_epoch = dl.schedules.InverseSqrtDecay(0.5, decay_steps=10)
    assert per_epoch(30) == pytest.approx(0.5 / 2)


def test_cosine_decay():
    s = dl.schedules.CosineDecay(0.2, decay_steps=100, alpha=0.1)
    want = [0.2 * (0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 100) / 100)) + 0.1)
            for t in STEPS]
    np.testing.assert_allclose(values(s), want, rtol=1e-15)
    assert s(0) == pytest.approx(0.2) and s(50) == pytest.approx(0.11) and s(10**6) == \
        pytest.approx(0.02)


def test_linear_warmup_then_another_schedule():
    after = dl.schedules.CosineDecay(0.1, decay_steps=50)
    s = dl.schedules.LinearWarmup(after, warmup_steps=10, initial_learning_rate=0.01)
    want = [0.01 + (0.1 - 0.01) * t / 10 if t < 10 else
            0.1 * 0.5 * (1 + math.cos(math.pi * min(t - 10, 50) / 50)) for t in STEPS]
    np.testing.assert_allclose(values(s), want, rtol=1e-14)
    # to a constant rate, from zero
    w = dl.schedules.LinearWarmup(0.4, warmup_steps=4)
    assert [w(t) for t in range(6)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])


@pytest.mark.parametrize("s", [
    dl.schedules.Constant(0.3), dl.schedules.StepDecay(0.1, 5, 0.3),
    dl.schedules.ExponentialDecay(0.1, 7, 0.5, staircase=True),
    dl.schedules.InverseSqrtDecay(0.2, 3), dl.schedules.CosineDecay(0.1, 20, 0.05),
    dl.schedules.LinearWarmup(dl.schedules.StepDecay(0.1, 5), 3, 0.001)],
    ids=lambda s: type(s).__name__)
def test_config_round_trip(s):
    import json

    data = json.loads(json.dumps(schedules.serialize(s)))
    other = schedules.deserialize(data)
    assert type(other) is type(s)
    assert other.get_config() == s.get_config()
    assert values(other).tolist() == values(s).tolist()


def test_errors_name_the_value():
    with pytest.raises(ConfigError, match="decay_steps.*0"):
        dl.schedules.ExponentialDecay(0.1, 0, 0.5)
    with pytest.raises(ConfigError, match="initial_learning_rate.*-1"):
        dl.schedules.CosineDecay(-1, 10)
    with pytest.raises(ConfigError, match="alpha.*2"):
        dl.schedules.CosineDecay(0.1, 10, alpha=2)
    with pytest.raises(ConfigError, match="'soon'"):
        dl.schedules.LinearWarmup("soon", 10)
    with pytest.raises(ConfigError, match="Bogus"):
        schedules.deserialize({"class_name": "Bogus", "config": {}})
