"""Training throughput of dlrun's models, timed like ``shared/bench``'s reference scripts.

Run: ``dlrun bench mlp|cnn|lstm [--threads 1,2] [--batch 100,10] [--repeats 5]``; the
reference scripts are found in ``$DLRUN_BENCH_REF`` or a ``shared/bench`` folder beside or
above the working folder or the package, PyTorch through ``--reference-python`` or
``$DLRUN_REF_PYTHON`` (BENCHMARKS.md holds the figures and how they were taken).
``measure()`` runs in its own process (``python -m dlrun.cli.bench.models ...``) so that
every measurement, dlrun's and the references', starts from the same state; ``compare()``
runs them alternately and reports medians and ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODELS = {"mlp": {"batch": 100}, "cnn": {"batch": 128}, "lstm": {"batch": 128}}
# models whose inference samples/s compare() also times beside PyTorch's
INFER_MODELS = ("cnn", "lstm")


def measure(model: str = "mlp", threads: int = 1, batch: int = 100, steps: int | None = None,
            windows: int = 7, warmup: int = 10, seed: int = 0, device: str = "cpu") -> dict:
    """Samples/s of training steps on random MNIST-shaped data (median of windows); on
    ``device='cuda'`` also the kernel launches and milliseconds of one step."""
    import dlrun as dl
    from dlrun.engine.core.device import resolve

    dl.set_threads(threads)
    dl.set_seed(seed)
    if model == "mlp":
        # the reference MLP: 784-500-500-10 ReLU, softmax cross entropy, plain SGD lr 0.1
        net = dl.Sequential([dl.layers.Dense(500, activation="relu", input_shape=(784,)),
                             dl.layers.Dense(500, activation="relu"),
                             dl.layers.Dense(10, activation="softmax")])
        opt, shape = dl.optimizers.SGD(learning_rate=0.1), (784,)
    elif model == "cnn":
        # the Keras MNIST CNN (the zoo's), SGD with momentum 0.9
        from dlrun.engine.models import zoo

        shape = (1, 28, 28)
        net = zoo.cnn(shape, 10)
        opt = dl.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    elif model == "lstm":
        # the rows of an image as 28 steps, LSTM 128, Dense 10 (the zoo's), Adam
        from dlrun.engine.models import zoo

        shape = (1, 28, 28)
        net = zoo.lstm(shape, 10)
        opt = dl.optimizers.Adam(learning_rate=0.001)
    else:
        raise ValueError(f"no benchmark for model {model!r}; expected one of {sorted(MODELS)}")
    net.compile(optimizer=opt, loss="sparse_categorical_crossentropy", device=resolve(device))
    rng = np.random.default_rng(seed)
    pool = 8
    x = rng.random((pool * batch, *shape), dtype=np.float32)
    y = rng.integers(0, 10, pool * batch)
    batches = [np.arange(i * batch, (i + 1) * batch) for i in range(pool)]
    t0 = time.perf_counter()
    net.run_batch("train", x, y, batches[0])        # the fit loop's own step
    first_step = time.perf_counter() - t0
    if model == "cnn":              # ~50x the MLP's work per sample: shorter windows
        warmup, steps = min(warmup, 3), steps or 5
    for i in range(warmup):
        net.run_batch("train", x, y, batches[i % pool])
    steps = steps or max(20, int(5000 / batch))
    rates = []
    for w in range(windows):
        t0 = time.perf_counter()
        for i in range(steps):
            net.run_batch("train", x, y, batches[i % pool])
        rates.append(steps * batch / (time.perf_counter() - t0))
    infer = []                          # the forward pass alone (evaluation mode)
    net.run_batch("eval", x, y, batches[0])
    for w in range(3):
        t0 = time.perf_counter()
        for i in range(steps):
            net.run_batch("eval", x, y, batches[i % pool])
        infer.append(steps * batch / (time.perf_counter() - t0))
    plan = net.program("train", batch).plan
    extra = {}
    if net.device == "cuda":            # each step waits for its loss, so this is real time
        extra = {"kernels_per_step": plan.kernels_per_step,
                 "ms_per_step": round(1000 * batch / statistics.median(rates), 3)}
    return {"bench": "dlrun", "model": model, "threads": threads, "batch": batch,
            "device": net.device, **extra,
            "train_sps_median": round(statistics.median(rates), 1),
            "train_sps_windows": [round(r, 1) for r in rates],
            "infer_sps_median": round(statistics.median(infer), 1),
            "first_step_s": round(first_step, 3)}


def _last_json(out: str) -> dict | None:
    for line in reversed(out.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _run(cmd: list, env=None) -> dict | None:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(f"  ! {' '.join(map(str, cmd[:3]))}... failed:\n"
                         f"{p.stderr.strip().splitlines()[-1:] if p.stderr else ''}\n")
        return None
    return _last_json(p.stdout)


def find_reference_dir() -> Path | None:
    """``$DLRUN_BENCH_REF``, else ``shared/bench`` beside or above the working folder, or
    in or beside the package's folder (a source checkout)."""
    env = os.environ.get("DLRUN_BENCH_REF")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[2]          # cli/bench/models.py -> the root
    for base in [Path.cwd(), *Path.cwd().parents, package]:
        for cand in (base / "shared" / "bench", base.parent / "shared" / "bench"):
            if (cand / "torch_train.py").exists():
                return cand
    return None


def python_with(module: str, candidates: list) -> str | None:
    for py in candidates:
        if py and subprocess.run([py, "-c", f"import {module}"],
                                 capture_output=True).returncode == 0:
            return py
    return None


