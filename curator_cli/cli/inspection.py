"""``curator inspect`` and ``curator show``: looking at inputs and outputs without running stages."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curator_cli.io.commit import output_files
from curator_cli.io.manifest import SUCCESS_FILE
from curator_cli.io.readers import ReadOptions, ShardReadError, open_shard
from curator_cli.io.readers.files import iter_files_groups
from curator_cli.io.readers.img2dataset import failed_mask, read_sidecar
from curator_cli.io.readers.parquet import ParquetShardReader, resolve_image_file
from curator_cli.io.readers.tar import iter_tar_groups
from curator_cli.io.shards import Shard, ShardError, scan_inputs, sidecar_parquet
from curator_cli.io.totals import count_samples
from curator_cli.io.writer import error_kind


@dataclass
class ShardInfo:
    shard: Shard
    samples: int | None = None
    first_keys: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    error: str | None = None

    def line(self) -> str:
        head = f"{self.shard.name}  [{self.shard.format}]"
        if self.error:
            return f"{head}  ERROR: {self.error}"
        keys = ", ".join(self.first_keys)
        extra = "".join(f"  {d}" for d in self.details)
        return f"{head}  {self.samples} sample(s){extra}  first: {keys}"


@dataclass
class InspectReport:
    """What ``curator inspect`` prints, and how many shards it could not read (exit status 1 if any)."""

    lines: list[str]
    errors: int


def inspect_inputs(inputs: list[str], keys: int, options: ReadOptions) -> InspectReport:
    """Describe every shard INPUT... names, the img2dataset sidecars skipped, and the totals.
    Raises :class:`ShardError` for inputs that name nothing usable."""
    scan = scan_inputs(inputs)
    if not scan.shards:
        raise ShardError(f"no shards found in {' '.join(inputs)}")
    lines: list[str] = []
    total = errors = 0
    for shard in scan.shards:
        info = describe_shard(shard, keys, options)
        total += info.samples or 0
        errors += info.error is not None
        lines.append(info.line())
    if scan.sidecars or scan.ignored:
        lines.append(scan.skipped_summary())
    summary = f"{len(scan.shards)} shard(s), {total} sample(s)"
    lines.append(summary + (f", {errors} shard(s) unreadable" if errors else ""))
    lines.append(f"embed's progress total (counted without reading the images): {count_samples(scan.shards).text()}")
    return InspectReport(lines, errors)


def describe_shard(shard: Shard, keys: int, options: ReadOptions) -> ShardInfo:
    """Count samples and list the first keys, without decoding; parquet row counts come from the footer.
    Samples img2dataset failed to fetch are counted (embed writes them as error rows) and summarised."""
    info = ShardInfo(shard)
    try:
        if shard.format == "parquet":
            _describe_parquet(info, keys, options)
        elif shard.format in ("tar", "files"):
            groups = iter_tar_groups(shard.path) if shard.format == "tar" else iter_files_groups(shard.path)
            _describe_groups(info, groups, keys, options)
        else:
            samples = list(open_shard(shard, options))
            info.samples = len(samples)
            info.first_keys = [s.image_id for s in samples[:keys]]
    except ShardReadError as exc:
        info.error = str(exc)
    except pa.ArrowException as exc:
        info.error = f"parquet read failed: {exc}"
    except OSError as exc:
        info.error = f"unreadable: {exc.strerror or exc}"
    return info


def _describe_groups(info: ShardInfo, groups: Iterator[tuple[str, dict]], keys: int, options: ReadOptions) -> None:
    seen: set[str] = set()
    extensions: Counter[str] = Counter()
    info.samples = 0
    for key, members in groups:
        info.samples += 1
        seen.add(key)
        extensions.update(members.keys())
        if len(info.first_keys) < keys:
            info.first_keys.append(key)
    info.details.append("members: " + ", ".join(f"{ext} {n}" for ext, n in sorted(extensions.items())))
    sidecar = sidecar_parquet(info.shard.path)
    if sidecar is None:
        return
    rows = read_sidecar(sidecar, options)
    if rows is None:
        info.details.append(f"sidecar {sidecar.name}: unreadable or without key/status columns, not used")
        return
    info.samples += sum(1 for _ in rows.unfetched(seen))  # as embed writes them
    info.details.append(f"sidecar {sidecar.name}: {rows.rows} row(s), {_status_text(rows.statuses())}")


def _status_text(statuses: Counter[str]) -> str:
    failed = sum(statuses.values())
    if not failed:
        return "all status success"
    kinds = ", ".join(f"{status} {n}" for status, n in statuses.most_common())
    return f"{failed} with status != success ({kinds}), written as error rows"


def _describe_parquet(info: ShardInfo, keys: int, options: ReadOptions) -> None:
    path = info.shard.path
    reader = ParquetShardReader(path, options)
    parquet = pq.ParquetFile(path)
    info.samples = parquet.metadata.num_rows
    info.details.append(
        f"image column {reader.image_column!r}, id column {reader.id_column or '(row number)'!r}, "
        f"caption column {reader.caption_column or '(none)'!r}"
    )
    if reader.hf_image:
        paths = _path_only_text(parquet, reader.image_column, path)
        if paths:
            info.details.append(paths)
    if "status" in parquet.schema_arrow.names:
        statuses = parquet.read(columns=["status"]).column("status").to_pylist()
        failed = [status for status, bad in zip(statuses, failed_mask(statuses)) if bad]
        info.details.append(_status_text(Counter(str(s) for s in failed)))
    for sample in reader:
        if len(info.first_keys) >= keys:
            break
        info.first_keys.append(sample.image_id)


def _null_bytes(parquet: pq.ParquetFile, column: str) -> int | None:
    """Rows whose Image struct has no bytes, from the footer's statistics; None if they do not say."""
    metadata, nulls = parquet.metadata, 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        chunk = next((group.column(c) for c in range(group.num_columns)
                      if group.column(c).path_in_schema == f"{column}.bytes"), None)
        stats = chunk.statistics if chunk is not None else None
        if stats is None or not getattr(stats, "has_null_count", True):
            return None
        nulls += stats.null_count
    return nulls


