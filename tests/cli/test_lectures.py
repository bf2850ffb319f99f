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


def png_pixels(path) -> np.ndarray:
    """A PNG that matplotlib wrote, decoded by Pillow, as gray levels."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def test_gradient_pictures_with_tiny_settings(tmp_path):
    """The saliency and Deep Dream demonstrations on a CNN trained one epoch on 300
    images: the true class's saliency sits on the digit, the ascent raises the score it
    climbs and stays in the data's range, and the pictures decode."""
    from dlrun.cli import saliency as sal

    result = experiments.saliency(epochs=1, samples=300, images=4)
    assert result.holds, result.evidence
    model, probe, _, (xt, yt) = experiments._trained_cnn("mnist-5k", 300, 1)
    ratio = sal.inside_outside(sal.saliency_maps(model, xt[:4], yt[:4]), xt[:4])
    # against maps that ignore the image: noise scores about 1 on the same measure
    noise = np.random.default_rng(0).uniform(size=(4, 28, 28))
    assert abs(sal.inside_outside(noise, xt[:4]).mean() - 1) < 0.1
    assert ratio.min() > 1.5, ratio
    start = np.full((1, 1, 28, 28), 0.5, np.float32)
    dreamed = sal.dream(model, start, "logits", unit=3, steps=30)
    assert dreamed.min() >= 0 and dreamed.max() <= 1
    scores = [probe.predict(img)[1][0] for img in (start, dreamed)]     # the logits
    rise = scores[1] - scores[0]
    assert rise[3] > 0.5 and rise[3] > 2 * np.delete(rise, 3).max(), scores
    dream = experiments.deep_dream(epochs=1, samples=300, steps=15)
    for res, suffix in ((result, "maps"), (dream, "dreams")):
        res.pictures[suffix](tmp_path / f"{suffix}.png")
        pixels = png_pixels(tmp_path / f"{suffix}.png")
        assert pixels.shape[0] > 200 and pixels.std() > 20       # drawn, not blank
    experiments.run("saliency", out=tmp_path, echo=lambda line: None)
    assert png_pixels(tmp_path / "saliency-maps.png").shape[1] > 600
