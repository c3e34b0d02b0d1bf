"""Resume trusts only what it verified (issue 12).

1. An output counts as done only when the file agrees with its manifest: its footer parses and
   counts the rows the manifest says (a sidecar manifest of an older version included); anything
   else is redone, with exit 0 and a folder ``curator show`` reads.
2. A manifest records the stage's whole identity: a stage file's content hash, a module's source,
   a non-dataclass stage's ``--stage-arg`` values, the class's name; a built-in is its registered
   name plus ``identity_version``. A changed identity is refused (exit 2) as a changed argument is.
3. After any of these runs the whole output folder reads as one table (pyarrow.dataset, polars):
   one embedding type, even where a shard had no image embedded.

Every test runs the real CLI on real files, with tiny images and ``--num-workers 0``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from conftest import img2dataset_tar, stage_spec, write_tar

MANIFEST_KEY = b"curator.manifest"


def make_shards(root: Path, names=("00000", "00001", "00002"), per_shard: int = 3) -> Path:
    for i, name in enumerate(names):
        img2dataset_tar(root / f"{name}.tar", per_shard, first_seed=10 * i, size=(40, 30))
    return root


def embed(cli, inputs: Path, out: Path, *extra, summary: Path | None = None):
    args = ["embed", inputs, "-o", out, "--num-workers", "0", *extra]
    if summary is not None:
        args += ["--summary-json", summary]
    return cli(*args)


def counts(summary: Path) -> tuple[int, int]:
    data = json.loads(summary.read_text())
    return data["shards_skipped"], data["shards_written"]


def footer_manifest(path: Path) -> dict:
    return json.loads(pq.read_metadata(path).metadata[MANIFEST_KEY])


def rewrite(path: Path, table: pa.Table, manifest: dict | None) -> None:
    """Write ``table`` to ``path`` with ``manifest`` in its footer (None: no manifest)."""
    metadata = {MANIFEST_KEY: json.dumps(manifest).encode()} if manifest is not None else None
    pq.write_table(table.replace_schema_metadata(metadata), path)


def to_sidecars(out: Path) -> None:
    """Make ``out`` look as an older version left it: each manifest beside its file, not in its footer."""
    for path in sorted(out.rglob("*.parquet")):
        (path.parent / f"_{path.stem}.manifest.json").write_bytes(pq.read_metadata(path).metadata[MANIFEST_KEY])
        rewrite(path, pq.read_table(path), None)


def assert_whole(cli, out: Path, rows: int) -> None:
    """The folder is complete and readable: ``_SUCCESS``, ``curator show``, every file whole."""
    assert (out / "_SUCCESS").exists()
    shown = cli("show", out)
    assert shown.exit_code == 0, shown.output
    assert f"{rows} row(s)" in shown.output
    assert sum(pq.read_table(p).num_rows for p in out.rglob("*.parquet")) == rows


# --------------------------------------------------------------------------- 1. done means verified


def test_an_output_cut_down_under_its_own_manifest_is_redone(cli, tmp_path):
    """A tool that keeps the footer's key-value metadata (as pyarrow does with a table's schema
    metadata) wrote back fewer rows: the manifest is intact, the rows are not."""
    inputs, out, summary = make_shards(tmp_path / "in"), tmp_path / "out", tmp_path / "s.json"
    args = ("--stage", stage_spec("Shapes"))
    assert embed(cli, inputs, out, *args).exit_code == 0
    path = out / "00001.parquet"
    rewrite(path, pq.read_table(path).slice(0, 1), footer_manifest(path))
    assert footer_manifest(path)["rows"] == 3 and pq.read_metadata(path).num_rows == 1

    result = embed(cli, inputs, out, *args, summary=summary)
    assert result.exit_code == 0, result.output
    assert counts(summary) == (2, 1)
    assert pq.read_metadata(path).num_rows == 3
    assert_whole(cli, out, 9)


@pytest.mark.parametrize("damage", ["fewer rows", "not curator's", "truncated"])
def test_an_older_versions_output_that_disagrees_with_its_sidecar_is_redone(cli, tmp_path, damage):
    """Outputs with ``_NAME.manifest.json`` sidecars (older versions): the file must still parse and
    hold the rows its sidecar says, and be an output (an ``embedding`` column)."""
    inputs, out, summary = make_shards(tmp_path / "in"), tmp_path / "out", tmp_path / "s.json"
    args = ("--stage", stage_spec("Shapes"))
    assert embed(cli, inputs, out, *args).exit_code == 0
    to_sidecars(out)
    path = out / "00001.parquet"
    if damage == "fewer rows":
        rewrite(path, pq.read_table(path).slice(0, 2), None)
    elif damage == "not curator's":  # same rows, another table
        rewrite(path, pa.table({"image_id": ["a", "b", "c"], "score": [1.0, 2.0, 3.0]}), None)
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    result = embed(cli, inputs, out, *args, summary=summary)
    assert result.exit_code == 0, result.output
    assert counts(summary) == (2, 1)  # the two whole ones still count, by their sidecars
    assert MANIFEST_KEY in pq.read_metadata(path).metadata and not (out / "_00001.manifest.json").exists()
    assert_whole(cli, out, 9)


# --------------------------------------------------------------------------- 2. the stage's whole identity


CONSTANT_STAGE = """
from dataclasses import dataclass
from curator_cli.stages.base import ProcessingStage

