"""The NeMo Curator stage and task contract: fields, both attribute spellings, hooks, fan-out and filtering."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from curator_cli.stages.base import ProcessingStage
from curator_cli.stages.resources import Resources
from curator_cli.tasks import ImageBatch, ImageObject

from seed_example import MyCustomEmbeddingStage


def test_image_object_has_exactly_nemo_fields_and_defaults():
    fields = {f.name: f for f in dataclasses.fields(ImageObject)}
    assert list(fields) == ["image_path", "image_id", "metadata", "image_data", "embedding",
                            "aesthetic_score", "nsfw_score"]
    obj = ImageObject()
    assert (obj.image_path, obj.image_id, obj.metadata, obj.image_data, obj.embedding,
            obj.aesthetic_score, obj.nsfw_score) == ("", "", {}, None, None, None, None)
    assert ImageObject().metadata is not ImageObject().metadata


def test_image_batch_task_fields():
    batch = ImageBatch(dataset_name="d", data=[ImageObject(image_id="a"), ImageObject(image_id="b")])
    assert batch.num_items == 2
    assert batch.task_id == ""  # set by the framework
    assert batch._metadata == {} and batch._stage_perf == []
    with pytest.raises(TypeError):
        ImageBatch(dataset_name="d", data=[], task_id="x")


def test_how_to_dataclass_needs_only_its_own_required_field():
    stage = MyCustomEmbeddingStage(model_path="m.pt")
    assert stage.batch_size == 32
    assert stage.name == "my_custom_embedding" == stage._name
    assert stage.resources == Resources(gpus=0.25)
    custom = MyCustomEmbeddingStage(model_path="m.pt", batch_size=16, num_gpus_per_worker=0.5, _name="mine")
    assert (custom.batch_size, custom.name, custom.resources.gpus) == (16, "mine", 0.5)
    with pytest.raises(TypeError):
        MyCustomEmbeddingStage()  # model_path is required, nothing else is


def test_how_to_example_embeds_in_slices(tmp_path):
    torch.save(torch.nn.Linear(768, 8, bias=False).state_dict(), tmp_path / "m.pt")
    stage = MyCustomEmbeddingStage(model_path=str(tmp_path / "m.pt"), batch_size=2)
    stage.setup()
    rng = np.random.default_rng(0)
    images = [ImageObject(image_id=str(i), image_data=rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8))
              for i in range(5)]
    out = stage.process_batch([ImageBatch(dataset_name="x", data=images)])
    assert len(out) == 1 and all(o.embedding.shape == (8,) for o in out[0].data)


@dataclass
class Legacy(ProcessingStage[ImageBatch, ImageBatch]):
    _name: str = "legacy"
    _batch_size: int = 4
    _resources: Resources = dataclasses.field(default_factory=lambda: Resources(cpus=2.0))

    def process(self, task):
        return task


class Modern(ProcessingStage[ImageBatch, ImageBatch]):
    name = "modern"
    resources = Resources(gpus=1.0)
    batch_size = 8

    def process(self, task):
        return task


def test_both_spellings_read_the_same():
    legacy, modern = Legacy(), Modern()
    assert (legacy.name, legacy.batch_size, legacy.resources.cpus) == ("legacy", 4, 2.0)
    assert (modern._name, modern._batch_size, modern._resources.gpus) == ("modern", 8, 1.0)


def test_with_returns_an_overridden_copy():
    for stage in (Legacy(), Modern()):
        copy = stage.with_(name="renamed", batch_size=3, resources=Resources(cpus=4.0))
        assert (copy.name, copy._name, copy.batch_size, copy.resources.cpus) == ("renamed", "renamed", 3, 4.0)
        assert stage.name != "renamed"


def test_plain_subclass_defaults():
    class Bare(ProcessingStage[ImageBatch, ImageBatch]):
        def process(self, task):
            return task

    bare = Bare()
    assert (bare.name, bare.batch_size, bare.resources) == ("Bare", 1, Resources())
    with pytest.raises(TypeError):
        ProcessingStage()  # process is abstract


def test_process_batch_fans_out_and_filters():
    class Split(ProcessingStage[ImageBatch, ImageBatch]):
        def process(self, task):
            if not task.data:
                return None
            return [ImageBatch(dataset_name=task.dataset_name, data=[obj]) for obj in task.data]

    batches = [ImageBatch(dataset_name="a", data=[ImageObject(), ImageObject()]), ImageBatch(dataset_name="b")]
    assert len(Split().process_batch(batches)) == 2


def test_inputs_are_checked_before_process():
    class NeedsThing(ProcessingStage[ImageBatch, ImageBatch]):
        def inputs(self):
            return ["data"], ["thing"]

        def process(self, task):
            raise AssertionError("process must not run")

    with pytest.raises(ValueError, match="data.thing"):
        NeedsThing().process_batch([ImageBatch(dataset_name="a", data=[ImageObject()])])
    assert NeedsThing().validate_input(ImageBatch(dataset_name="a", data=[])) is True
