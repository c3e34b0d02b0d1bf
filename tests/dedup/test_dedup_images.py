"""``curator embed`` with the default stage, then ``curator dedup`` at its default threshold: every planted
near-copy is found with its original, and no two unrelated pictures are grouped."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance

from conftest import ROOT, run_with_watchdog, synthetic_photo

PHOTOS = ROOT / "tests" / "photos"


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def planted_copies(image: Image.Image) -> dict[str, Image.Image]:
    """The edits the README says the default threshold sees through."""
    w, h = image.size
    tinted = np.clip(np.asarray(image).astype(int) + [20, -10, 5], 0, 255).astype(np.uint8)
    return {
        "resized": image.resize((w // 2, h // 2), Image.Resampling.BILINEAR),
        "jpeg30": _jpeg(image, 30),
        "cropped2": image.crop((int(w * 0.02), int(h * 0.02), w, h)),
        "saturated": ImageEnhance.Brightness(ImageEnhance.Color(image).enhance(1.4)).enhance(1.15),
        "tinted": Image.fromarray(tinted),
    }


def test_embed_then_dedup_finds_every_planted_copy_and_no_unrelated_pair(cli, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    originals = sorted(p.stem for p in PHOTOS.glob("*.jpg"))
    for name in originals:
        shutil.copy(PHOTOS / f"{name}.jpg", folder / f"{name}.jpg")
    for seed in range(24):  # unrelated pictures, several of them copied too
        synthetic_photo(seed, (320, 240)).save(folder / f"synthetic{seed:02d}.png")
        originals.append(f"synthetic{seed:02d}")
    copied = originals[:6] + originals[6::4]
    for name in copied:
        source = next(folder.glob(f"{name}.*"))
        for edit, copy in planted_copies(Image.open(source).convert("RGB")).items():
            copy.save(folder / f"{name}~{edit}.png")  # lossless, so only the edit itself differs

    result = cli("embed", folder, "-o", tmp_path / "embeddings", "-q")
    assert result.exit_code == 0, result.output
    done = run_with_watchdog("dedup", tmp_path / "embeddings", "-o", tmp_path / "dedup",
                             "--summary-json", tmp_path / "summary.json")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["threshold"] == 0.85  # the documented default for the perceptual stage

    duplicates = pq.read_table(tmp_path / "dedup" / "duplicates.parquet").to_pandas()
    original_of = {image_id: image_id.rsplit("/", 1)[-1].rsplit(".", 1)[0].split("~")[0]
                   for image_id in duplicates["image_id"]}
    groups = duplicates.groupby("group_id")["image_id"].apply(lambda ids: {original_of[i] for i in ids})
    assert all(len(names) == 1 for names in groups), "a group mixes unrelated pictures"
    grouped = {i.rsplit("/", 1)[-1].rsplit(".", 1)[0] for i in duplicates["image_id"]}
    planted = {f"{name}~{edit}" for name in copied for edit in planted_copies(Image.new("RGB", (8, 8)))}
    assert planted <= grouped, sorted(planted - grouped)
    assert {name for name in copied} <= grouped
    assert len(groups) == len(copied) and summary["groups"] == len(copied)
    # one image kept per group, the first in input order; keep.parquet holds every other picture
    assert (duplicates.groupby("group_id")["keep"].sum() == 1).all()
    kept = pq.read_table(tmp_path / "dedup" / "keep.parquet").to_pandas()
    assert len(kept) == len(originals) + len(planted) - (len(duplicates) - len(copied))
    assert set(duplicates.loc[~duplicates["keep"], "image_id"]).isdisjoint(kept["image_id"])
    assert (tmp_path / "dedup" / "_SUCCESS").exists()
