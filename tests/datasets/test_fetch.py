"""`fetch` against a local HTTP server on 127.0.0.1: good, interrupted, corrupt, missing."""

import hashlib
import http.server
import threading

import numpy as np
import pytest

from dlrun.datasets import open_dataset
import dlrun.datasets.fetch as fetch_module
from dlrun.datasets.fetch import SOURCES, fetch
from dlrun.datasets.importers import write_idx
from dlrun.errors import DataError

FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.fixture
def idx_files(tmp_path):
    """Small MNIST-like IDX files, their bytes and SHA-256s, and the arrays in them."""
    rng = np.random.default_rng(0)
    arrays = {"train": (rng.integers(0, 256, (40, 5, 5), dtype=np.uint8),
                        rng.integers(0, 10, 40).astype(np.uint8)),
              "test": (rng.integers(0, 256, (10, 5, 5), dtype=np.uint8),
                       rng.integers(0, 10, 10).astype(np.uint8))}
    src = tmp_path / "src"
    src.mkdir()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        write_idx(src / f"{prefix}-images-idx3-ubyte.gz", arrays[split][0])
        write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", arrays[split][1])
    blobs = {f: (src / f).read_bytes() for f in FILES}
    digests = {f: hashlib.sha256(b).hexdigest() for f, b in blobs.items()}
    return blobs, digests, arrays


class Server:
    """A local HTTP server for ``blobs``, with Range support; ``mode`` says how it fails:
    "good", "drop" (each file's first response stops half way), "corrupt" (a flipped byte)."""

    def __init__(self, blobs, mode="good"):
        self.blobs, self.mode = blobs, mode
        self.requests = []  # (path, Range header)
        self.dropped = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if name not in server.blobs:
                    self.send_error(404)
                    return
                data = server.blobs[name]
                if server.mode == "corrupt":
                    data = bytes([data[0] ^ 1]) + data[1:]
                start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if server.mode == "drop" and name not in server.dropped:
                    server.dropped.add(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def check_dataset(path, arrays):
    ds = open_dataset(path)
    assert ds.splits == ["train", "test"] and ds.input_shape == (1, 5, 5)
    for split, (x, y) in arrays.items():
        zx, zy = ds.arrays(split)
        np.testing.assert_array_equal(zx[:], x[:, None])
        np.testing.assert_array_equal(zy[:], y)
    ds.verify()
    return ds


def test_fetch_good(tmp_path, idx_files):
    blobs, digests, arrays = idx_files
    with Server(blobs) as server:
        path = fetch("fashion-mnist", mirror=server.url, out=tmp_path / "ds",
                     downloads=tmp_path / "dl", sha256=digests, backoff=0)
    assert path == tmp_path / "ds" / "fashion-mnist.zarr"
    ds = check_dataset(path, arrays)
    assert ds.attrs["class_names"] == SOURCES["fashion-mnist"]["class_names"]
    assert ds.attrs["license"] == "MIT" and server.url in ds.attrs["source"]
    assert sorted(p for p, _ in server.requests) == sorted(f"/files/{f}" for f in FILES)
    # a second fetch reuses the verified downloads
    with Server(blobs) as again:
        fetch("fashion-mnist", mirror=again.url, out=tmp_path / "ds", downloads=tmp_path / "dl",
              sha256=digests, overwrite=True)
    assert again.requests == []


def test_fetch_resumes_a_dropped_connection(tmp_path, idx_files):
    blobs, digests, arrays = idx_files
    lines = []
    with Server(blobs, mode="drop") as server:
        path = fetch("mnist", mirror=server.url, out=tmp_path, downloads=tmp_path / "dl",
                     sha256=digests, backoff=0, echo=lines.append)
    check_dataset(path, arrays)
    for f in FILES:
        ranges = [r for p, r in server.requests if p.endswith(f)]
        half = len(blobs[f]) // 2
        assert ranges == [None, f"bytes={half}-"], (f, ranges)  # resumed, not restarted
    assert any("retrying" in line for line in lines)


def test_fetch_mirror_from_the_environment(tmp_path, idx_files, monkeypatch):
    blobs, digests, arrays = idx_files
    with Server(blobs) as server:
        monkeypatch.setenv("DLRUN_MIRROR", server.url.replace("/files/", "/{name}/"))
        monkeypatch.setenv("DLRUN_DATA", str(tmp_path / "home"))
        path = fetch("kmnist", sha256=digests, backoff=0)
    assert path == tmp_path / "home" / "kmnist.zarr"
    assert all(p.startswith("/kmnist/") for p, _ in server.requests)
    assert (tmp_path / "home" / "downloads" / "kmnist" / FILES[0]).exists()
    check_dataset("kmnist", arrays)  # opens by name from DLRUN_DATA


def test_fetch_refuses_a_wrong_checksum(tmp_path, idx_files, monkeypatch):
    blobs, digests, _ = idx_files
    waits = []
    monkeypatch.setattr(fetch_module.time, "sleep", waits.append)
    with Server(blobs, mode="corrupt") as server:
        with pytest.raises(DataError, match="in 4 attempts: sha256 .* is not the expected"):
            fetch("mnist", mirror=server.url, out=tmp_path / "ds", downloads=tmp_path / "dl",
                  sha256=digests, retries=3, backoff=0.5)
    assert waits == [0.5, 1.0, 2.0]  # exponential backoff
    assert [r for _, r in server.requests] == [None] * 4  # never resumes wrong bytes
    assert not (tmp_path / "ds").exists() or list((tmp_path / "ds").iterdir()) == []
    assert list((tmp_path / "dl").iterdir()) == []  # neither the file nor a .part


def test_fetch_standard_digests_refuse_other_files(tmp_path, idx_files):
    """Without an injected digest, the standard MNIST SHA-256s apply."""
    blobs, _, _ = idx_files
    with Server(blobs) as server:
        with pytest.raises(DataError, match="is not the expected 440fcabf"):
            fetch("mnist", mirror=server.url, out=tmp_path, downloads=tmp_path / "dl",
                  retries=0)


def test_fetch_missing_file_and_unknown_dataset(tmp_path, idx_files):
    blobs, digests, _ = idx_files
    with Server({k: v for k, v in blobs.items() if "t10k-labels" not in k}) as server:
        with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: HTTP 404"):
            fetch("mnist", mirror=server.url, out=tmp_path / "ds", downloads=tmp_path / "dl",
                  sha256=digests, backoff=0)
    assert not (tmp_path / "ds" / "mnist.zarr").exists()
    with pytest.raises(Exception, match="no dataset 'cifar' to fetch"):
        fetch("cifar", out=tmp_path)


def test_fetch_gives_up_when_the_server_is_gone(tmp_path, idx_files):
    _, digests, _ = idx_files
    with Server({}) as server:
        url = server.url
    with pytest.raises(DataError, match="in 2 attempts: download stopped"):
        fetch("mnist", mirror=url, out=tmp_path, downloads=tmp_path / "dl", sha256=digests,
              retries=1, backoff=0, timeout=2)
