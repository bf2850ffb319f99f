"""The lectures' demonstrations, runnable: each trains a few small models on a shipped
dataset, prints a table per epoch, writes one metrics CSV per model, and checks its
conclusion (which the test suite asserts). A program, not library code: run it as::

    python -m dlrun.cli.lectures                 # list them
    python -m dlrun.cli.lectures optimizers --epochs 10 --out runs/optimizers
    python -m dlrun.cli.lectures all --out runs/lectures     # every one; exit 1 if any fails

With ``--out`` each demonstration also draws its training-loss and test-accuracy curves
(``NAME-loss.png``, ``NAME-accuracy.png``), and the gradient demonstrations their pictures
(``saliency-maps.png``, ``deep-dream-dreams.png``).

Every run is seeded, so a result is the same on every machine with the same BLAS.
"""
from __future__ import annotations

import csv
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlrun.cli.plot import line_plot
from dlrun.errors import ConfigError


@dataclass
class Result:
    name: str
    claim: str
    histories: dict = field(default_factory=dict)   # label -> {metric: [per epoch]}
    holds: bool = False
    evidence: str = ""
    pictures: dict = field(default_factory=dict)    # file suffix -> draw(path)


def _data(dataset: str, train_samples: int | None):
    from dlrun.datasets import open_dataset

    ds = open_dataset(dataset)
    x, y = ds.split("train")
    if train_samples:
        x, y = x[:train_samples], y[:train_samples]
    return (x, y), ds.split("test"), ds.classes


def _mlp(input_shape, classes, hidden=(100, 100), activation="relu", dropout=0.0, l2=0.0,
         shift=0.0, output="softmax"):
    import dlrun as dl

    L = dl.layers
    reg = dl.regularizers.l2(l2) if l2 else None
    layers = [L.RandomTranslation(shift, input_shape=input_shape)] if shift else []
    layers.append(L.Flatten(input_shape=None if shift else input_shape))
    for units in hidden:
        layers.append(L.Dense(units, activation=activation, kernel_regularizer=reg))
        if dropout:
            layers.append(L.Dropout(dropout))
    layers.append(L.Dense(classes, activation=output, kernel_regularizer=reg))
    return dl.Sequential(layers)


def _train(data, test, classes, epochs, seed=0, optimizer=None, loss=None, callbacks=(),
           batch_size=32, **model_kw):
    """Fit one seeded model; returns its history dict (``val_`` metrics are on ``test``,
    which only ever measures, never decides anything)."""
    import dlrun as dl

    dl.set_seed(seed)
    model = _mlp(data[0].shape[1:], classes, **model_kw)
    loss = loss or "sparse_categorical_crossentropy"
    y, yt = data[1], test[1]
    if loss in ("mean_squared_error", "categorical_crossentropy"):   # one-hot targets
        y, yt = np.eye(classes, dtype=np.float32)[y], np.eye(classes, dtype=np.float32)[yt]
    model.compile(optimizer=optimizer or dl.optimizers.SGD(learning_rate=0.1), loss=loss,
                  metrics=["accuracy"])
    hist = model.fit(data[0], y, batch_size=batch_size, epochs=epochs, verbose=0,
                     validation_data=(test[0], yt), callbacks=list(callbacks))
    hist.history["weight_norm"] = [float(sum(np.sum(w * w) for w in model.get_weights()
                                             if w.ndim == 2))]
    return hist.history


# -- the demonstrations -------------------------------------------------------------------
def sigmoid_vs_relu(epochs=8, dataset="digits"):
    """Deep sigmoid nets barely train (vanishing gradients); ReLU nets do."""
    data, test, k = _data(dataset, None)
    deep = (64,) * 6
    h = {"sigmoid": _train(data, test, k, epochs, hidden=deep, activation="sigmoid"),
         "relu": _train(data, test, k, epochs, hidden=deep, activation="relu")}
    s, r = h["sigmoid"]["loss"][-1], h["relu"]["loss"][-1]
    return Result("sigmoid-vs-relu", "a deep ReLU net's training loss falls below a deep "
                  "sigmoid net's", h, r < 0.5 * s, f"final loss relu {r:.3f}, sigmoid {s:.3f}")


