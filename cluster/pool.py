"""Pools of workers: Ray actors (one per worker; the one place a Worker becomes remote), or
plain objects run one after another in this process (tests, debugging).
"""
from __future__ import annotations

import os

import numpy as np

from dlrun.cluster.exchange import Exchange, plain_number
from dlrun.cluster.worker import Worker
from dlrun.errors import ClusterError


# -- pools of workers ------------------------------------------------------------------------
class InProcessPool:
    """Workers as plain objects in this process, run one after another (tests, debugging)."""

    def __init__(self, make_args: list):
        self.make_args = make_args
        self.workers = [Worker(*a) for a in make_args]

    def info(self) -> list:
        return [w.info() for w in self.workers]

    def put(self, arrays):
        return arrays

    def share(self, out) -> None:
        """(In process the arrays need no exchange.)"""

    def run(self, ref, states, k) -> list:
        out = []
        for w, s in zip(self.workers, states):
            r = w.run_round(ref, s, k)
            # copy: the worker's live arrays change in its next round
            out.append(r | {"arrays": {n: a.copy() for n, a in r["arrays"].items()}})
        return out

    def shutdown(self):
        self.workers = []

class RayPool:
    """One Ray actor per worker."""

    def __init__(self, make_args: list, num_cpus: float, start_timeout: float = 300.0,
                 num_gpus: float = 0.0):
        import ray

        self.ray = ray
        self.start_timeout = start_timeout
        self.actor_class = ray.remote(Worker)        # the one place Worker becomes remote
        self.make_args = make_args
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.actors = [self._start(a) for a in make_args]
        infos = self.info()
        self.pids = [i["pid"] for i in infos]
        self.nodes = [i["node"] for i in infos]
        self.exchange, self.slots = None, list(range(len(make_args)))
        self.local = [False] * len(make_args)       # served through self.exchange
        self.conns = [None] * len(make_args)        # (socket, reader) of a local one
        self.serving = [None] * len(make_args)      # the ref of its serving call

    def _start(self, args):
        return self.actor_class.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                        max_concurrency=1).remote(*args)

    def info(self) -> list:
        try:
            return self.ray.get([a.info.remote() for a in self.actors],
                                timeout=self.start_timeout)
        except self.ray.exceptions.GetTimeoutError:
            cpus = self.ray.available_resources().get("CPU", 0)
            raise ClusterError(f"{len(self.actors)} workers needing {self.num_cpus:g} CPU "
                               f"each did not start within {self.start_timeout:g} s (the "
                               f"cluster has {cpus:g} CPUs free); add nodes or use fewer "
                               "--workers") from None

    def share(self, out: dict) -> None:
        """Run the workers on this node through a local channel (see :class:`Exchange`):
        arrays in shared memory, each round's request and reply over a Unix socket. The
        others keep Ray calls and the object store."""
        here = self.ray.get_runtime_context().get_node_id()
        if not os.path.isdir("/dev/shm") or here not in self.nodes:
            return
        try:
            self.exchange = Exchange(out, len(self.actors))
        except OSError:                      # /dev/shm full or small (a container's)
            return
        self.local = [n == here for n in self.nodes]
        for i in range(len(self.actors)):
            if self.local[i]:
                self._serve(i)

    def _serve(self, i: int) -> None:
        """Start worker ``i``'s serving loop and take its connection."""
        e, slot = self.exchange, self.slots[i]
        self.serving[i] = self.actors[i].serve.remote(e.socket_path, slot, e.average_path,
                                                      e.paths[slot], e.layout)
        self.conns[i] = e.accept(slot, self.start_timeout)

    def put(self, arrays):
        """The averaged arrays, where the workers read them: copied into the shared file
        for the workers on this node, put into the object store for the others."""
        if self.exchange is not None:
            for key, a in arrays.items():
                np.copyto(self.exchange.average[key], a)
        return None if all(self.local) else self.ray.put(arrays)

    def run(self, ref, states, k) -> list:
        """The workers' results in index order; raises WorkersLost naming the dead workers."""
        import json

        refs = []
        for i, (a, s) in enumerate(zip(self.actors, states)):
            if self.local[i]:
                try:
                    self.conns[i][0].sendall(json.dumps({"state": s, "k": k},
                                                        default=plain_number).encode() + b"\n")
                except OSError:               # gone: its reply reads as the end, below
                    pass
                refs.append(None)
            else:
                refs.append(a.run_round.remote(ref, s, k))
        results, lost = [], []
        for i, r in enumerate(refs):
            try:
                if r is None:
                    res = self._reply(i)
                    res["arrays"] = self.exchange.own[self.slots[i]]
                else:
                    res = self.ray.get(r)
            except self.ray.exceptions.RayActorError:
                lost.append(i)
                continue
            results.append(res)
        if lost:
            raise WorkersLost(lost)
        return results

    def _reply(self, i: int) -> dict:
        """Worker ``i``'s answer on its socket. When the connection ends instead, its
        serving call says why: its error is raised as a Ray call's would be; a dead
        worker raises RayActorError."""
        import json

        try:
            line = self.conns[i][1].readline()
        except OSError:
            line = b""
        if line:
            return json.loads(line)
        self.ray.get(self.serving[i])
        raise self.ray.exceptions.RayActorError()     # (it returned: it is no more)

    def replace(self, i: int, timeout: float | None = None) -> int | None:
        """Start a new worker ``i``; its pid, or None if none started within ``timeout``
        seconds (default: the start timeout), for lack of room on the cluster."""
        try:
            self.ray.kill(self.actors[i], no_restart=True)
        except Exception:                    # noqa: BLE001 - already gone
            pass
        self._close(i)
        self.actors[i] = self._start(self.make_args[i])
        try:
            info = self.ray.get(self.actors[i].info.remote(),
                                timeout=timeout or self.start_timeout)
        except self.ray.exceptions.GetTimeoutError:
            return None
        self.pids[i], self.nodes[i] = info["pid"], info["node"]
        self.local[i] = (self.exchange is not None
                         and info["node"] == self.ray.get_runtime_context().get_node_id())
        if self.local[i]:
            self._serve(i)
        return self.pids[i]

    def _close(self, i: int) -> None:
        if self.conns[i] is not None:
            for c in reversed(self.conns[i]):
                c.close()
        self.conns[i] = self.serving[i] = None

    def drop(self, i: int) -> None:
        """Go on without worker ``i`` (its pending replacement is cancelled)."""
        try:
            self.ray.kill(self.actors[i], no_restart=True)
        except Exception:                    # noqa: BLE001
            pass
        self._close(i)
        del self.actors[i], self.make_args[i], self.pids[i], self.nodes[i]
        del self.slots[i], self.local[i], self.conns[i], self.serving[i]

    def shutdown(self):
        for i in range(len(self.actors)):
            self._close(i)                  # (a serving worker returns)
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:                # noqa: BLE001
                pass
        self.actors = []
        if self.exchange is not None:
            self.exchange.close()
            self.exchange = None

class WorkersLost(Exception):
    def __init__(self, workers):
        super().__init__(workers)
        self.workers = workers
