"""The local channel between the driver and its workers on one node: arrays in files in
shared memory (/dev/shm), each round's request and reply as one JSON line over a Unix
socket.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from dlrun.errors import ClusterError


def map_arrays(path: str, layout: list, create: bool = False,
               readonly: bool = False) -> dict:
    """Named 1-d arrays in the file ``path``, mapped into memory (``layout``: ``(name,
    dtype string, size)`` in order, each array starting at a multiple of 64 bytes). A file
    under /dev/shm is memory shared by the processes of one node that map it."""
    offsets, at = [], 0
    for _, dtype, size in layout:
        at = -(-at // 64) * 64
        offsets.append(at)
        at += np.dtype(dtype).itemsize * size
    nbytes = max(at, 1)
    if create:
        # reserve the pages now: a full /dev/shm then fails here (OSError), not with a
        # SIGBUS at the first write into a page it cannot back
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, nbytes)
            else:
                os.ftruncate(fd, nbytes)
        finally:
            os.close(fd)
    mm = np.memmap(path, np.uint8, "r" if readonly else "r+", shape=(nbytes,))
    return {name: mm[o:o + np.dtype(dtype).itemsize * size].view(dtype)
            for (name, dtype, size), o in zip(layout, offsets)}

def plain_number(value):
    """numpy scalars as the Python numbers they equal (JSON keeps a float exactly)."""
    return value.item()

def remove_orphans() -> None:
    """Remove the exchange folders of drivers that died without cleaning up (killed): the
    folder names its driver's pid, and nothing listens on its socket any more (a driver
    in another pid namespace sharing /dev/shm still does). Only this user's can go."""
    import shutil
    import socket

    for d in os.listdir("/dev/shm"):
        pid = d.split("-")[2] if d.startswith("dlrun-exchange-") else ""
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        path = os.path.join("/dev/shm", d)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                probe.connect(os.path.join(path, "socket"))
            continue                          # someone listens: alive
        except OSError:                       # refused, or no socket: orphaned
            shutil.rmtree(path, ignore_errors=True)

class Exchange:
    """The local channel between the driver and its workers on the same node: files in
    shared memory (/dev/shm) for the arrays, a Unix socket for each round's request and
    reply. The driver copies the average once into one file; every worker copies it in
    from there, trains, writes its arrays into a file of its own (which the driver
    averages from in place) and answers with its sample count and metrics. Ray calls
    with the object store cost a put, a serialised return and a fetch per worker every
    round, and a few ms of call latency each way: ~15 ms of a ~50 ms round of the
    648k-weight MLP on 2 busy cores (BENCHMARKS.md). The driver writes only between rounds
    and a worker only in its round, so no file is read while it is written."""

    def __init__(self, out: dict, slots: int):
        import shutil
        import socket

        self._rmtree = shutil.rmtree
        remove_orphans()
        self.dir = tempfile.mkdtemp(prefix=f"dlrun-exchange-{os.getpid()}-", dir="/dev/shm")
        self.listener = None
        try:
            self.layout = [(k, a.dtype.str, a.size) for k, a in out.items()]
            self.average_path = os.path.join(self.dir, "average")
            self.average = map_arrays(self.average_path, self.layout, create=True)
            self.paths = [os.path.join(self.dir, f"worker-{i}") for i in range(slots)]
            self.own = [map_arrays(p, self.layout, create=True) for p in self.paths]
            self.socket_path = os.path.join(self.dir, "socket")
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(self.socket_path)
            self.listener.listen(slots)
        except OSError:
            self.close()
            raise

    def accept(self, slot: int, timeout: float) -> tuple:
        """The connection of the worker serving ``slot`` (the next to connect): (socket,
        its reading file)."""
        import json

        deadline = time.monotonic() + timeout
        while True:
            self.listener.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                raise ClusterError(f"worker {slot} did not connect to the driver's socket "
                                   f"within {timeout:g} s") from None
            conn.settimeout(10.0)
            reader = conn.makefile("rb")
            try:
                hello = json.loads(reader.readline() or b"{}")
            except (OSError, ValueError):
                hello = {}
            if hello.get("slot") == slot:
                conn.settimeout(None)
                return conn, reader
            reader.close()                    # not a worker: another driver's liveness
            conn.close()                      # check (see remove_orphans)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        self.average, self.own = None, []
        self._rmtree(self.dir, ignore_errors=True)
