"""A training run as ``dlrun train`` does it: dataset + model (from the zoo, or a user's
Python file) -> fit -> run folder.

The run folder gets ``config.json`` first, ``metrics.csv`` one row per epoch as training
goes (so an interrupted run keeps its log), ``checkpoint/`` after every epoch (the last two
epochs' full training state), then ``model/`` and ``summary.json``. ``dlrun train --resume
RUN_DIR`` (:func:`resume_training`) continues an interrupted run from its checkpoint and
ends with the weights the uninterrupted run would have had, bit for bit.
"""
from __future__ import annotations

import csv
import json
import math
import platform
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dlrun.engine import schedules
from dlrun.cli.models import build_run_model, is_model_file
from dlrun.engine.callbacks import Callback
from dlrun.errors import ConfigError


@dataclass
class TrainConfig:
    dataset: str = "mnist-5k"
    model: str = "mlp"
    epochs: int = 20
    batch_size: int = 100
    optimizer: str | None = None     # None: the model's own (zoo.OPTIMIZERS), else sgd
    lr: float | None = None          # None: DEFAULT_LR of the optimizer
    momentum: float | None = None    # None: 0.9 for sgd, 0 for rmsprop
    nesterov: bool = False
    weight_decay: float | None = None
    clipnorm: float | None = None
    schedule: str = "constant"       # a key of SCHEDULES
    warmup: int = 0                  # epochs of linear warm-up before the schedule
    l2: float = 0.0                  # penalty on every Dense kernel
    dropout: float = 0.0             # after each hidden layer
    augment: float = 0.0             # random shifts of training images, fraction of size
    seed: int = 0
    threads: int | None = None       # per worker with workers
    out: str | None = None
    verbose: int = 1
    workers: int | None = None       # None: one process; N: N Ray workers (dlrun.cluster)
    average_every: int = 5
    optimizer_state: str = "average"
    lr_scaling: str = "auto"
    sync_warmup: int = 0
    address: str | None = None       # a running Ray cluster; None: $RAY_ADDRESS or local
    checkpoint_every: int = 0        # rounds between mid-epoch checkpoints (0: epochs only)
    on_lost: str = "wait"            # no room for a lost worker's replacement: wait|continue
    device: str = "cpu"              # cpu, cuda, or auto (cuda when a GPU is usable)
    class_weight: str | None = None  # 'balanced', or 'LABEL:WEIGHT,...'; None: all 1


# Learning rates that train the zoo's models on the shipped datasets in a few epochs.
DEFAULT_LR = {"sgd": 0.05, "adagrad": 0.01, "rmsprop": 0.001, "adam": 0.001, "adamw": 0.001}


# --schedule NAME -> the schedule for (learning rate, batches per epoch, epochs it spans)
SCHEDULES = {
    "constant": lambda lr, spe, epochs: lr,
    "step": lambda lr, spe, epochs: schedules.StepDecay(lr, 10 * spe, 0.5),
    "exponential": lambda lr, spe, epochs: schedules.ExponentialDecay(lr, spe, 0.9),
    "inverse-sqrt": lambda lr, spe, epochs: schedules.InverseSqrtDecay(lr, spe),
    "cosine": lambda lr, spe, epochs: schedules.CosineDecay(lr, max(1, epochs * spe)),
}
SCHEDULE_HELP = ("constant; step: halve every 10 epochs; exponential: x0.9 each epoch; "
                 "inverse-sqrt: lr / sqrt(epoch + 1); cosine: to 0 over the run")


