"""Models and checkpoints saved by an earlier dlrun still load, predict and resume.

``data/v0.1`` was written by the commit before the redesign (see its README); the
expected outputs were computed by that commit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dlrun as dl

DATA = Path(__file__).parent / "data" / "v0.1"


@pytest.fixture(scope="module")
def expected():
    with np.load(DATA / "expected.npz") as z:
        return dict(z)


def test_sequential_mlp_loads_and_predicts(expected):
    model = dl.load_model(DATA / "mlp")
    np.testing.assert_allclose(model.predict(expected["x"]), expected["mlp"], rtol=1e-6,
                               atol=1e-7)
    loss, acc = model.evaluate(expected["x"], expected["y"])
    np.testing.assert_allclose([loss, acc], expected["mlp_eval"], rtol=1e-6)


def test_functional_model_with_batch_norm_loads_and_predicts(expected):
    model = dl.load_model(DATA / "functional")
    digit, parity = model.predict(expected["x"])
    np.testing.assert_allclose(digit, expected["digit"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(parity, expected["parity"], rtol=1e-6, atol=1e-7)


def test_lstm_loads_and_predicts(expected):
    model = dl.load_model(DATA / "lstm")
    seq = expected["x"].reshape(12, 6, 6)
    np.testing.assert_allclose(model.predict(seq), expected["lstm"], rtol=1e-5, atol=1e-6)


def test_checkpoint_resumes_as_the_old_code_did(expected):
    model = dl.load_checkpoint(DATA / "mlp-checkpoint")
    assert model.completed_epochs == 2
    model.fit(expected["x"], expected["y"], batch_size=4, epochs=3,
              initial_epoch=model.completed_epochs, verbose=0)
    got = np.concatenate([w.ravel() for w in model.get_weights()])
    np.testing.assert_allclose(got, expected["mlp_resumed_weights"], rtol=1e-5, atol=1e-6)
