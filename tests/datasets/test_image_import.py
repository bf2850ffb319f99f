"""The image-folder importer: PATH/<class>/<images> read with Pillow into a dlrun dataset."""

import sys

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")

from click.testing import CliRunner  # noqa: E402

from dlrun.cli.main import main  # noqa: E402
from dlrun.datasets import open_dataset  # noqa: E402
from dlrun.datasets.importers import (  # noqa: E402
    detect_kind,
    import_image_folder,
    import_path,
    read_image_folder,
)
from dlrun.errors import ConfigError, DataError  # noqa: E402

RNG = np.random.default_rng(7)
CLASSES = ["cat", "dog", "emu"]


def make_folder(root, counts=(3, 2, 4), h=6, w=5, rgb=False, fmt="png"):
    """Class folders of random images; returns {class: [array (H, W[, 3]) per file]}."""
    made = {}
    for c, n in zip(CLASSES, counts):
        (root / c).mkdir(parents=True)
        made[c] = []
        for i in range(n):
            a = RNG.integers(0, 256, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"img{i}.{fmt}")
            made[c].append(a)
    return made


def nchw(a):
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def assert_same_samples(x, y, made):
    """Every stored (x, y) is exactly one of the images written, and each is there once."""
    expected = sorted((CLASSES.index(c), nchw(a).tobytes()) for c, arrays in made.items()
                      for a in arrays)
    got = sorted((int(label), sample.tobytes()) for sample, label in zip(x, y))
    assert got == expected


def test_grey_folder_round_trips_exactly(tmp_path):
    made = make_folder(tmp_path / "raw")
    (tmp_path / "raw" / "README.txt").write_text("not an image")
    (tmp_path / "raw" / "cat" / "notes.txt").write_text("skipped")
    (tmp_path / "raw" / "cat" / ".hidden.png").write_bytes(b"not read")
    (tmp_path / "raw" / ".git").mkdir()
    assert detect_kind(tmp_path / "raw") == "images"
    path = import_image_folder(tmp_path / "raw", "pets", out=tmp_path / "ds")
    ds = open_dataset(path)
    assert not ds.splits
    assert ds.classes == 3 and ds.attrs["class_names"] == CLASSES
    assert ds.input_shape == (1, 6, 5) and ds.normalization == (1 / 255, 0.0)
    x, y = (a[:] for a in ds.arrays(None))
    assert x.dtype == np.uint8 and x.shape == (9, 1, 6, 5) and len(y) == 9
    assert np.issubdtype(y.dtype, np.integer)
    assert_same_samples(x, y, made)
    ds.verify()


def test_rgb_folder_and_forced_modes(tmp_path):
    made = make_folder(tmp_path / "raw", rgb=True)
    splits, names = read_image_folder(tmp_path / "raw")
    x, y = splits[""]
    assert names == CLASSES and x.shape == (9, 3, 6, 5) and x.dtype == np.uint8
    assert_same_samples(x, y, made)
    grey, _ = read_image_folder(tmp_path / "raw", mode="L")
    assert grey[""][0].shape == (9, 1, 6, 5)
    # The same draw order: grey is Pillow's own conversion of each stored RGB image.
    expect = np.stack([np.asarray(Image.fromarray(s.transpose(1, 2, 0)).convert("L"))
                       for s in x])[:, None]
    np.testing.assert_array_equal(grey[""][0], expect)


def test_grey_images_forced_to_rgb_repeat_the_channel(tmp_path):
    make_folder(tmp_path / "raw")
    x, _ = read_image_folder(tmp_path / "raw", mode="RGB")[0][""]
    assert x.shape == (9, 3, 6, 5)
    np.testing.assert_array_equal(x[:, 0], x[:, 1])
    np.testing.assert_array_equal(x[:, 0], x[:, 2])


