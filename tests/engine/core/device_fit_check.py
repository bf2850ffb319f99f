"""Whole training runs on ``cuda`` against the same runs on the CPU.

Run in a process of its own (``tests/engine/core/test_device.py`` does): whether ``numba.cuda``
drives a GPU or the simulator is fixed when it is first imported. With a GPU visible the
runs use it; otherwise the script restarts itself with ``NUMBA_ENABLE_CUDASIM=1``. Blocks
and matmul tiles are patched small so that several blocks and grid-stride rounds run on
these tiny models (and the simulator, ~200 us per simulated thread, stays quick).

Each case builds the same model twice from one seed, trains one on ``cpu`` and one on
``cuda`` with the same data, shuffling and dropout seeds, and compares the losses, the
metrics and every weight (optimizer state and batch-norm statistics included). Prints
one line per case and the MLP's kernel launches per step; exits 1 on any mismatch::

    python tests/engine/core/device_fit_check.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))     # tests/, for cuda_child
from cuda_child import use_simulator_unless_gpu  # noqa: E402

use_simulator_unless_gpu()

import dlrun as dl  # noqa: E402
from dlrun.ops import config, linear  # noqa: E402

config.CUDA_BLOCK, config.CUDA_MAX_BLOCKS, linear.TILE = 32, 4, 8
warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)  # dropout hash

RTOL, ATOL = 1e-4, 2e-5            # float32, a few steps of different summation orders
L = dl.layers


def data(shape, n=24, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def twins(build, optimizer, seed=1):
    """The same model (same initial weights and dropout seed) compiled for each device."""
    out = {}
    for device in ("cpu", "cuda"):
        dl.set_seed(seed)
        m = build()
        m.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], device=device)
        out[device] = m
    return out["cpu"], out["cuda"]


def close(what: str, a, b, problems: list) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not np.allclose(a, b, rtol=RTOL, atol=ATOL):
        err = np.max(np.abs(a - b)) if a.shape == b.shape else f"shapes {a.shape} {b.shape}"
        problems.append(f"{what} differs (max abs err {err})")


def same_weights(tag, cpu, gpu, problems) -> None:
    for i, (a, b) in enumerate(zip(cpu.get_weights(), gpu.get_weights())):
        close(f"{tag} weight {i}", a, b, problems)
    # optimizer state by parameter (the twins' layer names differ)
    for pa, pb in zip(cpu.weights_params(), gpu.weights_params()):
        sa = cpu.optimizer.state.get(pa.name, {})
        sb = gpu.optimizer.state.get(pb.name, {})
        if sorted(sa) != sorted(sb):
            problems.append(f"{tag} optimizer state of {pa.name}: {sorted(sa)} {sorted(sb)}")
        for k in sa:
            close(f"{tag} optimizer state {pa.name}/{k}", sa[k], sb.get(k, np.nan), problems)


def fit_both(cpu, gpu, x, y, problems, tag="fit", **kw) -> None:
    hist = {}
    for device, m in (("cpu", cpu), ("cuda", gpu)):
        dl.set_seed(7)                             # the same shuffling for both
        hist[device] = m.fit(x, y, verbose=0, **kw).history
    for k in hist["cpu"]:
        close(f"{tag} history {k}", hist["cpu"][k], hist["cuda"][k], problems)
    same_weights(tag, cpu, gpu, problems)


# -- cases ---------------------------------------------------------------------------------
def mlp():
    return dl.Sequential([
        L.Dense(6, activation="relu", input_shape=(5,)), L.Dropout(0.3),
        L.Dense(5, activation="leaky_relu", kernel_regularizer=dl.regularizers.l2(0.01)),
        L.Dense(3, activation="softmax")])


def case_mlp(problems, facts):
    """SGD + Nesterov momentum, dropout, an L2 penalty, relu and leaky_relu fused with
    their biases; fit with validation, evaluate, predict, train_on_batch."""
    x, y = data((5,))
    cpu, gpu = twins(mlp, lambda: dl.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    fit_both(cpu, gpu, x, y, problems, batch_size=8, epochs=2, validation_split=0.25)
    plan = gpu.program("train", 8).plan
    facts["mlp kernels per step"] = plan.kernels_per_step
    facts["mlp plan"] = " | ".join(plan.describe().splitlines())
    close("evaluate", cpu.evaluate(x, y, batch_size=10), gpu.evaluate(x, y, batch_size=10),
          problems)
    close("predict", cpu.predict(x, batch_size=10), gpu.predict(x, batch_size=10), problems)
    close("train_on_batch", cpu.train_on_batch(x[:8], y[:8]),
          gpu.train_on_batch(x[:8], y[:8]), problems)
    same_weights("after train_on_batch", cpu, gpu, problems)


def case_adamw_batchnorm(problems, facts):
    """AdamW (weight decay) with clipnorm, batch normalisation (moving statistics updated
    on the device), tanh and sigmoid, and weights read by a callback every epoch."""
    x, y = data((4,), seed=1)

    def build():
        # no bias before batch norm: its gradient is ~0, and Adam would amplify noise
        return dl.Sequential([L.Dense(6, use_bias=False, input_shape=(4,)),
                              L.BatchNormalization(),
                              L.Activation("tanh"), L.Dense(4, activation="sigmoid"),
                              L.Dense(3, activation="softmax")])

    class Snapshots(dl.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append(self.model.get_weights())

    cpu, gpu = twins(build, lambda: dl.optimizers.AdamW(0.01, clipnorm=0.5))
    snaps = {"cpu": Snapshots(), "cuda": Snapshots()}
    for device, m in (("cpu", cpu), ("cuda", gpu)):
        dl.set_seed(7)
        m.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[snaps[device]])
    for e, (a, b) in enumerate(zip(snaps["cpu"].seen, snaps["cuda"].seen)):
        for i, (wa, wb) in enumerate(zip(a, b)):
            close(f"epoch {e} callback weight {i}", wa, wb, problems)
    same_weights("adamw", cpu, gpu, problems)


def case_cnn(problems, facts):
    """Conv2D (bias + relu fused in its op), max pooling, flatten, dense softmax."""
    x, y = data((1, 6, 6), n=8)

    def build():
        return dl.Sequential([L.Conv2D(2, 3, activation="relu", input_shape=(1, 6, 6)),
                              L.MaxPooling2D(2), L.Flatten(),
                              L.Dense(3, activation="softmax")])

    cpu, gpu = twins(build, lambda: dl.optimizers.SGD(0.05, momentum=0.9))
    fit_both(cpu, gpu, x, y, problems, tag="cnn", batch_size=4, epochs=1)
    facts["cnn kernels per step"] = gpu.program("train", 4).plan.kernels_per_step


def case_checkpoints(problems, facts):
    """A model saved from a GPU run loads on the CPU and vice versa, optimizer state
    included, and both continue training alike."""
    x, y = data((5,), seed=2)
    cpu, gpu = twins(mlp, lambda: dl.optimizers.Adam(0.01))
    fit_both(cpu, gpu, x, y, problems, tag="before saving", batch_size=8, epochs=1)
    with tempfile.TemporaryDirectory() as tmp:
        gpu.save(f"{tmp}/from_gpu")
        cpu.save(f"{tmp}/from_cpu")
        dl.set_seed(3)
        on_cpu = dl.load_model(f"{tmp}/from_gpu")            # a GPU run, loaded on the CPU
        with dl.device("cuda"):
            dl.set_seed(3)
            on_gpu = dl.load_model(f"{tmp}/from_cpu")        # a CPU run, loaded on the GPU
    if (on_cpu.device, on_gpu.device) != ("cpu", "cuda"):
        problems.append(f"loaded on devices {on_cpu.device}, {on_gpu.device}")
    for i, (a, b) in enumerate(zip(gpu.get_weights(), on_cpu.get_weights())):
        if not np.array_equal(a, b):
            problems.append(f"weight {i} of the GPU run changed through save/load")
    same_weights("loaded", on_cpu, on_gpu, problems)
    fit_both(on_cpu, on_gpu, x, y, problems, tag="after loading", batch_size=8, epochs=1)
    # weights set on the host reach the device before its next step
    new = [w * 0.5 for w in on_cpu.get_weights()]
    on_cpu.set_weights(new)
    on_gpu.set_weights(new)
    close("predict after set_weights", on_cpu.predict(x), on_gpu.predict(x), problems)


def case_launches(problems, facts):
    """Kernel launches of one step of the benchmark MLP's architecture (784-500-500-10
    relu, softmax cross entropy, plain SGD, no metrics; the count does not depend on the
    widths, so narrow ones stand in): 7 forward, 11 backward, 1 update."""
    dl.set_seed(1)
    m = dl.Sequential([L.Dense(8, activation="relu", input_shape=(12,)),
                       L.Dense(8, activation="relu"), L.Dense(3, activation="softmax")])
    m.compile(optimizer=dl.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
              device="cuda")
    x, y = data((12,), n=4)
    m.train_on_batch(x, y)
    k = m.program("train", 4).plan.kernels_per_step
    facts["bench mlp kernels per step"] = k
    if k != 19:
        problems.append(f"the benchmark MLP's step launches {k} kernels, expected 19")


def case_recurrent(problems, facts):
    """An LSTM over 4 steps under a SimpleRNN returning sequences, trained with Adam: the
    per-step CUDA kernels against the CPU's compiled time loops."""
    x, y = data((4, 3), n=16, seed=2)

    def build():
        return dl.Sequential([L.SimpleRNN(4, return_sequences=True, input_shape=(4, 3)),
                              L.LSTM(3), L.Dense(3, activation="softmax")])

    cpu, gpu = twins(build, lambda: dl.optimizers.Adam(0.01))
    fit_both(cpu, gpu, x, y, problems, batch_size=8, epochs=1)


