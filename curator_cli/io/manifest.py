"""Per-shard manifests: what produced an output file, so a rerun can tell done shards from stale ones.

The manifest of ``NAME.parquet`` is JSON in that file's own footer (key-value metadata
``curator.manifest``), written just before the file is closed and renamed into place: an output
and its manifest appear together or not at all, and the output directory holds nothing but
parquet files (and an empty ``_SUCCESS``), which is what polars' folder reads need (they skip no
name prefix, only empty files). Outputs of older versions have the manifest in a sidecar
``_NAME.manifest.json`` instead; it is still read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator_cli import __version__
from curator_cli.io.commit import write_atomic

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


def read_manifest(output: Path) -> Manifest | None:
    """The manifest of the output file ``output``: from its footer, else from a sidecar (older outputs).

    None when the file is missing, unreadable, or has no manifest: the shard is then not done.
    """
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(output).metadata or {}
    except (OSError, ValueError):  # missing, or not (yet) a whole parquet file: ArrowInvalid is a ValueError
        return None
    text = metadata.get(MANIFEST_KEY.encode())
    if text is not None:
        return Manifest.from_json(text)
    return Manifest.read(manifest_path(output))


def write_success(output_dir: Path) -> None:
    """An empty ``_SUCCESS``, as Hadoop and Spark write it: polars' folder reads skip only empty files
    (the run's summary goes to ``--summary-json``)."""
    write_atomic(output_dir / SUCCESS_FILE, "", sync_dir=True)