def mse_vs_crossentropy(epochs=5, dataset="digits"):
    """With a softmax output, cross entropy learns faster than square error."""
    import dlrun as dl

    data, test, k = _data(dataset, None)
    h = {name: _train(data, test, k, epochs, loss=name,
                      optimizer=dl.optimizers.SGD(learning_rate=0.05))
         for name in ("mean_squared_error", "categorical_crossentropy")}
    m, c = (h[n]["val_accuracy"][-1] for n in ("mean_squared_error",
                                                "categorical_crossentropy"))
    return Result("mse-vs-crossentropy", "softmax + cross entropy reaches a higher test "
                  "accuracy than softmax + square error in the same epochs", h, c > m,
                  f"test accuracy cross entropy {c:.3f}, square error {m:.3f}")


def optimizers(epochs=5, dataset="digits"):
    """Momentum, Adam, Adagrad and RMSprop against plain SGD at one small learning rate."""
    import dlrun as dl

    opt = dl.optimizers
    data, test, k = _data(dataset, None)
    make = {"sgd": lambda: opt.SGD(learning_rate=0.01),
            "momentum": lambda: opt.SGD(learning_rate=0.01, momentum=0.9),
            "nesterov": lambda: opt.SGD(learning_rate=0.01, momentum=0.9, nesterov=True),
            "adagrad": lambda: opt.Adagrad(learning_rate=0.01),
            "rmsprop": lambda: opt.RMSprop(learning_rate=0.001),
            "adam": lambda: opt.Adam(learning_rate=0.001)}
    h = {name: _train(data, test, k, epochs, optimizer=f()) for name, f in make.items()}
    last = {name: hist["loss"][-1] for name, hist in h.items()}
    better = [n for n in last if n != "sgd" and last[n] < last["sgd"]]
    return Result("optimizers", "every adaptive or momentum method ends with a lower "
                  "training loss than plain SGD at the same small learning rate", h,
                  len(better) == len(last) - 1,
                  ", ".join(f"{n} {v:.3f}" for n, v in last.items()))


def _adam():
    import dlrun as dl

    return dl.optimizers.Adam(learning_rate=0.001)


def dropout(epochs=80, dataset="digits"):
    """On few training samples, dropout lifts test accuracy (less overfitting)."""
    data, test, k = _data(dataset, 150)
    h = {name: _train(data, test, k, epochs, hidden=(200, 200), optimizer=_adam(), **kw)
         for name, kw in (("plain", {}), ("dropout", {"dropout": 0.5}))}
    acc = {n: hist["val_accuracy"][-1] for n, hist in h.items()}
    return Result("dropout", "with dropout the test accuracy is higher", h,
                  acc["dropout"] > acc["plain"],
                  f"test accuracy plain {acc['plain']:.3f}, dropout {acc['dropout']:.3f}")


def l2(epochs=80, dataset="digits"):
    """L2 regularisation keeps the weights small, and test accuracy does not suffer."""
    data, test, k = _data(dataset, 150)
    h = {name: _train(data, test, k, epochs, hidden=(200, 200), optimizer=_adam(), **kw)
         for name, kw in (("plain", {}), ("l2", {"l2": 3e-3}))}
    n = {name: hist["weight_norm"][0] for name, hist in h.items()}
    acc = {name: hist["val_accuracy"][-1] for name, hist in h.items()}
    return Result("l2", "an L2 penalty ends with a much smaller sum of squared weights and "
                  "no lower test accuracy", h,
                  n["l2"] < 0.5 * n["plain"] and acc["l2"] >= acc["plain"],
                  f"sum of squared weights plain {n['plain']:.1f}, l2 {n['l2']:.1f}; test "
                  f"accuracy plain {acc['plain']:.3f}, l2 {acc['l2']:.3f}")