def _path_only_text(parquet: pq.ParquetFile, column: str, path: Path) -> str:
    """Says when a Hugging Face Image column holds file paths instead of bytes, and how many of
    those files are missing ('' when every row has its bytes)."""
    if _null_bytes(parquet, column) == 0:
        return ""
    path_rows = missing = 0
    example = ""
    for batch in parquet.iter_batches(columns=[column]):
        for value in batch.column(0).to_pylist():
            if not value or value.get("bytes") is not None or not value.get("path"):
                continue
            path_rows += 1
            stored = value["path"]
            if "://" in stored or not resolve_image_file(stored, path.parent)[1]:
                missing += 1
                example = example or stored
    if not path_rows:
        return ""
    text = (f"image column {column!r} holds file paths, not bytes ({path_rows} of {parquet.metadata.num_rows} "
            "rows; read from the parquet's folder, else the working directory)")
    return text + (f", {missing} file(s) not found (e.g. {example})" if missing else "")


def describe_output(output_dir: Path, rows: int) -> str:
    """``curator show``'s text: files, rows, dimension, errors by kind, the first ``rows`` rows. Reads
    the footers, the ``error`` column and the first rows only, never the embeddings whole."""
    files = output_files(output_dir)
    if not files:
        raise ValueError(f"no parquet files in {output_dir}")
    total = failed = 0
    dims: set[int] = set()
    errors: Counter[str] = Counter()
    sample_rows: list[dict] = []
    for path in files:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        total += parquet.metadata.num_rows
        embedding_type = schema.field("embedding").type
        if hasattr(embedding_type, "list_size") and embedding_type.list_size > 0:
            dims.add(embedding_type.list_size)
        for error in parquet.read(columns=["error"]).column("error").to_pylist():
            if error:
                failed += 1
                errors[error_kind(error)] += 1
        if len(sample_rows) < rows and parquet.metadata.num_rows:
            columns = [c for c in ("image_id", "caption", "error") if c in schema.names]
            head = next(parquet.iter_batches(batch_size=rows - len(sample_rows), columns=columns + ["embedding"]))
            for record in head.to_pylist():
                emb = record.pop("embedding")
                record["embedding"] = None if emb is None or record.get("error") else "[" + ", ".join(f"{v:.3f}" for v in emb[:4]) + ", ...]"
                sample_rows.append(record)
    lines = [
        f"{output_dir}: {len(files)} file(s), {total} row(s)",
        f"embedding dimension: {', '.join(map(str, sorted(dims))) or 'unknown'}",
        f"rows not embedded (error set, zero vector): {failed}",
        "errors by kind: " + (", ".join(f"{k} ({n})" for k, n in errors.most_common()) or "none"),
    ]
    if (output_dir / SUCCESS_FILE).exists():
        lines.append("complete: _SUCCESS present")
    for record in sample_rows:
        lines.append("  " + "  ".join(f"{k}={v}" for k, v in record.items()))
    return "\n".join(lines)
