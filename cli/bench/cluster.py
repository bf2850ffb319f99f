"""``dlrun bench cluster``: training samples/s of N Ray workers beside one process.

Run: ``dlrun bench cluster --workers 2 --average-every 10 [--threads 1] [--batch 100]``
(it starts a local Ray instance).

The issue's workload: the MLP 784-500-500-10 (ReLU, softmax cross entropy, plain SGD) on
random MNIST-shaped data, batch 100 per worker. ``measure()`` trains it on local Ray
workers (each measurement in its own process, ``python -m dlrun.cli.bench.cluster``) and
reports the steady-state samples/s (epochs after the first, which compiles and warms up)
and the per-round overhead: the round's wall time minus its busiest worker's training
time (the exchange of the weights, the requests and replies, the average).
``compare()`` alternates it with one process of as many threads in all, measured two
ways: on the same data path (``measure_single``: the same zarr dataset, loader, step and
metrics) and on in-memory batches (``dlrun.cli.bench.models``, as `dlrun bench mlp`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _dataset(folder: Path, samples: int, seed: int, stream: bool = True) -> Path:
    """Random MNIST-shaped data in ~1 MB chunks, which workers stream; ``stream=False``:
    in one chunk, which each worker (and one process) reads into memory whole."""
    from dlrun.datasets import write_dataset

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (samples, 784), dtype=np.uint8)
    y = rng.integers(0, 10, samples)
    return write_dataset(folder / "random-mnist.zarr", (x, y), name="random-mnist",
                         classes=10, normalization={"scale": 1 / 255, "offset": 0.0},
                         chunk_samples=None if stream else samples)


def _mlp(seed: int):
    import dlrun as dl

    dl.set_seed(seed)
    net = dl.Sequential([dl.layers.Dense(500, activation="relu", input_shape=(784,)),
                         dl.layers.Dense(500, activation="relu"),
                         dl.layers.Dense(10, activation="softmax")])
    net.compile(optimizer=dl.optimizers.SGD(learning_rate=0.01),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return net


def measure(workers: int = 2, threads: int = 1, average_every: int = 10, batch: int = 100,
            epochs: int = 6, rounds_per_epoch: int = 8, seed: int = 0,
            stream: bool = True) -> dict:
    """Samples/s and round overhead of ``workers`` local Ray workers (median of epochs
    after the first); ``stream=False``: each worker holds its share in memory."""
    from dlrun.cluster import ray_session, train_distributed

    net = _mlp(seed)
    samples = workers * average_every * batch * rounds_per_epoch
    with tempfile.TemporaryDirectory(prefix="dlrun-bench-") as tmp:
        path = _dataset(Path(tmp), samples, seed, stream)
        with ray_session(num_cpus=workers * threads):
            t0 = time.perf_counter()
            hist = train_distributed(net, str(path), workers=workers,
                                     average_every=average_every, epochs=epochs,
                                     batch_size=batch, seed=seed, threads=threads, verbose=0)
            total = time.perf_counter() - t0
    h = hist.history
    return {"bench": "cluster", "workers": workers, "threads": threads,
            "average_every": average_every, "batch": batch, "params": net.count_params(),
            "train_sps_median": round(statistics.median(h["samples_per_s"][1:]), 1),
            "worker_sps_median": round(statistics.median(h["worker_samples_per_s"][1:]), 1),
            "round_overhead_ms": round(statistics.median(h["round_overhead_ms"][1:]), 2),
            "epochs_sps": [round(v, 1) for v in h["samples_per_s"]],
            "seconds_total": round(total, 2)}


def measure_single(threads: int = 2, batch: int = 100, epochs: int = 6,
                   samples: int = 16_000, seed: int = 0, stream: bool = True) -> dict:
    """Samples/s of one process with ``threads`` threads on the workers' data path: the
    same zarr dataset read by the same loader (streamed, prefetched), the same step and
    metrics, one worker in this process training whole epochs (median of epochs after
    the first)."""
    from dlrun.cluster.worker import Worker, model_spec

    net = _mlp(seed)
    with tempfile.TemporaryDirectory(prefix="dlrun-bench-") as tmp:
        path = _dataset(Path(tmp), samples, seed, stream)
        worker = Worker(0, 1, model_spec(net), str(path), batch, seed, threads)
        weights = {k: v.copy() for k, v in worker.weights.items()}
        rates = []
        for e in range(epochs):
            t0 = time.perf_counter()
            res = worker.run_round(weights, {"epoch": e, "position": 0, "step": 0,
                                             "iterations": 0, "optimizer_state": "average"},
                                   len(worker.loader))
            rates.append(res["samples"] / (time.perf_counter() - t0))
    return {"bench": "single", "threads": threads, "batch": batch,
            "train_sps_median": round(statistics.median(rates[1:]), 1),
            "epochs_sps": [round(v, 1) for v in rates]}


def _run(cmd: list) -> dict | None:
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    sys.stderr.write(f"  ! {' '.join(map(str, cmd[:4]))}... failed:\n"
                     f"{p.stderr.strip()[-2000:]}\n")
    return None


def compare(workers: int = 2, threads: int = 1, average_every: int = 10, batch: int = 100,
            repeats: int = 3, echo=print) -> dict:
    """Alternate ``workers`` x ``threads`` Ray workers with one process of
    ``workers * threads`` threads; medians and their ratio."""
    single_threads = workers * threads
    runs = {"cluster": [], "overhead_ms": [], "single": [], "single_memory": []}
    for _ in range(repeats):
        res = _run([sys.executable, "-m", "dlrun.cli.bench.cluster", "--workers", str(workers),
                    "--threads", str(threads), "--average-every", str(average_every),
                    "--batch", str(batch)])
        if res:
            runs["cluster"].append(res["train_sps_median"])
            runs["overhead_ms"].append(res["round_overhead_ms"])
            params = res["params"]
        samples = workers * average_every * batch * 8          # measure()'s dataset
        res = _run([sys.executable, "-m", "dlrun.cli.bench.cluster", "--single", "--threads",
                    str(single_threads), "--batch", str(batch), "--samples", str(samples)])
        if res:
            runs["single"].append(res["train_sps_median"])
        res = _run([sys.executable, "-m", "dlrun.cli.bench.models", "--model", "mlp",
                    "--threads", str(single_threads), "--batch", str(batch)])
        if res:
            runs["single_memory"].append(res["train_sps_median"])
    row = {"workers": workers, "threads": threads, "average_every": average_every,
           "batch": batch, **{k + "_runs": v for k, v in runs.items()}}
    for k, v in runs.items():
        row[k] = round(statistics.median(v), 2) if v else None
    for key, single in (("ratio", "single"), ("ratio_memory", "single_memory")):
        if row["cluster"] and row[single]:
            row[key] = round(row["cluster"] / row[single], 3)
    echo(f"mlp 784-500-500-10 ({params if runs['cluster'] else '?':,} weights), batch "
         f"{batch} per worker, {repeats} alternating runs, medians")
    echo(f"  {workers} workers x {threads} thread(s), average every {average_every}: "
         f"{row['cluster'] or 0:>9,.0f} samples/s, round overhead "
         f"{row['overhead_ms'] or 0:.1f} ms")
    echo(f"  1 process x {single_threads} threads, the same data path: "
         f"{row['single'] or 0:>9,.0f} samples/s")
    echo(f"  1 process x {single_threads} threads, in-memory batches: "
         f"{row['single_memory'] or 0:>9,.0f} samples/s (dlrun bench mlp)")
    if "ratio" in row:
        echo(f"  workers / one process: {row['ratio']:.2f}x (same data path)"
             + (f", {row['ratio_memory']:.2f}x (in-memory batches)"
                if "ratio_memory" in row else ""))
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--average-every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--single", action="store_true",
                    help="one process with --threads threads on the same data path")
    ap.add_argument("--samples", type=int, default=16_000, help="with --single")
    ap.add_argument("--memory", action="store_true",
                    help="the dataset in one chunk: every share is held in memory")
    a = ap.parse_args(argv)
    if a.single:
        res = measure_single(a.threads, a.batch, a.epochs, a.samples, stream=not a.memory)
    else:
        res = measure(a.workers, a.threads, a.average_every, a.batch, a.epochs,
                      stream=not a.memory)
    print(json.dumps(res | {"data": "memory" if a.memory else "streamed"}))


if __name__ == "__main__":
    main()