def learning_rate(cfg: TrainConfig, steps_per_epoch: int):
    """The number or schedule that ``cfg.lr``, ``schedule`` and ``warmup`` describe."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {cfg.schedule!r}; expected one of "
                          f"{sorted(SCHEDULES)}")
    if not 0 <= cfg.warmup < cfg.epochs:
        raise ConfigError(f"warmup must be fewer epochs than the run's {cfg.epochs}, got "
                          f"{cfg.warmup}")
    lr = SCHEDULES[cfg.schedule](cfg.lr, steps_per_epoch, cfg.epochs - cfg.warmup)
    if cfg.warmup:
        lr = schedules.LinearWarmup(lr, cfg.warmup * steps_per_epoch)
    return lr


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int = 1):
    """The optimizer a TrainConfig names, with its defaults filled in (in ``cfg`` too)."""
    from dlrun.engine import optimizers

    if cfg.optimizer is None:
        from dlrun.engine.models import zoo

        cfg.optimizer = zoo.OPTIMIZERS.get(cfg.model, "sgd")
    name = cfg.optimizer.lower()
    if name not in DEFAULT_LR:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; expected one of "
                          f"{sorted(DEFAULT_LR)}")
    if cfg.lr is None:
        cfg.lr = DEFAULT_LR[name]
    kw = {"learning_rate": learning_rate(cfg, steps_per_epoch),
          "weight_decay": cfg.weight_decay, "clipnorm": cfg.clipnorm}
    if name in ("sgd", "rmsprop"):
        if cfg.momentum is None:
            cfg.momentum = 0.9 if name == "sgd" else 0.0
        kw["momentum"] = cfg.momentum
    elif cfg.momentum is not None:
        raise ConfigError(f"momentum={cfg.momentum} applies to sgd and rmsprop, not to "
                          f"{name} (which keeps its own moment estimates)")
    if cfg.nesterov:
        if name != "sgd":
            raise ConfigError(f"nesterov applies to sgd, not to {name}")
        kw["nesterov"] = True
    if name == "adamw" and cfg.weight_decay is None:
        del kw["weight_decay"]                       # AdamW's own default, 0.004
    return optimizers.NAMES[name].from_config(kw)


def describe_optimizer(opt) -> str:
    cfg = opt.get_config()
    lr = opt.schedule if opt.schedule is not None else cfg["learning_rate"]
    text = f"{type(opt).__name__} lr {lr}"
    if cfg.get("momentum"):
        text += f" momentum {cfg['momentum']}" + (" (Nesterov)" if cfg.get("nesterov") else "")
    if cfg.get("weight_decay"):
        text += f" weight decay {cfg['weight_decay']}"
    if cfg.get("clipnorm"):
        text += f" clipnorm {cfg['clipnorm']}"
    return text


class MetricsLog(Callback):
    """Appends one CSV row per epoch (epoch, seconds, then every logged metric)."""

    def __init__(self, path: Path, append: bool = False):
        super().__init__()
        self.path = path
        self.append = append
        self.first_step_s = None

    def on_train_begin(self, logs=None):
        self.t0 = self.t_epoch = time.perf_counter()
        self.header = not (self.append and self.path.exists() and self.path.stat().st_size)
        self.file = open(self.path, "a" if self.append else "w", newline="")
        self.writer = None

    def on_epoch_begin(self, epoch, logs=None):
        self.t_epoch = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - self.t0

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self.t_epoch, 4)}
        row |= {k: round(float(v), 6) for k, v in (logs or {}).items()}
        if self.writer is None:
            self.writer = csv.DictWriter(self.file, fieldnames=list(row))
            if self.header:
                self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()

    def on_train_end(self, logs=None):
        self.file.close()


def run_folder(cfg: TrainConfig) -> Path:
    if cfg.out:
        out = Path(cfg.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"run folder {out} already exists and is not empty; "
                              "choose another --out")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = Path(cfg.dataset).name.removesuffix(".zarr")
        label = Path(cfg.model).stem if is_model_file(cfg.model) else cfg.model
        out = Path("runs") / f"{name}-{label}-{stamp}"
        k = 1
        while out.exists():
            out = out.with_name(f"{name}-{label}-{stamp}-{k}")
            k += 1
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_training(cfg: TrainConfig, echo=print) -> dict:
    """Train a model on a dataset as configured; returns the summary dict."""
    return _train(cfg, echo)


# what --resume may change: how long and how the run is watched, not what it computes
RESUME_OVERRIDES = ("epochs", "threads", "verbose", "address", "device")


def resume_training(run_dir, echo=print, **overrides) -> dict:
    """Continue the run in ``run_dir`` from its last checkpoint, with its own settings
    (``epochs``, ``threads`` and ``verbose`` may be changed; any other setting given
    must match the run's); returns the summary dict."""
    out = Path(run_dir)
    try:
        saved = json.loads((out / "config.json").read_text())
        cfg = TrainConfig(**saved)
    except FileNotFoundError:
        raise ConfigError(f"{out} is not a dlrun run folder (it has no config.json)") \
            from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{out}/config.json is not a dlrun train config ({e})") from None
    bad = sorted(k for k, v in overrides.items()
                 if k not in RESUME_OVERRIDES and getattr(cfg, k, None) != v)
    if bad:
        raise ConfigError(f"--resume continues the run with its own settings; it cannot "
                          f"change {', '.join(bad)} (only {', '.join(RESUME_OVERRIDES)})")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    done = checkpoint_epoch(out / "checkpoint")
    if done >= cfg.epochs:
        raise ConfigError(f"the run in {out} has already trained {done} epochs; pass "
                          f"--epochs with more than {done} to train it further")
    cfg.out = str(out)
    return _train(cfg, echo, out=out, done=done)


def checkpoint_epoch(folder: Path) -> int:
    """Epochs done by the newest readable checkpoint in a BackupAndRestore folder."""
    from dlrun.engine.models.checkpoints import read_checkpoint
    from dlrun.errors import ModelFileError

    for name in ("latest", "previous"):
        try:
            return int(read_checkpoint(folder / name)["epoch"])
        except ModelFileError:
            continue
    return 0


def _train(cfg: TrainConfig, echo, out: Path | None = None, done: int = 0) -> dict:
    """The run: set up, fit (here or on workers), evaluate, save; ``out`` and ``done``
    when resuming a run folder after epoch ``done``."""
    t_start = time.perf_counter()
    import dlrun as dl
    from dlrun.engine.callbacks import BackupAndRestore

    distributed = bool(cfg.workers)
    threads, device = _threads_and_device(cfg, distributed)
    dl.set_seed(cfg.seed)
    ds, (x, y), test = _training_data(cfg)
    class_weight = parse_class_weight(cfg.class_weight, y)
    model = build_run_model(cfg, x.shape[1:], ds.classes)
    opt, scaling = _compile(cfg, model, len(x), device, distributed)
    resuming = out is not None
    out = out if resuming else run_folder(cfg)
    (out / "config.json").write_text(json.dumps(asdict(cfg) | {"threads": threads}, indent=2))
    _announce(cfg, model, ds, len(x), test, opt, threads, device, scaling, echo)
    if class_weight:
        echo("class weights " + ", ".join(f"{k}: {w:.3g}" for k, w in
                                          sorted(class_weight.items())))
    if resuming:
        echo(f"resuming {out} after epoch {done}")
    log = MetricsLog(out / "metrics.csv", append=resuming)
    backup = BackupAndRestore(out / "checkpoint", delete_checkpoint=False)
    t_fit = time.perf_counter()
    if distributed:
        _fit_distributed(cfg, model, ds, test, [log, backup], out, echo, class_weight)
    else:
        model.fit(x, y, batch_size=cfg.batch_size, epochs=cfg.epochs, verbose=cfg.verbose,
                  validation_data=test, callbacks=[log, backup], class_weight=class_weight)
    fit_s = time.perf_counter() - t_fit
    summary = _summary(cfg, ds.name, len(x), fit_s, log.first_step_s + (t_fit - t_start),
                       backup.restored_epoch)
    if test is not None:
        loss, acc = model.evaluate(*test, batch_size=500)
        summary |= {"test_loss": round(loss, 6), "test_accuracy": round(acc, 6)}
        echo(f"test accuracy: {acc:.4f} (loss {loss:.4f})")
    model.save(out / "model")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    echo(f"run folder: {out}  (metrics.csv, summary.json, model/, checkpoint/)")
    return summary


def _threads_and_device(cfg: TrainConfig, distributed: bool) -> tuple[int, str]:
    """Set the thread count; resolve the device, before any work, to a clear error."""
    import dlrun as dl

    if distributed:
        from dlrun.cluster.driver import default_threads

        _check_cluster_options(cfg)
        # --threads is per worker; the driver only evaluates between epochs
        threads = cfg.threads or default_threads(cfg.workers)
        dl.set_threads(threads)
    else:
        threads = dl.set_threads(cfg.threads)
    from dlrun.engine.core import device as device_mod

    # with workers the driver only evaluates (on the CPU), and each worker takes the
    # device on its own node
    return threads, device_mod.resolve("cpu" if distributed else cfg.device)


def _training_data(cfg: TrainConfig):
    """``(dataset, (x, y) of train, (x, y) of test or None)``; a dataset needs a train split."""
    from dlrun.datasets import open_dataset

    ds = open_dataset(cfg.dataset)
    if "train" not in ds.splits:
        raise ConfigError(f"dataset {cfg.dataset!r} has no 'train' split (it has "
                          f"{ds.splits}); dlrun train needs train and test splits")
    train = ds.split("train")
    return ds, train, ds.split("test") if "test" in ds.splits else None


def _compile(cfg: TrainConfig, model, samples: int, device: str, distributed: bool):
    """Compile ``model`` with the run's optimizer (its learning rate scaled by the number
    of workers where the lr scaling says so); returns ``(optimizer, lr scaling)``."""
    shard = math.ceil(samples / cfg.workers) if distributed else samples
    scaled = cfg
    scaling = effective_lr_scaling(cfg)
    if distributed and scaling == "linear":
        make_optimizer(cfg)                           # fills in the default lr
        scaled = replace(cfg, lr=cfg.lr * cfg.workers)
    opt = make_optimizer(scaled, steps_per_epoch=math.ceil(shard / cfg.batch_size))
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  device=device)
    return opt, scaling


