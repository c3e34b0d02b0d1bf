"""What a report reads from an output directory, bounded whatever its size: the footers (rows, row
groups, manifests, the embedding type), the ``error`` column of the row groups that hold errors (their
footer statistics say which), and a random sample of embedded rows taken from a bounded number of
row groups (:data:`MAX_GROUPS`), never the embeddings whole."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curator_cli.io.commit import output_files
from curator_cli.io.manifest import MANIFEST_KEY, SUCCESS_FILE, Manifest
from curator_cli.io.writer import error_kind
from curator_cli.report.thumbnails import ImageRef

MAX_GROUPS = 32  # row groups a sample is drawn from, at most (each about 4096 rows)
REF_COLUMNS = ("image_id", "shard", "image_path")


@dataclass
class OutputFile:
    """One output file, from its footer: rows per row group, rows without an error per row group
    (None where the statistics do not say), the manifest, the embedding's dimension and value type."""

    path: Path
    group_rows: list[int]
    group_embedded: list[int | None]
    manifest: Manifest | None
    dim: int | None
    value_type: str

    @property
    def rows(self) -> int:
        return sum(self.group_rows)


@dataclass
class OutputOverview:
    """The output directory as its footers describe it."""

    output_dir: Path
    files: list[OutputFile]
    complete: bool  # _SUCCESS is there

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def dims(self) -> list[int]:
        return sorted({f.dim for f in self.files if f.dim})

    def manifests(self) -> list[Manifest]:
        return [f.manifest for f in self.files if f.manifest is not None]


@dataclass
class ErrorExample:
    image_id: str
    shard: str
    error: str


@dataclass
class ErrorKind:
    """Rows whose ``error`` is of one kind (``io.writer.error_kind``), and the first few of them."""

    kind: str
    count: int = 0
    examples: list[ErrorExample] = field(default_factory=list)


@dataclass
class EmbeddingSample:
    """Embedded rows drawn at random: their vectors (N x D float32), where each came from, captions."""

    vectors: np.ndarray
    refs: list[ImageRef]
    captions: list[str | None]
    groups_read: int = 0


def read_overview(output_dir: Path) -> OutputOverview:
    """The footers of every finished file of ``output_dir``; raises ValueError when it holds none."""
    paths = output_files(output_dir)
    if not paths:
        raise ValueError(f"no parquet files in {output_dir}")
    files = []
    for path in paths:
        try:
            metadata = pq.read_metadata(path)
            schema = metadata.schema.to_arrow_schema()
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise ValueError(f"{path} is not a readable parquet file: {exc}") from None
        if "embedding" not in schema.names or "error" not in schema.names:
            raise ValueError(f"{path} is not an output of curator embed (no embedding or error column)")
        text = (metadata.metadata or {}).get(MANIFEST_KEY.encode())
        embedding = schema.field("embedding").type
        dim = embedding.list_size if pa.types.is_fixed_size_list(embedding) and embedding.list_size > 0 else None
        value_type = str(embedding.value_type) if hasattr(embedding, "value_type") else str(embedding)
        value_type = {"float": "float32", "halffloat": "float16", "double": "float64"}.get(value_type, value_type)
        error_index = schema.names.index("error")
        group_rows, group_embedded = [], []
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            group_rows.append(group.num_rows)
            stats = _column_chunk(group, "error", error_index).statistics
            known = stats is not None and getattr(stats, "has_null_count", True)
            group_embedded.append(stats.null_count if known else None)
        files.append(OutputFile(path, group_rows, group_embedded, Manifest.from_json(text) if text else None,
                                dim, value_type))
    return OutputOverview(output_dir, files, (output_dir / SUCCESS_FILE).exists())


def _column_chunk(group, name: str, index: int):
    """The row group's column chunk of top-level column ``name`` (its leaf index can differ from
    ``index`` when nested columns come first)."""
    for c in range(group.num_columns):
        if group.column(c).path_in_schema == name:
            return group.column(c)
    return group.column(index)


def read_errors(overview: OutputOverview, examples: int = 3) -> tuple[list[ErrorKind], int]:
    """(kinds by count, most first, each with up to ``examples`` rows; rows with an error in all).
    Reads the ``error`` column of the row groups whose statistics show errors (all of them where
    the statistics say nothing), and the id columns of a group only for a new example."""
    kinds: dict[str, ErrorKind] = {}
    failed = 0
    for file in overview.files:
        parquet = None
        for g, (rows, embedded) in enumerate(zip(file.group_rows, file.group_embedded)):
            if embedded is not None and embedded >= rows:
                continue  # no error in this group
            parquet = parquet or pq.ParquetFile(file.path)
            errors = parquet.read_row_group(g, columns=["error"]).column("error").to_pylist()
            need: list[int] = []
            for i, error in enumerate(errors):
                if not error:
                    continue
                failed += 1
                kind = kinds.setdefault(error_kind(error), ErrorKind(error_kind(error)))
                kind.count += 1
                if len(kind.examples) + sum(1 for j in need if error_kind(errors[j]) == kind.kind) < examples:
                    need.append(i)
            if need:
                ids = parquet.read_row_group(g, columns=["image_id", "shard"])
                for i in need:
                    kinds[error_kind(errors[i])].examples.append(ErrorExample(
                        str(ids.column("image_id")[i].as_py()), str(ids.column("shard")[i].as_py()), errors[i]))
    return sorted(kinds.values(), key=lambda k: (-k.count, k.kind)), failed