def case_sequences(problems, facts):
    """Tagging: int32 indices through an Embedding (the scatter-add's atomics), a GRU
    returning sequences and a per-step softmax (TimeDistributed and Dense on sequences),
    cross entropy and accuracy per step, sample weights per sequence."""
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 6, (16, 4)), rng.integers(0, 3, (16, 4))
    w = rng.uniform(0, 2, 16).astype(np.float32)

    def build():
        return dl.Sequential([L.Embedding(6, 3, input_shape=(4,)),
                              L.GRU(4, return_sequences=True),
                              L.TimeDistributed(L.Dense(4, activation="tanh")),
                              L.Dense(3, activation="softmax")])

    cpu, gpu = twins(build, lambda: dl.optimizers.Adam(0.01))
    fit_both(cpu, gpu, x, y, problems, batch_size=8, epochs=1, sample_weight=w)
    close("per-step evaluate", cpu.evaluate(x, y), gpu.evaluate(x, y), problems)


def case_functional(problems, facts):
    """A functional model: a residual Add, a Concatenate, a Highway layer and two outputs
    weighted by loss_weights."""
    x, y = data((5,), n=16, seed=3)
    y2 = (y % 2).astype(np.int64)

    def build():
        inp = dl.Input(shape=(5,))
        h = L.Dense(5, activation="relu")(inp)
        h = L.Add()([inp, h])
        c = L.Concatenate()([h, L.Highway()(h)])
        a = L.Dense(3, activation="softmax", name="digit")(c)
        b = L.Dense(2, activation="softmax", name="parity")(c)
        return dl.Model(inp, [a, b])

    out = {}
    for device in ("cpu", "cuda"):
        dl.set_seed(1)
        m = build()
        m.compile(dl.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy",
                  loss_weights=[1.0, 0.5], metrics=["accuracy"], device=device)
        dl.set_seed(7)
        out[device] = (m, m.fit(x, [y, y2], batch_size=8, epochs=1, verbose=0).history)
    (cpu, hc), (gpu, hg) = out["cpu"], out["cuda"]
    for k in hc:
        close(f"functional history {k}", hc[k], hg[k], problems)
    same_weights("functional", cpu, gpu, problems)


