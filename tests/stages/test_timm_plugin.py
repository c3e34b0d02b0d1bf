"""``plugins/timm_backbone.py``: a model's input size decides the decode size before the run plans
decoding, so a 384-px model gets images decoded at 384 px or more, never 256-px ones scaled up."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, embeddings, img2dataset_tar, read_output
from curator_cli.stages.preprocess import Preprocess

TIMM_STAGE = f"{ROOT / 'plugins' / 'timm_backbone.py'}:TimmBackboneStage"
MODEL_384 = "vit_tiny_patch16_384"  # 5.7 M parameters, random weights: nothing is downloaded


def test_a_384_px_timm_model_gets_384_px_images(cli, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from curator_cli.loading.specs import load_stages

    [stage] = load_stages([TIMM_STAGE], [f"model_name={MODEL_384}"])  # as --stage and --stage-arg make it
    assert stage._model is None and stage.decode_size == 384  # from the model's config, before setup()

    seen: list[tuple[int, ...]] = []
    preprocess = Preprocess.__call__

    def recording(self, images, device):
        seen.extend(tuple(image.shape) for image in images)
        return preprocess(self, images, device)

    monkeypatch.setattr(Preprocess, "__call__", recording)
    # 1024 px on the shorter side: decoded for 256 px, JPEG scaling would give 256 x 320
    shard = img2dataset_tar(tmp_path / "s.tar", 3, size=(1280, 1024))
    result = cli("embed", shard, "-o", tmp_path / "out", "--stage", TIMM_STAGE,
                 "--stage-arg", f"model_name={MODEL_384}", "--summary-json", tmp_path / "summary.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "summary.json").read_text())["decode_min_side"] == 384
    assert len(seen) == 3 and all(min(shape[:2]) >= 384 for shape in seen), seen
    dim = timm.create_model(MODEL_384, pretrained=False, num_classes=0).num_features
    assert embeddings(read_output(tmp_path / "out" / "s.parquet")).shape == (3, dim)
