"""Parameter averaging (cluster.averaging): a pure numpy function, tested without Ray."""
from __future__ import annotations

import numpy as np
import pytest

from dlrun.cluster.averaging import average_into, nonfinite_workers, scratch_for
from dlrun.errors import ConfigError


def _worker(rng, shapes):
    return {name: rng.standard_normal(shape).astype(np.float32)
            for name, shape in shapes.items()}


SHAPES = {"dense/kernel": (5, 3), "dense/bias": (3,), "dense/kernel/velocity": (5, 3),
          "bn/moving_mean": (3,), "bn/moving_variance": (3,)}


def test_weighted_by_samples_into_the_given_buffers():
    rng = np.random.default_rng(0)
    workers = [_worker(rng, SHAPES) for _ in range(3)]
    for w in workers:                             # as the object store hands them back
        for a in w.values():
            a.flags.writeable = False
    samples = [100, 50, 50]
    out = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    ids = {k: id(v) for k, v in out.items()}
    assert average_into(out, workers, samples, scratch_for(out)) == []
    for k in SHAPES:
        ref = sum(n * w[k].astype(np.float64) for n, w in zip(samples, workers)) / 200
        np.testing.assert_allclose(out[k], ref, rtol=1e-6, atol=1e-6)
        assert id(out[k]) == ids[k] and out[k].dtype == np.float32


def test_one_worker_is_copied_exactly():
    rng = np.random.default_rng(1)
    w = _worker(rng, SHAPES)
    out = {k: np.empty(s, np.float32) for k, s in SHAPES.items()}
    average_into(out, [w], [37])
    for k in SHAPES:
        assert np.array_equal(out[k], w[k])


def test_equal_samples_is_the_plain_mean_and_zero_samples_count_nothing():
    a = {"w": np.array([1.0, 2.0], np.float32)}
    b = {"w": np.array([3.0, 6.0], np.float32)}
    c = {"w": np.array([100.0, 100.0], np.float32)}
    out = {"w": np.zeros(2, np.float32)}
    average_into(out, [a, b, c], [10, 10, 0])
    assert out["w"].tolist() == [2.0, 4.0]
    average_into(out, [a, b], [0, 0])             # nobody trained: the plain mean
    assert out["w"].tolist() == [2.0, 4.0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_contribution_is_refused_and_named(bad):
    rng = np.random.default_rng(2)
    workers = [_worker(rng, SHAPES) for _ in range(3)]
    workers[1]["bn/moving_variance"] = workers[1]["bn/moving_variance"].copy()
    workers[1]["bn/moving_variance"][2] = bad
    out = {k: np.full(s, 7.0, np.float32) for k, s in SHAPES.items()}
    assert average_into(out, workers, [1, 1, 1]) == [1]
    assert all((v == 7.0).all() for v in out.values())        # untouched
    assert nonfinite_workers(workers) == [1]


def test_integer_arrays_are_taken_not_averaged():
    out = {"count": np.zeros(1, np.int64), "w": np.zeros(1, np.float32)}
    ws = [{"count": np.array([5]), "w": np.array([1.0], np.float32)},
          {"count": np.array([5]), "w": np.array([2.0], np.float32)}]
    average_into(out, ws, [1, 1])
    assert out["count"][0] == 5 and out["w"][0] == 1.5


def test_mismatched_contributions_are_config_errors():
    out = {"w": np.zeros(2, np.float32)}
    with pytest.raises(ConfigError, match="missing \\['w'\\]"):
        average_into(out, [{"v": np.zeros(2, np.float32)}], [1])
    with pytest.raises(ConfigError, match="shape \\(3,\\)"):
        average_into(out, [{"w": np.zeros(3, np.float32)}], [1])
    with pytest.raises(ConfigError, match="one count per worker"):
        average_into(out, [{"w": np.zeros(2, np.float32)}], [1, 2])
    with pytest.raises(ConfigError, match=">= 0"):
        average_into(out, [{"w": np.zeros(2, np.float32)}], [-1])