def case_sample_weight(problems, facts):
    """Per-sample loss weights (zeros among them) and class weights on cuda: the same
    steps as the CPU's, and the first one as numpy computes it."""
    x, y = data((5,), n=16, seed=4)
    w = np.random.default_rng(4).uniform(0, 2, 16).astype(np.float32)
    w[::5] = 0

    def build():
        return dl.Sequential([L.Dense(3, activation="softmax", input_shape=(5,))])

    cpu, gpu = twins(build, lambda: dl.optimizers.SGD(0.5))
    kernel, bias = (a.astype(np.float64) for a in cpu.get_weights())
    z = x @ kernel + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want_loss = np.sum(w * -np.log(p[np.arange(16), y])) / 16
    dz = (p - np.eye(3)[y]) * w[:, None] / 16
    for m in (cpu, gpu):
        close(f"{m.device} weighted loss", m.train_on_batch(x, y, sample_weight=w)[0],
              want_loss, problems)
        close(f"{m.device} weighted step", m.get_weights()[0], kernel - 0.5 * x.T @ dz,
              problems)
    fit_both(cpu, gpu, x, y, problems, tag="class_weight", batch_size=8, epochs=2,
             class_weight={0: 0.0, 2: 3.0})
    close("weighted evaluate", cpu.evaluate(x, y, sample_weight=w),
          gpu.evaluate(x, y, sample_weight=w), problems)


