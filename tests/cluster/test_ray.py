"""Distributed training on a real local Ray instance (one per module): the invariants,
a worker killed mid-training, and `dlrun train --workers 2` end to end."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import dlrun as dl
from dlrun.cluster import train_distributed
from dlrun.engine.callbacks import Callback

pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.usefixtures("one_thread")]   # bitwise comparisons need one thread


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    import ray

    from dlrun.cluster.session import start_local_ray

    if ray.is_initialized():
        pytest.skip("this process already joined a Ray instance")
    # a private instance in a fresh temp folder (a stale cluster file or a RAY_ADDRESS in
    # the environment cannot redirect it)
    temp = start_local_ray(num_cpus=2)
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def test_one_worker_on_ray_is_single_process_training_bitwise(h):
    x, y = h.digits()
    ref = h.small_model(dropout=0.1)
    h.train_single(ref, x, y, 64, 2, seed=4)
    model = h.small_model(dropout=0.1)
    train_distributed(model, "digits", workers=1, average_every=5, epochs=2, batch_size=64,
                      seed=4, threads=1, verbose=0)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        assert np.array_equal(a, b)


def test_two_workers_k1_plain_sgd_match_one_process_with_twice_the_batch(h):
    x, y = h.digits()
    ref = h.small_model(optimizer=dl.optimizers.SGD(learning_rate=0.1))
    h.train_union(ref, x, y, 50, 2, 2, seed=2)
    model = h.small_model(optimizer=dl.optimizers.SGD(learning_rate=0.1))
    hist = train_distributed(model, "digits", workers=2, average_every=1, epochs=2,
                             batch_size=50, seed=2, threads=1, verbose=0)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert hist.history["round_overhead_ms"][0] > 0


def test_workers_on_this_node_exchange_through_shared_memory_to_the_same_weights(
        h, monkeypatch):
    """The shared-memory exchange (local workers) against the object store (workers
    elsewhere): the same weights bit for bit, and nothing left behind in /dev/shm (nor
    by a driver killed earlier)."""
    from dlrun.cluster import pool as driver

    made = []

    class Recorded(driver.Exchange):
        def __init__(self, *a):
            super().__init__(*a)
            made.append(self.dir)

    monkeypatch.setattr(driver, "Exchange", Recorded)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()                              # a driver killed: its folder is left behind
    orphan = f"/dev/shm/dlrun-exchange-{gone.pid}-test"
    os.makedirs(orphan)
    # a driver whose pid this process cannot see (another pid namespace) but that listens
    alive = f"/dev/shm/dlrun-exchange-{gone.pid}-alive"
    os.makedirs(alive)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{alive}/socket")
    listener.listen(1)
    try:
        shared = h.small_model(optimizer=dl.optimizers.Adam(learning_rate=0.01))
        train_distributed(shared, "digits", workers=2, average_every=3, epochs=2,
                          batch_size=50, seed=6, threads=1, verbose=0)
        assert os.path.exists(alive)
    finally:
        listener.close()
        shutil.rmtree(alive, ignore_errors=True)
    assert len(made) == 1 and not os.path.exists(made[0])
    assert not os.path.exists(orphan)
    monkeypatch.setattr(driver.RayPool, "share", lambda self, out: None)
    stored = h.small_model(optimizer=dl.optimizers.Adam(learning_rate=0.01))
    train_distributed(stored, "digits", workers=2, average_every=3, epochs=2, batch_size=50,
                      seed=6, threads=1, verbose=0)
    assert len(made) == 1
    for a, b in zip(shared.get_weights(), stored.get_weights()):
        assert np.array_equal(a, b)
    for a, b in zip(shared.optimizer.get_state().values(),
                    stored.optimizer.get_state().values()):
        assert np.array_equal(a, b)


def test_a_full_dev_shm_leaves_the_workers_on_the_object_store(h, monkeypatch):
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    model = h.small_model()
    hist = train_distributed(model, "digits", workers=2, average_every=3, epochs=1,
                             batch_size=50, seed=0, threads=1, verbose=0)
    assert len(hist.history["loss"]) == 1 and np.isfinite(hist.history["loss"][0])
    assert not [d for d in os.listdir("/dev/shm")
                if d.startswith(f"dlrun-exchange-{os.getpid()}-")]


def test_an_error_in_a_worker_is_raised_not_taken_for_a_lost_worker(h, tmp_path):
    """A corrupt chunk in worker 1's shard stops the run with the loader's error (over the
    local channel as over a Ray call); the worker is not replaced and the round redone."""
    from dlrun.datasets import write_dataset
    from dlrun.errors import DataError

    x, y = h.digits()
    path = write_dataset(tmp_path / "d.zarr", (x, y), name="d", classes=10,
                         chunk_samples=100)                  # 15 chunks: streamed
    file = path / "x" / "c" / "1"                           # worker 1's first chunk
    while file.is_dir():
        file = file / "0"
    data = bytearray(file.read_bytes())
    data[10] ^= 0xFF
    file.write_bytes(bytes(data))
    events = []
    with pytest.raises(DataError, match="chunk 1"):
        train_distributed(h.small_model(), str(path), workers=2, average_every=2, epochs=1,
                          batch_size=50, seed=0, threads=1, verbose=0,
                          echo=lambda s: None, on_event=events.append)
    assert events == []


class KillWorker(Callback):
    """SIGKILLs worker 1's process as round ``at`` of the first epoch begins. (A timer a
    few ms into the round raced with rounds that now take about a millisecond here: the
    kill could land after the last one. Killed now or mid-round, the driver sees the same
    thing: the worker's connection or call ends without a reply.)"""

    def __init__(self, at):
        super().__init__()
        self.at, self.killed = at, None

    def on_train_batch_begin(self, batch, logs=None):
        if self.killed is None and batch == self.at:
            self.killed = self.params["workers"][1]["pid"]
            os.kill(self.killed, signal.SIGKILL)


