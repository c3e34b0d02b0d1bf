"""The default ``perceptual`` stage on real photos: near-duplicates score higher than unrelated images."""

from __future__ import annotations

import io
import shutil

import numpy as np
from PIL import Image, ImageEnhance

from conftest import ROOT, read_output, unit_norms

PHOTOS = ROOT / "tests" / "photos"


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def near_duplicates(image: Image.Image) -> dict[str, Image.Image]:
    """The edits a near-duplicate detector must see through, alone and combined."""
    w, h = image.size
    shifted = np.clip(np.asarray(image).astype(int) + [20, -10, 5], 0, 255).astype(np.uint8)
    return {
        "resized": image.resize((w // 2, h // 2), Image.Resampling.BILINEAR),
        "jpeg30": _jpeg(image, 30),
        "cropped": image.crop((int(w * 0.05), int(h * 0.05), w, h)),
        "saturated": ImageEnhance.Brightness(ImageEnhance.Color(image).enhance(1.4)).enhance(1.15),
        "tinted": Image.fromarray(shifted),
        "all": _jpeg(ImageEnhance.Color(image.crop((int(w * 0.05), 0, w, h)).resize((w // 2, h // 2))).enhance(1.3), 30),
    }


def test_near_duplicates_of_real_photos_are_closer_than_unrelated_photos(cli, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    names = sorted(p.stem for p in PHOTOS.glob("*.jpg"))
    assert len(names) >= 5
    for name in names:
        shutil.copy(PHOTOS / f"{name}.jpg", folder / f"{name}.jpg")
        original = Image.open(PHOTOS / f"{name}.jpg").convert("RGB")
        for edit, copy in near_duplicates(original).items():
            copy.save(folder / f"{name}~{edit}.png")  # lossless, so only the edit itself differs

    result = cli("embed", folder, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    table = read_output(tmp_path / "out" / "photos.parquet")
    assert table.column("error").null_count == table.num_rows
    assert np.allclose(unit_norms(table), 1.0, atol=1e-5)
    vectors = {
        image_id.split("/")[-1].rsplit(".", 1)[0]: np.asarray(v, dtype=np.float32)
        for image_id, v in zip(table.column("image_id").to_pylist(), table.column("embedding").to_pylist())
    }
    assert all(v.shape == (303,) for v in vectors.values())

    unrelated = max(float(vectors[a] @ vectors[b]) for a in names for b in names if a != b)
    assert unrelated < 0.3
    for key, vector in vectors.items():
        name, _, edit = key.partition("~")
        if not edit:
            continue
        own = float(vector @ vectors[name])
        others = max(float(vector @ vectors[other]) for other in names if other != name)
        assert own > 0.6, (key, own)
        assert own > others + 0.3, (key, own, others)
        assert own > unrelated + 0.3, (key, own, unrelated)
