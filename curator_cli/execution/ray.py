"""``--executor ray``: the local pipeline, run by a pool of Ray actors, one shard at a time each.

The driver keeps everything the local executor does around the pipeline (the lock, resume plan,
manifests, ``_SUCCESS``, exit codes, the summary and one progress bar); each actor loads the stages
from their specs, sets them up once, and runs :class:`~curator_cli.execution.processor.ShardProcessor` on the
shards it is handed. A shard whose actor dies is retried on a fresh actor, a bounded number of times.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from curator_cli.execution.plan import RunPlan, ShardOutcome, finish_run
from curator_cli.execution.processor import ShardProcessor, StageSetupError
from curator_cli.execution.progress import progress_bar, report_failure
from curator_cli.execution.stats import WorkerStats
from curator_cli.execution.summary import RunSummary
from curator_cli.io.commit import clean_stale_temporaries
from curator_cli.io.shards import Shard
from curator_cli.options import DecodeOptions, EmbedOptions
from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.resources import Resources
from curator_cli.stages.worker_metadata import WorkerMetadata

MAX_ATTEMPTS = 3  # a shard whose actor dies this many times is reported failed


class RayUnavailable(RuntimeError):
    """``--executor ray`` without Ray installed."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--executor ray needs Ray: pip install 'curator-cli[ray]'") from None
    return ray


def actor_resources(stages: list[ProcessingStage]) -> Resources:
    """What one actor asks Ray for: it runs every stage, so the largest CPU and GPU needs among them."""
    cpus = max([s.resources.cpus for s in stages] + [1.0])
    gpus = max([s.resources.gpus for s in stages] + [0.0])
    return Resources(cpus=cpus, gpus=gpus)


def actor_count(need: Resources, cluster: dict[str, float], shards: int, cap: int | None) -> tuple[int, float]:
    """(actors, GPUs per actor): ``gpus=0.25`` fits four actors per GPU; CPU-only stages go by ``cpus``.

    On a cluster without GPUs, GPU-wanting stages run on the CPU.
    """
    total_gpus = cluster.get("GPU", 0.0)
    gpus = need.gpus if total_gpus > 0 else 0.0
    if gpus:
        fit = math.floor(total_gpus / gpus + 1e-9)
    else:
        fit = math.floor(cluster.get("CPU", 1.0) / need.cpus + 1e-9)
    count = max(1, min(fit, shards, cap or fit))
    return count, gpus


def actor_cpus(need: Resources, cluster: dict[str, float], count: int, gpus: float) -> float:
    """CPUs each actor asks for, which is also its decode worker count. Actors placed by their GPU
    share split the cluster's CPUs between them (four actors at ``gpus=0.25`` on a 16-core, one-GPU
    machine: 4 each), so decoding uses every core without oversubscribing them; a stage's own
    ``cpus`` is the least each gets."""
    if not gpus:
        return need.cpus
    return max(need.cpus, float(math.floor(cluster.get("CPU", 1.0) / max(1, count) + 1e-9)))


class EmbedActor:
    """Body of a Ray actor: the stages, loaded from their specs in the actor's process, and a ShardProcessor."""

    def __init__(self, stage_specs: list[str], stage_args: list[str], options: EmbedOptions,
                 plan_decode: DecodeOptions, config: dict, index: int, cpus: float) -> None:
        import ray

        from curator_cli.stages.runtime import set_active_device
        from curator_cli.loading.specs import load_stages

        device = "cuda" if ray.get_gpu_ids() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES for the actor
        set_active_device(device)
        self.index = index
        self.options = dataclasses.replace(options, device=device, progress=False,
                                           num_workers=max(1, int(cpus)), worker_start="spawn")
        worker = WorkerMetadata(worker_id=f"ray-actor-{index}", device=device,
                                extra={"precision": options.precision, "decode_size": plan_decode.min_side})
        self.processor = ShardProcessor(load_stages(stage_specs, stage_args), self.options, plan_decode,
                                        config, worker)
        self._setup_seconds = 0.0  # reported with the first shard's stats

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def setup(self, on_node: bool) -> str | None:
        """Set the stages up; returns the error line instead of raising, so the driver can report it."""
        try:
            self.processor.start()
            self.processor.setup(on_node)
        except StageSetupError as exc:
            return str(exc)
        self._setup_seconds = self.processor.stats.seconds_setup
        return None

    def process(self, shard_path: str, shard_format: str, target: str) -> tuple[ShardOutcome, WorkerStats, float]:
        shard = Shard(Path(shard_path), shard_format)
        self.processor.stats = WorkerStats(seconds_setup=self._setup_seconds)
        self._setup_seconds = 0.0
        t0 = time.perf_counter()
        outcomes = self.processor.run([shard], {shard: Path(target)})
        outcome = outcomes.get(shard.name, ShardOutcome(error="not processed"))
        return outcome, self.processor.stats, time.perf_counter() - t0

    def teardown(self) -> None:
        self.processor.teardown()


def _connect(ray: Any, address: str | None, cpus: int | None) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray; True if this call connected."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    on_term = signal.getsignal(signal.SIGTERM)
    try:
        if address:
            ray.init(address=address, **kwargs)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init(address="auto", **kwargs)
        else:
            ray.init(num_cpus=cpus, **kwargs)
    finally:  # ray.init sets a SIGTERM handler of its own (exit status 15, no cleanup line): ours again
        if on_term is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_term)
    return True