def test_mixed_grey_and_colour_default_to_rgb(tmp_path):
    make_folder(tmp_path / "raw")
    a = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "raw" / "dog" / "colour.png")
    x, y = read_image_folder(tmp_path / "raw")[0][""]
    assert x.shape == (10, 3, 6, 5)
    assert any(np.array_equal(s, a.transpose(2, 0, 1)) for s in x)


def test_bmp_and_lossless_formats(tmp_path):
    made = make_folder(tmp_path / "raw", fmt="bmp")
    x, y = read_image_folder(tmp_path / "raw")[0][""]
    assert_same_samples(x, y, made)


def test_jpeg_is_read(tmp_path):
    make_folder(tmp_path / "raw", rgb=True, fmt="jpg")
    x, _ = read_image_folder(tmp_path / "raw")[0][""]
    assert x.shape == (9, 3, 6, 5)


def test_resize(tmp_path):
    made = make_folder(tmp_path / "raw")
    a = RNG.integers(0, 256, (9, 7), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "raw" / "emu" / "big.png")
    x, _ = read_image_folder(tmp_path / "raw", size=(4, 3))[0][""]
    assert x.shape == (10, 1, 4, 3)
    expect = np.asarray(Image.fromarray(a).resize((3, 4), Image.BILINEAR))
    assert any(np.array_equal(s[0], expect) for s in x)
    # Images already of the requested size are kept exactly.
    (tmp_path / "raw" / "emu" / "big.png").unlink()
    x, y = read_image_folder(tmp_path / "raw", size=(6, 5))[0][""]
    assert_same_samples(x, y, made)


def test_16_bit_grey_is_scaled_to_8_bits(tmp_path):
    make_folder(tmp_path / "raw")
    a = (np.arange(30).reshape(6, 5) * 2000).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "raw" / "cat" / "deep.png")
    expect = np.rint(a / 65535 * 255).astype(np.uint8)
    for mode, channels in (("L", 1), ("RGB", 3)):
        x, _ = read_image_folder(tmp_path / "raw", mode=mode)[0][""]
        assert any(np.array_equal(s, np.repeat(expect[None], channels, 0)) for s in x)


