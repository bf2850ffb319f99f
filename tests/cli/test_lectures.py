"""The lectures' demonstrations reach their conclusions (seeded, a few seconds in all)."""
from __future__ import annotations

import csv
import struct
import zlib

import numpy as np
import pytest

from dlrun.cli import lectures as experiments
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
    for curve in ("loss", "accuracy"):
        assert read_png(tmp_path / f"{name}-{curve}.png").shape == (400, 640, 3)


def read_png(path) -> np.ndarray:
    """Decode the 8-bit RGB, filter-0 PNGs that dlrun.cli.plot writes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == \
            zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    w, h = struct.unpack(">II", chunks[b"IHDR"][:8])
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert not raw[:, 0].any()
    return raw[:, 1:].reshape(h, w, 3)


def test_line_plot_draws_each_series_in_its_colour(tmp_path):
    from dlrun.cli.plot import PALETTE, line_plot

    img = read_png(line_plot(tmp_path / "p.png", {"up": [0, 1, 2], "down": [2, 1, float("nan")]}))
    for color in PALETTE[:2]:
        assert (img == color).all(axis=2).sum() > 100
    assert (img == 255).all(axis=2).mean() > 0.8            # mostly white


def test_listing_and_unknown_name(capsys):
    assert experiments.main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in experiments.EXPERIMENTS)
    with pytest.raises(ConfigError, match="'bogus'"):
        experiments.run("bogus")