def _announce(cfg: TrainConfig, model, ds, samples: int, test, opt, threads: int, device: str,
              scaling: str, echo) -> None:
    """The run's first lines: what trains on what, how, where."""
    import dlrun as dl
    from dlrun.engine.core import device as device_mod

    distributed = bool(cfg.workers)
    echo(f"dlrun {dl.__version__}: {cfg.model} ({model.count_params():,} weights) on "
         f"{ds.name}: {samples:,} training / {len(test[0]) if test else 0:,} test samples, "
         f"{cfg.epochs} epochs, batch {cfg.batch_size}, {describe_optimizer(opt)}, "
         f"{threads} threads" + (" per worker" if distributed else "") +
         (f", device {cfg.device} on the workers" if distributed else
          f", device {device_mod.describe(device)}") +
         (f" (auto: no usable GPU, {device_mod.cuda_unusable_reason()})"
          if cfg.device == "auto" and device == "cpu" else ""))
    if distributed:
        echo(f"{cfg.workers} workers x batch {cfg.batch_size} = global batch "
             f"{cfg.workers * cfg.batch_size}; average every {cfg.average_every} steps "
             f"(sync warm-up {cfg.sync_warmup} steps); optimizer state "
             f"{cfg.optimizer_state}; lr scaling {scaling}"
             + (" (auto)" if cfg.lr_scaling == "auto" else "")
             + (f" (lr {cfg.lr} x {cfg.workers})" if scaling == "linear" else ""))


