"""Writing one parquet file per shard: the output schema and its column names, embeddings as
``fixed_size_list<float>[D]``, and what an ``error`` value says.

Each file is written under a hidden temporary name in the target directory and renamed into place
only when complete (``io.commit``), so a file under its final name is always whole; its manifest
is in its footer.

The ``embedding`` column is never null: a row without an embedding (its ``error`` says why) holds
a vector of zeros. A null in a fixed-size list column is what pyarrow up to 25 cannot read back
(``Expected all lists to be of size=D``), and what ``np.stack``, embedding-reader and autofaiss
fail on. Only when no image of the run was embedded, and no finished output of the same config
sits beside the file, is the dimension unknown: those files hold ``list<float>`` nulls.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curator_cli.io.commit import commit, is_hidden, temp_path
from curator_cli.io.lock import LOCK_FILE
from curator_cli.io.manifest import MANIFEST_KEY, Manifest, check_output, manifest_path

LEADING_COLUMNS = ("image_id", "shard", "image_path", "caption", "metadata")  # strings, before the passthrough
SCORE_COLUMNS = ("aesthetic_score", "nsfw_score")
# Every column curator writes itself; an input column of the same name passes through as input_<name>
# (input_<name>_2, ... if that is taken too: passthrough_names).
OUTPUT_COLUMNS = (*LEADING_COLUMNS, "embedding", *SCORE_COLUMNS, "error")
ROWS_PER_ROW_GROUP = 4096
NO_EMBEDDING = "no embedding"


@dataclass
class OutputRow:
    """One output row: every input sample becomes exactly one of these."""

    image_id: str
    shard: str
    image_path: str
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    passthrough: dict[str, Any] = field(default_factory=dict)
    metadata_text: str | None = None  # ``metadata`` as JSON text, when the reader had it and nothing changed it
    embedding: np.ndarray | None = None
    aesthetic_score: float | None = None
    nsfw_score: float | None = None
    error: str | None = None


@dataclass
class OutputLayout:
    """Run-wide choices every shard's file shares, fixed when the first embedding is seen."""

    embedding_dtype: str = "float32"  # or "float16"
    declared_scores: frozenset[str] = frozenset()  # score columns stages name in outputs()
    dim: int | None = None
    score_columns: tuple[str, ...] | None = None  # None until fixed

    def fix(self, rows: list[OutputRow]) -> None:
        """Fix the score columns: those a stage declared in ``outputs()`` or set on these rows."""
        if self.score_columns is None:
            seen = {c for c in SCORE_COLUMNS for r in rows if getattr(r, c) is not None}
            self.score_columns = tuple(c for c in SCORE_COLUMNS if c in seen | self.declared_scores)

    def embedding_type(self) -> pa.DataType:
        value = pa.float16() if self.embedding_dtype == "float16" else pa.float32()
        return pa.list_(value, self.dim) if self.dim else pa.list_(value)

    def schema(self, passthrough_fields: list[pa.Field]) -> pa.Schema:
        fields = [
            *(pa.field(c, pa.string()) for c in LEADING_COLUMNS),
            *passthrough_fields,
            pa.field("embedding", self.embedding_type()),
            *(pa.field(c, pa.float32()) for c in (self.score_columns or ())),
            pa.field("error", pa.string()),
        ]
        names = [f.name for f in fields]
        if len(set(names)) != len(names):  # pyarrow and pandas could not read the file back: fail the shard instead
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"output column names repeat: {', '.join(repeated)} (see passthrough_names)")
        return pa.schema(fields)


def passthrough_name(column: str) -> str:
    """The output name of an input column that passes through, on its own: its own name, unless
    curator writes one of that name (then ``input_NAME``). A whole schema's: :func:`passthrough_names`."""
    return f"input_{column}" if column in OUTPUT_COLUMNS else column


