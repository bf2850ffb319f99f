"""Learning curves as PNG files, with numpy and zlib only (no plotting library needed).

:func:`line_plot` draws a few series (one value per epoch) on a white canvas with a
frame, horizontal grid lines, the y range and epoch count written in a tiny bitmap font,
and a legend. It is meant for the lectures' demonstrations (:mod:`dlrun.cli.lectures`
calls it for every demonstration run with ``--out``), not for publication; it has no
command of its own.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

# 3x5 glyphs, five rows top to bottom, '#' = ink. Lower case only; others draw '?'.
_GLYPHS = {
    "a": ".#. #.# ### #.# #.#", "b": "##. #.# ##. #.# ##.", "c": ".## #.. #.. #.. .##",
    "d": "##. #.# #.# #.# ##.", "e": "### #.. ##. #.. ###", "f": "### #.. ##. #.. #..",
    "g": ".## #.. #.# #.# .##", "h": "#.# #.# ### #.# #.#", "i": "### .#. .#. .#. ###",
    "j": "..# ..# ..# #.# .#.", "k": "#.# #.# ##. #.# #.#", "l": "#.. #.. #.. #.. ###",
    "m": "#.# ### ### #.# #.#", "n": "##. #.# #.# #.# #.#", "o": ".#. #.# #.# #.# .#.",
    "p": "##. #.# ##. #.. #..", "q": ".#. #.# #.# ##. .##", "r": "##. #.# ##. #.# #.#",
    "s": ".## #.. .#. ..# ##.", "t": "### .#. .#. .#. .#.", "u": "#.# #.# #.# #.# ###",
    "v": "#.# #.# #.# #.# .#.", "w": "#.# #.# ### ### #.#", "x": "#.# #.# .#. #.# #.#",
    "y": "#.# #.# .#. .#. .#.", "z": "### ..# .#. #.. ###", "0": "### #.# #.# #.# ###",
    "1": ".#. ##. .#. .#. ###", "2": "### ..# ### #.. ###", "3": "### ..# ### ..# ###",
    "4": "#.# #.# ### ..# ..#", "5": "### #.. ### ..# ###", "6": "### #.. ### #.# ###",
    "7": "### ..# ..# ..# ..#", "8": "### #.# ### #.# ###", "9": "### #.# ### ..# ###",
    ".": "... ... ... ... .#.", "-": "... ... ### ... ...", "_": "... ... ... ... ###",
    ":": "... .#. ... .#. ...", " ": "... ... ... ... ...", "/": "..# ..# .#. #.. #..",
    "(": ".#. #.. #.. #.. .#.", ")": ".#. ..# ..# ..# .#.", "+": "... .#. ### .#. ...",
    "?": "### ..# .#. ... .#.",
}
_GLYPHS = {k: v.replace(" ", "") for k, v in _GLYPHS.items()}

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def _text(img, x, y, text, color=(0, 0, 0), scale=2):
    """Write ``text`` with its top-left corner at (x, y)."""
    for ch in text.lower():
        glyph = _GLYPHS.get(ch, _GLYPHS["?"])
        for r in range(5):
            for c in range(3):
                if glyph[3 * r + c] == "#":
                    y0, x0 = y + r * scale, x + c * scale
                    img[y0:y0 + scale, x0:x0 + scale] = color
        x += 4 * scale


def _line(img, x0, y0, x1, y1, color, width=2):
    """A straight segment, drawn as dots one pixel apart."""
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.rint(np.linspace(x0, x1, n)).astype(int)
    ys = np.rint(np.linspace(y0, y1, n)).astype(int)
    h, w, _ = img.shape
    for dx in range(width):
        for dy in range(width):
            ok = (ys + dy < h) & (xs + dx < w)
            img[ys[ok] + dy, xs[ok] + dx] = color


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_plot(path, series: dict, title: str = "", width: int = 640,
              height: int = 400) -> Path:
    """Write a PNG of each series in ``series`` (label -> values per epoch) to ``path``."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, 20, 30, 40 + 14 * len(series)
    pw, ph = width - left - right, height - top - bottom
    values = [np.asarray(v, float) for v in series.values()]
    finite = np.concatenate([v[np.isfinite(v)] for v in values] + [np.zeros(0)])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    epochs = max((len(v) for v in values), default=1)
    for k in range(5):                                        # grid and y labels
        y = top + round(ph * k / 4)
        img[y, left:left + pw] = (225, 225, 225)
        _text(img, 4, y - 5, _fmt(hi - (hi - lo) * k / 4))
    img[top:top + ph + 1, left] = img[top:top + ph + 1, left + pw] = (0, 0, 0)
    img[top, left:left + pw + 1] = img[top + ph, left:left + pw + 1] = (0, 0, 0)
    _text(img, left, top + ph + 6, "epoch 1")
    _text(img, left + pw - 8 * len(f"{epochs}"), top + ph + 6, f"{epochs}")
    _text(img, left, 8, title)

    def xy(i, v):
        x = left + (pw * i / (epochs - 1) if epochs > 1 else pw / 2)
        return x, top + ph * (hi - v) / (hi - lo)

    for k, (label, v) in enumerate(zip(series, values)):
        color = PALETTE[k % len(PALETTE)]
        pts = [xy(i, val) for i, val in enumerate(v) if np.isfinite(val)]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            _line(img, x0, y0, x1, y1, color)
        if len(pts) == 1:
            _line(img, pts[0][0] - 2, pts[0][1], pts[0][0] + 2, pts[0][1], color)
        ly = top + ph + 24 + 14 * k                           # legend
        img[ly + 2:ly + 8, left:left + 18] = color
        _text(img, left + 24, ly, str(label))
    return write_png(path, img)


def write_png(path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG file."""
    path = Path(path)
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path
