"""`dlrun train`'s cluster options, checked before anything starts (no Ray)."""
from __future__ import annotations

from click.testing import CliRunner

from dlrun.cli.main import main


def test_cluster_options_without_workers_are_refused():
    res = CliRunner().invoke(main, ["train", "--average-every", "3", "--address", "auto"])
    assert res.exit_code == 2
    assert "--address, --average-every apply to training on several workers" in res.output


def test_bad_cluster_option_values_are_refused():
    for args, text in ((["--workers", "0"], "--workers"),
                       (["--workers", "2", "--optimizer-state", "sum"], "--optimizer-state"),
                       (["--workers", "2", "--lr-scaling", "sqrt"], "--lr-scaling")):
        res = CliRunner().invoke(main, ["train", *args])
        assert res.exit_code == 2 and text in res.output


def test_train_help_describes_the_cluster_options():
    res = CliRunner().invoke(main, ["train", "--help"])
    for opt in ("--workers", "--address", "--average-every", "--optimizer-state",
                "--lr-scaling", "--sync-warmup"):
        assert opt in res.output
