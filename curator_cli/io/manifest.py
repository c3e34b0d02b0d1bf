"""Per-shard manifests: what produced an output file, so a rerun can tell done shards from stale ones.

The manifest of ``NAME.parquet`` is JSON in that file's own footer (key-value metadata
``curator.manifest``), written just before the file is closed and renamed into place: an output
and its manifest appear together or not at all, and the output directory holds nothing but
parquet files (and an empty ``_SUCCESS``), which is what polars' folder reads need (they skip no
name prefix, only empty files). Outputs of older versions have the manifest in a sidecar
``_NAME.manifest.json`` instead; it is still read.

A manifest is trusted only for a file that agrees with it (:func:`check_output`): the footer parses
and the rows it counts are those the manifest says. That reads the footer only, never the data
pages: reading every output whole at each rerun would cost as much I/O as the outputs' size, where
the footer costs one small read per file. A file damaged inside its data pages with its footer
intact (the disk's fault: curator commits whole files, fsynced) is not caught here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator_cli import __version__
from curator_cli.io.commit import write_atomic
from curator_cli.loading.identity import same_config

SUCCESS_FILE = "_SUCCESS"
MANIFEST_KEY = "curator.manifest"


def manifest_path(output: Path) -> Path:
    """The sidecar manifest of ``output``: where older versions kept it."""
    return output.parent / f"_{output.stem}.manifest.json"


def input_identity(shard_path: Path) -> dict[str, Any]:
    """Size and modification time of an input shard (a folder: its image files' total and latest)."""
    if shard_path.is_dir():
        stats = [p.stat() for p in shard_path.iterdir() if p.is_file()]
        return {"size": sum(s.st_size for s in stats), "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}
    st = shard_path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class Manifest:
    """What one output file holds and what made it."""

    input: str
    input_identity: dict[str, Any]
    config: dict[str, Any]
    rows: int
    failed_rows: int
    tool_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest | None:
        try:
            data = json.loads(text)
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        """The sidecar manifest at ``path``, or None when it is missing or unreadable (treated as not done)."""
        try:
            return cls.from_json(path.read_text())
        except OSError:
            return None

    def matches(self, config: dict[str, Any]) -> bool:
        """Whether the output was made by a run of ``config`` (an earlier version's built-in stage
        identities count as today's: ``loading.identity``)."""
        return same_config(self.config, config)


@dataclass
class CheckedOutput:
    """An output file that agrees with its manifest, and what its footer says of it."""

    manifest: Manifest
    embedding_dim: int | None  # None: a list<float> column (no image of its run was embedded)


def check_output(output: Path) -> CheckedOutput | None:
    """The output file ``output`` with its manifest (from its footer, else from an older version's
    sidecar), if the file agrees with it.

    None, and the shard is not done, when the file is missing or its footer does not parse (a
    truncated or partial file), when it has no readable manifest, when the rows its footer counts
    (in total and over its row groups) are not the manifest's (a file cut down or replaced since),
    or when it has no list-typed ``embedding`` column (not an output of curator). Reads the footer
    only: see the module docstring.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(output)
        schema = metadata.schema.to_arrow_schema()
    except (OSError, ValueError, pa.ArrowException):  # ArrowInvalid is a ValueError too
        return None
    text = (metadata.metadata or {}).get(MANIFEST_KEY.encode())
    manifest = Manifest.from_json(text) if text is not None else Manifest.read(manifest_path(output))
    if manifest is None:
        return None
    rows = metadata.num_rows
    if rows != manifest.rows or rows != sum(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)):
        return None
    index = schema.get_field_index("embedding")
    embedding = schema.field(index).type if index >= 0 else None
    if embedding is None or not (pa.types.is_list(embedding) or pa.types.is_fixed_size_list(embedding)):
        return None
    dim = embedding.list_size if pa.types.is_fixed_size_list(embedding) and embedding.list_size > 0 else None
    return CheckedOutput(manifest, dim)


def write_success(output_dir: Path) -> None:
    """An empty ``_SUCCESS``, as Hadoop and Spark write it: polars' folder reads skip only empty files
    (the run's summary goes to ``--summary-json``)."""
    write_atomic(output_dir / SUCCESS_FILE, "", sync_dir=True)
