"""The dlrun command through click's CliRunner: help, train, info, bad input."""
import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from dlrun.cli.main import main

COMMANDS = [[], ["train"], ["info"], ["bench"]]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "dlrun")
def test_help(runner, args):
    res = runner.invoke(main, args + ["--help"])
    assert res.exit_code == 0, res.output
    assert "Usage: " in res.output and "--help" in res.output


def test_help_does_not_import_numba_or_ray(heavy_imports):
    assert heavy_imports(["--help"], ("numba", "ray", "zarr")) == []


def test_train_digits_writes_run_folder(runner, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(main, ["train", "--dataset", "digits", "--epochs", "3",
                               "--batch-size", "50", "--lr", "0.1", "--out", str(out),
                               "--verbose", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert res.output.count("Epoch ") == 3
    assert "test accuracy:" in res.output
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.5          # 3 epochs on 8x8 digits: far above chance
    import dlrun as dl
    from dlrun.datasets import open_dataset

    model = dl.load_model(out / "model")
    xt, yt = open_dataset("digits").split("test")
    acc = (model.predict(xt).argmax(1) == yt).mean()
    assert acc == pytest.approx(summary["test_accuracy"], abs=1e-6)


def test_train_refuses_non_empty_out(runner, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    res = runner.invoke(main, ["train", "--dataset", "digits", "--epochs", "1",
                               "--out", str(tmp_path)])
    assert res.exit_code == 1
    assert "not empty" in res.output
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    (["--dataset", "no-such-dataset"], "no-such-dataset"),
    (["--model", "transformer"], "unknown model 'transformer'"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--optimizer", "adamax"], "adamax"),
])
def test_train_bad_input_is_one_clear_error(runner, tmp_path, args, message):
    res = runner.invoke(main, ["train", "--dataset", "digits", "--epochs", "1",
                               "--out", str(tmp_path / "r"), *args])
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_train_malformed_dataset_path(runner, tmp_path):
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text("{not json")
    res = runner.invoke(main, ["train", "--dataset", str(bad), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1
    assert str(bad) in res.output and "Traceback" not in res.output


def test_info(runner):
    res = runner.invoke(main, ["info"])
    assert res.exit_code == 0, res.output
    for key in ("dlrun", "numba", "cores available", "blas", "float32 matmul", "cuda",
                "mnist-5k"):
        assert key in res.output


def test_bench_without_references_runs_dlrun(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("DLRUN_BENCH_REF", str(tmp_path))       # no scripts there
    out = tmp_path / "bench.json"
    res = runner.invoke(main, ["bench", "mlp", "--threads", "1", "--batch", "10",
                               "--repeats", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert rows[0]["dlrun"] > 0 and rows[0]["torch"] is None
    assert np.isfinite(rows[0]["dlrun"])


# -- --model FILE.py ---------------------------------------------------------------------
USER_MODEL = '''
import dlrun as dl
from helper_widths import WIDTH          # a module beside the file can be imported


def build_model(input_shape, classes):
    inp = dl.Input(shape=input_shape)
    h = dl.layers.Dense(WIDTH, activation="relu")(dl.layers.Flatten()(inp))
    r = dl.layers.Dense(WIDTH, activation="relu")(h)
    h = dl.layers.Add()([h, r])
    return dl.Model(inp, dl.layers.Dense(classes, activation="softmax")(h))
'''


def test_train_model_from_a_python_file(runner, tmp_path):
    (tmp_path / "helper_widths.py").write_text("WIDTH = 24\n")
    (tmp_path / "my_net.py").write_text(USER_MODEL)
    out = tmp_path / "run"
    res = runner.invoke(main, ["train", "--dataset", "digits", "--model",
                               str(tmp_path / "my_net.py"), "--epochs", "2", "--lr", "0.1",
                               "--batch-size", "50", "--out", str(out), "--verbose", "2",
                               "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "test accuracy:" in res.output
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    import dlrun as dl

    model = dl.load_model(out / "model")             # a functional model, rebuilt from JSON
    assert [type(layer).__name__ for layer in model.layers].count("Add") == 1
    assert model.layers[2].units == 24
    # --resume executes the file again and goes on from the checkpoint
    res = runner.invoke(main, ["train", "--resume", str(out), "--epochs", "3"])
    assert res.exit_code == 0, res.output
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 3


@pytest.mark.parametrize("body, message", [
    (None, "no such file"),
    ("x = 1\n", "defines neither build_model(input_shape, classes) nor a module-level model"),
    ("raise RuntimeError('no GPU here')\n", "running the file raised RuntimeError: no GPU here"),
    ("def build_model(input_shape, classes):\n    raise ValueError('too deep')\n",
     "build_model((1, 8, 8), 10) raised ValueError: too deep"),
    ("def build_model(input_shape, classes):\n    return 'a model'\n",
     "build_model returned a str, not a dlrun model"),
    ("model = [1, 2]\n", "its module-level model is a list, not a dlrun model"),
    ("def build_model(shape):\n    pass\n", "raised TypeError"),
    ("def build_model(:\n", "raised SyntaxError"),
])
def test_model_file_errors_are_one_line(runner, tmp_path, body, message):
    path = tmp_path / "net.py"
    if body is not None:
        path.write_text(body)
    res = runner.invoke(main, ["train", "--dataset", "digits", "--epochs", "1",
                               "--model", str(path), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1, res.output
    assert message in res.output and str(path) in res.output
    assert "Traceback" not in res.output


def test_model_file_with_a_recipe_option_is_refused(runner, tmp_path):
    path = tmp_path / "net.py"
    path.write_text(USER_MODEL)
    res = runner.invoke(main, ["train", "--dataset", "digits", "--epochs", "1", "--l2", "0.1",
                               "--model", str(path), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1
    assert "--l2 configure the built-in models" in res.output


def test_train_help_says_the_model_file_is_executed(runner):
    res = runner.invoke(main, ["train", "--help"])
    assert "build_model(input_shape, classes)" in res.output
    assert "executed" in res.output and "resnet-small" in res.output


def test_bench_gemm_prints_every_product_beside_openblas(runner, tmp_path):
    out = tmp_path / "gemm.json"
    res = runner.invoke(main, ["bench", "gemm", "--threads", "1", "--repeats", "1",
                               "--json", str(out)])
    assert res.exit_code == 0, res.output
    import json

    from dlrun.cli.bench.gemm import SHAPES

    rows = json.loads(out.read_text())
    assert [r["product"] for r in rows] == [s[0] for s in SHAPES]
    for r in rows:
        assert r["dlrun_gflops"] > 0 and r["openblas_gflops"] > 0
        # the rates are printed to 0.1 GFLOP/s: on a busy machine a small one moves the
        # ratio of the rounded figures by more than the ratio's own rounding
        assert r["ratio"] == pytest.approx(r["dlrun_gflops"] / r["openblas_gflops"], rel=0.02)
    assert "float32 GEMM" in res.output and "mlp fwd 784->500" in res.output