def case_gradients(problems, facts):
    """dl.gradients on cuda: the loss's (sample weights, an L2 penalty) with respect to the
    inputs and to every weight, an output unit's, a conv layer's mean, as on the CPU."""
    x, y = data((5,), n=6, seed=5)
    w = np.linspace(0, 2, 6).astype(np.float32)
    cpu, gpu = twins(mlp, lambda: dl.optimizers.SGD(0.1))
    asks = [dict(y=y, sample_weight=w), dict(y=y, wrt="weights"), dict(output=2)]
    for kw in asks:
        a, b = dl.gradients(cpu, x, **kw), dl.gradients(gpu, x, **kw)
        a, b = (a, b) if isinstance(a, list) else ([a], [b])
        for i, (ga, gb) in enumerate(zip(a, b)):
            close(f"gradients {sorted(kw)} {i}", ga, gb, problems)
    xc = data((1, 6, 6), n=2)[0]

    def build():
        return dl.Sequential([L.Conv2D(2, 3, activation="relu", input_shape=(1, 6, 6),
                                       name="conv"), L.Flatten(),
                              L.Dense(3, activation="softmax")])

    cpu, gpu = twins(build, lambda: dl.optimizers.SGD(0.1))
    close("gradients of a layer's mean", dl.gradients(cpu, xc, layer="conv"),
          dl.gradients(gpu, xc, layer="conv"), problems)


def case_lecture_layers(problems, facts):
    """Stochastic and spatial pyramid pooling, DropConnect, RReLU and annealed dropout (its
    rate fed every step) trained on both devices with the same draws; then
    predict(training=True) from one seed on both."""
    x, y = data((1, 6, 6), n=8)

    def build():
        return dl.Sequential([L.Conv2D(2, 3, activation="relu", input_shape=(1, 6, 6)),
                              L.StochasticPooling2D(2), L.SpatialPyramidPooling2D((1, 2)),
                              L.DropConnect(4, 0.3), L.RReLU(),
                              L.AnnealedDropout(0.5, epochs=1), L.Dense(3, activation="softmax")])

    cpu, gpu = twins(build, lambda: dl.optimizers.SGD(0.05))
    fit_both(cpu, gpu, x, y, problems, tag="lecture layers", batch_size=8, epochs=2)
    out = {}
    for device, m in (("cpu", cpu), ("cuda", gpu)):
        dl.set_seed(3)
        out[device] = m.predict(x, batch_size=4, training=True)
    close("predict(training=True)", out["cpu"], out["cuda"], problems)


CASES = [case_mlp, case_adamw_batchnorm, case_cnn, case_checkpoints, case_launches,
         case_recurrent, case_sequences, case_functional, case_sample_weight,
         case_gradients, case_lecture_layers]


def main() -> int:
    where = "simulator" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "GPU"
    print(f"training on cuda ({where}) against the CPU, CUDA_BLOCK {config.CUDA_BLOCK}, "
          f"TILE {linear.TILE}")
    failures, facts = [], {}
    for case in CASES:
        t0 = time.perf_counter()
        problems = []
        try:
            case(problems, facts)
        except Exception:  # noqa: BLE001  (report it, go on with the other cases)
            problems.append(traceback.format_exc())
        status = "ok" if not problems else "MISMATCH"
        print(f"{status:9s} {case.__name__:24s} {time.perf_counter() - t0:6.1f}s", flush=True)
        for p in problems:
            print(f"          {p}")
        if problems:
            failures.append(case.__name__)
    for k, v in facts.items():
        print(f"{k}: {v}")
    print(f"{len(failures)} failing: {', '.join(failures)}" if failures else "all match")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