def augmentation(epochs=20, dataset="mnist-5k"):
    """Randomly shifted training images (by up to 2 pixels) lift test accuracy."""
    data, test, k = _data(dataset, 1000)
    h = {name: _train(data, test, k, epochs, hidden=(200, 200), optimizer=_adam(),
                      batch_size=50, **kw)
         for name, kw in (("plain", {}), ("shifted", {"shift": 0.07}))}
    acc = {n: hist["val_accuracy"][-1] for n, hist in h.items()}
    return Result("augmentation", "training on shifted images gives a higher test accuracy",
                  h, acc["shifted"] > acc["plain"],
                  f"test accuracy plain {acc['plain']:.3f}, shifted {acc['shifted']:.3f}")


def early_stopping(epochs=40, dataset="digits"):
    """Early stopping ends training once the loss on held-out samples stops improving."""
    import dlrun as dl

    (x, y), test, k = _data(dataset, 350)
    stop = dl.callbacks.EarlyStopping(monitor="holdout_loss", patience=3,
                                      restore_best_weights=True)

    class Validate(dl.callbacks.Callback):
        """Validation on held-out training samples (the test split stays untouched)."""

        def on_epoch_end(self, epoch, logs=None):
            logs["holdout_loss"] = self.model.evaluate(x[150:], y[150:], batch_size=200)[0]

    h = {"early-stopping": _train((x[:150], y[:150]), test, k, epochs, hidden=(200, 200),
                                  optimizer=dl.optimizers.Adam(learning_rate=0.003),
                                  callbacks=[Validate(), stop])}
    ran = len(h["early-stopping"]["loss"])
    return Result("early-stopping", "training stops well before the epoch limit, "
                  "patience epochs after the best loss on held-out training samples", h,
                  ran < epochs and stop.best_epoch == ran - 1 - 3,
                  f"stopped after {ran} of {epochs} epochs; best epoch "
                  f"{(stop.best_epoch or 0) + 1}")