def _summary(cfg: TrainConfig, dataset: str, samples: int, fit_s: float,
             first_step_s: float, restored_epoch: int | None) -> dict:
    """``summary.json`` before the test evaluation: what ran, how fast."""
    from dlrun import __version__

    ran = cfg.epochs - (restored_epoch or 0)
    summary = {"dataset": dataset, "model": cfg.model, "epochs": cfg.epochs,
               "train_seconds": round(fit_s, 3),
               "samples_per_second": round(ran * samples / fit_s, 1),
               "first_step_seconds": round(first_step_s, 3),
               "python": platform.python_version(), "dlrun": __version__}
    if cfg.workers:
        summary["workers"] = cfg.workers
    if restored_epoch:
        summary["resumed_after_epoch"] = restored_epoch
    return summary


# --lr-scaling auto: linear up to this many workers. Measured on mnist-5k (20 epochs, 3 seeds):
# 4 workers without scaling end 1.3 points below one process (a global batch 4x larger
# takes 4x fewer steps; averaging every step does no better), with linear scaling 0.3
# above. Beyond a few workers a rate x N with momentum tends to diverge.
AUTO_LINEAR_MAX_WORKERS = 8


def effective_lr_scaling(cfg: TrainConfig) -> str:
    """'none' or 'linear': ``auto`` is linear for 2..AUTO_LINEAR_MAX_WORKERS workers."""
    if cfg.lr_scaling != "auto":
        return cfg.lr_scaling
    workers = cfg.workers or 1
    return "linear" if 1 < workers <= AUTO_LINEAR_MAX_WORKERS else "none"