def test_sizes_must_match_without_resize(tmp_path):
    make_folder(tmp_path / "raw")
    Image.fromarray(np.zeros((7, 5), np.uint8)).save(tmp_path / "raw" / "dog" / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png is 7x5.*--size"):
        read_image_folder(tmp_path / "raw")


def test_test_fraction_and_seed(tmp_path):
    made = make_folder(tmp_path / "raw", counts=(4, 4, 4))
    path = import_path(tmp_path / "raw", name="s", out=tmp_path, test_fraction=0.25, seed=3)
    ds = open_dataset(path)
    assert ds.splits == ["train", "test"]
    (xtr, ytr), (xte, yte) = ([a[:] for a in ds.arrays(s)] for s in ("train", "test"))
    assert len(xtr) == 9 and len(xte) == 3
    assert_same_samples(np.concatenate([xtr, xte]), np.concatenate([ytr, yte]), made)
    again = read_image_folder(tmp_path / "raw", test_fraction=0.25, seed=3)[0]
    np.testing.assert_array_equal(again["test"][0], xte)
    other = read_image_folder(tmp_path / "raw", test_fraction=0.25, seed=4)[0]
    assert not np.array_equal(other["test"][0], xte)


def test_train_test_layout(tmp_path):
    train = make_folder(tmp_path / "raw" / "train")
    test = make_folder(tmp_path / "raw" / "test", counts=(1, 1, 2))
    assert detect_kind(tmp_path / "raw") == "images"
    ds = open_dataset(import_image_folder(tmp_path / "raw", "tt", out=tmp_path))
    assert ds.splits == ["train", "test"] and ds.attrs["class_names"] == CLASSES
    for split, made in (("train", train), ("test", test)):
        x, y = (a[:] for a in ds.arrays(split))
        assert_same_samples(x, y, made)
    with pytest.raises(ConfigError, match="test_fraction"):
        read_image_folder(tmp_path / "raw", test_fraction=0.5)


def test_test_classes_must_be_train_classes(tmp_path):
    make_folder(tmp_path / "raw" / "train")
    make_folder(tmp_path / "raw" / "test")
    (tmp_path / "raw" / "test" / "yak").mkdir()
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(tmp_path / "raw" / "test" / "yak" / "a.png")
    with pytest.raises(DataError, match="yak"):
        read_image_folder(tmp_path / "raw")


def test_bad_inputs(tmp_path):
    make_folder(tmp_path / "raw")
    (tmp_path / "raw" / "fox").mkdir()
    (tmp_path / "raw" / "fox" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match="fox"):
        read_image_folder(tmp_path / "raw")
    (tmp_path / "raw" / "fox" / "readme.txt").unlink()
    (tmp_path / "raw" / "fox").rmdir()
    (tmp_path / "raw" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png"):
        import_image_folder(tmp_path / "raw", "bad", out=tmp_path / "ds")
    assert not (tmp_path / "ds" / "bad.zarr").exists()
    (tmp_path / "raw" / "dog" / "broken.png").unlink()
    with pytest.raises(ConfigError, match="mode"):
        read_image_folder(tmp_path / "raw", mode="CMYK")
    with pytest.raises(ConfigError, match="size"):
        read_image_folder(tmp_path / "raw", size=(0, 3))
    with pytest.raises(ConfigError, match="test_fraction"):
        read_image_folder(tmp_path / "raw", test_fraction=1.0)
    with pytest.raises(ConfigError, match="image-folder"):
        import_path(tmp_path / "raw", name="x", out=tmp_path, kind="npy", size=(2, 2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="class folders"):
        import_path(tmp_path / "empty", name="x", out=tmp_path)
    with pytest.raises(DataError, match="no class folders"):
        import_image_folder(tmp_path / "empty", "x", out=tmp_path)


def test_missing_pillow_says_how_to_install(tmp_path, monkeypatch):
    make_folder(tmp_path / "raw")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ConfigError, match=r"pip install 'dlrun\[images\]'"):
        import_image_folder(tmp_path / "raw", "x", out=tmp_path)


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("DLRUN_DATA", str(tmp_path / "home"))
    return CliRunner()


def test_cli_import_detects_image_folder(runner, tmp_path):
    made = make_folder(tmp_path / "raw", rgb=True)
    res = runner.invoke(main, ["data", "import", str(tmp_path / "raw"), "--name", "pets"])
    assert res.exit_code == 0, res.output
    assert "pets.zarr" in res.output
    ds = open_dataset("pets")
    assert ds.input_shape == (3, 6, 5) and ds.attrs["class_names"] == CLASSES
    x, y = (a[:] for a in ds.arrays(None))
    assert_same_samples(x, y, made)


def test_cli_import_options_and_errors(runner, tmp_path):
    make_folder(tmp_path / "raw", counts=(4, 4, 2))
    args = ["data", "import", str(tmp_path / "raw"), "--out", str(tmp_path / "ds")]
    res = runner.invoke(main, [*args, "--name", "small", "--size", "3x4", "--mode", "RGB",
                               "--test-fraction", "0.2", "--seed", "1"])
    assert res.exit_code == 0, res.output
    ds = open_dataset(tmp_path / "ds" / "small.zarr")
    assert ds.input_shape == (3, 3, 4) and ds.splits == ["train", "test"]
    assert ds.arrays("test")[0].shape[0] == 2
    res = runner.invoke(main, [*args, "--name", "bad", "--size", "3by4"])
    assert res.exit_code != 0 and "HxW" in res.output
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "raw" / "cat" / "tiny.png")
    res = runner.invoke(main, [*args, "--name", "bad"])
    assert res.exit_code != 0 and "tiny.png" in res.output
    assert "Traceback" not in res.output