@functools.lru_cache(maxsize=2)
def _trained_cnn(dataset: str, samples: int, epochs: int, seed: int = 0):
    """(the small CNN of :func:`dlrun.cli.saliency.small_cnn` trained on ``samples``
    training images, its probe of the same layers, its history, the test split). Kept:
    the saliency and Deep Dream demonstrations look at the same trained network."""
    import dlrun as dl
    from dlrun.cli.saliency import small_cnn

    data, test, k = _data(dataset, samples)
    dl.set_seed(seed)
    model, probe = small_cnn(data[0].shape[1:], k)
    model.compile(optimizer=dl.optimizers.Adam(learning_rate=0.003),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(*data, batch_size=32, epochs=epochs, verbose=0, validation_data=test)
    return model, probe, hist.history, test


def saliency(epochs=3, dataset="mnist-5k", samples=2000, images=8):
    """Saliency maps: a trained CNN's class score is most sensitive to the digit's pixels."""
    from dlrun.cli import saliency as sal

    model, _, hist, (xt, yt) = _trained_cnn(dataset, samples, epochs)
    x, labels = xt[:images], yt[:images]
    maps = sal.saliency_maps(model, x, labels)
    ratio = sal.inside_outside(maps, x)
    guess = model.predict(x).argmax(axis=1)
    titles = [f"{c} (says {g})" for c, g in zip(labels, guess)]
    return Result("saliency", "the gradient of the true class's score is larger on the "
                  "digit's pixels than on the background, in every image", {"cnn": hist},
                  bool(np.all(ratio > 1)),
                  "mean saliency on the digit over the background: " +
                  " ".join(f"{r:.1f}" for r in ratio),
                  {"maps": functools.partial(sal.draw_saliency, images=x, maps=maps,
                                             titles=titles)})


def deep_dream(epochs=3, dataset="mnist-5k", samples=2000, steps=100, layer="conv2"):
    """Deep Dream: gradient ascent on the input turns noise into what a layer or class wants."""
    from dlrun.cli import saliency as sal

    model, probe, hist, (xt, _) = _trained_cnn(dataset, samples, epochs)
    noise = np.random.default_rng(0).normal(0.5, 0.1, (1, *xt.shape[1:]))
    noise = np.clip(noise, 0, 1).astype(np.float32)
    dreams = {"noise (start)": noise, f"{layer} mean": sal.dream(model, noise, layer,
                                                                steps=steps)}
    for c in range(model.output_shape[-1]):
        dreams[f"class {c}"] = sal.dream(model, noise, "logits", unit=c, steps=steps)
    feats = {name: probe.predict(img)[0].mean() for name, img in dreams.items()}
    digits = probe.predict(xt[:200])[0].mean(axis=(1, 2, 3))
    says = [int(model.predict(dreams[f"class {c}"]).argmax()) for c in range(len(dreams) - 2)]
    return Result("deep-dream", f"ascent from noise raises {layer}'s mean activation above "
                  "its value on every real digit, and makes images the CNN takes for each "
                  "class", {"cnn": hist},
                  bool(feats[f"{layer} mean"] > digits.max()) and says == list(range(len(says))),
                  f"{layer} mean: noise {feats['noise (start)']:.2f}, dreamed "
                  f"{feats[f'{layer} mean']:.2f}, test digits at most {digits.max():.2f}; "
                  f"class dreams taken for {says}",
                  {"dreams": functools.partial(sal.draw_pictures, pictures=dreams,
                                               title=f"Deep Dream from noise: {layer}'s "
                                               "mean, then each class score")})


EXPERIMENTS = {f.__name__.replace("_", "-"): f for f in
               (sigmoid_vs_relu, mse_vs_crossentropy, optimizers, dropout, l2, augmentation,
                early_stopping, saliency, deep_dream)}


def run(name: str, epochs: int | None = None, out=None, echo=print) -> Result:
    """Run one demonstration; prints its table and verdict, writes CSVs under ``out``."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; expected one of "
                          f"{sorted(EXPERIMENTS)}")
    fn = EXPERIMENTS[name]
    result = fn() if epochs is None else fn(epochs=epochs)
    echo(f"{result.name}: {fn.__doc__.splitlines()[0]}")
    for label, hist in result.histories.items():
        last = {k: v[-1] for k, v in hist.items() if k != "weight_norm"}
        echo(f"  {label:<26} {len(hist['loss']):>3} epochs  " +
             "  ".join(f"{k} {v:.4f}" for k, v in last.items()))
    echo(f"  claim: {result.claim}\n  {'holds' if result.holds else 'DOES NOT HOLD'}: "
         f"{result.evidence}")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for label, hist in result.histories.items():
            keys = [k for k in hist if k != "weight_norm"]
            with open(out / f"{result.name}-{label}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["epoch", *keys])
                for e in range(len(hist["loss"])):
                    w.writerow([e + 1, *(hist[k][e] for k in keys)])
        for metric, what in (("loss", "training loss"), ("val_accuracy", "test accuracy")):
            line_plot(out / f"{result.name}-{metric.removeprefix('val_')}.png",
                      {label: hist[metric] for label, hist in result.histories.items()},
                      title=f"{result.name}: {what}")
        for suffix, draw in result.pictures.items():
            draw(out / f"{result.name}-{suffix}.png")
    return result


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m dlrun.cli.lectures",
                                description="The lectures' demonstrations.")
    p.add_argument("name", nargs="?", help=f"one of {', '.join(EXPERIMENTS)}, or all")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", default=None,
                   help="folder for one metrics CSV per model and the curves as PNG")
    args = p.parse_args(argv)
    if not args.name:
        for name, fn in EXPERIMENTS.items():
            print(f"{name:<22} {fn.__doc__.splitlines()[0]}")
        return 0
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    results = [run(n, args.epochs, args.out) for n in names]
    return 0 if all(r.holds for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
