"""``curator inspect`` and ``curator show``: looking at inputs and outputs without running stages."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from curator_cli.readers import ReadOptions, ShardReadError, open_shard
from curator_cli.readers.parquet import ParquetShardReader
from curator_cli.readers.tar import iter_tar_groups
from curator_cli.shards import Shard


@dataclass
class ShardInfo:
    shard: Shard
    samples: int | None = None
    first_keys: list[str] = field(default_factory=list)
    detail: str = ""
    error: str | None = None

    def line(self) -> str:
        head = f"{self.shard.name}  [{self.shard.format}]"
        if self.error:
            return f"{head}  ERROR: {self.error}"
        keys = ", ".join(self.first_keys)
        extra = f"  {self.detail}" if self.detail else ""
        return f"{head}  {self.samples} sample(s){extra}  first: {keys}"


def describe_shard(shard: Shard, keys: int, image_exts: tuple[str, ...]) -> ShardInfo:
    """Count samples and list the first keys; parquet row counts come from the footer."""
    info = ShardInfo(shard)
    try:
        if shard.format == "parquet":
            reader = ParquetShardReader(shard.path, ReadOptions(image_exts=image_exts))
            info.samples = pq.ParquetFile(shard.path).metadata.num_rows
            info.detail = f"image column {reader.image_column!r}, id column {reader.id_column or '(row number)'!r}"
            for sample in reader:
                if len(info.first_keys) >= keys:
                    break
                info.first_keys.append(sample.image_id)
        elif shard.format == "tar":
            count = 0
            extensions: Counter[str] = Counter()
            for key, members in iter_tar_groups(shard.path):
                count += 1
                extensions.update(members.keys())
                if len(info.first_keys) < keys:
                    info.first_keys.append(key)
            info.samples = count
            info.detail = "members: " + ", ".join(f"{ext} {n}" for ext, n in sorted(extensions.items()))
        else:
            samples = list(open_shard(shard, ReadOptions(image_exts=image_exts)))
            info.samples = len(samples)
            info.first_keys = [s.image_id for s in samples[:keys]]
    except ShardReadError as exc:
        info.error = str(exc)
    return info


def output_files(output_dir: Path) -> list[Path]:
    """The finished parquet files of an output directory (temporary and hidden files skipped)."""
    return sorted(
        p for p in output_dir.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(output_dir).parts)
    )


def describe_output(output_dir: Path, rows: int) -> str:
    files = output_files(output_dir)
    if not files:
        raise ValueError(f"no parquet files in {output_dir}")
    total = null_embeddings = 0
    dims: set[int] = set()
    errors: Counter[str] = Counter()
    sample_rows: list[dict] = []
    for path in files:
        table = pq.read_table(path)
        total += table.num_rows
        embedding_type = table.schema.field("embedding").type
        if hasattr(embedding_type, "list_size") and embedding_type.list_size > 0:
            dims.add(embedding_type.list_size)
        null_embeddings += table.column("embedding").null_count
        for error in table.column("error").to_pylist():
            if error:
                errors[error.split(":")[0].split("(")[0].strip()] += 1
        if len(sample_rows) < rows:
            columns = [c for c in ("image_id", "caption", "error") if c in table.column_names]
            for record in table.select(columns + ["embedding"]).slice(0, rows - len(sample_rows)).to_pylist():
                emb = record.pop("embedding")
                record["embedding"] = None if emb is None else "[" + ", ".join(f"{v:.3f}" for v in emb[:4]) + ", ...]"
                sample_rows.append(record)
    lines = [
        f"{output_dir}: {len(files)} file(s), {total} row(s)",
        f"embedding dimension: {', '.join(map(str, sorted(dims))) or 'unknown'}",
        f"null embeddings: {null_embeddings}",
        "errors by kind: " + (", ".join(f"{k} ({n})" for k, n in errors.most_common()) or "none"),
    ]
    if (output_dir / "_SUCCESS").exists():
        lines.append("complete: _SUCCESS present")
    for record in sample_rows:
        lines.append("  " + "  ".join(f"{k}={v}" for k, v in record.items()))
    return "\n".join(lines)
