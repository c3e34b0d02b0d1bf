"""Running the pipeline: the plan, the feeder thread, the stages over a batch, the per-process
shard processor, and the local and Ray executors behind one signature (``RunPlan -> RunSummary``)."""
