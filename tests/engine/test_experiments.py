"""The lectures' demonstrations reach their conclusions (seeded, a few seconds in all)."""
from __future__ import annotations

import csv

import pytest

from dlrun.engine import experiments
from dlrun.errors import ConfigError


@pytest.mark.parametrize("name", sorted(experiments.EXPERIMENTS))
def test_conclusion_holds(name, tmp_path):
    lines = []
    result = experiments.run(name, out=tmp_path, echo=lines.append)
    assert result.holds, f"{result.claim}: {result.evidence}"
    assert "holds" in lines[-1] and result.evidence in lines[-1]
    for label, hist in result.histories.items():
        rows = list(csv.DictReader(open(tmp_path / f"{name}-{label}.csv")))
        assert len(rows) == len(hist["loss"])
        assert [float(r["loss"]) for r in rows] == pytest.approx(hist["loss"])


def test_listing_and_unknown_name(capsys):
    assert experiments.main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in experiments.EXPERIMENTS)
    with pytest.raises(ConfigError, match="'bogus'"):
        experiments.run("bogus")
