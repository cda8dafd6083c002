"""Workers as Ray actors: one per GPU (`num_gpus=1`) when the cluster has GPUs, else one per CPU slot; the model
is loaded once per actor and tasks are streamed to whichever actor is free (`ray.wait`).

A worker that dies (killed, out of memory, node lost) is restarted by Ray (`max_restarts`) and reloads its model;
the task it was running comes back to the driver as a retryable failure. Ray is imported here only, so
`echo_core` imports without it. `--ray local` starts a private cluster without the dashboard or usage reporting
(nothing reaches the network) and shuts it down at the end; `--ray ADDRESS` joins a running cluster and ships
this `echo_core` to it (`py_modules`), so every worker runs the driver's code.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from echo_core.batch.settings import BatchSettings
from echo_core.batch.tasks import BatchTask
from echo_core.batch.worker import BatchWorker, TaskResult
from echo_core.errors import InputError

MAX_RESTARTS = 3  # restarts of one actor before it is given up on (each task also has its own retry limit)
PROBE_TRIES = 100  # "are you back?" calls to a restarting worker (each waits for its model load, or 0.2 s)
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # echo_core/


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--ray", "Ray is not installed: `pip install ray`, or run without --ray") from None
    return ray


class RayPool:
    def __init__(self, settings: BatchSettings, faults: str, *, address: str, workers: int | None,
                 max_workers: int | None = None) -> None:
        ray = self.ray = _import_ray()
        self.owns_ray = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
            if address == "local":
                # Workers are children of this process: put echo_core on their path without a runtime env upload.
                root = str(PACKAGE_DIR.parent)
                paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
                if root not in paths:
                    os.environ["PYTHONPATH"] = os.pathsep.join([root, *filter(None, paths)])
                # address="local": always a new private cluster, never one that `ray start` runs on this machine
                cpus = max(os.cpu_count() or 1, (workers or 1) * settings.cpu_threads)  # never fewer than asked
                ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            else:
                try:
                    ray.init(address=address, log_to_driver=False, configure_logging=False,
                             runtime_env={"py_modules": [str(PACKAGE_DIR)], "excludes": ["__pycache__"]})
                except (ConnectionError, ValueError, RuntimeError) as e:
                    raise InputError("--ray", f"cannot join the Ray cluster at {address!r}: {_first_line(e)} "
                                              "(start one with `ray start --head`, or use --ray local)") from None
            self.owns_ray = True
        self.actors: list[Any] = []
        self.inflight: dict[Any, tuple[int, BatchTask, int]] = {}  # task call -> (worker, task, attempt)
        self.probes: dict[Any, tuple[int, int]] = {}  # ready() call to a restarting worker -> (worker, tries)
        self.idle: list[int] = []
        try:
            self._start(settings, faults, address, workers, max_workers)
        except BaseException:
            self.close()
            raise

    def _start(self, settings: BatchSettings, faults: str, address: str, workers: int | None,
               max_workers: int | None) -> None:
        ray = self.ray
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if settings.device.startswith("cuda") and not gpus:
            raise InputError("--device", f"{settings.device} asked for, but the Ray cluster has no GPU")
        use_gpu = gpus > 0 and settings.device != "cpu" and not settings.is_toy  # the toy model runs on CPU
        n = workers or (gpus if use_gpu else 1)
        if use_gpu and address == "local" and n > gpus:
            raise InputError("--workers", f"{n} workers need {n} GPUs (one each); this machine has {gpus}")
        n = min(n, max_workers or n)
        # A CPU worker reserves the cores its threads use (--cpu-threads), so Ray does not pack more on a machine
        resources = {"num_gpus": 1, "num_cpus": 1} if use_gpu else {"num_cpus": settings.cpu_threads}
        actor = ray.remote(BatchWorker).options(max_restarts=MAX_RESTARTS, max_task_retries=0, **resources)
        self.actors = [actor.remote(settings, faults) for _ in range(n)]
        try:
            infos = ray.get([a.ready.remote() for a in self.actors])  # model loaded everywhere
        except ray.exceptions.RayError as e:
            raise InputError("--ray", f"workers failed to start: {_first_line(e)}") from None
        errors = [info["error"] for info in infos if info["error"]]
        if errors:
            raise InputError(*errors[0])  # a bad setting (size, checkpoint, steps) as the in-process run names it
        self.names = [info["worker"] for info in infos]
        self.idle = list(range(n))
        self.deaths = [0] * n
        print(f"batch: {n} Ray worker(s): {', '.join(self.names)}", file=sys.stderr)

    def free(self) -> int:
        return len(self.idle)

    def running(self) -> int:
        return len(self.inflight)

    def recovering(self) -> int:
        """Workers Ray is restarting after a death; they take tasks again once their model is loaded."""
        return len(self.probes)

    def submit(self, task: BatchTask, attempt: int) -> None:
        i = self.idle.pop(0)
        self.inflight[self.actors[i].run.remote(task, attempt)] = (i, task, attempt)

    def wait(self) -> list[TaskResult]:
        """Results of finished tasks; returns early (maybe empty) when a restarted worker is free again. Short
        timeouts keep Ctrl-C responsive."""
        while self.inflight or self.probes:
            ready, _ = self.ray.wait([*self.inflight, *self.probes], num_returns=1, timeout=0.5)
            results, revived = [], False
            for ref in ready:
                if ref in self.probes:
                    revived |= self._probed(ref)
                    continue
                i, task, attempt = self.inflight.pop(ref)
                try:
                    result = self.ray.get(ref)
                    self.deaths[i] = 0
                    self.idle.append(i)
                except self.ray.exceptions.RayError as e:  # the worker died while running the task
                    result = TaskResult(task.line, attempt, False, retryable=True,
                                        error=f"worker died ({type(e).__name__}): {_first_line(e)}")
                    self.deaths[i] += 1
                    if self.deaths[i] <= MAX_RESTARTS:  # Ray restarts it: wait until it answers before reuse
                        self._probe(i, 0)
                results.append(result)
            if results or revived:
                return results
        return []

    def _probe(self, i: int, tries: int) -> None:
        self.probes[self.actors[i].ready.remote()] = (i, tries)

    def _probed(self, ref: Any) -> bool:
        i, tries = self.probes.pop(ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.ActorDiedError:
            return False  # restarts used up: the worker is gone
        except self.ray.exceptions.RayError:
            if tries < PROBE_TRIES:  # still restarting
                time.sleep(0.2)
                self._probe(i, tries + 1)
            return False
        self.idle.append(i)
        return True

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors, self.inflight, self.probes, self.idle = [], {}, {}, []
        if self.owns_ray:
            self.ray.shutdown()
            self.owns_ray = False


def _first_line(e: BaseException, limit: int = 300) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."
