"""The round loop of a distributed run: schedule, broadcast, train, average, recover.

An epoch is a list of rounds; each round is one unit of the engine's training loop
(:class:`dlrun.engine.models.training.Loop`, which runs the callbacks and sums the metrics
as it does for ``fit``'s batches): every worker trains ``k`` local steps from the averaged
weights, the driver averages what they return, weighted by samples, in place into the
model's own buffers. A worker that dies is replaced and the round redone from the last
averaged weights; a round in which a worker returns NaN or infinite arrays is rejected
and redone, at most ``max_retries`` times.
"""
from __future__ import annotations

import time
from functools import partial

import numpy as np

from dlrun.cluster.averaging import average_into, scratch_for
from dlrun.cluster.checkpoints import save_round
from dlrun.cluster.pool import InProcessPool, RayPool, WorkersLost
from dlrun.errors import ClusterError


class Rounds:
    """The workers of one run and the rounds they train.

    ``out`` holds what is averaged (the model's packed weights, and its packed optimizer
    state when that is averaged); ``make_args(workers)`` gives each worker's constructor
    arguments; ``resources`` the pool's ``num_cpus``/``num_gpus`` per worker.
    """

    def __init__(self, model, out: dict, make_args, options, resources: dict, echo,
                 on_event=None):
        self.model, self.out, self.make_args = model, out, make_args
        self.options, self.resources = options, resources
        self.echo, self.on_event = echo, on_event
        self.scratch = scratch_for(out)
        self.round, self.position, self.events = 0, 0, []
        self.pool = self._start_pool(options.workers)

    # -- workers ---------------------------------------------------------------------------
    def _start_pool(self, workers: int):
        args = self.make_args(workers)
        if self.options.in_process:
            pool = InProcessPool(args)
        else:
            pool = RayPool(args, self.resources["num_cpus"],
                           num_gpus=self.resources["num_gpus"])
        self.infos = pool.info()
        pool.share(self.out)                 # (after info: a serving worker takes no calls)
        self.per_worker = [i["batches"] for i in self.infos]
        return pool

    def reshard(self) -> bool:
        """After workers were dropped, share the data out anew among those left (a new
        pool); True if it did."""
        left = len(self.pool.make_args)
        if left == self.options.workers:
            return False
        self.options.workers = left
        self.pool.shutdown()
        self.pool = self._start_pool(left)
        return True

    def shutdown(self) -> None:
        self.pool.shutdown()

    # -- an epoch --------------------------------------------------------------------------
    def epoch(self, epoch: int, start: int = 0) -> list:
        """The units of epoch ``epoch``, from batch ``start`` on: one per round."""
        self.position, self.t_epoch = start, time.perf_counter()
        self.samples, self.worker_rates, self.overheads = 0, [], []
        return [partial(self.run, epoch, k) for k in self.plan(max(self.per_worker) - start)]

    def plan(self, batches: int) -> list:
        """Local steps of each round of an epoch of ``batches`` steps (for the busiest
        worker): 1 while in the sync warm-up, K after; rounds end at the epoch's end."""
        steps, at, done = [], self.model.optimizer.iterations, 0
        while done < batches:
            k = 1 if at < self.options.sync_warmup else self.options.average_every
            k = min(k, batches - done)
            steps.append(k)
            done += k
            at += k
        return steps

    def run(self, epoch: int, k: int, tally) -> None:
        """One round of ``k`` local steps; the workers' losses and counts go into ``tally``."""
        model, opt = self.model, self.model.optimizer
        state = {"epoch": epoch, "position": self.position, "step": model.training.step,
                 "iterations": opt.iterations,
                 "optimizer_state": self.options.optimizer_state}
        t0 = time.perf_counter()
        results = self._attempt(state, k)
        self.overheads.append(time.perf_counter() - t0 - max(r["seconds"] for r in results))
        for res in results:
            tally.add(res["loss_sum"], res["samples"], res["counts"])
            self.samples += res["samples"]
            if res["samples"]:
                self.worker_rates.append(res["samples"] / res["seconds"])
        self.position += k
        model.training.step += k
        opt.iterations += k
        self.round += 1
        every = self.options.checkpoint_every
        if every and self.round % every == 0 and self.position < max(self.per_worker):
            save_round(model, self.options.checkpoint_dir, epoch, self.position)

    def throughput(self) -> dict:
        """The epoch's samples per second, all workers and per worker, and the driver's
        own time per round (logged beside the metrics)."""
        seconds = time.perf_counter() - self.t_epoch
        rates, overheads = self.worker_rates, self.overheads
        return {"samples_per_s": self.samples / seconds,
                "worker_samples_per_s": float(np.mean(rates)) if rates else 0.0,
                "round_overhead_ms": 1e3 * float(np.mean(overheads)) if overheads else 0.0}

    # -- faults ----------------------------------------------------------------------------
    def _attempt(self, state, k) -> list:
        """One round, redone after a lost worker or a non-finite contribution."""
        for _ in range(self.options.max_retries + 1):
            states = [state | {"position": min(state["position"], n)}
                      for n in self.per_worker]
            ref = self.pool.put(self.out)
            try:
                results = self.pool.run(ref, states, k)
            except WorkersLost as lost:
                for i in sorted(lost.workers, reverse=True):
                    self._replace(i)
                continue
            finally:
                del ref
            bad = average_into(self.out, [res["arrays"] for res in results],
                               [res["samples"] for res in results], self.scratch)
            if not bad:
                return results
            self.event(f"round {self.round + 1}: worker(s) {bad} returned NaN or infinite "
                       "weights; the round is rejected and redone from the last averaged "
                       "weights")
        raise ClusterError(f"round {self.round + 1} failed {self.options.max_retries + 1} "
                           "times (lost workers or NaN weights; see above); stopping. The "
                           "last good checkpoint is kept; try a smaller learning rate")

    def _replace(self, i: int) -> None:
        timeout = self.options.replace_timeout
        pid = self.pool.replace(i, timeout)
        if pid is not None:
            self.infos[i]["pid"] = pid
            self.event(f"round {self.round + 1}: worker {i} was lost; replaced (new pid "
                       f"{pid}); redoing the round from the last averaged weights")
            return
        left = len(self.pool.make_args) - 1
        if self.options.on_lost == "wait" or left == 0:
            raise ClusterError(f"worker {i} was lost and no replacement could start within "
                               f"{timeout:g} s (no CPU free for it); the last checkpoint is "
                               "kept: resume with --resume when the cluster has room")
        self.pool.drop(i)
        del self.infos[i], self.per_worker[i]
        self.event(f"round {self.round + 1}: worker {i} was lost and no replacement could "
                   f"start within {timeout:g} s; continuing with {left} worker(s): its "
                   "share is skipped for the rest of the epoch, and shared out among the "
                   "others from the next one")

    def event(self, text: str) -> None:
        self.events.append(text)
        self.echo(text)
        if self.on_event is not None:
            self.on_event(text)