def passthrough_names(columns: list[str]) -> list[str]:
    """The output names of the input columns that pass through, in their order: all distinct, none
    a column curator writes, so every value is kept and every reader can read the file.

    A column keeps its name when it can (those come first); one that curator writes becomes
    ``input_NAME`` (:func:`passthrough_name`); a name that is then taken (by another input column,
    or a repeated input name) gets ``_2``, ``_3``, ... Input ``error`` and ``input_error`` are
    written as ``input_error_2`` and ``input_error``.
    """
    names: list[str | None] = [None] * len(columns)
    taken = set(OUTPUT_COLUMNS)
    for i, column in enumerate(columns):
        if column not in taken:
            names[i] = column
            taken.add(column)
    for i, column in enumerate(columns):
        if names[i] is None:
            base = passthrough_name(column)
            name, n = base, 2
            while name in taken:
                name, n = f"{base}_{n}", n + 1
            names[i] = name
            taken.add(name)
    return [name for name in names if name is not None]


def error_kind(error: str) -> str:
    """The kind of an ``error`` column value: its text before the first ``:`` or ``(``
    (``unreadable: ...`` -> ``unreadable``), as the summary and ``curator show`` count them."""
    return error.split(":")[0].split("(")[0].strip()


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def metadata_json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, ensure_ascii=False, default=_json_default, sort_keys=False)


def _embedding_array(rows: list[OutputRow], layout: OutputLayout) -> pa.Array:
    """Every row's vector, as one contiguous matrix handed to Arrow as it is; zeros where there is
    none (no nulls: see the module docstring).

    The stage runner has already failed the rows whose vector is not ``dim`` finite values after the
    cast (``execution.stage_runner``); a row that still is not (a caller that skipped it) is written
    as a failed row, zeros and an ``error``, never as ``inf`` or a failed shard."""
    value_type = np.float16 if layout.embedding_dtype == "float16" else np.float32
    if not layout.dim:
        return pa.array([None] * len(rows), type=layout.embedding_type())
    dim = layout.dim
    values = np.zeros((len(rows), dim), dtype=value_type)
    filled = []
    vectors = []
    want = (dim,)
    for i, r in enumerate(rows):
        vector = r.embedding
        if vector is None:
            continue
        # an array's own shape first: np.shape costs a microsecond per row
        if not (type(vector) is np.ndarray and vector.shape == want) and np.shape(vector) != want:
            r.embedding, r.error = None, r.error or f"embedding has shape {np.shape(vector)}, expected {dim}"
            continue
        filled.append(i)
        vectors.append(vector)
    if filled:
        with np.errstate(over="ignore", invalid="ignore"):
            values[filled] = np.stack(vectors)  # the cast to float16, where asked
        bad = ~np.isfinite(values[filled]).all(axis=1)
        for i in np.asarray(filled)[bad] if bad.any() else ():
            values[i] = 0
            r = rows[i]
            r.embedding, r.error = None, r.error or f"embedding out of {layout.embedding_dtype} range"
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)


UNIQUE_COLUMNS = ("image_id", "image_path", "metadata")  # a value per row: a dictionary would not pay


def column_options(schema: pa.Schema) -> dict[str, list[str]]:
    """Parquet encoding per column: no dictionary and no min/max statistics for the embedding
    (random floats: the dictionary attempt and the statistics were three quarters of the writer's
    CPU at 512 dimensions, and the file came out larger), no dictionary for one-value-per-row text."""
    flat = [f.name for f in schema if not pa.types.is_nested(f.type)]
    return {"use_dictionary": [n for n in flat if n not in UNIQUE_COLUMNS],
            "write_statistics": [n for n in flat if n != "metadata"]}


def warm_up() -> None:
    """pyarrow imports pandas (when it is installed) on its first array conversion, about 0.3 s of
    one CPU: called in the background while the stages load their model, not on the first write."""
    pa.array([0])


def _error(row: OutputRow) -> str | None:
    """A row without an embedding always says why, so its zero vector never passes for a real one."""
    if row.embedding is None and not row.error:
        return NO_EMBEDDING
    return row.error


def _output_root(directory: Path) -> Path | None:
    """The output folder ``directory`` lies in: the nearest folder holding the run's lock file."""
    for folder in (directory, *directory.parents):
        if (folder / LOCK_FILE).exists():
            return folder
    return None