def sample_embeddings(overview: OutputOverview, size: int, seed: int = 0) -> EmbeddingSample:
    """Up to ``size`` embedded rows at random: row groups are drawn at random (weighted by their
    embedded rows; as many as hold ``size`` rows, at least one per 256 rows asked, at most
    :data:`MAX_GROUPS`, so fewer rows when those hold fewer), rows at random within each. Files of
    another dimension than the most common one, and files with no dimension (nothing embedded), are
    left out."""
    rng = np.random.default_rng(seed)
    dims = [f.dim for f in overview.files if f.dim]
    empty = EmbeddingSample(np.zeros((0, 0), np.float32), [], [])
    if not dims or size <= 0:
        return empty
    dim = max(set(dims), key=dims.count)
    groups = [(file, g, file.group_embedded[g] if file.group_embedded[g] is not None else rows)
              for file in overview.files if file.dim == dim
              for g, rows in enumerate(file.group_rows)]
    groups = [entry for entry in groups if entry[2] > 0]
    if not groups:
        return EmbeddingSample(np.zeros((0, dim), np.float32), [], [])
    weights = np.array([entry[2] for entry in groups], dtype=np.float64)
    order = rng.choice(len(groups), size=len(groups), replace=False, p=weights / weights.sum())
    # enough groups to hold the sample, at least one per 256 rows asked (spread), at most MAX_GROUPS
    held = np.cumsum(weights[order])
    count = max(int(np.searchsorted(held, size)) + 1, math.ceil(size / 256))
    chosen = sorted(order[:min(count, len(groups), MAX_GROUPS)].tolist())
    available = sum(groups[i][2] for i in chosen)
    vectors, refs, captions = [], [], []
    for i in chosen:
        file, g, embedded = groups[i]
        take = min(embedded, math.ceil(size * embedded / available))
        columns = [*REF_COLUMNS, "error", "embedding"]
        parquet = pq.ParquetFile(file.path)
        has_caption = "caption" in parquet.schema_arrow.names
        table = parquet.read_row_group(g, columns=columns + (["caption"] if has_caption else []))
        ok = np.flatnonzero(np.asarray(table.column("error").is_null().to_numpy(zero_copy_only=False)))
        if len(ok) > take:
            ok = np.sort(rng.choice(ok, size=take, replace=False))
        if not len(ok):
            continue
        picked = table.take(pa.array(ok))
        vectors.append(_vectors(picked.column("embedding"), dim))
        first_row = sum(file.group_rows[:g])
        config = file.manifest.config if file.manifest else {}
        ids, shards, paths = (picked.column(c).to_pylist() for c in REF_COLUMNS)
        refs += [ImageRef(str(image_id), str(shard), str(path), first_row + int(row), config.get("image_column"),
                          config.get("id_column"))
                 for image_id, shard, path, row in zip(ids, shards, paths, ok)]
        captions += picked.column("caption").to_pylist() if has_caption else [None] * len(ok)
    if not vectors:
        return EmbeddingSample(np.zeros((0, dim), np.float32), [], [])
    stacked = np.concatenate(vectors)
    if len(stacked) > size:  # rounding up per group can overshoot: trim at random
        keep = np.sort(rng.choice(len(stacked), size=size, replace=False))
        stacked, refs, captions = stacked[keep], [refs[k] for k in keep], [captions[k] for k in keep]
    return EmbeddingSample(stacked, refs, captions, len(chosen))


def image_refs(path: Path, rows: list[int], id_column: str = "image_id") -> list[ImageRef]:
    """Where the images of rows ``rows`` (positions in the parquet file ``path``, a curator output)
    came from, for :func:`~curator_cli.report.thumbnails.load_thumbnails`: reads the id, ``shard``
    and ``image_path`` columns of those rows' row groups and the footer's manifest (a parquet
    source's image and id columns), nothing else. A file without ``shard``/``image_path`` (embeddings
    not written by curator) gives refs whose thumbnails say the source is unknown."""
    parquet = pq.ParquetFile(path)
    metadata = parquet.metadata
    text = (metadata.metadata or {}).get(MANIFEST_KEY.encode())
    manifest = Manifest.from_json(text) if text else None
    config = manifest.config if manifest else {}
    names = parquet.schema_arrow.names
    columns = [c for c in dict.fromkeys((id_column, "shard", "image_path")) if c in names]
    starts = np.cumsum([0] + [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])
    found: dict[int, ImageRef] = {}
    wanted = sorted(set(rows))
    for g in sorted({int(np.searchsorted(starts, row, side="right")) - 1 for row in wanted}):
        table = parquet.read_row_group(g, columns=columns)
        for row in (r for r in wanted if starts[g] <= r < starts[g + 1]):
            value = {c: table.column(c)[row - int(starts[g])].as_py() for c in columns}
            text_of = {c: "" if value.get(c) is None else str(value[c]) for c in (id_column, "shard", "image_path")}
            found[row] = ImageRef(text_of[id_column] or str(row), text_of["shard"], text_of["image_path"], row,
                                  config.get("image_column"), config.get("id_column"))
    return [found[row] for row in rows]


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """A fixed-size-list column as an N x ``dim`` float32 array."""
    array = column.combine_chunks()
    values = array.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(-1, dim)
