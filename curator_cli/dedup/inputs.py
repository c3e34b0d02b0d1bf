"""Step 1, read: which parquet files are the inputs, what their footers promise, and their vectors.

Inputs are ``curator embed`` outputs or any parquet with an id column and an embedding column
(a fixed-size or plain list of floats). Every row gets a global index: files in the order found
(arguments in the order given, a directory's files sorted by path), rows in file order. That index
is what every later step works on, and what ``--keep first`` means by "first"; ids and shards are
read back only for the rows that end up in the outputs.

Rows whose ``error`` is set (curator's failed images, which hold a zero vector) or whose embedding
is null are skipped and counted as failed; a zero or non-finite vector without an error is skipped
and counted as invalid (cosine similarity is undefined for it).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curator_cli.dedup.settings import DedupError, KeepRule
from curator_cli.io.manifest import MANIFEST_KEY

ERROR_COLUMN = "error"
SHARD_COLUMN = "shard"
METADATA_COLUMN = "metadata"
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputFile:
    """One input parquet file, as its footer describes it."""

    path: Path
    rows: int
    start: int  # global index of its first row
    dim: int | None  # None: a plain list column whose rows hold no vector at all
    value_type: str  # numpy name of the embedding's values: float16, float32 or float64
    columns: tuple[str, ...]
    size: int
    mtime_ns: int
    stages: tuple[str, ...] | None  # built-in stage names from curator's manifest; None: not curator's output

    def has(self, column: str) -> bool:
        return column in self.columns

    def identity(self) -> dict:
        """What a rerun compares to tell whether this input changed."""
        return {"path": str(self.path.resolve()), "rows": self.rows, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class InputSet:
    """The input files of a run, with what they share: the dimension and the type vectors are kept in."""

    files: tuple[InputFile, ...]
    rows: int
    dim: int | None  # None: no row of any input holds a vector
    spill_dtype: str  # float16 when every input is float16, else float32
    id_type: pa.DataType  # the id column's type where all files agree, else string
    id_column: str
    embedding_column: str

    def made_by_perceptual(self) -> bool:
        """Whether every input is an output of ``curator embed`` whose embedding came from the
        built-in ``perceptual`` stage (the only stage with a measured default threshold)."""
        return all(f.stages is not None and "perceptual" in f.stages
                   and set(f.stages) <= {"perceptual", "linear-head"} for f in self.files)


@dataclass
class VectorChunk:
    """Consecutive rows of one input file: vectors in the input's type, and which rows count."""

    start: int  # global index of the first row
    vectors: np.ndarray  # rows x dim; rows that do not count hold anything (zeros, NaN): use ``ok``
    inv_norm: np.ndarray  # float32 1/|v|, 0 where the row does not count
    ok: np.ndarray  # bool: the row is compared
    failed: int  # rows with an error or no embedding
    invalid: int  # zero or non-finite vectors without an error


def find_inputs(arguments: list[str], output: Path) -> list[Path]:
    """EMBEDDINGS arguments -> parquet files: a file as named, a directory's ``*.parquet`` files
    (recursively, sorted; hidden and ``_`` names skipped), a glob's matches. Anything under the
    output directory is never an input (it holds this command's own files)."""
    out = output.resolve()
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if _GLOB_CHARS & set(argument):
            matches = [Path(p) for p in sorted(glob.glob(argument, recursive=True)) if Path(p).is_file()]
            matches = [p for p in matches if p.suffix == ".parquet" and not _inside(p, out)]
            if not matches:
                raise DedupError(f"no parquet files match {argument}")
            found += matches
        elif path.is_dir():
            matches = [p for p in sorted(path.rglob("*.parquet"))
                       if p.is_file() and not _hidden(p.relative_to(path)) and not _inside(p, out)]
            if not matches:
                raise DedupError(f"no parquet files found in {argument}")
            found += matches
        elif path.is_file():
            if _inside(path, out):
                raise DedupError(f"{argument} is inside the output directory {output}; name the embeddings, not dedup's output")
            found.append(path)
        else:
            raise DedupError(f"{argument}: no such file or directory")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _inside(path: Path, directory: Path) -> bool:
    resolved = path.resolve()
    return resolved == directory or directory in resolved.parents


def _hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def _vector_type(field: pa.Field, path: Path) -> tuple[int | None, str]:
    """(dimension or None, numpy value type) of an embedding column, or a :class:`DedupError`."""
    kind = field.type
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        value = kind.value_type
        if pa.types.is_floating(value):
            dim = kind.list_size if pa.types.is_fixed_size_list(kind) else None
            return dim, value.to_pandas_dtype().__name__
    raise DedupError(f"{path}: column {field.name!r} is {kind}, not a list of floats (an embedding)")


def _stages_of(metadata: pq.FileMetaData) -> tuple[str, ...] | None:
    text = (metadata.metadata or {}).get(MANIFEST_KEY.encode())
    if text is None:
        return None
    try:
        stages = json.loads(text)["config"]["stages"]
        return tuple(str(stage.get("builtin") or stage.get("class") or "?") for stage in stages)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _first_length(path: Path, column: str) -> int | None:
    """The length of the first non-empty list in a plain list column (its dimension), or None."""
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=4096, columns=[column]):
        lengths = batch.column(0).value_lengths().to_numpy(zero_copy_only=False)
        lengths = lengths[~np.isnan(lengths)] if lengths.dtype.kind == "f" else lengths
        nonzero = lengths[lengths > 0]
        if len(nonzero):
            return int(nonzero[0])
    return None


