"""Which Ray instance a run joins.

`dlrun train --address` against a Ray head the test starts on loopback with token
authentication on and a token of its own (never the user's ~/.ray/auth_token): the token
is found and sent; without it (or with a wrong one) the run stops at once with one line
that says how to pass it, instead of Ray's ~20 s of retries. The head is stopped by its
own PID, never with `ray stop`, which would stop every Ray process on the machine.

A local start (`dlrun train --workers 2`) is not misled by the cluster file a head that
died without `ray stop` leaves behind (planted under a private RAY_TMPDIR, so the real
/tmp/ray of other sessions is never touched)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head on 127.0.0.1 that requires the token in ``token``; yields (address, the
    environment a client without any token runs in, the token file)."""
    tmp = tmp_path_factory.mktemp("head")
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    home = tmp / "home"                       # an empty home: no ~/.ray/auth_token in it
    home.mkdir()
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))} | {"HOME": str(home)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="dlrun-head-")
    # this Python's own ray first: a `ray` found on PATH may belong to another Python
    # (a pyenv shim), whose workers cannot import dlrun
    sibling = Path(sys.executable).parent / "ray"
    ray_bin = str(sibling) if sibling.exists() else shutil.which("ray")
    log_path = tmp / "head.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}", "--block"],
        stdout=log, stderr=subprocess.STDOUT,
        env=clean | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    try:
        deadline = time.time() + 60
        while "will now block" not in log_path.read_text():
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", clean, token
    finally:
        proc.terminate()                      # --block stops what it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def dlrun_train(env, out, *options, timeout=120):
    return subprocess.run([sys.executable, "-m", "dlrun.cli.main", "train", "--dataset",
                           "digits", "--workers", "2", "--epochs", "1", "--out", str(out),
                           "--verbose", "0", *options],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_cli_joins_a_running_head_by_explicit_address_with_token_auth_on(head, tmp_path):
    address, env, token = head
    res = dlrun_train(env | {"RAY_AUTH_TOKEN_PATH": str(token)}, tmp_path / "run",
                      "--address", address)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Ray: cluster at {address}" in res.stdout
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["workers"] == 2


@pytest.mark.parametrize("how", ["no token, --address", "no token, RAY_ADDRESS",
                                 "wrong token"])
def test_a_missing_or_wrong_token_fails_at_once_saying_how_to_pass_it(head, tmp_path, how):
    address, env, _ = head
    options = ["--address", address]
    if how == "no token, RAY_ADDRESS":
        env, options = env | {"RAY_ADDRESS": address}, []
    if how == "wrong token":
        env = env | {"RAY_AUTH_TOKEN": secrets.token_hex(32)}
    t0 = time.perf_counter()
    res = dlrun_train(env, tmp_path / "run", *options, timeout=60)
    seconds = time.perf_counter() - t0
    assert res.returncode == 1, res.stdout + res.stderr[-3000:]
    error = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, res.stderr[-3000:]
    assert "requires token authentication" in error[0]
    assert ("the token found here was refused" if how == "wrong token"
            else "no token was found here") in error[0]
    assert "RAY_AUTH_TOKEN" in error[0] and "never turns Ray's authentication off" in error[0]
    assert "Traceback" not in res.stderr
    # Ray alone retries for ~20 s; the run starts Python, imports dlrun and stops
    assert seconds < 15, seconds


def test_a_stale_cluster_file_does_not_break_a_local_start(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"       # nothing listens there once closed
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(dead)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path)              # where Ray looks for the cluster file
    # the file is where Ray reads it: a plain local ray.init(num_cpus=...) now breaks
    plain = subprocess.run([sys.executable, "-c", "import ray; ray.init(num_cpus=2)"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert plain.returncode != 0 and "num_cpus" in plain.stderr, plain.stderr[-2000:]
    res = dlrun_train(env, tmp_path / "run")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Ray: local Ray instance" in res.stdout
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["workers"] == 2
    assert (tmp_path / "ray" / "ray_current_cluster").read_text() == dead
