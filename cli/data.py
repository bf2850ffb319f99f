"""``dlrun data``: list, inspect, verify, import, fetch, pack and benchmark datasets.

Thin, like the rest of the CLI: each command parses its options and calls a function of
``dlrun.datasets``, imported inside the command so that ``dlrun --help`` stays instant.
"""
from __future__ import annotations

import functools

import click


def friendly_errors(fn):
    """The CLI's own ``friendly_errors`` (looked up when called: no import cycle)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from dlrun.cli.main import friendly_errors as show

        return show(fn)(*args, **kwargs)

    return wrapper


@click.group()
def data():
    """Datasets: list, info, verify, import, fetch, pack, bench.

    NAME is a shipped dataset (mnist-5k, digits), one imported or fetched into the data
    folder ($DLRUN_DATA, default ~/.dlrun/datasets), or the path of a zarr dataset.
    """


@data.command("list")
@friendly_errors
def list_():
    """The shipped datasets and those in the data folder."""
    from dlrun.datasets.store import data_home, list_datasets, user_datasets

    for name, description in list_datasets().items():
        click.echo(f"{name:<16} shipped  {description}")
    for name, path in user_datasets().items():
        click.echo(f"{name:<16} {_size(path):>8} {path}")
    if not user_datasets():
        click.echo(f"(nothing imported yet in {data_home()}: see `dlrun data import --help` "
                   "and `dlrun data fetch --help`)")


@data.command()
@click.argument("name", default="mnist-5k")
@friendly_errors
def info(name):
    """Attributes, splits, shapes, dtypes and chunking of dataset NAME (default mnist-5k)."""
    from dlrun.datasets import open_dataset

    ds = open_dataset(name)
    a = ds.attrs
    click.echo(f"name          {ds.name}\npath          {ds.path}  ({_size(ds.path)} on disk)")
    click.echo(f"classes       {ds.classes}: {', '.join(map(str, a.get('class_names', [])))}")
    click.echo(f"input shape   {ds.input_shape}, stored as {a.get('x_dtype', '?')}")
    scale, offset = ds.normalization
    click.echo(f"normalization raw * {scale:.6g} + {offset:.6g}")
    for key in ("source", "license", "description"):
        if a.get(key):
            click.echo(f"{key:<13} {a[key]}")
    for split in ds.splits or [None]:
        x, y = ds.arrays(split)
        shards = f", {x.shards[0]} per shard file" if x.shards else ""
        click.echo(f"split {split or '(none)':<8}{x.shape[0]:>9,} samples, chunks of "
                   f"{x.chunks[0]:,} ({x.nchunks} chunk{'s' * (x.nchunks != 1)}{shards})")


@data.command()
@click.argument("name", default="mnist-5k")
@friendly_errors
def verify(name):
    """Read every chunk of NAME (default mnist-5k); list every problem (exit status 1 if any).

    Checks that every chunk decodes and matches the CRC-32 recorded when it was written
    (a deleted chunk file reads back as zeros), that labels lie in [0, classes), and that
    each array matches its recorded sha256.
    """
    from dlrun.datasets import open_dataset

    ds = open_dataset(name)
    problems = ds.problems()
    for problem in problems:
        click.echo(f"{ds.path}: {problem}")
    if problems:
        raise click.ClickException(
            f"{len(problems)} problem(s) in {ds.path}; rebuild the dataset (import or fetch "
            "it again) or restore it from its source")
    n = sum(ds.arrays(s)[0].shape[0] for s in ds.splits or [None])
    click.echo(f"{ds.path}: ok ({n:,} samples, every chunk and checksum verified)")


@data.command("import")
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", required=True, help="Name of the new dataset.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder to write NAME.zarr to  [default: $DLRUN_DATA or ~/.dlrun/datasets].")
@click.option("--kind", type=click.Choice(["idx", "npz", "npy", "csv", "images"]),
              help="Format of PATH  [default: from its name or contents].")
@click.option("--label-column", help="CSV: the labels' column, a name or an index "
              "[default: 'label', 'class', 'target' or 'y' if named so, else the first].")
@click.option("--header/--no-header", default=None,
              help="CSV: whether the first row names the columns  [default: guessed].")
@click.option("--size", metavar="HxW",
              help="Images: resize every image to H x W pixels, e.g. 32x32  "
                   "[default: keep them; all must share one size].")
@click.option("--mode", type=click.Choice(["L", "RGB"]),
              help="Images: L (grey, 1 channel) or RGB  [default: L if every image is grey].")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Images: hold out this share of the images as the test split "
                   "[default: 0, or the train/ and test/ folders].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Images: seed of the test draw and of the stored order.")
@click.option("--classes", type=click.IntRange(1), help="Number of classes  [default: max+1].")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset NAME.")
@friendly_errors
def import_(path, name, out, kind, label_column, header, size, mode, test_fraction, seed,
            classes, overwrite):
    """Import PATH as dataset NAME.

    PATH is a folder of MNIST-format IDX files (train-images-idx3-ubyte[.gz]...), one IDX
    images file beside its labels, a .npz file or a folder of .npy files (x, y or x_train,
    y_train, x_test, y_test), a CSV file (one row per sample), or a folder of images
    with one sub-folder per class (PATH/<class>/<images>, or PATH/train/<class>/... and
    PATH/test/<class>/...; needs pip install 'dlrun[images]'). Nothing is left under
    the final name if the import fails.
    """
    from dlrun.datasets.importers import import_path

    if label_column is not None and label_column.lstrip("-").isdigit():
        label_column = int(label_column)
    if size is not None:
        h, sep, w = size.lower().partition("x")
        if not (sep and h.strip().isdigit() and w.strip().isdigit() and int(h) and int(w)):
            raise click.BadParameter(f"{size!r}; expected HxW, e.g. 32x32", param_hint="--size")
        size = (int(h), int(w))
    written = import_path(path, name=name, out=out, kind=kind, overwrite=overwrite,
                          classes=classes, label_column=label_column, header=header,
                          size=size, mode=mode, test_fraction=test_fraction, seed=seed)
    click.echo(f"wrote {written} ({_size(written)}); train with `dlrun train --dataset {name}`"
               if out is None else f"wrote {written} ({_size(written)})")


@data.command()
@click.argument("name", type=click.Choice(["mnist", "fashion-mnist", "kmnist"]))
@click.option("--mirror", envvar="DLRUN_MIRROR", show_envvar=True,
              help="Base URL of the IDX files ('{name}' is replaced by NAME)  "
                   "[default: the dataset's own site].")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder to write NAME.zarr to  [default: $DLRUN_DATA or ~/.dlrun/datasets].")
@click.option("--retries", default=5, show_default=True, type=click.IntRange(0),
              help="Attempts per file after the first (waits double from 1 s).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset NAME.")
@friendly_errors
def fetch(name, mirror, out, retries, overwrite):
    """Download dataset NAME, check its SHA-256 digests and convert it to zarr.

    An interrupted download resumes where it stopped; the files are kept in the data
    folder's downloads/ so a second fetch needs no network.
    """
    from dlrun.datasets.fetch import fetch as fetch_dataset

    written = fetch_dataset(name, mirror=mirror, out=out, retries=retries,
                            overwrite=overwrite, echo=click.echo)
    click.echo(f"wrote {written} ({_size(written)})")


@data.command()
@click.argument("name")
@click.option("--to", "new_name", help="Name of the packed dataset  [default: NAME-packed].")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder to write it to  [default: $DLRUN_DATA or ~/.dlrun/datasets].")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the shuffle.")
@click.option("--uint8", is_flag=True,
              help="Store samples as uint8 with a recorded normalization (4x smaller than "
                   "float32; float data is quantized to 256 levels).")
@click.option("--chunk-mb", default=1.0, show_default=True,
              type=click.FloatRange(0, min_open=True), help="Least megabytes of x per chunk.")
@click.option("--shard-chunks", type=click.IntRange(1),
              help="Chunks per file (zarr 3 sharding), for large datasets.")
@click.option("--overwrite", is_flag=True, help="Replace an existing packed dataset.")
@friendly_errors
def pack(name, new_name, out, seed, uint8, chunk_mb, shard_chunks, overwrite):
    """Rewrite dataset NAME pre-shuffled, in chunks of about a megabyte, optionally uint8."""
    from dlrun.datasets import open_dataset
    from dlrun.datasets.importers import target_path
    from dlrun.datasets.pack import pack_dataset

    new_name = new_name or f"{open_dataset(name).name}-packed"
    written = pack_dataset(name, target_path(new_name, out), name=new_name, seed=seed,
                           uint8=uint8, chunk_bytes=int(chunk_mb * 1e6),
                           shard_chunks=shard_chunks, overwrite=overwrite)
    click.echo(f"wrote {written} ({_size(written)})")


@data.command("bench")
@click.option("--samples", default=60_000, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(1))
@click.option("--window", default=4, show_default=True, type=click.IntRange(1),
              help="Chunks shuffled together.")
@click.option("--prefetch", default=2, show_default=True, type=click.IntRange(0),
              help="Windows read ahead by the background thread.")
@click.option("--cores", default=1, show_default=True, type=click.IntRange(0),
              help="Pin the process to this many cores (0: all it has).")
@click.option("--raw", is_flag=True, help="Time raw uint8 batches, not normalized float32.")
@click.option("--memory", "memory_mb", type=click.FloatRange(0, min_open=True),
              help="Also stream a dataset 4x this many MB and report the memory it took.")
@friendly_errors
def bench(samples, batch_size, window, prefetch, cores, raw, memory_mb):
    """Loader samples/s over a SAMPLES x 1 x 28 x 28 uint8 dataset on local disk, shuffled."""
    from dlrun.cli.bench.loader import loader_memory, loader_throughput

    r = loader_throughput(samples, batch_size=batch_size, window=window, prefetch=prefetch,
                          cores=cores or None, normalize=not raw)
    click.echo(f"loader: {r['samples_per_second']:,.0f} samples/s (median of epochs "
               f"{r['epochs']}), {samples:,} samples in chunks of {r['chunk_samples']}, "
               f"batch {batch_size}, window {window}, prefetch {prefetch}, "
               f"{'raw uint8' if raw else 'float32 normalized'}, "
               f"{cores or 'all'} core(s)")
    if memory_mb:
        m = loader_memory(memory_mb, window=window, prefetch=prefetch)
        click.echo(f"memory: streaming {m['dataset_mb']:.0f} MB (4x a {memory_mb:g} MB cap) "
                   f"with a {m['window_mb']:.1f} MB window grew resident memory by "
                   f"{m['growth_mb']:.1f} MB")


def _size(path) -> str:
    from pathlib import Path

    total = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return f"{total / 1e6:.1f} MB" if total >= 1e5 else f"{total / 1e3:.1f} kB"