def open_inputs(paths: list[Path], id_column: str, embedding_column: str, keep: KeepRule) -> InputSet:
    """Read every input's footer and check it: the id and embedding columns exist, the embedding is a
    list of floats, the dimension is the same everywhere, and ``--keep highest:COLUMN``'s column is
    numeric in every file. Any failure is one :class:`DedupError` naming the file."""
    files: list[InputFile] = []
    start = 0
    id_types: set[pa.DataType] = set()
    for path in paths:
        try:
            metadata = pq.read_metadata(path)
            schema = metadata.schema.to_arrow_schema()
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DedupError(f"cannot read {path} as parquet: {exc}") from None
        names = tuple(schema.names)
        for column, option in ((id_column, "--id-column"), (embedding_column, "--embedding-column")):
            if column not in names:
                raise DedupError(f"{path} has no column {column!r} (it has {', '.join(names)}); name it with {option}")
        dim, value_type = _vector_type(schema.field(embedding_column), path)
        if dim is None:
            dim = _first_length(path, embedding_column)
        if keep.kind == "highest":
            if keep.column not in names:
                raise DedupError(f"--keep {keep}: {path} has no column {keep.column!r}")
            kind = schema.field(keep.column).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                raise DedupError(f"--keep {keep}: column {keep.column!r} of {path} is {kind}, not a number")
        id_types.add(schema.field(id_column).type)
        stat = path.stat()
        files.append(InputFile(path=path, rows=metadata.num_rows, start=start, dim=dim, value_type=value_type,
                               columns=names, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                               stages=_stages_of(metadata)))
        start += metadata.num_rows
    dims = {f.dim for f in files if f.dim is not None}
    if len(dims) > 1:
        first = {}
        for f in files:
            if f.dim is not None:
                first.setdefault(f.dim, f.path)
        shown = ", ".join(f"{p} has {d}" for d, p in list(first.items())[:3])
        raise DedupError(f"mixed embedding dimensions: {shown}; dedup compares vectors of one embedding at a time")
    id_type = id_types.pop() if len(id_types) == 1 else pa.string()
    all_half = all(f.value_type == "float16" for f in files)
    return InputSet(files=tuple(files), rows=start, dim=dims.pop() if dims else None,
                    spill_dtype="float16" if all_half else "float32", id_type=id_type,
                    id_column=id_column, embedding_column=embedding_column)


def _vectors_of(column: pa.Array, dim: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(rows x dim values, present mask) of one batch of an embedding column; a row of another
    length is a :class:`DedupError` (mixed dimensions)."""
    present = ~column.is_null().to_numpy(zero_copy_only=False)
    rows = len(column)
    if pa.types.is_fixed_size_list(column.type):
        values = column.values.slice(column.offset * dim, rows * dim)
        return values.to_numpy(zero_copy_only=False).reshape(rows, dim), present
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    present &= lengths > 0
    wrong = present & (lengths != dim)
    if wrong.any():
        raise DedupError(f"mixed embedding dimensions: a row of {path} has {int(lengths[wrong][0])} values, "
                         f"others have {dim}")
    out = np.zeros((rows, dim), dtype=column.type.value_type.to_pandas_dtype())
    if present.any():
        flat = column.filter(pa.array(present)).flatten().to_numpy(zero_copy_only=False)
        out[present] = flat.reshape(-1, dim)
    return out, present


def read_vectors(inputs: InputSet, batch_rows: int) -> Iterator[VectorChunk]:
    """Every row of every input, ``batch_rows`` at a time, as :class:`VectorChunk` records."""
    dim = inputs.dim
    for file in inputs.files:
        columns = [inputs.embedding_column] + ([ERROR_COLUMN] if file.has(ERROR_COLUMN) else [])
        start = file.start
        for batch in pq.ParquetFile(file.path, pre_buffer=False).iter_batches(batch_size=batch_rows, columns=columns):
            rows = batch.num_rows
            if dim is None:  # no input holds a vector: every row failed
                yield VectorChunk(start, np.zeros((rows, 0), np.float32), np.zeros(rows, np.float32),
                                  np.zeros(rows, bool), rows, 0)
                start += rows
                continue
            vectors, present = _vectors_of(batch.column(0), dim, file.path)
            if file.has(ERROR_COLUMN):
                present &= batch.column(1).is_null().to_numpy(zero_copy_only=False)
            wide = vectors.astype(np.float32, copy=False)
            with np.errstate(invalid="ignore", over="ignore"):
                norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
            ok = present & np.isfinite(norms) & (norms > 0)
            inv = np.zeros(rows, np.float32)
            inv[ok] = 1.0 / norms[ok]
            yield VectorChunk(start, vectors, inv, ok, int(rows - present.sum()), int(present.sum() - ok.sum()))
            start += rows


def read_columns(inputs: InputSet, file: InputFile, columns: list[str], batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(global index of the first row, batch) of ``columns`` of one input, in row order."""
    start = file.start
    for batch in pq.ParquetFile(file.path, pre_buffer=False).iter_batches(batch_size=batch_rows, columns=columns):
        yield start, batch
        start += batch.num_rows
