"""The distributed training loop with its workers in this process (no Ray): the
invariants, sharding, optimizer-state modes and NaN rejection, fast."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun.cluster import Worker, model_spec, train_distributed
from dlrun.errors import ClusterError, ConfigError


pytestmark = pytest.mark.usefixtures("one_thread")   # bitwise comparisons need one thread


def test_one_worker_is_single_process_training_bitwise(h):
    x, y = h.digits()
    ref = h.small_model(dropout=0.2)
    h.train_single(ref, x, y, 64, 2, seed=3)
    model = h.small_model(dropout=0.2)
    train_distributed(model, (x, y), workers=1, average_every=4, epochs=2, batch_size=64,
                      seed=3, threads=1, verbose=0, in_process=True)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        assert np.array_equal(a, b)
    assert model.optimizer.iterations == ref.optimizer.iterations
    # layer names differ between the two models; the states come in the same order
    for a, b in zip(model.optimizer.get_state().values(), ref.optimizer.get_state().values()):
        assert np.array_equal(a, b)


def test_n_workers_k1_plain_sgd_is_one_process_with_n_times_the_batch(h):
    x, y = h.digits()
    x, y = x[:1200], y[:1200]                    # 3 x 400: equal shards, whole batches
    sgd = lambda: dl.optimizers.SGD(learning_rate=0.1)  # noqa: E731
    ref = h.small_model(optimizer=sgd())
    h.train_union(ref, x, y, 40, 3, 2, seed=5)
    model = h.small_model(optimizer=sgd())
    train_distributed(model, (x, y), workers=3, average_every=1, epochs=2, batch_size=40,
                      seed=5, threads=1, verbose=0, in_process=True)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_class_weights_on_two_workers_follow_the_numpy_reference(h):
    """K = 1 and plain SGD: the averaged step of two workers is the step of one process on
    the union of their batches, so each round's update is the numpy gradient of the
    class-weighted loss over the 2 x 40 samples the workers' loaders give."""
    from dlrun.datasets import Loader

    x, y = h.digits()
    x, y = x[:400], y[:400]
    cw = {0: 0.0, 1: 3.0, 7: 0.5}                 # the 0s count for nothing

    dl.set_seed(0)
    model = dl.Sequential([dl.layers.Flatten(input_shape=(1, 8, 8)),
                           dl.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=dl.optimizers.SGD(learning_rate=0.1),
                  loss="sparse_categorical_crossentropy")
    kernel, bias = (a.astype(np.float64) for a in model.get_weights())
    loaders = [Loader(x, y, 40, seed=5, worker=(i, 2)) for i in range(2)]
    for parts in zip(*(ld.epoch(0) for ld in loaders)):
        xb = np.concatenate([p[0] for p in parts]).reshape(80, -1).astype(np.float64)
        yb = np.concatenate([p[1] for p in parts])
        w = np.array([cw.get(int(k), 1.0) for k in yb])
        z = xb @ kernel + bias
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        dz = (p - np.eye(10)[yb]) * w[:, None] / len(yb)
        kernel, bias = kernel - 0.1 * xb.T @ dz, bias - 0.1 * dz.sum(axis=0)
    lines = []
    train_distributed(model, (x, y), workers=2, average_every=1, epochs=1, batch_size=40,
                      seed=5, threads=1, verbose=1, in_process=True, class_weight=cw,
                      echo=lines.append)
    np.testing.assert_allclose(model.get_weights()[0], kernel, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.get_weights()[1], bias, rtol=1e-4, atol=1e-5)
    assert "class weights 0: 0, 1: 3, 7: 0.5" in lines


def test_a_model_of_several_outputs_is_refused_with_what_it_has(h):
    inp = dl.Input(shape=(1, 8, 8))
    flat = dl.layers.Flatten()(inp)
    model = dl.Model(inp, [dl.layers.Dense(10, activation="softmax", name="a")(flat),
                           dl.layers.Dense(10, activation="softmax", name="b")(flat)])
    model.compile("sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ConfigError, match=r"outputs \['a', 'b'\]"):
        train_distributed(model, h.digits(), workers=2, in_process=True, verbose=0)


def test_balanced_class_weight_is_counted_over_the_whole_split(h):
    from dlrun.engine.models.data import balanced_class_weight

    x, y = h.digits()
    lines = []
    train_distributed(h.small_model(), (x[:200], y[:200]), workers=2, epochs=1,
                      batch_size=50, threads=1, verbose=1, in_process=True,
                      class_weight="balanced", echo=lines.append)
    want = balanced_class_weight(y[:200])
    assert [ln for ln in lines if ln.startswith("class weights ")] == [
        "class weights " + ", ".join(f"{k}: {w:.3g}" for k, w in sorted(want.items()))]


def test_every_sample_is_seen_exactly_once_per_epoch(h):
    x, y = h.digits()
    x = x.copy()
    x.reshape(len(x), -1)[:, 0] = np.arange(len(x))       # pixel 0 is the sample's id
    seen = []

    class Recording(Worker):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            run = self.model.run_batch

            def recording(mode, xb, yb, idx, *weights):
                seen.append(xb.reshape(len(xb), -1)[idx, 0].astype(int))
                return run(mode, xb, yb, idx, *weights)
            self.model.run_batch = recording

    model = h.small_model()
    n, spec = 3, model_spec(model)
    workers = [Recording(i, n, spec, (x, y), 50, 7, 1) for i in range(n)]
    state = {"epoch": 0, "step": 0, "iterations": 0}
    weights = {k: v.copy() for k, v in workers[0].weights.items()}
    for epoch in range(2):
        seen.clear()
        for w in workers:
            pos = 0
            while True:
                r = w.run_round(weights, state | {"epoch": epoch, "position": pos}, 4)
                pos += r["steps"]
                if r["done"]:
                    break
        ids = np.concatenate(seen)
        assert len(ids) == len(x) and np.array_equal(np.sort(ids), np.arange(len(x)))


@pytest.mark.parametrize("mode", ["average", "reset", "local"])
def test_optimizer_state_modes_train(h, mode):
    x, y = h.digits()
    model = h.small_model()
    hist = train_distributed(model, (x, y), workers=2, average_every=5,
                             optimizer_state=mode, epochs=2, batch_size=32, seed=0, threads=1,
                             verbose=0, in_process=True)
    assert hist.history["loss"][1] < hist.history["loss"][0]
    assert hist.history["accuracy"][1] > 0.5
    assert set(hist.history) >= {"samples_per_s", "worker_samples_per_s", "round_overhead_ms"}


def test_nan_worker_is_rejected_and_the_round_redone(h, monkeypatch):
    x, y = h.digits()
    calls = {"n": 0}
    real = Worker.run_round

    def flaky(self, weights, state, k):
        out = real(self, weights, state, k)
        calls["n"] += 1
        if self.index == 1 and calls["n"] == 4:           # once, in round 2
            out["arrays"] = {k: v.copy() for k, v in out["arrays"].items()}
            out["arrays"]["w<f4"][123] = np.nan
        return out
    monkeypatch.setattr(Worker, "run_round", flaky)
    events = []
    clean = h.small_model()
    train_distributed(clean, (x, y), workers=2, average_every=5, epochs=1, batch_size=64,
                      seed=1, threads=1, verbose=0, in_process=True)
    calls["n"] = 0
    model = h.small_model()
    train_distributed(model, (x, y), workers=2, average_every=5, epochs=1, batch_size=64,
                      seed=1, threads=1, verbose=0, in_process=True, echo=lambda s: None,
                      on_event=events.append)
    assert len(events) == 1 and "worker(s) [1]" in events[0] and "rejected" in events[0]
    for a, b in zip(model.get_weights(), clean.get_weights()):
        assert np.array_equal(a, b)                       # the redone round is the same


def test_a_worker_that_always_returns_nan_stops_the_run(h, monkeypatch):
    x, y = h.digits()
    real = Worker.run_round

    def poisoned(self, weights, state, k):
        out = real(self, weights, state, k)
        out["arrays"] = {n: np.full_like(a, np.nan) for n, a in out["arrays"].items()}
        return out
    monkeypatch.setattr(Worker, "run_round", poisoned)
    with pytest.raises(ClusterError, match="failed 2 times"):
        train_distributed(h.small_model(), (x, y), workers=2, epochs=1, batch_size=64,
                          threads=1, verbose=0, in_process=True, max_retries=1,
                          echo=lambda s: None)


@pytest.mark.parametrize("kw, message", [
    (dict(workers=0), "workers must be an integer >= 1"),
    (dict(average_every=0), "average_every"),
    (dict(optimizer_state="sum"), "optimizer_state must be one of average, reset, local"),
    (dict(lr_scaling="sqrt"), "lr_scaling must be one of none, linear"),
])
def test_bad_options_are_config_errors(h, kw, message):
    with pytest.raises(ConfigError, match=message):
        train_distributed(h.small_model(), h.digits(), in_process=True, verbose=0, **kw)


def test_arrays_are_not_shipped_to_ray_workers_and_linear_scaling_needs_a_constant_lr(h):
    with pytest.raises(ConfigError, match="workers open the dataset themselves"):
        train_distributed(h.small_model(), h.digits(), workers=2, verbose=0)
    sched = dl.optimizers.SGD(learning_rate=dl.schedules.ExponentialDecay(0.1, 10, 0.9))
    with pytest.raises(ConfigError, match="constant learning rate"):
        train_distributed(h.small_model(optimizer=sched), h.digits(), workers=2,
                          lr_scaling="linear", verbose=0, in_process=True)


def test_linear_lr_scaling_multiplies_the_workers_rate(h):
    model = h.small_model(optimizer=dl.optimizers.SGD(learning_rate=0.01))
    x, y = h.digits()
    ref = h.small_model(optimizer=dl.optimizers.SGD(learning_rate=0.02))
    h.train_union(ref, x[:1200], y[:1200], 40, 2, 1, seed=0)
    train_distributed(model, (x[:1200], y[:1200]), workers=2, average_every=1,
                      lr_scaling="linear", epochs=1, batch_size=40, threads=1, verbose=0,
                      in_process=True)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_without_ray_running_the_library_does_not_start_it(h):
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray instance is running in this process")
    with pytest.raises(ClusterError, match="Ray is not running"):
        train_distributed(h.small_model(), "digits", workers=2, verbose=0)
    assert not ray.is_initialized()


def bn_model(seed=0):
    dl.set_seed(seed)
    model = dl.Sequential([dl.layers.Flatten(input_shape=(1, 8, 8)),
                           dl.layers.Dense(32), dl.layers.BatchNormalization(),
                           dl.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=dl.optimizers.Adam(learning_rate=0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_batchnorm_moving_statistics_travel_and_are_averaged(h):
    x, y = h.digits()
    ref = bn_model()
    h.train_single(ref, x, y, 64, 1, seed=0)
    one = bn_model()
    train_distributed(one, (x, y), workers=1, average_every=3, epochs=1, batch_size=64,
                      threads=1, verbose=0, in_process=True)
    for a, b in zip(one.get_weights(), ref.get_weights()):
        assert np.array_equal(a, b)               # moving mean and variance included
    # two workers, K=1, one step each: the moving mean is the mean of the workers' means
    two = bn_model()
    w0 = two.get_weights()
    train_distributed(two, (x[:128], y[:128]), workers=2, average_every=1, epochs=1,
                      batch_size=64, threads=1, verbose=0, in_process=True)
    singles = []
    for i in range(2):
        m = bn_model()
        m.set_weights(w0)
        xb, yb = next(iter(dl.datasets.Loader(x[:128], y[:128], 64, seed=0,
                                              worker=(i, 2)).epoch(0)))
        m.train_on_batch(xb, yb)
        singles.append(m.get_weights())
    for k, got in enumerate(two.get_weights()):
        np.testing.assert_allclose(got, (singles[0][k] + singles[1][k]) / 2, rtol=1e-5,
                                   atol=1e-6)


@pytest.fixture
def chunked(tmp_path, h):
    """digits as float32 in 24 chunks of 60 samples, pixel 0 holding the sample's id."""
    from dlrun.datasets import write_dataset

    x, y = h.digits()
    x = x.copy()
    x.reshape(len(x), -1)[:, 0] = np.arange(len(x))
    return write_dataset(tmp_path / "chunked.zarr", (x, y), name="chunked", classes=10,
                         chunk_samples=60), x, y


def test_a_large_split_is_streamed_chunk_by_chunk_one_worker_as_one_process(h, chunked):
    from dlrun.cluster.worker import load_shard
    from dlrun.datasets import open_dataset

    path, x, y = chunked
    assert not load_shard(str(path), 0, 3, 50, 0).in_memory        # 24 chunks >= 4 x 3
    assert load_shard(str(path), 0, 7, 50, 0).in_memory
    ref = h.small_model()
    loader = open_dataset(path).loader(None, 50, seed=2, worker=(0, 1))
    for e in range(2):
        for xb, yb in loader.epoch(e):
            ref.train_on_batch(xb, yb)
    model = h.small_model()
    train_distributed(model, str(path), workers=1, average_every=4, epochs=2, batch_size=50,
                      seed=2, threads=1, verbose=0, in_process=True)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        assert np.array_equal(a, b)


def test_a_streamed_share_that_fits_is_read_once_and_batched_as_before(h, chunked):
    import shutil
    import threading

    from dlrun.cluster.worker import load_shard

    path, x, y = chunked
    cached = load_shard(str(path), 1, 3, 50, 4)
    plain = load_shard(str(path), 1, 3, 50, 4)
    plain._cache = None
    batches = [[(xb.copy(), yb.copy()) for xb, yb in plain.epoch(e)] for e in range(3)]
    for e in range(3):
        for (xb, yb), (xr, yr) in zip(cached.epoch(e), batches[e], strict=True):
            assert np.array_equal(xb, xr) and np.array_equal(yb, yr)
            # ... and need no thread reading ahead (epoch 0's is gone by epoch 2)
            assert e < 2 or "dlrun-loader-prefetch" not in {
                t.name for t in threading.enumerate()}
        if e == 0:                           # later epochs read nothing from storage
            shutil.rmtree(path / "x")


def test_streamed_workers_read_disjoint_chunks_and_see_every_sample_once(h, chunked):
    path, x, y = chunked
    model = h.small_model()
    spec = model_spec(model)
    seen = []
    workers = [Worker(i, 3, spec, str(path), 50, 5, 1) for i in range(3)]
    for w in workers:
        run = w.model.run_batch

        def recording(mode, xb, yb, idx, *weights, run=run):
            seen.append(xb.reshape(len(xb), -1)[idx, 0].astype(int))
            return run(mode, xb, yb, idx, *weights)
        w.model.run_batch = recording
    weights = {k: v.copy() for k, v in workers[0].weights.items()}
    per_worker = []
    for w in workers:
        start = len(seen)
        pos = 0
        while True:
            r = w.run_round(weights, {"epoch": 1, "position": pos, "step": 0,
                                      "iterations": 0}, 4)
            pos += r["steps"]
            if r["done"]:
                break
        ids = np.concatenate(seen[start:])
        per_worker.append(set((ids // 60).tolist()))               # the chunks it read
    assert per_worker == [set(range(i, 24, 3)) for i in range(3)]
    ids = np.concatenate(seen)
    assert np.array_equal(np.sort(ids), np.arange(len(x)))


def test_checkpoints_every_m_rounds_resume_mid_epoch_bitwise(h, tmp_path):
    from dlrun.engine.callbacks import BackupAndRestore, Callback

    x, y = h.digits()
    kw = dict(workers=2, average_every=2, epochs=2, batch_size=50, threads=1, verbose=0,
              in_process=True, echo=lambda s: None)
    whole = h.small_model()
    train_distributed(whole, (x, y), **kw)

    class Crash(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            if self.epoch == 1 and batch == 5:        # round 14; the last save: round 12
                raise KeyboardInterrupt

    ckpt = tmp_path / "checkpoint"
    backup = lambda: BackupAndRestore(ckpt, delete_checkpoint=False)  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        train_distributed(h.small_model(), (x, y), callbacks=[backup(), Crash()],
                          checkpoint_dir=ckpt, checkpoint_every=3, **kw)
    lines = []
    resumed = h.small_model()
    hist = train_distributed(resumed, (x, y), callbacks=[backup()], checkpoint_dir=ckpt,
                             checkpoint_every=3, **kw | {"echo": lines.append})
    assert any("after batch 8 from the mid-epoch checkpoint" in s for s in lines), lines
    assert len(hist.history["loss"]) == 1                  # epoch 2, from batch 8 on
    for a, b in zip(resumed.get_weights(), whole.get_weights()):
        assert np.array_equal(a, b)


def test_fit_with_workers_is_train_distributed(h):
    x, y = h.digits()
    ref = h.small_model()
    train_distributed(ref, (x, y), workers=2, average_every=3, epochs=1, batch_size=50,
                      threads=1, verbose=0, in_process=True)
    model = h.small_model()
    hist = model.fit((x, y), workers=2, average_every=3, epochs=1, batch_size=50,
                     threads=1, verbose=0, in_process=True)
    assert len(hist.history["loss"]) == 1
    for a, b in zip(model.get_weights(), ref.get_weights()):
        assert np.array_equal(a, b)
    with pytest.raises(ConfigError, match="fit\\(workers=N\\) trains on a dataset"):
        model.fit(x, y, workers=2)


def test_python_functions_and_integer_inputs_are_refused_before_any_worker_starts(h):
    from dlrun import backend as K

    def my_mse(y_true, y_pred):
        return K.mean(K.square(y_pred - y_true), axis=-1)

    model = dl.Sequential([dl.layers.Flatten(input_shape=(1, 8, 8)),
                           dl.layers.Dense(10, activation="softmax")])
    model.compile("sgd", loss=my_mse)
    with pytest.raises(ConfigError, match="holds no Python code.*my_mse"):
        train_distributed(model, h.digits(), workers=2, in_process=True, verbose=0)
    model = dl.Sequential([dl.layers.Embedding(17, 4, input_length=64),
                           dl.layers.Flatten(), dl.layers.Dense(10, activation="softmax")])
    model.compile("sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ConfigError, match="integer inputs"):
        train_distributed(model, h.digits(), workers=2, in_process=True, verbose=0)
