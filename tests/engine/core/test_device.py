"""Choosing a device, and training on cuda against the CPU.

The tests here run in this process without the simulator: on a machine without a GPU they
check the errors and the fall-back, on one with a GPU that it is picked. Whole runs on
cuda go through ``device_fit_check.py`` in a child process (the simulator has to be
chosen before ``numba.cuda`` is first imported), which uses a real GPU when it sees one.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import dlrun as dl
from dlrun.cli.main import main
from dlrun.engine.core import device as device_mod
from dlrun.errors import ConfigError

HERE = Path(__file__).parent
REASON = device_mod.cuda_unusable_reason()       # None: a GPU (or the simulator) is usable
no_gpu = pytest.mark.skipif(REASON is None, reason="a CUDA device is usable here")
gpu = pytest.mark.skipif(REASON is not None, reason=f"no CUDA device: {REASON}")


def tiny_model():
    return dl.Sequential([dl.layers.Dense(3, activation="softmax", input_shape=(4,))])


@no_gpu
def test_cuda_without_a_gpu_is_one_clear_line():
    res = CliRunner().invoke(main, ["train", "--device", "cuda", "--epochs", "1"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith("Error: device 'cuda' asked for, but no CUDA GPU is usable "
                               f"here ({REASON}); use device 'cpu', or 'auto'")
    assert "Traceback" not in res.output and "numba" not in lines[0].lower()


@no_gpu
def test_cuda_without_a_gpu_from_python():
    with pytest.raises(ConfigError, match="no CUDA GPU is usable"):
        tiny_model().compile(loss="sparse_categorical_crossentropy", device="cuda")
    with pytest.raises(ConfigError, match="no CUDA GPU is usable"):
        with dl.device("cuda"):
            pass
    res = CliRunner().invoke(main, ["bench", "--device", "cuda"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith("Error: device 'cuda' asked for")


@no_gpu
def test_auto_falls_back_to_the_cpu_and_says_why(tmp_path):
    assert device_mod.resolve("auto") == "cpu"
    res = CliRunner().invoke(main, ["train", "--device", "auto", "--dataset", "digits",
                                    "--epochs", "1", "--verbose", "0",
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    start = res.output.splitlines()[0]
    assert start.endswith(f"device cpu (auto: no usable GPU, {REASON})"), start
    model = dl.load_model(tmp_path / "run" / "model")
    assert model.device == "cpu"


@gpu
def test_auto_picks_the_gpu():
    assert device_mod.resolve("auto") == "cuda"
    model = tiny_model()
    model.compile(loss="sparse_categorical_crossentropy", device="auto")
    assert model.device == "cuda"


def test_device_names_and_the_context():
    assert device_mod.resolve("cpu") == device_mod.resolve("CPU") == "cpu"
    assert device_mod.resolve(None) == "cpu"
    with pytest.raises(ConfigError, match="unknown device 'tpu'; expected 'cpu', 'cuda'"):
        device_mod.resolve("tpu")
    with dl.device("cpu") as name:
        assert name == "cpu"
        model = tiny_model()
        model.compile(loss="sparse_categorical_crossentropy")
    assert model.device == "cpu"
    assert device_mod.resolve(None) == "cpu"          # the block is over
    runner = CliRunner().invoke(main, ["train", "--device", "tpu"])
    assert runner.exit_code == 2 and "'tpu' is not one of" in runner.output


def test_info_reports_the_device():
    res = CliRunner().invoke(main, ["info"])
    assert res.exit_code == 0
    row = [ln for ln in res.output.splitlines() if ln.startswith("cuda ")][0]
    if REASON is None:
        assert "compute capability" in row or "simulator" in row
    else:
        assert row.split(None, 1)[1] == f"not usable: {REASON}"


def test_gpus_per_ray_worker():
    assert device_mod.ray_gpus_per_worker(2, 4) == 1.0
    assert device_mod.ray_gpus_per_worker(4, 4) == 1.0
    assert device_mod.ray_gpus_per_worker(4, 2) == 0.5
    assert device_mod.ray_gpus_per_worker(3, 1.0) == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="the Ray cluster has no GPU"):
        device_mod.ray_gpus_per_worker(2, 0)


@pytest.mark.slow
def test_training_on_cuda_matches_the_cpu():
    proc = subprocess.run([sys.executable, str(HERE / "device_fit_check.py")],
                          capture_output=True, text=True, timeout=900, check=False)
    print(proc.stdout)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "bench mlp kernels per step: 19" in proc.stdout
