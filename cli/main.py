"""The ``dlrun`` command line. Thin: each command parses its options, then calls library
functions. Heavy imports (Numba, zarr, Ray) happen inside the commands, so
``dlrun --help`` answers at once."""
from __future__ import annotations

import functools
import sys

import click


def friendly_errors(fn):
    """Show a dlrun error as one line on stderr and exit 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from dlrun.errors import DlrunError

        try:
            return fn(*args, **kwargs)
        except DlrunError as e:
            raise click.ClickException(str(e)) from None
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dlrun")
def main():
    """dlrun: train deep-learning models on the CPU, a GPU or a Ray cluster.

    Start with `dlrun train`: it trains an MLP on a handwritten-digit dataset shipped
    with the package.
    """


@main.command()
@click.option("--dataset", default="mnist-5k", show_default=True,
              help="A shipped dataset (mnist-5k, digits) or the path of a zarr dataset.")
@click.option("--model", default="mlp", show_default=True,
              help="A built-in model (mlp, mlp-sigmoid, cnn, lenet, lstm, resnet-small), or "
                   "a Python file defining build_model(input_shape, classes) that returns a "
                   "dlrun model (or a module-level `model`); the file is executed, so use "
                   "only files you trust.")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(1))
@click.option("--optimizer", default=None,
              type=click.Choice(["sgd", "adam", "rmsprop", "adagrad", "adamw"]),
              help="[default: adam for lstm (as its reference), sgd for the other models]")
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Learning rate  [default: 0.05 for sgd, 0.01 for adagrad, 0.001 for "
                   "adam, adamw and rmsprop].")
@click.option("--momentum", default=None, type=click.FloatRange(0, 1, max_open=True),
              help="Momentum of sgd or rmsprop  [default: 0.9 for sgd, 0 for rmsprop].")
@click.option("--nesterov", is_flag=True, help="Nesterov momentum (sgd).")
@click.option("--weight-decay", default=None, type=click.FloatRange(min=0),
              help="Decoupled weight decay: w -= lr * weight_decay * w before each update  "
                   "[default: none; 0.004 for adamw].")
@click.option("--clipnorm", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Scale each gradient down to at most this L2 norm.")
@click.option("--schedule", default="constant", show_default=True,
              type=click.Choice(["constant", "step", "exponential", "inverse-sqrt", "cosine"]),
              help="Learning-rate schedule: step halves it every 10 epochs, exponential "
                   "multiplies it by 0.9 each epoch, inverse-sqrt is lr / sqrt(epoch + 1), "
                   "cosine decays it to 0 over the run.")
@click.option("--warmup", default=0, show_default=True, type=click.IntRange(0),
              help="Epochs of linear learning-rate warm-up from 0 before the schedule.")
@click.option("--l2", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="L2 penalty l2 * sum(w^2) on every Dense kernel.")
@click.option("--dropout", default=0.0, show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="Dropout rate after each hidden layer.")
@click.option("--augment", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Shift training images randomly by up to this fraction of their size.")
@click.option("--class-weight", default=None,
              help="Weigh each sample's loss by its class: 'balanced' (each class as much as "
                   "if all were equally frequent), or LABEL:WEIGHT pairs such as 0:1,1:5 "
                   "(classes left out weigh 1).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of initial weights, shuffling and dropout.")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="Threads for Numba and BLAS  [default: the cores available].")
@click.option("--device", default="cpu", show_default=True,
              type=click.Choice(["cpu", "cuda", "auto"]),
              help="Where the model trains: cuda keeps the whole step on an NVIDIA GPU "
                   "(numba.cuda); auto takes the GPU when one is usable, else the CPU.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Run folder for the metrics log and the model  [default: runs/<name>].")
@click.option("--verbose", default=1, type=click.IntRange(0, 2), show_default=True,
              help="0 silent, 1 progress bar on a terminal, 2 one line per epoch.")
@click.option("--resume", "resume_dir", default=None,
              type=click.Path(exists=True, file_okay=False),
              help="Continue the run in this folder from its last checkpoint, with its own "
                   "settings (--epochs, --threads, --verbose and --address may change).")
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Train data-parallel on this many Ray workers, each with its share of the "
                   "samples and of the cores (--threads is then per worker)  [default: one "
                   "process, no Ray].")
@click.option("--address", default=None,
              help="A running Ray cluster for the workers: auto, or HOST:PORT  [default: "
                   "$RAY_ADDRESS, else a local Ray instance started for this run].")
@click.option("--average-every", default=5, show_default=True, type=click.IntRange(1),
              help="Local steps of each worker between parameter averages (warns above 20).")
@click.option("--optimizer-state", default="average", show_default=True,
              type=click.Choice(["average", "reset", "local"]),
              help="Momentum / Adam moments across workers: averaged like the weights, reset "
                   "every round, or kept by each worker.")
@click.option("--lr-scaling", default="auto", show_default=True,
              type=click.Choice(["auto", "none", "linear"]),
              help="linear: multiply the learning rate by the number of workers (the larger "
                   "global batch takes fewer steps); auto: linear for 2 to 8 workers, none "
                   "beyond, where a rate that large tends to diverge.")
@click.option("--sync-warmup", default=0, show_default=True, type=click.IntRange(0),
              help="Steps averaged after every step before averaging every K "
                   "(post-local SGD).")
@click.option("--checkpoint-every", default=0, show_default=True, type=click.IntRange(0),
              help="Also checkpoint every this many rounds, so that --resume continues "
                   "mid-epoch (0: after each epoch only).")
@click.option("--on-lost", default="wait", show_default=True,
              type=click.Choice(["wait", "continue"]),
              help="A lost worker is replaced; if none can start within 5 minutes (a node "
                   "gone), wait: stop (resume later), continue: go on with the others.")
@friendly_errors
def train(dataset, model, epochs, batch_size, optimizer, lr, momentum, nesterov,
          weight_decay, clipnorm, schedule, warmup, l2, dropout, augment, class_weight, seed,
          threads, device, out, verbose, resume_dir, workers, address, average_every,
          optimizer_state, lr_scaling, sync_warmup, checkpoint_every, on_lost):
    """Train a model on a dataset and write a run folder.

    The run folder holds metrics.csv (one row per epoch: loss and accuracy on the
    training data and on the dataset's test split), summary.json, the final model
    (load it with dlrun.load_model) and checkpoint/, from which --resume continues an
    interrupted run exactly as if it had not stopped. The test split is only evaluated,
    never trained on.

    --model FILE.py trains a model of your own: the file defines build_model(input_shape,
    classes), called with one sample's shape (no batch axis, e.g. (784,)) and the number
    of classes, returning a dl.Sequential or dl.Model with a softmax output over the
    classes (or it defines a module-level `model`). dlrun executes the file, so use only
    files you trust. The run compiles the model with its own optimizer options; --resume
    executes the file again.

    With --workers N the samples are shared out among N Ray workers, which train
    --average-every steps each, then have their weights averaged (a local Ray instance
    is started unless --address or RAY_ADDRESS names a cluster; workers open the dataset
    themselves, so a dataset path must be readable on every node). Faults handled (a lost
    worker replaced, a NaN round redone) are logged in the run folder's events.log.
    """
    from dlrun.cli.runs import TrainConfig, resume_training, run_training

    if resume_dir is not None:
        ctx = click.get_current_context()
        given = {name: value for name, value in ctx.params.items() if name != "resume_dir"
                 and ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
        resume_training(resume_dir, echo=click.echo, **given)
        return
    if workers is None:
        ctx = click.get_current_context()
        cluster_only = [f"--{n.replace('_', '-')}" for n in ("address", "average_every",
                        "optimizer_state", "lr_scaling", "sync_warmup", "checkpoint_every",
                        "on_lost")
                        if ctx.get_parameter_source(n) != click.core.ParameterSource.DEFAULT]
        if cluster_only:
            raise click.UsageError(f"{', '.join(cluster_only)} apply to training on several "
                                   "workers; add --workers N")
    cfg = TrainConfig(dataset=dataset, model=model, epochs=epochs, batch_size=batch_size,
                      optimizer=optimizer, lr=lr, momentum=momentum, nesterov=nesterov,
                      weight_decay=weight_decay, clipnorm=clipnorm, schedule=schedule,
                      warmup=warmup, l2=l2, dropout=dropout, augment=augment,
                      class_weight=class_weight, seed=seed,
                      threads=threads, out=out, verbose=verbose, workers=workers,
                      average_every=average_every, optimizer_state=optimizer_state,
                      lr_scaling=lr_scaling, sync_warmup=sync_warmup, address=address,
                      checkpoint_every=checkpoint_every, on_lost=on_lost, device=device)
    run_training(cfg, echo=click.echo)


@main.command()
@friendly_errors
def info():
    """Versions, cores and threads, BLAS, datasets, and whether CUDA is usable."""
    from dlrun.cli.info import collect

    for key, value in collect():
        click.echo(f"{key:<18} {value}")


@main.command()
@click.argument("model", default="mlp",
                type=click.Choice(["mlp", "cnn", "lstm", "gemm", "loader", "cluster"]))
@click.option("--threads", default="1,2", show_default=True,
              help="Comma-separated thread counts.")
@click.option("--batch", "batches", default=None,
              help="Comma-separated batch sizes  [default: 100,10 for mlp, 128 for cnn and "
                   "lstm].")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1),
              help="Alternating runs of each program per setting; medians are reported.")
@click.option("--reference-dir", default=None, type=click.Path(file_okay=False),
              help="Folder of the reference scripts  [default: $DLRUN_BENCH_REF or "
                   "shared/bench found from here].")
@click.option("--reference-python", default=None,
              help="Python that has torch installed  [default: $DLRUN_REF_PYTHON, then "
                   "this Python].")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Also write the results to this JSON file.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1),
              help="cluster: local Ray workers.")
@click.option("--average-every", default=10, show_default=True, type=click.IntRange(1),
              help="cluster: local steps between averages.")
@click.option("--device", default="cpu", show_default=True,
              type=click.Choice(["cpu", "cuda", "auto"]),
              help="mlp, cnn: time training on this device; on cuda also kernels and ms "
                   "per step (no PyTorch reference: see DEVELOPERS.md).")
@friendly_errors
def bench(model, threads, batches, repeats, reference_dir, reference_python, json_out,
          workers, average_every, device):
    """Training samples/s of MODEL beside PyTorch and plain numpy, run alternately.

    `dlrun bench gemm`: GFLOP/s of dlrun's float32 matrix product beside OpenBLAS's on
    the products the models make (--threads, --repeats).
    `dlrun bench loader`: the data loader's samples/s instead (options: `dlrun data bench`).
    `dlrun bench cluster`: the MLP on --workers local Ray workers (1 thread each, or the
    first --threads value) averaging every --average-every steps, beside one process with
    as many threads in all: samples/s, and the per-round overhead in ms.
    """
    ctx = click.get_current_context()
    if model == "loader":
        return ctx.invoke(data.commands["bench"])
    counts = _integers(threads, "--threads")
    sizes = _integers(batches, "--batch") if batches else None
    if model == "gemm":
        from dlrun.cli.bench.gemm import compare as compare_gemm

        result = compare_gemm(counts, repeats, echo=click.echo)
    elif model == "cluster":
        from dlrun.cli.bench.cluster import compare as compare_cluster

        # one thread per worker unless --threads is given: its first value
        given = ctx.get_parameter_source("threads") != click.core.ParameterSource.DEFAULT
        per_worker = counts[0] if given else 1
        result = compare_cluster(workers, per_worker, average_every,
                                 sizes[0] if sizes else 100, repeats, echo=click.echo)
    else:
        from dlrun.cli.bench.models import compare

        click.echo(f"benchmark {model}: {repeats} alternating runs per setting, medians")
        result = compare(model, counts, sizes or ([128] if model in ("cnn", "lstm") else [100, 10]),
                         repeats, reference_dir, reference_python, echo=click.echo,
                         device=device)
    if json_out:
        import json
        from pathlib import Path

        Path(json_out).write_text(json.dumps(result, indent=2))


def _integers(text: str, option: str) -> list[int]:
    """``"1,2"`` as ``[1, 2]``; a usage error naming ``option`` otherwise."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r}; use comma-separated integers, e.g. 1,2",
                                 param_hint=option) from None


from dlrun.cli.data import data  # noqa: E402 - `dlrun data` (click-level code only)
main.add_command(data)

if __name__ == "__main__":
    sys.exit(main())
