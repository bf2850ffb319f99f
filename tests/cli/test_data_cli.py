"""`dlrun data` through click's CliRunner: every subcommand, good and bad input."""
import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from dlrun.cli.main import main
from dlrun.datasets import open_dataset, write_dataset
from dlrun.datasets.importers import write_idx

SUBCOMMANDS = ["list", "info", "verify", "import", "fetch", "pack", "bench"]


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("DLRUN_DATA", str(tmp_path / "home"))
    monkeypatch.delenv("DLRUN_MIRROR", raising=False)
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(main, ["data", *map(str, args)])


@pytest.mark.parametrize("sub", [[]] + [[s] for s in SUBCOMMANDS], ids=lambda a: " ".join(a))
def test_help(runner, sub):
    res = invoke(runner, *sub, "--help")
    assert res.exit_code == 0, res.output
    assert "Usage: " in res.output


def test_data_help_does_not_import_zarr_or_numba(heavy_imports):
    assert heavy_imports(["data", "fetch", "--help"], ("numba", "ray", "zarr", "numpy")) == []


def mnist_folder(folder, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, (n, 6, 6), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
        arrays[split] = (x, y)
    return arrays


def test_import_list_info_verify(runner, tmp_path):
    mnist_folder(tmp_path / "raw")
    res = invoke(runner, "import", tmp_path / "raw", "--name", "mini")
    assert res.exit_code == 0, res.output
    assert "home/mini.zarr" in res.output and "dlrun train --dataset mini" in res.output
    res = invoke(runner, "list")
    assert res.exit_code == 0 and "mnist-5k" in res.output and "mini " in res.output
    res = invoke(runner, "info", "mini")
    assert res.exit_code == 0, res.output
    assert "input shape   (1, 6, 6), stored as uint8" in res.output
    assert "split train          30 samples, chunks of 30" in res.output
    res = invoke(runner, "verify", "mini")
    assert res.exit_code == 0 and "ok (40 samples" in res.output


def test_import_csv_options(runner, tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("a,b,kind\n1,2,x\n3,4,y\n")
    res = invoke(runner, "import", f, "--name", "d", "--out", tmp_path, "--label-column", "kind")
    assert res.exit_code == 0, res.output
    assert open_dataset(tmp_path / "d.zarr").attrs["class_names"] == ["x", "y"]
    res = invoke(runner, "import", f, "--name", "d", "--out", tmp_path, "--label-column", "7")
    assert res.exit_code == 1 and "Error: " in res.output and "out of range" in res.output
    assert "Traceback" not in res.output


def test_verify_lists_every_problem(runner, tmp_path):
    x = np.arange(40 * 4, dtype=np.uint8).reshape(40, 4)
    path = write_dataset(tmp_path / "t.zarr", (x, np.zeros(40, np.uint8)), name="t",
                         classes=1, chunk_samples=10)
    (path / "x" / "c" / "1" / "0").unlink()
    data = bytearray((path / "x" / "c" / "3" / "0").read_bytes())
    data[5] ^= 0x10
    (path / "x" / "c" / "3" / "0").write_bytes(bytes(data))
    res = invoke(runner, "verify", path)
    assert res.exit_code == 1
    assert "array 'x': chunk 1 (samples 10..19) is missing" in res.output
    assert "array 'x': chunk 3 (samples 30..39) is corrupt" in res.output
    assert "Error: 2 problem(s)" in res.output


def test_unfinished_and_unknown_datasets_are_errors_not_tracebacks(runner, tmp_path):
    res = invoke(runner, "info", "no-such-dataset")
    assert res.exit_code == 1 and "does not exist" in res.output
    path = write_dataset(tmp_path / "u.zarr", (np.zeros((3, 2)), np.zeros(3, int)), name="u",
                         classes=1)
    import zarr

    del zarr.open_group(path, mode="r+").attrs["complete"]
    res = invoke(runner, "verify", path)
    assert res.exit_code == 1 and "unfinished write" in res.output
    assert "Traceback" not in res.output


def test_pack(runner, tmp_path):
    x = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
    src = write_dataset(tmp_path / "f.zarr", (x, np.arange(50) % 2), name="f", classes=2)
    res = invoke(runner, "pack", src, "--uint8", "--seed", "1")
    assert res.exit_code == 0, res.output
    packed = open_dataset("f-packed")
    assert packed.arrays()[0].dtype == np.uint8
    assert "seed 1" in packed.attrs["description"]


def test_fetch_from_a_local_mirror(runner, tmp_path, monkeypatch):
    from dlrun.datasets import fetch as fetch_module

    arrays = mnist_folder(tmp_path / "site" / "mnist")
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
               for f in (tmp_path / "site" / "mnist").iterdir()}
    monkeypatch.setitem(fetch_module.SOURCES["mnist"], "sha256", digests)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "site"))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        monkeypatch.setenv("DLRUN_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}/{{name}}")
        res = invoke(runner, "fetch", "mnist")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert res.exit_code == 0, res.output
    assert "sha256 ok" in res.output and "wrote" in res.output
    zx, zy = open_dataset("mnist").arrays("test")
    np.testing.assert_array_equal(zy[:], arrays["test"][1])
    res = invoke(runner, "fetch", "cifar10")
    assert res.exit_code == 2 and "Invalid value" in res.output


def test_bench_small(runner):
    res = invoke(runner, "bench", "--samples", "3000", "--cores", "0")
    assert res.exit_code == 0, res.output
    assert "samples/s" in res.output and "3,000 samples" in res.output


def test_info_and_verify_default_to_a_shipped_dataset(runner):
    res = invoke(runner, "info")
    assert res.exit_code == 0 and "name          mnist-5k" in res.output
    res = invoke(runner, "verify")
    assert res.exit_code == 0 and "ok (5,000 samples" in res.output


def test_bench_loader_is_data_bench(runner, monkeypatch):
    import dlrun.cli.bench.loader as bench_module

    calls = []

    def fake(n, **kwargs):
        calls.append((n, kwargs))
        return {"samples_per_second": 250_000.0, "epochs": [250_000], "chunk_samples": 1277}

    monkeypatch.setattr(bench_module, "loader_throughput", fake)
    res = runner.invoke(main, ["bench", "loader"])
    assert res.exit_code == 0, res.output
    assert "loader: 250,000 samples/s" in res.output and "1 core(s)" in res.output
    assert calls == [(60_000, {"batch_size": 100, "window": 4, "prefetch": 2, "cores": 1,
                               "normalize": True})]