@dataclass
class Constant(ProcessingStage):
    def process(self, task):
        for obj in task.data:
            obj.embedding = [{value}, 0.0]
        return task
"""

SCALED_STAGE = """
from curator_cli.stages.base import ProcessingStage

class Scaled(ProcessingStage):
    '''Not a dataclass: its arguments are those of __init__.'''
    def __init__(self, factor: int = 1, label: str = "x"):
        self.factor = factor
        self.label = label

    def process(self, task):
        for obj in task.data:
            obj.embedding = [float(self.factor), 1.0]
        return task
"""


def write_stage(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def assert_refused(result, shards: int = 3) -> None:
    assert result.exit_code == 2, result.output
    assert f"{shards} shard(s)" in result.output and "--overwrite" in result.output and "00000.tar" in result.output


def first_values(out: Path) -> list:
    return pq.read_table(out / "00000.parquet").column("embedding").to_pylist()[0]


def test_an_edited_stage_file_is_refused(cli, tmp_path):
    inputs, out = make_shards(tmp_path / "in"), tmp_path / "out"
    stage = write_stage(tmp_path / "stage.py", CONSTANT_STAGE.format(value=1.0))
    spec = f"{stage}:Constant"
    assert embed(cli, inputs, out, "--stage", spec).exit_code == 0
    assert embed(cli, inputs, out, "--stage", spec).exit_code == 0  # unchanged: done

    write_stage(stage, CONSTANT_STAGE.format(value=2.0))
    assert_refused(embed(cli, inputs, out, "--stage", spec))
    assert first_values(out) == [1.0, 0.0]
    assert embed(cli, inputs, out, "--stage", spec, "--overwrite").exit_code == 0
    assert first_values(out) == [2.0, 0.0]  # the edited file is what ran
    identity = footer_manifest(out / "00000.parquet")["config"]["stages"][0]
    assert (identity["class"], identity["file_sha256"]) == ("Constant", hashlib.sha256(stage.read_bytes()).hexdigest())


def test_the_same_class_name_in_another_file_is_refused(cli, tmp_path):
    inputs, out = make_shards(tmp_path / "in"), tmp_path / "out"
    one = write_stage(tmp_path / "one" / "stage.py", CONSTANT_STAGE.format(value=1.0))
    two = write_stage(tmp_path / "two" / "stage.py", CONSTANT_STAGE.format(value=3.0))
    assert embed(cli, inputs, out, "--stage", f"{one}:Constant").exit_code == 0
    assert_refused(embed(cli, inputs, out, "--stage", f"{two}:Constant"))
    assert first_values(out) == [1.0, 0.0]
    moved = write_stage(tmp_path / "moved" / "renamed.py", one.read_text())  # the same code elsewhere: the same stage
    assert embed(cli, inputs, out, "--stage", f"{moved}:Constant").exit_code == 0


def test_a_changed_argument_of_a_stage_that_is_not_a_dataclass_is_refused(cli, tmp_path):
    inputs, out, summary = make_shards(tmp_path / "in"), tmp_path / "out", tmp_path / "s.json"
    spec = f"{write_stage(tmp_path / 'scaled.py', SCALED_STAGE)}:Scaled"
    assert embed(cli, inputs, out, "--stage", spec, "--stage-arg", "factor=1").exit_code == 0
    assert_refused(embed(cli, inputs, out, "--stage", spec, "--stage-arg", "factor=2"))
    assert footer_manifest(out / "00000.parquet")["config"]["stages"][0]["args"] == {"factor": 1, "label": "x"}
    assert_refused(embed(cli, inputs, out, "--stage", spec, "--stage-arg", "label=y"))
    # the default, given or not, is the same argument
    assert embed(cli, inputs, out, "--stage", spec, summary=summary).exit_code == 0
    assert counts(summary) == (3, 0)
    assert embed(cli, inputs, out, "--stage", spec, "--stage-arg", "factor=2", "--overwrite").exit_code == 0
    assert first_values(out) == [2.0, 1.0]


def test_a_changed_dataclass_argument_is_refused_as_before(cli, tmp_path):
    inputs, out = make_shards(tmp_path / "in"), tmp_path / "out"
    assert embed(cli, inputs, out, "--stage", stage_spec("Shapes")).exit_code == 0
    assert_refused(embed(cli, inputs, out, "--stage", stage_spec("Shapes"), "--stage-arg", "delay=0.001"))


def test_an_edited_stage_module_is_refused(cli, tmp_path, monkeypatch):
    """``package.module:Class``: the module's source (and its distribution, when installed) count."""
    inputs, out = make_shards(tmp_path / "in"), tmp_path / "out"
    name = f"resume_stage_{os.getpid()}"
    module = write_stage(tmp_path / "pkg" / f"{name}.py", CONSTANT_STAGE.format(value=1.0))
    monkeypatch.syspath_prepend(str(module.parent))
    spec = f"{name}:Constant"
    assert embed(cli, inputs, out, "--stage", spec).exit_code == 0
    assert embed(cli, inputs, out, "--stage", spec).exit_code == 0  # unchanged: done

    write_stage(module, CONSTANT_STAGE.format(value=2.0))
    monkeypatch.delitem(sys.modules, name)  # a new process imports the edited module
    assert_refused(embed(cli, inputs, out, "--stage", spec))
    identity = footer_manifest(out / "00000.parquet")["config"]["stages"][0]
    assert (identity["module"], identity["class"], identity["distribution"]) == (name, "Constant", None)


