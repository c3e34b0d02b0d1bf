"""``--stage`` / ``--stage-arg``: every way to name a stage, coercion, and a one-line exit-2 error per mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from curator_cli.loading.specs import StageSpecError, coerce_value, load_stages

from conftest import ROOT, img2dataset_tar, read_output

SEED = ROOT / "tests" / "seed_example.py"

TYPED = textwrap.dedent('''
    from dataclasses import dataclass, field
    from curator_cli.stages.base import ProcessingStage
    from curator_cli.tasks import ImageBatch

    @dataclass
    class Typed(ProcessingStage[ImageBatch, ImageBatch]):
        count: int = 1
        scale: float = 1.0
        flag: bool = False
        label: str = "x"
        sizes: list[int] = field(default_factory=list)
        maybe: int | None = None

        def process(self, task):
            for obj in task.data:
                obj.embedding = [float(self.count), self.scale, float(self.flag), float(sum(self.sizes))]
            return task

    class NotAStage:
        pass
''')


@pytest.fixture
def plugin(tmp_path) -> Path:
    path = tmp_path / "typed_plugin.py"
    path.write_text(TYPED)
    return path


def test_file_spec_and_coercion(plugin):
    [stage] = load_stages([f"{plugin}:Typed"], ["count=3", "scale=0.5", "flag=true", "label=hi",
                                                 "sizes=[1, 2]", "maybe=none"])
    assert (stage.count, stage.scale, stage.flag, stage.label, stage.sizes, stage.maybe) == (3, 0.5, True, "hi", [1, 2], None)


def test_module_spec_and_registered_name():
    [a] = load_stages(["curator_cli.stages.builtin.perceptual:PerceptualEmbeddingStage"], [])
    [b] = load_stages(["perceptual"], ["colour_weight=0.5"])
    assert type(a) is type(b) and b.colour_weight == 0.5


def test_qualified_args_with_several_stages(plugin):
    spec = f"{plugin}:Typed"
    first, second = load_stages([spec, "perceptual"], ["0.count=2", "PerceptualEmbeddingStage.colour_weight=0.1"])
    assert first.count == 2 and second.colour_weight == 0.1
    with pytest.raises(StageSpecError, match="ambiguous"):
        load_stages([spec, "perceptual"], ["count=2"])
    with pytest.raises(StageSpecError, match="more than once"):
        load_stages([spec, spec], ["Typed.count=2"])


@pytest.mark.parametrize("raw,tp,expected", [
    ("7", int, 7), ("2.5", float, 2.5), ("no", bool, False), ("[1,2]", list[int], [1, 2]),
    ("a,b", list[str], ["a", "b"]), ('{"k": 1}', dict, {"k": 1}), ("null", float | None, None),
])
def test_coerce(raw, tp, expected):
    assert coerce_value(raw, tp) == expected


def _error_cases(plugin: Path, tmp_path: Path) -> list[tuple[list[str], str]]:
    return [
        (["--stage", "no_such_module_xyz:Stage"], "stage module 'no_such_module_xyz' not found (looked in"),
        (["--stage", f"{tmp_path}/missing.py:Stage"], "not found"),
        (["--stage", f"{plugin}:Nope"], "class 'Nope' not found in"),
        (["--stage", f"{plugin}:NotAStage"], "is not a ProcessingStage subclass"),
        (["--stage", "unregistered_short_name"], "unknown stage 'unregistered_short_name'"),
        (["--stage", f"{plugin}:Typed", "--stage-arg", "colour=red"], "Typed has no argument 'colour' (valid: count, scale"),
        (["--stage", f"{plugin}:Typed", "--stage-arg", "count=many"], "count='many': expected an integer"),
        (["--stage", f"{plugin}:Typed", "--stage-arg", "flag=maybe"], "expected a boolean"),
        (["--stage", f"{SEED}:MyCustomEmbeddingStage"], "needs argument(s) model_path"),
        (["--stage", f"{plugin}:Typed", "--stage-arg", "novalue"], "must look like KEY=VALUE"),
    ]


def test_each_mistake_is_one_line_and_exit_2(cli, plugin, tmp_path):
    shard = img2dataset_tar(tmp_path / "in" / "00000.tar", 2)
    for args, message in _error_cases(plugin, tmp_path):
        result = cli("embed", shard, "-o", tmp_path / "out", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out").exists()


def test_how_to_example_through_the_cli(cli, tmp_path):
    """The acceptance command: the how-to's stage, named by file path, with model_path."""
    model = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(768, 12, bias=False).state_dict(), model)
    result = cli("embed", ROOT / "sample_data", "-o", tmp_path / "out", "--stage",
                 f"{SEED}:MyCustomEmbeddingStage", "--stage-arg", f"model_path={model}", "--stage-arg", "batch_size=3")
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "out" / "webdataset" / "00000.parquet")
    assert table.num_rows == 8 and table.schema.field("embedding").type.list_size == 12
    assert table.column("embedding").null_count == 0
