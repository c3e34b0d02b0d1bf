"""Files in and files out: finding shards, reading samples, writing one parquet file per shard,
manifests, the output lock and atomic commits."""
