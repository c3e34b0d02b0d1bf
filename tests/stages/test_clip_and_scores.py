"""``--stage clip`` (open_clip) and ``--stage linear-head`` (scores and threshold filter from embeddings)."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from curator_cli.stages.builtin.linear_head import head_layers

from conftest import assert_same_vectors, decoded_images, embeddings, img2dataset_tar, read_output, unit_norms

CLIP_MODEL = "ViT-S-32"  # the smallest open_clip ViT: 384-dim embeddings


def test_clip_random_init_dimension_and_unit_norm(cli, tmp_path):
    pytest.importorskip("open_clip")
    shard = img2dataset_tar(tmp_path / "s.tar", 3)
    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", "clip",
                 "--stage-arg", f"model={CLIP_MODEL}", "--stage-arg", "pretrained=none")
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "out" / "s.parquet")
    assert embeddings(table).shape == (3, 384)
    assert np.allclose(unit_norms(table), 1.0, atol=1e-5)


def test_clip_local_checkpoint_matches_open_clip_reference(cli, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_MODEL, pretrained=None)
    model.eval()
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    shard = img2dataset_tar(tmp_path / "s.tar", 4, size=(120, 90))

    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", "clip",
                 "--stage-arg", f"model={CLIP_MODEL}", "--stage-arg", f"pretrained={tmp_path / 'clip.pt'}")
    assert result.exit_code == 0, result.output
    ours = embeddings(read_output(tmp_path / "out" / "s.parquet"))

    batch = torch.stack([preprocess(Image.fromarray(img)) for img in decoded_images(shard)])
    with torch.no_grad():
        reference = model.encode_image(batch, normalize=True).numpy()
    assert_same_vectors(ours, reference)


def test_clip_checkpoint_for_another_model_is_a_clear_error(cli, tmp_path):
    pytest.importorskip("open_clip")
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "wrong.pt")
    result = cli("embed", img2dataset_tar(tmp_path / "s.tar", 1), "-o", tmp_path / "out", "--stage", "clip",
                 "--stage-arg", f"model={CLIP_MODEL}", "--stage-arg", f"pretrained={tmp_path / 'wrong.pt'}")
    assert result.exit_code == 1
    assert f"cannot load checkpoint '{tmp_path / 'wrong.pt'}' into open_clip {CLIP_MODEL}" in result.output


def test_clip_unknown_tag_lists_the_known_ones(cli, tmp_path):
    pytest.importorskip("open_clip")
    result = cli("embed", img2dataset_tar(tmp_path / "s.tar", 1), "-o", tmp_path / "out", "--stage", "clip",
                 "--stage-arg", "pretrained=laion9000")
    assert result.exit_code == 1
    assert "open_clip ViT-B-32 has no pretrained tag 'laion9000' (tags: openai, laion400m_e31" in result.output


def test_clip_without_open_clip_names_the_extra(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes "import open_clip" raise ImportError
    result = cli("embed", img2dataset_tar(tmp_path / "s.tar", 1), "-o", tmp_path / "out", "--stage", "clip")
    assert result.exit_code == 1
    assert "setup of stage 'clip_embedding' failed" in result.output
    assert "pip install 'curator-cli[clip]'" in result.output


def save_head(path, dims=(303, 8, 1), seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(dims, dims[1:])):
        layers += [torch.nn.Linear(n_in, n_out)] + ([torch.nn.ReLU()] if i < len(dims) - 2 else [])
    head = torch.nn.Sequential(*layers)
    torch.save(head.state_dict(), path)
    return head


def test_linear_head_scores_every_image_and_threshold_filters(cli, tmp_path):
    head = save_head(tmp_path / "head.pth")
    shard = img2dataset_tar(tmp_path / "s.tar", 6)
    result = cli("embed", shard, "-o", tmp_path / "all", "--stage", "perceptual", "--stage", "linear-head",
                 "--stage-arg", f"1.head_path={tmp_path / 'head.pth'}")
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "all" / "s.parquet")
    assert table.schema.field("aesthetic_score").type == pa.float32()
    with torch.no_grad():
        expected = head(torch.from_numpy(embeddings(table))).squeeze(1).numpy()
    scores = np.array(table.column("aesthetic_score").to_pylist(), dtype=np.float32)
    assert np.allclose(scores, expected, atol=1e-5)

    threshold = float(np.median(scores))
    result = cli("embed", shard, "-o", tmp_path / "kept", "--stage", "perceptual", "--stage", "linear-head",
                 "--stage-arg", f"1.head_path={tmp_path / 'head.pth'}", "--stage-arg", f"1.threshold={threshold}")
    assert result.exit_code == 0, result.output
    kept = read_output(tmp_path / "kept" / "s.parquet")
    errors = kept.column("error").to_pylist()
    assert errors == [None if s >= threshold else "filtered by linear_head_score" for s in scores]
    assert 0 < errors.count(None) < 6


def test_nsfw_head_from_safetensors_with_sigmoid_keeps_the_images_below(cli, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    head = save_head(tmp_path / "unused.pth", dims=(303, 16, 4, 1), seed=1)
    safetensors.save_file(head.state_dict(), tmp_path / "nsfw.safetensors")
    shard = img2dataset_tar(tmp_path / "s.tar", 5)
    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", "perceptual", "--stage", "linear-head",
                 "--stage-arg", f"1.head_path={tmp_path / 'nsfw.safetensors'}", "--stage-arg", "1.target=nsfw_score",
                 "--stage-arg", "1.output_activation=sigmoid", "--stage-arg", "1.threshold=0.5",
                 "--stage-arg", "1.keep=below")
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "out" / "s.parquet")
    assert "aesthetic_score" not in table.column_names
    with torch.no_grad():
        expected = torch.sigmoid(head(torch.from_numpy(embeddings(table)))).squeeze(1).numpy()
    scores = np.array(table.column("nsfw_score").to_pylist(), dtype=np.float32)
    assert np.allclose(scores, expected, atol=1e-5)
    assert table.column("error").to_pylist() == [None if s < 0.5 else "filtered by linear_head_score" for s in scores]


def test_linear_head_on_wrong_embedding_size_fails_the_shard_clearly(cli, tmp_path):
    save_head(tmp_path / "head.pth", dims=(512, 1))
    result = cli("embed", img2dataset_tar(tmp_path / "s.tar", 2), "-o", tmp_path / "out", "--stage", "perceptual",
                 "--stage", "linear-head", "--stage-arg", f"1.head_path={tmp_path / 'head.pth'}")
    assert result.exit_code == 1
    assert "takes 512-dim embeddings, got 303" in result.output


def test_head_layers_run_in_natural_order_and_must_chain():
    state = {"layers.10.weight": torch.zeros(1, 4), "layers.10.bias": torch.zeros(1),
             "layers.2.weight": torch.zeros(4, 8), "layers.2.bias": torch.zeros(4)}
    assert [tuple(w.shape) for w, _ in head_layers(state, "h")] == [(4, 8), (1, 4)]
    with pytest.raises(ValueError, match="takes 5 inputs but the layer before gives 4"):
        head_layers({"a.weight": torch.zeros(4, 8), "b.weight": torch.zeros(1, 5)}, "h")
    with pytest.raises(ValueError, match="not linear layers: norm.weight"):
        head_layers({"a.weight": torch.zeros(1, 8), "norm.weight": torch.zeros(8)}, "h")


def test_clip_declares_its_input_size_before_setup():
    pytest.importorskip("open_clip")
    from curator_cli.stages.builtin.clip_embedding import ClipEmbeddingStage

    assert ClipEmbeddingStage().decode_size == 224
    assert ClipEmbeddingStage(model="ViT-L-14-336").decode_size == 336