def _check_cluster_options(cfg: TrainConfig) -> None:
    from dlrun.cluster.driver import LR_SCALINGS, OPTIMIZER_STATES, WARN_AVERAGE_EVERY

    if cfg.workers < 1:
        raise ConfigError(f"workers must be >= 1, got {cfg.workers}")
    if cfg.optimizer_state not in OPTIMIZER_STATES:
        raise ConfigError(f"optimizer_state must be one of {', '.join(OPTIMIZER_STATES)}, "
                          f"got {cfg.optimizer_state!r}")
    if cfg.lr_scaling not in (*LR_SCALINGS, "auto"):
        raise ConfigError(f"lr_scaling must be one of {', '.join(LR_SCALINGS)}, auto; got "
                          f"{cfg.lr_scaling!r}")
    if cfg.average_every > WARN_AVERAGE_EVERY:
        warnings.warn(f"--average-every {cfg.average_every}: workers drift apart over more "
                      f"than {WARN_AVERAGE_EVERY} local steps, and accuracy usually suffers",
                      RuntimeWarning, stacklevel=3)


def parse_class_weight(text: str | None, y) -> dict | None:
    """``--class-weight``: ``balanced`` (counted over the training labels ``y``), or
    ``LABEL:WEIGHT,...`` (classes left out weigh 1); None for none."""
    from dlrun.engine.models.data import check_class_weight

    if text is None or text == "balanced":
        return check_class_weight(text, y)
    try:
        pairs = dict(item.split(":") for item in text.split(","))
    except ValueError:
        raise ConfigError(f"--class-weight takes 'balanced' or LABEL:WEIGHT pairs joined by "
                          f"commas (e.g. 0:1,1:5); got {text!r}") from None
    return check_class_weight(pairs)


def _fit_distributed(cfg: TrainConfig, model, ds, test, callbacks, out: Path, echo,
                     class_weight: dict | None = None) -> None:
    """Train on ``cfg.workers`` Ray workers (a local instance unless an address is given);
    faults handled are echoed and appended to ``events.log`` in the run folder."""
    from dlrun.cluster import ray_session, train_distributed
    from dlrun.ops.threads import available_cores

    def on_event(text: str) -> None:
        with open(out / "events.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    with ray_session(cfg.address, num_cpus=max(available_cores(), cfg.workers)) as session:
        echo(f"Ray: {session.kind}")
        # workers open the dataset themselves: a shipped name, or a path every node reads
        data = cfg.dataset if ds.path.is_relative_to(Path(__file__).parents[1]) \
            else str(ds.path.resolve())
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "average_every", RuntimeWarning)
            train_distributed(model, data, workers=cfg.workers,
                              average_every=cfg.average_every,
                              optimizer_state=cfg.optimizer_state, lr_scaling="none",
                              sync_warmup=cfg.sync_warmup, epochs=cfg.epochs,
                              batch_size=cfg.batch_size, seed=cfg.seed, threads=cfg.threads,
                              validation_data=test, callbacks=callbacks, verbose=cfg.verbose,
                              class_weight=class_weight, echo=echo, on_event=on_event,
                              announce=False,
                              checkpoint_dir=out / "checkpoint",
                              checkpoint_every=cfg.checkpoint_every,
                              on_lost=cfg.on_lost, device=cfg.device)
