"""What `dlrun train` does with its optimizer options (engine.runs), through the CLI too."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import dlrun as dl
from dlrun.cli.main import main
from dlrun.cli.runs import TrainConfig, make_optimizer
from dlrun.errors import ConfigError


@pytest.mark.parametrize("kw, cls, config", [
    (dict(), "SGD", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": False}),
    (dict(optimizer="adam"), "Adam", {"learning_rate": 0.001, "weight_decay": None}),
    (dict(optimizer="adamw"), "AdamW", {"learning_rate": 0.001, "weight_decay": 0.004}),
    (dict(optimizer="rmsprop", momentum=0.5), "RMSprop", {"momentum": 0.5}),
    (dict(optimizer="rmsprop"), "RMSprop", {"momentum": 0.0}),
    (dict(optimizer="adagrad", lr=0.2, weight_decay=0.01), "Adagrad",
     {"learning_rate": 0.2, "weight_decay": 0.01}),
    (dict(optimizer="sgd", nesterov=True, momentum=0.5), "SGD", {"nesterov": True}),
])
def test_make_optimizer(kw, cls, config):
    cfg = TrainConfig(**kw)
    opt = make_optimizer(cfg)
    assert type(opt).__name__ == cls
    assert config.items() <= opt.get_config().items()
    assert cfg.lr == opt.learning_rate                  # the run's config.json says what ran


@pytest.mark.parametrize("kw, message", [
    (dict(optimizer="adam", momentum=0.5), "momentum=0.5.*adam"),
    (dict(optimizer="rmsprop", nesterov=True), "nesterov.*rmsprop"),
    (dict(optimizer="nadam"), "'nadam'"),
])
def test_make_optimizer_refuses_what_does_not_apply(kw, message):
    with pytest.raises(ConfigError, match=message):
        make_optimizer(TrainConfig(**kw))


def test_train_with_adam_from_the_cli(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--dataset", "digits", "--epochs", "2",
                                    "--optimizer", "adam", "--lr", "0.005", "--out", str(out),
                                    "--verbose", "0", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "Adam lr 0.005" in res.output
    assert json.loads((out / "config.json").read_text())["optimizer"] == "adam"
    model = dl.load_model(out / "model")
    assert type(model.optimizer).__name__ == "Adam"
    assert model.optimizer.iterations > 0
    assert json.loads((out / "summary.json").read_text())["test_accuracy"] > 0.5
    res = CliRunner().invoke(main, ["train", "--dataset", "digits", "--optimizer", "adagrad",
                                    "--momentum", "0.5", "--out", str(tmp_path / "r2")])
    assert res.exit_code == 1 and "momentum=0.5" in res.output


def train(*args):
    return CliRunner().invoke(main, ["train", "--dataset", "digits", "--batch-size", "64",
                                     "--verbose", "0", "--threads", "1", *args])


def test_resume_continues_a_run_bitwise(tmp_path):
    import numpy as np

    straight, split = tmp_path / "straight", tmp_path / "split"
    for args in (["--epochs", "3", "--out", str(straight)],
                 ["--epochs", "2", "--out", str(split)],          # "interrupted" after 2
                 ["--resume", str(split), "--epochs", "3"]):
        res = train("--optimizer", "rmsprop", "--momentum", "0.5", "--schedule", "exponential",
                    "--warmup", "1", "--dropout", "0.2", "--augment", "0.125", "--l2", "1e-4",
                    "--clipnorm", "1.0", *args)
        assert res.exit_code == 0, res.output
    assert "resuming" in res.output and "after epoch 2" in res.output
    a, b = dl.load_model(straight / "model"), dl.load_model(split / "model")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    for pa, pb in zip(a.weights_params(), b.weights_params()):
        sa, sb = a.optimizer.state[pa.name], b.optimizer.state[pb.name]
        assert sorted(sa) == sorted(sb) == ["momentum", "velocity"]
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k])
    assert a.optimizer.iterations == b.optimizer.iterations
    rows = (split / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2", "3"]
    def cut(line):                                        # without epoch and seconds
        return line.split(",", 2)[2]

    assert [cut(r) for r in rows] == [cut(r) for r in
                                      (straight / "metrics.csv").read_text().splitlines()]
    assert json.loads((split / "summary.json").read_text())["resumed_after_epoch"] == 2


def test_resume_refuses_what_it_cannot_do(tmp_path):
    run = tmp_path / "run"
    assert train("--epochs", "1", "--out", str(run)).exit_code == 0
    res = train("--resume", str(run))                        # 1 of 20 epochs? no: of 1
    assert res.exit_code == 1 and "already trained 1 epochs" in res.output
    res = train("--resume", str(run), "--epochs", "2", "--lr", "0.5")
    assert res.exit_code == 1 and "cannot change lr" in res.output
    res = train("--resume", str(tmp_path))
    assert res.exit_code == 1 and "no config.json" in res.output


@pytest.mark.parametrize("name, want", [
    ("constant", lambda t: 0.1),
    ("step", lambda t: 0.1 * 0.5 ** (t // 50)),
    ("exponential", lambda t: 0.1 * 0.9 ** (t / 5)),
    ("inverse-sqrt", lambda t: 0.1 / (t / 5 + 1) ** 0.5),
    ("cosine", lambda t: 0.1 * 0.5 * (1 + np.cos(np.pi * min(t, 100) / 100))),
])
def test_schedules_by_name_per_epoch_with_warmup(name, want):
    from dlrun.cli.runs import learning_rate

    lr = learning_rate(TrainConfig(lr=0.1, schedule=name, epochs=20), steps_per_epoch=5)
    for t in (0, 3, 5, 12, 49, 50, 99, 100, 150):
        assert (lr if isinstance(lr, float) else lr(t)) == pytest.approx(want(t), abs=1e-15)
    warm = learning_rate(TrainConfig(lr=0.1, schedule=name, epochs=22, warmup=2), 5)
    assert [warm(t) for t in (0, 5)] == pytest.approx([0.0, 0.05])
    assert warm(10 + 7) == pytest.approx(want(7), abs=1e-15)
    with pytest.raises(ConfigError, match="warmup.*30"):
        learning_rate(TrainConfig(lr=0.1, schedule=name, epochs=20, warmup=30), 5)


def test_recipe_options_build_the_model_they_name(tmp_path):
    res = train("--epochs", "1", "--out", str(tmp_path / "r"), "--l2", "0.001", "--dropout",
                "0.3", "--augment", "0.1", "--schedule", "cosine", "--optimizer", "adam")
    assert res.exit_code == 0, res.output
    model = dl.load_model(tmp_path / "r" / "model")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["RandomTranslation", "Flatten", "Dense", "Dropout", "Dense", "Dropout",
                     "Dense"]
    assert all(layer.kernel_regularizer.l2 == 0.001 for layer in model.layers
               if type(layer).__name__ == "Dense")
    assert type(model.optimizer.schedule).__name__ == "CosineDecay"


@pytest.mark.parametrize("workers,given,want", [
    (1, "auto", "none"), (2, "auto", "linear"), (8, "auto", "linear"), (9, "auto", "none"),
    (4, "none", "none"), (16, "linear", "linear")])
def test_lr_scaling_auto_is_linear_for_a_few_workers(workers, given, want):
    from dlrun.cli.runs import TrainConfig, effective_lr_scaling

    assert effective_lr_scaling(TrainConfig(workers=workers, lr_scaling=given)) == want
    assert TrainConfig().lr_scaling == "auto"


def test_dlrun_train_picks_adam_for_lstm_unless_told():
    from dlrun.cli.runs import TrainConfig, make_optimizer

    assert type(make_optimizer(TrainConfig(model="lstm"))).__name__ == "Adam"
    assert type(make_optimizer(TrainConfig(model="cnn"))).__name__ == "SGD"
    cfg = TrainConfig(model="lstm", optimizer="sgd")
    assert type(make_optimizer(cfg)).__name__ == "SGD" and cfg.lr == 0.05


def test_train_with_class_weights_from_the_cli(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--dataset", "digits", "--epochs", "1",
                                    "--class-weight", "0:0,3:2.5", "--out", str(out),
                                    "--verbose", "0", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "class weights 0: 0, 3: 2.5" in res.output
    assert json.loads((out / "config.json").read_text())["class_weight"] == "0:0,3:2.5"
    for bad, message in (("0=1", "LABEL:WEIGHT pairs"), ("0:-1", "'0': '-1'"),
                         ("x:1", "'x': '1'")):
        res = CliRunner().invoke(main, ["train", "--dataset", "digits", "--epochs", "1",
                                        "--class-weight", bad, "--out", str(tmp_path / bad)])
        assert res.exit_code != 0 and message in res.output, res.output