def test_a_killed_worker_is_replaced_and_its_round_redone(h):
    clean = h.small_model()
    train_distributed(clean, "digits", workers=2, average_every=2, epochs=2, batch_size=50,
                      seed=1, threads=1, verbose=0)
    model, events, kill = h.small_model(), [], KillWorker(at=3)
    hist = train_distributed(model, "digits", workers=2, average_every=2, epochs=2,
                             batch_size=50, seed=1, threads=1, verbose=0, callbacks=[kill],
                             echo=lambda s: None, on_event=events.append)
    assert kill.killed is not None
    assert len(events) == 1 and "worker 1 was lost; replaced" in events[0], events
    assert len(hist.history["loss"]) == 2
    # nothing lost but the round, which was redone from the same averaged weights
    for a, b in zip(model.get_weights(), clean.get_weights()):
        assert np.array_equal(a, b)


def test_cli_train_with_two_workers_and_resume(tmp_path):
    from click.testing import CliRunner

    from dlrun.cli.main import main

    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--workers", "2", "--epochs", "2",
            "--average-every", "3", "--sync-warmup", "4", "--lr-scaling", "linear",
            "--out", str(out), "--verbose", "2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "2 workers x batch 100 = global batch 200" in res.output
    assert "lr scaling linear (lr 0.05 x 2)" in res.output
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "round_overhead_ms" in rows[0] and "val_accuracy" in rows[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["test_accuracy"] > 0.8
    config = json.loads((out / "config.json").read_text())
    assert config["workers"] == 2 and config["lr"] == 0.05
    res = CliRunner().invoke(main, ["train", "--resume", str(out), "--epochs", "3"])
    assert res.exit_code == 0, res.output
    assert len((out / "metrics.csv").read_text().splitlines()) == 4
    assert dl.load_model(out / "model").optimizer.learning_rate == pytest.approx(0.1)


def test_cli_train_with_two_workers_and_balanced_class_weights(tmp_path):
    from click.testing import CliRunner

    from dlrun.cli.main import main
    from dlrun.datasets import open_dataset
    from dlrun.engine.models.data import balanced_class_weight

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--dataset", "digits", "--workers", "2",
                                    "--epochs", "1", "--class-weight", "balanced",
                                    "--out", str(out), "--verbose", "2"])
    assert res.exit_code == 0, res.output
    want = balanced_class_weight(open_dataset("digits").split("train")[1])
    assert "class weights " + ", ".join(f"{k}: {w:.3g}" for k, w in sorted(want.items())) \
        in res.output
    assert json.loads((out / "config.json").read_text())["class_weight"] == "balanced"
    assert json.loads((out / "summary.json").read_text())["test_accuracy"] > 0.5


def test_bench_cluster_measures_samples_per_second_and_round_overhead():
    from dlrun.cli.bench.cluster import measure

    res = measure(workers=2, threads=1, average_every=2, batch=50, epochs=2,
                  rounds_per_epoch=2)
    assert res["params"] == 648_010
    assert res["train_sps_median"] > 0 and res["round_overhead_ms"] > 0


def test_bench_cluster_measures_one_process_on_the_same_data_path():
    from dlrun.cli.bench.cluster import measure_single

    res = measure_single(threads=1, batch=50, epochs=2, samples=400)
    assert res["train_sps_median"] > 0 and len(res["epochs_sps"]) == 2


def test_driver_stopped_mid_training_resumes_bitwise_from_its_checkpoint(tmp_path,
                                                                          monkeypatch):
    from click.testing import CliRunner

    from dlrun.cli.main import main
    from dlrun.engine.callbacks import BackupAndRestore

    args = ["train", "--dataset", "digits", "--workers", "2", "--epochs", "3",
            "--optimizer", "adam", "--schedule", "cosine", "--verbose", "0"]
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "whole")])
    assert res.exit_code == 0, res.output
    save = BackupAndRestore.on_epoch_end

    def crash_after_first_checkpoint(self, epoch, logs=None):
        save(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt          # the driver dies; the checkpoint is written
    monkeypatch.setattr(BackupAndRestore, "on_epoch_end", crash_after_first_checkpoint)
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "cut")])
    assert res.exit_code != 0 and not (tmp_path / "cut" / "model").exists()
    monkeypatch.setattr(BackupAndRestore, "on_epoch_end", save)
    res = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "cut")])
    assert res.exit_code == 0, res.output
    whole = dl.load_model(tmp_path / "whole" / "model")
    resumed = dl.load_model(tmp_path / "cut" / "model")
    for a, b in zip(resumed.get_weights(), whole.get_weights()):
        assert np.array_equal(a, b)
    assert len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == 4
