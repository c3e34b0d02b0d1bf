"""The local executor: every shard of the plan through one :class:`ShardProcessor` in this process."""

from __future__ import annotations

from curator_cli.execution.plan import RunPlan, ShardOutcome, finish_run
from curator_cli.execution.processor import ShardProcessor
from curator_cli.execution.progress import progress_bar
from curator_cli.execution.summary import RunSummary
from curator_cli.stages.worker_metadata import WorkerMetadata


def run_local(plan: RunPlan) -> RunSummary:
    """Embed every shard not already done, in this process; a failing shard is reported and the others go on.

    The caller holds the output lock. Ctrl-C/SIGTERM (as exceptions) discard the shards in progress
    and keep the finished ones.
    """
    options = plan.options
    outcomes: dict[str, ShardOutcome] = {}
    if plan.todo:
        worker = WorkerMetadata(worker_id="local-0", device=options.device,
                                extra={"precision": options.precision, "decode_size": plan.decode.min_side})
        processor = ShardProcessor(plan.stages, options, plan.decode, plan.config, worker)
        processor.start()  # decode workers start before any thread (the progress bar's) or model exists
        bar = progress_bar(options.progress, len(plan.todo), plan.expected)
        try:  # run() sets the stages up once the first images are decoding
            outcomes = processor.run(plan.todo, plan.targets, bar)
        finally:
            bar.close()
            processor.teardown()
        plan.summary.merge_stats(processor.stats)
    return finish_run(plan, outcomes)