def _finished_outputs(targets: list[Path]):
    """Final parquet files beside the targets first, then elsewhere under the output folder."""
    directories = list(dict.fromkeys(t.parent for t in targets))
    for directory in directories:
        if directory.is_dir():
            yield from (p for p in sorted(directory.glob("*.parquet")) if not is_hidden(p.name))
    for root in dict.fromkeys(r for d in directories if (r := _output_root(d)) is not None):
        for path in sorted(root.rglob("*.parquet")):
            if path.parent not in directories and not any(is_hidden(part) for part in path.relative_to(root).parts):
                yield path


def dimension_beside(targets: list[Path], config: dict, limit: int = 64) -> int | None:
    """The embedding dimension of a finished output of the same ``config`` in the output folder:
    in the targets' directories first, then in its other subfolders.

    For shards in which no image was embedded, when this process has not seen the dimension yet (a
    rerun that redoes only such shards, or a Ray actor that got only those): their zeros then have
    the same type as the rest of the folder. Looks at no more than ``limit`` files.
    """
    for seen, path in enumerate(_finished_outputs(targets)):
        if seen >= limit:
            return None
        checked = check_output(path)
        if checked is not None and checked.embedding_dim and checked.manifest.matches(config):
            return checked.embedding_dim
    return None


class ShardWriter:
    """Writes one shard's rows incrementally to a temporary file, renamed into place by :meth:`commit`."""

    def __init__(self, final_path: Path, passthrough_fields: list[pa.Field], layout: OutputLayout) -> None:
        self.final_path = final_path
        self.temp_path = temp_path(final_path)
        self.passthrough_fields = passthrough_fields
        self.layout = layout
        self.rows_written = 0
        self._pending: list[OutputRow] = []
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, rows: list[OutputRow]) -> None:
        """Queue rows; they reach the file in row groups once the embedding dimension is known."""
        self._pending.extend(rows)
        if self.layout.dim is not None and len(self._pending) >= ROWS_PER_ROW_GROUP:
            self._flush()

    @property
    def waiting_for_dimension(self) -> bool:
        return self.layout.dim is None

    def _flush(self) -> None:
        if not self._pending and self._writer is not None:
            return
        if self._writer is None:
            self.layout.fix(self._pending)
            self._schema = self.layout.schema(self.passthrough_fields)
            self.final_path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.temp_path, self._schema, compression="zstd",
                                            **column_options(self._schema))
        table = self._table(self._pending)
        if table.num_rows:
            self._writer.write_table(table, row_group_size=ROWS_PER_ROW_GROUP)
        self.rows_written += table.num_rows
        self._pending = []

    def _table(self, rows: list[OutputRow]) -> pa.Table:
        assert self._schema is not None
        columns: dict[str, pa.Array] = {  # put in the schema's order at the end
            c: pa.array([getattr(r, c) for r in rows], pa.string()) for c in LEADING_COLUMNS if c != "metadata"
        }
        columns["metadata"] = pa.array([r.metadata_text if r.metadata_text is not None else metadata_json(r.metadata)
                                        for r in rows], pa.string())
        for f in self.passthrough_fields:
            columns[f.name] = pa.array([r.passthrough.get(f.name) for r in rows], f.type)
        columns["embedding"] = _embedding_array(rows, self.layout)
        for c in self.layout.score_columns or ():
            columns[c] = pa.array([getattr(r, c) for r in rows], pa.float32())
        columns["error"] = pa.array([_error(r) for r in rows], pa.string())
        return pa.Table.from_arrays([columns[name] for name in self._schema.names], schema=self._schema)

    def commit(self, manifest: Manifest | None = None) -> int:
        """Write what is left, the manifest into the footer, close, and rename into place.

        Returns the number of rows written. Until the manifest is in place the output does not count as done.
        """
        self._flush()
        assert self._writer is not None
        if manifest is not None:
            self._writer.add_key_value_metadata({MANIFEST_KEY: manifest.to_json()})
        self._writer.close()
        commit(self.temp_path, self.final_path)
        manifest_path(self.final_path).unlink(missing_ok=True)  # an older version's, describing the file replaced
        return self.rows_written

    def abort(self) -> None:
        """Discard the partial file."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
        self.temp_path.unlink(missing_ok=True)


@dataclass
class WriteOutcome:
    """How one shard's output ended: written (rows) or failed (reason)."""

    rows: int = 0
    error: str | None = None


@dataclass(frozen=True)
class _Open:
    key: str
    target: Path
    passthrough_fields: list[pa.Field]


