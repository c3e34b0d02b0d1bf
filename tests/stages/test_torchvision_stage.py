"""``--stage torchvision``: any torchvision classifier, head removed, the weights' preprocessing, local files."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from curator_cli.stages.builtin.torchvision_embedding import TorchvisionEmbeddingStage
from curator_cli.tasks import ImageBatch, ImageObject
from curator_cli.stages.worker_metadata import WorkerMetadata

from conftest import assert_same_vectors, decoded_images, embeddings, img2dataset_tar, read_output, unit_norms


@pytest.mark.parametrize("model, dim", [("resnet18", 512), ("mobilenet_v3_small", 1024)])
def test_random_init_dimension_and_unit_norm(cli, tmp_path, model, dim):
    shard = img2dataset_tar(tmp_path / "s.tar", 3)
    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", "torchvision",
                 "--stage-arg", f"model={model}", "--stage-arg", "weights=none")
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "out" / "s.parquet")
    assert table.column("error").null_count == 3
    assert embeddings(table).shape == (3, dim)
    assert np.allclose(unit_norms(table), 1.0, atol=1e-5)


def test_normalize_false_keeps_raw_features(cli, tmp_path):
    shard = img2dataset_tar(tmp_path / "s.tar", 2)
    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", "torchvision", "--stage-arg", "model=resnet18",
                 "--stage-arg", "weights=none", "--stage-arg", "normalize=false")
    assert result.exit_code == 0, result.output
    norms = unit_norms(read_output(tmp_path / "out" / "s.parquet"))
    assert not np.allclose(norms, 1.0, atol=1e-3)


def test_local_pth_and_safetensors_match_torchvision_reference(cli, tmp_path):
    """A checkpoint with another classifier size loads (head dropped) and gives torchvision's own features."""
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    shard = img2dataset_tar(tmp_path / "s.tar", 4, size=(120, 90))

    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", "torchvision", "--stage-arg", "model=resnet18",
                 "--stage-arg", f"weights={tmp_path / 'r18.pth'}")
    assert result.exit_code == 0, result.output
    ours = embeddings(read_output(tmp_path / "out" / "s.parquet"))

    net.fc = torch.nn.Identity()
    net.eval()
    transform = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    batch = torch.stack([transform(torch.from_numpy(img).permute(2, 0, 1)) for img in decoded_images(shard)])
    with torch.no_grad():
        reference = torch.nn.functional.normalize(net(batch), dim=1).numpy()
    assert ours.shape == (4, 512)
    assert_same_vectors(ours, reference)

    safetensors = pytest.importorskip("safetensors.torch")
    state = torch.load(tmp_path / "r18.pth")
    safetensors.save_file(state, tmp_path / "r18.safetensors")
    result = cli("embed", shard, "-o", tmp_path / "out2", "--stage", "torchvision", "--stage-arg", "model=resnet18",
                 "--stage-arg", f"weights={tmp_path / 'r18.safetensors'}")
    assert result.exit_code == 0, result.output
    assert np.allclose(embeddings(read_output(tmp_path / "out2" / "s.parquet")), ours, atol=1e-5)


def test_offline_without_cached_weights_says_how_to_pass_a_file(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    result = cli("embed", img2dataset_tar(tmp_path / "s.tar", 1), "-o", tmp_path / "out",
                 "--stage", "torchvision", "--stage-arg", "model=resnet18", "--stage-arg", "weights=IMAGENET1K_V1")
    assert result.exit_code == 1
    [message] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "cannot download torchvision weights ResNet18_Weights.IMAGENET1K_V1" in message
    assert "--stage-arg weights=/path/to/resnet18-" in message
    assert not (tmp_path / "out" / "s.parquet").exists()


@pytest.mark.parametrize("args, expected", [
    (["model=resnet5O"], "unknown torchvision model 'resnet5O' (did you mean resnet50"),
    (["model=resnet18", "weights=IMAGENET1K_V9"], "resnet18 has no weights 'IMAGENET1K_V9' (use one of: IMAGENET1K_V1, DEFAULT"),
    (["model=resnet18", "weights=ResNet50_Weights.IMAGENET1K_V2"], "are not weights of resnet18"),
    (["model=resnet18", "weights=/nowhere/r18.pth"], "weights file '/nowhere/r18.pth' not found"),
])
def test_argument_mistakes_are_one_line_usage_errors(cli, tmp_path, args, expected):
    stage_args = [x for a in args for x in ("--stage-arg", a)]
    result = cli("embed", img2dataset_tar(tmp_path / "s.tar", 1), "-o", tmp_path / "out", "--stage", "torchvision", *stage_args)
    assert result.exit_code == 2
    assert expected in result.output and len(result.output.strip().splitlines()) == 1


def test_weights_name_sets_preprocessing_and_decode_size():
    assert TorchvisionEmbeddingStage(model="resnet50", weights="IMAGENET1K_V2").decode_size == 232
    assert TorchvisionEmbeddingStage(model="resnet50", weights="ResNet50_Weights.IMAGENET1K_V1").decode_size == 256
    assert TorchvisionEmbeddingStage(model="resnet18", weights="none").decode_size == 256


def test_bf16_precision_runs_under_autocast_and_stays_close_to_fp32():
    images = [np.asarray(Image.new("RGB", (80, 60), colour)) for colour in ("red", "navy", "olive")]
    images.append(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    results = {}
    stage = TorchvisionEmbeddingStage(model="resnet18", weights="none")
    for precision in ("fp32", "bf16"):
        stage.setup(WorkerMetadata(device="cpu", extra={"precision": precision}))
        if precision == "fp32":
            state = stage._model.state_dict()
        else:
            stage._model.load_state_dict(state)
        batch = stage.process(ImageBatch(data=[ImageObject(image_data=img) for img in images]))
        results[precision] = np.stack([obj.embedding for obj in batch.data])
        stage.teardown()
    assert results["bf16"].dtype == np.float32
    cosine = (results["fp32"] * results["bf16"]).sum(axis=1)
    assert cosine.min() > 0.98 and not np.array_equal(results["fp32"], results["bf16"])


def test_images_given_as_tensors_embed_like_arrays():
    """With --decode gpu the runner may hand stages H x W x 3 uint8 tensors instead of numpy arrays."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((60, 80, 3), (60, 80, 3), (90, 50, 3))]
    stage = TorchvisionEmbeddingStage(model="resnet18", weights="none")
    stage.setup(WorkerMetadata(device="cpu"))
    as_arrays = stage.process(ImageBatch(data=[ImageObject(image_data=img) for img in images]))
    as_tensors = stage.process(ImageBatch(data=[ImageObject(image_data=torch.from_numpy(img)) for img in images]))
    for a, b in zip(as_arrays.data, as_tensors.data):
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)
