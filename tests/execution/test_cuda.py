"""The CUDA paths: run only where torch sees a GPU (skipped in CI, which has none).

A session lent a GPU machine runs them with ``bench/gpu_check.sh`` (see bench/README.md): the
device, the GPU decoder (nvJPEG), pinned tensors for the fast path, and a real out-of-memory
back-off.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ROOT, encode, img2dataset_tar, jpeg, read_output, stage_spec, synthetic_photo, write_tar

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def resnet(tmp_path) -> list[str]:
    """The built-in torchvision stage with one resnet18 whose random weights every run shares."""
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return ["--stage", "torchvision", "--stage-arg", "model=resnet18", "--stage-arg", f"weights={path}"]


def embeddings_of(table) -> dict[str, np.ndarray]:
    """image_id -> embedding, for the rows that have one (failed rows hold zeros and an error)."""
    columns = (table.column(c).to_pylist() for c in ("image_id", "embedding", "error"))
    return {key: np.asarray(vector, np.float32) for key, vector, error in zip(*columns) if error is None}


def min_cosine(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return min(float(a[k] @ b[k] / (np.linalg.norm(a[k]) * np.linalg.norm(b[k]))) for k in a)


def test_cuda_run_agrees_with_the_cpu_run(cli, tmp_path, resnet):
    """Same stage, same weights: the GPU (bf16 by default) gives the CPU's embeddings."""
    outputs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        result = cli("embed", ROOT / "sample_data" / "webdataset", "-o", out, *resnet, "--device", device,
                     "--summary-json", tmp_path / f"{device}.json")
        assert result.exit_code == 0, result.output
        outputs[device] = {p.name: embeddings_of(read_output(p)) for p in sorted(out.glob("*.parquet"))}
    assert outputs["cpu"].keys() == outputs["cuda"].keys() and outputs["cpu"]
    for name in outputs["cpu"]:
        assert min_cosine(outputs["cpu"][name], outputs["cuda"][name]) > 0.98
    assert json.loads((tmp_path / "cuda.json").read_text())["images"] > 0


def test_gpu_decode_matches_cpu_decode_and_falls_back_per_image(cli, tmp_path, resnet):
    members = [(f"{i:03d}.jpg", jpeg(i, (320 + 16 * i, 240))) for i in range(6)]
    members += [("png.png", encode(synthetic_photo(9, (200, 150)), "PNG")), ("bad.jpg", jpeg(10)[:200])]
    shard = write_tar(tmp_path / "s.tar", members)
    results = {}
    for mode in ("cpu", "gpu"):
        out = tmp_path / mode
        result = cli("embed", shard, "-o", out, *resnet, "--device", "cuda", "--decode", mode)
        assert result.exit_code == 0, result.output
        results[mode] = read_output(out / "s.parquet")
    errors = dict(zip(results["gpu"].column("image_id").to_pylist(), results["gpu"].column("error").to_pylist()))
    assert errors["png"] is None and errors["bad"]  # PNG decoded by the CPU fallback; the truncated JPEG reported
    assert min_cosine(embeddings_of(results["cpu"]), embeddings_of(results["gpu"])) > 0.97


def test_tensor_fast_path_hands_pinned_memory_to_cuda_stages():
    from curator_cli.execution.stage_runner import pixel_tensor

    batch = pixel_tensor([np.zeros((40, 50, 3), np.uint8), np.ones((64, 64, 3), np.uint8)], 64, "cuda")
    assert tuple(batch.shape) == (2, 3, 64, 64) and batch.dtype == torch.uint8 and batch.is_pinned()


def test_a_real_cuda_out_of_memory_halves_the_batch(cli, tmp_path):
    """A stage whose memory grows with the batch: past what the GPU holds, curator halves the batch
    until it fits, and every image still gets its embedding."""
    free, _ = torch.cuda.mem_get_info()
    per_image = free // 3  # two images fit, four do not
    img2dataset_tar(tmp_path / "s.tar", 9)
    result = cli("embed", tmp_path / "s.tar", "-o", tmp_path / "out", "--stage", stage_spec("Hungry"),
                 "--stage-arg", f"per_image={per_image}",
                 "--device", "cuda", "--batch-size", "8", "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "out" / "s.parquet")
    assert table.num_rows == 9 and table.column("error").null_count == 9
    assert json.loads((tmp_path / "s.json").read_text())["stage_batch_size"] <= 2


def test_stage_uploads_reuse_pinned_buffers_and_keep_each_batch_intact():
    """``upload`` (what Preprocess uses for a stage's own arrays): one pinned ring, not a page-locked
    allocation per batch, and a batch being uploaded is never overwritten by the next."""
    from curator_cli.stages import staging

    rng = np.random.default_rng(0)
    batches = [[rng.integers(0, 255, (40, 30, 3), dtype=np.uint8) for _ in range(8)] for _ in range(6)]
    on_gpu = [staging.upload(arrays, "cuda") for arrays in batches]
    torch.cuda.synchronize()
    for arrays, pixels in zip(batches, on_gpu):
        assert pixels.is_cuda and np.array_equal(pixels.cpu().numpy(), np.stack(arrays))
    assert staging._UPLOADS[str(torch.device("cuda"))].allocations == staging.SLOTS


def test_the_tensor_fast_path_batch_reaches_the_model_as_one_tensor_with_the_same_embeddings(resnet):
    """``process_tensors`` on a pinned batch gives the embeddings ``process`` gives on its images."""
    from curator_cli.stages.builtin.torchvision_embedding import TorchvisionEmbeddingStage
    from curator_cli.tasks import ImageBatch, ImageObject

    stage = TorchvisionEmbeddingStage(model="resnet18", weights=resnet[-1].split("=", 1)[1])
    stage.setup()
    rng = np.random.default_rng(1)
    squares = rng.integers(0, 255, (6, 256, 256, 3), dtype=np.uint8)

    def task():
        return ImageBatch(data=[ImageObject(image_id=str(i), image_data=squares[i]) for i in range(6)])

    plain = [obj.embedding for obj in stage.process(task()).data]
    pinned = torch.from_numpy(squares).pin_memory().permute(0, 3, 1, 2)
    fast = [obj.embedding for obj in stage.process_tensors(pinned, task()).data]
    assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(plain, fast))