@dataclass(frozen=True)
class _Write:
    key: str
    rows: list[OutputRow]


@dataclass(frozen=True)
class _Commit:
    key: str
    manifest: Manifest


@dataclass(frozen=True)
class _Abort:
    key: str
    reason: str


@dataclass(frozen=True)
class _Close:
    discard: bool


class BackgroundWriter:
    """Runs :class:`ShardWriter` work in a thread, so the stages never wait for parquet encoding or disk.

    Commands for each shard are applied in order. A write error fails that shard, not the run.
    Shards finished before any embedding was seen wait, in memory, until the dimension is known.
    """

    def __init__(self, layout: OutputLayout, max_queued: int = 8) -> None:
        self.layout = layout
        self.busy_seconds = 0.0
        self.outcomes: dict[str, WriteOutcome] = {}
        self._writers: dict[str, ShardWriter] = {}
        self._waiting: list[tuple[str, ShardWriter, Manifest]] = []
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, name="curator-writer", daemon=True)
        self._thread.start()

    def open(self, key: str, target: Path, passthrough_fields: list[pa.Field]) -> None:
        self._queue.put(_Open(key, target, passthrough_fields))

    def write(self, key: str, rows: list[OutputRow]) -> None:
        self._queue.put(_Write(key, rows))

    def commit(self, key: str, manifest: Manifest) -> None:
        self._queue.put(_Commit(key, manifest))

    def abort(self, key: str, reason: str) -> None:
        self._queue.put(_Abort(key, reason))

    def close(self, discard: bool = False) -> dict[str, WriteOutcome]:
        """Finish every queued command (or, with ``discard``, drop unfinished shards) and stop the thread."""
        self._queue.put(_Close(discard))
        self._thread.join()
        return self.outcomes

    def _run(self) -> None:
        while True:
            command = self._queue.get()
            t0 = time.perf_counter()
            if isinstance(command, _Close):
                self._finish_all(discard=command.discard)
                self.busy_seconds += time.perf_counter() - t0
                return
            try:
                self._apply(command)
            except Exception as exc:
                self._write_failed(command.key, self._writers.pop(command.key, None), exc)
            self.busy_seconds += time.perf_counter() - t0

    def _write_failed(self, key: str, writer: ShardWriter | None, error: Exception) -> None:
        """A disk or encoding error fails this shard only; its partial file goes."""
        if writer is not None:
            writer.abort()
        self.outcomes[key] = WriteOutcome(error=f"writing output failed: {type(error).__name__}: {error}")

    def _apply(self, command: _Open | _Write | _Commit | _Abort) -> None:
        if isinstance(command, _Open):
            self._writers[command.key] = ShardWriter(command.target, command.passthrough_fields, self.layout)
            return
        writer = self._writers.get(command.key)
        if writer is None:
            return  # the shard already failed
        if isinstance(command, _Write):
            writer.write(command.rows)
        elif isinstance(command, _Abort):
            self._writers.pop(command.key).abort()
            self.outcomes[command.key] = WriteOutcome(error=command.reason)
        elif isinstance(command, _Commit):
            if writer.waiting_for_dimension:
                self._waiting.append((command.key, self._writers.pop(command.key), command.manifest))
            else:  # popped only once committed: a failing commit (disk full) reaches _run's abort
                self.outcomes[command.key] = WriteOutcome(rows=writer.commit(command.manifest))
                self._writers.pop(command.key)

    def _finish_all(self, discard: bool) -> None:
        for key, writer in list(self._writers.items()):
            writer.abort()
            self.outcomes.setdefault(key, WriteOutcome(error="interrupted"))
        self._writers.clear()
        if self._waiting and not discard and self.layout.dim is None:
            # no image of this run was embedded: take the dimension of finished outputs beside these
            self.layout.dim = dimension_beside([w.final_path for _, w, _ in self._waiting],
                                               self._waiting[0][2].config)
        for key, writer, manifest in self._waiting:
            if discard:
                writer.abort()
                continue
            try:
                self.outcomes[key] = WriteOutcome(rows=writer.commit(manifest))
            except Exception as exc:
                self._write_failed(key, writer, exc)
        self._waiting.clear()