T = TypeVar("T")


def _waiting(call: Callable[[], T]) -> T:
    """``call()``, a Ray call the driver blocks in. Ray turns an exception that a signal handler
    raises while it waits into a SystemError (it passes on only KeyboardInterrupt and SystemExit):
    the handler's own exception, SIGTERM's ``Terminated``, is raised again, so the run ends with its
    line and exit status 143 and not a traceback."""
    try:
        return call()
    except SystemError as exc:
        if exc.__cause__ is not None and not isinstance(exc.__cause__, Exception):
            raise exc.__cause__ from None
        raise


def run_ray(plan: RunPlan) -> RunSummary:
    """Embed every shard not already done with a pool of Ray actors; same outputs as the local executor.
    Each actor rebuilds the stages from ``plan.stage_specs`` and ``plan.stage_args``."""
    ray = import_ray()
    options = plan.options
    if not plan.todo:
        return finish_run(plan, {})
    connected = _connect(ray, options.ray_address, os.cpu_count())
    actors: list[Any] = []
    try:
        need = actor_resources(plan.stages)
        cluster = ray.cluster_resources()
        count, gpus = actor_count(need, cluster, len(plan.todo), options.num_actors)
        cpus = actor_cpus(need, cluster, count, gpus)
        remote = ray.remote(EmbedActor).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0,
                                                max_concurrency=1)

        def start_actor(index: int, node_ready: set[str]) -> Any:
            actor = remote.remote(plan.stage_specs, plan.stage_args, options, plan.decode, plan.config, index,
                                  cpus)
            node = _waiting(lambda: ray.get(actor.node_id.remote()))
            error = _waiting(lambda: ray.get(actor.setup.remote(node not in node_ready)))
            if error:
                raise StageSetupError(error)
            node_ready.add(node)
            return actor

        nodes: set[str] = set()
        actors = [start_actor(i, nodes) for i in range(count)]
        outcomes, per_actor = _schedule(ray, plan, actors, lambda i: start_actor(i, nodes), options)
    finally:
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        if connected:
            ray.shutdown()
    clean_stale_temporaries(options.output_dir)  # temporaries of actors that died mid-shard
    plan.summary.workers = per_actor
    return finish_run(plan, outcomes)


def _actor_record(number: int) -> dict[str, Any]:
    """What the summary reports per actor (a replacement actor counts as a new one)."""
    return {"actor": number, "shards": 0, "images": 0, "seconds": 0.0}


def _schedule(ray: Any, plan: RunPlan, actors: list[Any], replace, options: EmbedOptions):
    """Hand shards to idle actors until all are done; retry a shard whose actor died on a new actor."""
    from ray.exceptions import RayActorError, RayTaskError

    queue = deque(plan.todo)
    attempts: dict[str, int] = {}
    outcomes: dict[str, ShardOutcome] = {}
    in_flight: dict[Any, tuple[int, Shard]] = {}
    idle = list(range(len(actors)))
    per_actor = [_actor_record(i) for i in range(len(actors))]
    record_of_slot = list(range(len(actors)))  # a replacement actor gets a record of its own
    bar = progress_bar(options.progress, len(plan.todo), plan.expected)
    stop = False
    try:
        while (queue and not stop) or in_flight:
            while idle and queue and not stop:
                slot, shard = idle.pop(), queue.popleft()
                ref = actors[slot].process.remote(str(shard.path), shard.format, str(plan.targets[shard]))
                in_flight[ref] = (slot, shard)
            ready, _ = _waiting(lambda: ray.wait(list(in_flight), num_returns=1))
            for ref in ready:
                slot, shard = in_flight.pop(ref)
                try:
                    outcome, stats, seconds = _waiting(lambda: ray.get(ref))
                except RayActorError as exc:  # the actor (or its node) died mid-shard
                    attempts[shard.name] = attempts.get(shard.name, 0) + 1
                    if attempts[shard.name] < MAX_ATTEMPTS:
                        queue.appendleft(shard)
                    else:
                        outcomes[shard.name] = ShardOutcome(
                            error=f"failed on {MAX_ATTEMPTS} actors; last: {type(exc).__name__}")
                        report_failure(bar, shard.name, outcomes[shard.name].error)
                    record_of_slot[slot] = len(per_actor)
                    per_actor.append(_actor_record(len(per_actor)))
                    actors[slot] = replace(record_of_slot[slot])
                    idle.append(slot)
                    continue
                except RayTaskError as exc:  # a bug inside the actor: report it, keep going
                    outcome, stats, seconds = ShardOutcome(error=f"actor error: {exc.cause!r}"), None, 0.0
                idle.append(slot)
                outcomes[shard.name] = outcome
                if stats is not None:
                    plan.summary.merge_stats(stats)
                record = per_actor[record_of_slot[slot]]
                record["shards"] += 1
                record["images"] += outcome.rows
                record["seconds"] += seconds
                if outcome.error:
                    report_failure(bar, shard.name, outcome.error)
                    stop = stop or options.on_error == "fail"
                bar.update(outcome.rows)
                bar.shards_done(len(outcomes), len(plan.todo))
    finally:
        bar.close()
    for record in per_actor:
        record["images_per_second"] = round(record["images"] / record["seconds"], 2) if record["seconds"] else 0.0
    return outcomes, per_actor