def as_earlier_version(path: Path, stage_class: str) -> None:
    """Give ``path`` the manifest an earlier curator wrote: the stage as ``module:Class`` and arguments."""
    manifest = footer_manifest(path)
    manifest["config"]["stages"] = [{"class": stage_class, "args": s["args"]} for s in manifest["config"]["stages"]]
    rewrite(path, pq.read_table(path), manifest)


def test_a_built_in_is_its_name_and_identity_version(cli, tmp_path, monkeypatch):
    """Where the class lives does not count (built-ins moved to ``stages/builtin/``); its registered
    name and ``identity_version`` do: a maintainer bumps it when the stage's outputs change."""
    from curator_cli.stages.builtin.perceptual import PerceptualEmbeddingStage

    inputs, out, summary = make_shards(tmp_path / "in"), tmp_path / "out", tmp_path / "s.json"
    assert embed(cli, inputs, out).exit_code == 0  # the default stage: perceptual
    # named by module, the same stage
    assert embed(cli, inputs, out, "--stage", "curator_cli.stages.builtin.perceptual:PerceptualEmbeddingStage",
                 summary=summary).exit_code == 0
    assert counts(summary) == (3, 0)

    # outputs of curator before the move (issue 10) and after it (issue 11) resume without --overwrite
    as_earlier_version(out / "00000.parquet", "curator_cli.stages.perceptual:PerceptualEmbeddingStage")
    as_earlier_version(out / "00001.parquet", "curator_cli.stages.builtin.perceptual:PerceptualEmbeddingStage")
    result = embed(cli, inputs, out, summary=summary)
    assert result.exit_code == 0, result.output
    assert counts(summary) == (3, 0)

    monkeypatch.setattr(PerceptualEmbeddingStage, "identity_version", 2, raising=False)
    assert_refused(embed(cli, inputs, out))
    identity = footer_manifest(out / "00002.parquet")["config"]["stages"][0]
    assert (identity["builtin"], identity["identity_version"]) == ("perceptual", 1)
    assert identity["args"]["colour_weight"] == 0.35
    assert set(identity) == {"builtin", "identity_version", "args"}  # no module path, no curator version