def compare(model="mlp", threads=(1, 2), batches=(100, 10), repeats=3, ref_dir=None,
            ref_python=None, echo=print, device="cpu") -> list:
    """Alternate dlrun, PyTorch and plain-numpy runs; returns one row per setting. On
    ``device='cuda'`` dlrun runs alone (the reference scripts time the CPU; DEVELOPERS.md
    says how to time PyTorch CUDA beside it) and rows carry kernels and ms per step."""
    if device != "cpu":
        return _compare_device(model, batches, repeats, device, echo)
    ref_dir = Path(ref_dir) if ref_dir else find_reference_dir()
    pys = [ref_python, os.environ.get("DLRUN_REF_PYTHON"), sys.executable]
    torch_py = python_with("torch", pys) if ref_dir else None
    np_py = python_with("threadpoolctl", pys) if ref_dir else None
    if ref_dir is None:
        echo("reference scripts not found (set DLRUN_BENCH_REF to shared/bench): "
             "timing dlrun alone")
    elif torch_py is None:
        echo("no Python with torch found (set DLRUN_REF_PYTHON or --reference-python): "
             "PyTorch reference skipped")
    rows = []
    for b in batches:
        for t in threads:
            runs = {"dlrun": [], "torch": [], "numpy": []}
            infer = model in INFER_MODELS       # inference beside PyTorch's, too
            if infer:
                runs.update(dlrun_infer=[], torch_infer=[], torch_foreign_cpu=[])
            for r in range(repeats):
                res = _run([sys.executable, "-m", "dlrun.cli.bench.models", "--model", model,
                            "--threads", str(t), "--batch", str(b)])
                if res:
                    runs["dlrun"].append(res["train_sps_median"])
                    if infer:
                        runs["dlrun_infer"].append(res["infer_sps_median"])
                common = ["--threads", str(t), "--batch", str(b), "--wait-quiet", "0",
                          "--min-clean", "0", "--windows", "5"]
                if torch_py:
                    res = _run([torch_py, str(ref_dir / "torch_train.py"), "--model", model,
                                *([] if infer else ["--no-infer"]), *common])
                    if res:
                        runs["torch"].append(res["train_sps_median"])
                    if res and infer:
                        runs["torch_infer"].append(res["infer_sps_median"])
                        # the share of the machine other processes used while it ran
                        runs["torch_foreign_cpu"].append(
                            statistics.median(res["train_foreign_cpu"]))
                if np_py and model == "mlp":
                    res = _run([np_py, str(ref_dir / "numpy_mlp.py"), *common])
                    if res:
                        runs["numpy"].append(res["train_sps_median"])
            row = {"model": model, "threads": t, "batch": b}
            for k, v in runs.items():
                row[k] = round(statistics.median(v), 1) if v else None
                row[k + "_runs"] = v
            for ref in ("torch", "numpy"):
                if row["dlrun"] and row[ref]:
                    row["vs_" + ref] = round(row["dlrun"] / row[ref], 3)
            if row.get("dlrun_infer") and row.get("torch_infer"):
                row["infer_vs_torch"] = round(row["dlrun_infer"] / row["torch_infer"], 3)
            echo(format_row(row))
            rows.append(row)
    return rows


def _compare_device(model, batches, repeats, device, echo) -> list:
    from dlrun.engine.core.device import describe, resolve

    device = resolve(device)            # a clear error here, not in each child
    echo(f"device {describe(device)}; dlrun alone (PyTorch CUDA: see DEVELOPERS.md)")
    rows = []
    for b in batches:
        runs = [r for r in (_run([sys.executable, "-m", "dlrun.cli.bench.models", "--model", model,
                                  "--batch", str(b), "--device", device])
                            for _ in range(repeats)) if r]
        row = {"model": model, "batch": b, "device": device,
               "dlrun": round(statistics.median(r["train_sps_median"] for r in runs), 1)
               if runs else None, "dlrun_runs": [r["train_sps_median"] for r in runs]}
        if runs:
            row["kernels_per_step"] = runs[0].get("kernels_per_step")
            row["ms_per_step"] = round(statistics.median(r["ms_per_step"] for r in runs
                                                         if "ms_per_step" in r), 3)
        echo(f"{model:<5} batch {b:>4} {device}  dlrun {row['dlrun'] or '-':>10} samples/s  "
             f"{row.get('ms_per_step', '-')} ms/step  {row.get('kernels_per_step', '-')} "
             "kernels/step")
        rows.append(row)
    return rows


def format_row(row: dict) -> str:
    def f(k):
        return f"{row[k]:>10,.0f}" if row.get(k) else f"{'-':>10}"

    def r(k):
        return f"{row[k]:>7.2f}x" if row.get(k) else f"{'-':>8}"
    return (f"{row['model']:<5} batch {row['batch']:>4} threads {row['threads']}  "
            f"dlrun {f('dlrun')}  torch {f('torch')}  numpy {f('numpy')}  "
            f"vs torch {r('vs_torch')}  vs numpy {r('vs_numpy')}"
            + (f"  | infer dlrun {f('dlrun_infer')}  torch {f('torch_infer')}  "
               f"vs torch {r('infer_vs_torch')}" if "dlrun_infer" in row else ""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--windows", type=int, default=7)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    a = ap.parse_args(argv)
    print(json.dumps(measure(a.model, a.threads, a.batch, windows=a.windows,
                             device=a.device)))


if __name__ == "__main__":
    main()