def test_an_earlier_versions_file_stage_output_cannot_be_checked_and_is_refused(cli, tmp_path):
    inputs, out = make_shards(tmp_path / "in", ("00000",)), tmp_path / "out"
    assert embed(cli, inputs, out, "--stage", stage_spec("Shapes")).exit_code == 0
    as_earlier_version(out / "00000.parquet", "file:Shapes")
    result = embed(cli, inputs, out, "--stage", stage_spec("Shapes"))
    assert_refused(result, shards=1)
    assert "do not record the stage's source" in result.output


# --------------------------------------------------------------------------- 3. one embedding type per folder


def undecodable_shard(path: Path) -> Path:
    return write_tar(path, [("000.jpg", b"not an image"), ("001.jpg", b"nor this")])


def read_folder(out: Path) -> int:
    """Every file's embedding type is the same, and the folder reads whole with pyarrow.dataset and polars."""
    polars = pytest.importorskip("polars")
    files = sorted(p for p in out.rglob("*.parquet") if not p.name.startswith((".", "_")))
    types = {p.relative_to(out).as_posix(): str(pq.read_schema(p).field("embedding").type) for p in files}
    assert len(set(types.values())) == 1, types
    assert "fixed_size_list" in next(iter(types.values())), types
    rows = ds.dataset(out, format="parquet").to_table().num_rows
    assert polars.read_parquet(out).height == rows
    assert polars.scan_parquet(out / "**" / "*.parquet").collect().height == rows
    return rows


def test_a_shard_without_embeddings_finished_first_waits_for_the_dimension(cli, tmp_path):
    """A fresh run whose first shard (another subfolder) has no image that decodes."""
    undecodable_shard(tmp_path / "in" / "a" / "00000.tar")
    make_shards(tmp_path / "in" / "b", ("00001", "00002"))
    out = tmp_path / "out"
    assert embed(cli, tmp_path / "in", out, "--stage", stage_spec("Shapes")).exit_code == 0
    assert read_folder(out) == 8


def test_a_shard_without_embeddings_redone_alone_in_another_subfolder_takes_the_folders_dimension(cli, tmp_path):
    undecodable_shard(tmp_path / "in" / "a" / "00000.tar")
    make_shards(tmp_path / "in" / "b", ("00001", "00002"))
    out = tmp_path / "out"
    assert embed(cli, tmp_path / "in", out, "--stage", stage_spec("Shapes")).exit_code == 0
    (out / "a" / "00000.parquet").unlink()  # lost, or never finished: only it is redone
    summary = tmp_path / "s.json"
    assert embed(cli, tmp_path / "in", out, "--stage", stage_spec("Shapes"), summary=summary).exit_code == 0
    assert counts(summary) == (2, 1)
    assert read_folder(out) == 8


def test_a_shard_without_embeddings_from_an_earlier_run_is_redone_once_the_dimension_is_known(cli, tmp_path):
    """Night 1 saw only a shard in which nothing decodes (its dimension unknown: ``list<float>``);
    night 2 adds a good one: the first is redone with the dimension, not left beside it."""
    inputs, out, summary = tmp_path / "in", tmp_path / "out", tmp_path / "s.json"
    undecodable_shard(inputs / "00000.tar")
    assert embed(cli, inputs, out, "--stage", stage_spec("Shapes"), summary=summary).exit_code == 0
    assert pa.types.is_list(pq.read_schema(out / "00000.parquet").field("embedding").type)
    assert embed(cli, inputs, out, "--stage", stage_spec("Shapes"), summary=summary).exit_code == 0
    assert counts(summary) == (1, 0)  # alone, it is done: nothing would tell its dimension

    img2dataset_tar(inputs / "00001.tar", 3, size=(40, 30))
    assert embed(cli, inputs, out, "--stage", stage_spec("Shapes"), summary=summary).exit_code == 0
    assert counts(summary) == (0, 2)
    assert read_folder(out) == 5
    assert embed(cli, inputs, out, "--stage", stage_spec("Shapes"), summary=summary).exit_code == 0
    assert counts(summary) == (2, 0)
