"""Times ``curator show OUT --html report.html`` on a synthetic output of a million rows (issue 15: under
a minute on this 2-core machine).

The output is written directly with pyarrow in curator's output schema (``io.writer.OutputLayout``,
row groups of ``ROWS_PER_ROW_GROUP``, the manifest in each footer): ``--files`` files of ``--rows /
--files`` rows, ``--dim``-dimensional float32 embeddings, 1 % of rows failed (three error kinds,
zero vectors). Its ``shard`` column names img2dataset-style tars of the same number of samples
(``KEY.jpg``, ``KEY.txt``, ``KEY.json``, 256 x 256 JPEGs): ``--real-tars`` of them are written, and
the other shard names are symlinks to those, so the report reads real tar members from any shard
without this script writing every image. Embeddings cluster by picture (each row's vector is its
picture's centre plus noise), so a row's neighbours should show the same picture.

Everything is cached under ``bench/data/report-<rows>/`` (regenerated when the spec changes).

    .venv/bin/python bench/report.py                     # 1,000,000 rows (about 4 GB on disk)
    .venv/bin/python bench/report.py --rows 100000       # a quick check
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from curator_cli.io.manifest import MANIFEST_KEY, Manifest  # noqa: E402
from curator_cli.io.writer import ROWS_PER_ROW_GROUP, OutputLayout  # noqa: E402

PICTURES = 256  # distinct pictures, each a cluster of embeddings
ERROR_KINDS = ("input status failed_to_download: HTTP 404", "unreadable image: cannot identify image file",
               "image too large: 120000000 pixels > --max-pixels")
FORMAT_VERSION = 2


def spec_fingerprint(args: argparse.Namespace) -> str:
    raw = json.dumps([FORMAT_VERSION, args.rows, args.files, args.dim, args.real_tars, args.seed])
    return hashlib.sha1(raw.encode()).hexdigest()[:12]


def pictures(seed: int) -> list[bytes]:
    """``PICTURES`` distinct 256 x 256 JPEGs (the sample data's synthetic photos)."""
    sys.path.insert(0, str(ROOT / "sample_data"))
    from make_sample_data import jpeg_bytes, synthetic_photo

    return [jpeg_bytes(synthetic_photo(seed * 10007 + i, (256, 256)), quality=85) for i in range(PICTURES)]


def picture_of(shard: int, index: int) -> int:
    return (shard * 7919 + index * 31) % PICTURES


def write_tar(path: Path, shard: int, per_shard: int, jpegs: list[bytes]) -> None:
    """An img2dataset-layout tar: KEY.jpg, KEY.txt, KEY.json per sample, keys as img2dataset numbers them."""
    with tarfile.open(path, "w") as archive:
        for index in range(per_shard):
            key = f"{shard:05d}{index:04d}"
            picture = picture_of(shard, index)
            meta = json.dumps({"key": key, "status": "success", "url": f"http://example.com/{key}.jpg"}).encode()
            for name, payload in ((f"{key}.jpg", jpegs[picture]), (f"{key}.txt", f"picture {picture}".encode()),
                                  (f"{key}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))


def write_output(out: Path, shards: Path, file_index: int, real: int, rows: int, dim: int, centres: np.ndarray,
                 rng: np.random.Generator) -> None:
    """One output file in curator's schema, its manifest in the footer; its shard is a link to tar ``real``."""
    layout = OutputLayout(dim=dim, score_columns=())
    shard_name = str(shards / f"{file_index:05d}.tar")
    keys = [f"{real:05d}{i:04d}" for i in range(rows)]
    picture = np.array([picture_of(real, i) for i in range(rows)])
    vectors = centres[picture] + rng.normal(0, 0.35 / np.sqrt(dim), (rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    failed = rng.random(rows) < 0.01
    errors = [ERROR_KINDS[int(rng.integers(0, len(ERROR_KINDS)))] if f else None for f in failed]
    vectors[failed] = 0
    manifest = Manifest(input=shard_name, input_identity={"size": 0, "mtime_ns": 0},
                        config={"stages": [{"builtin": "synthetic", "identity_version": 1, "args": {"dim": dim}}],
                                "image_exts": ["jpg"], "image_column": None, "id_column": None,
                                "decode_min_side": 224, "decode_crop": True, "max_pixels": None,
                                "embedding_dtype": "float32", "precision": "bf16"},
                        rows=rows, failed_rows=int(failed.sum()))
    schema = layout.schema([]).with_metadata({MANIFEST_KEY: manifest.to_json()})
    table = pa.table({
        "image_id": keys,
        "shard": [shard_name] * rows,
        "image_path": [f"{shard_name}/{k}.jpg" for k in keys],
        "caption": [f"picture {p}" for p in picture],
        "metadata": ["{}"] * rows,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        "error": pa.array(errors, pa.string()),
    }, schema=schema)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / f"{file_index:05d}.parquet", row_group_size=ROWS_PER_ROW_GROUP, compression="zstd")


def build(args: argparse.Namespace) -> Path:
    """The dataset under bench/data/report-<rows>/, written once per spec."""
    root = ROOT / "bench" / "data" / f"report-{args.rows}"
    stamp = root / "spec.txt"
    if stamp.exists() and stamp.read_text() == spec_fingerprint(args):
        return root
    started = time.perf_counter()
    if root.exists():
        subprocess.run(["rm", "-rf", str(root)], check=True)
    shards, out = root / "shards", root / "out"
    shards.mkdir(parents=True)
    per_file = args.rows // args.files
    jpegs = pictures(args.seed)
    for real in range(args.real_tars):
        write_tar(shards / f"real-{real:05d}.tar", real, per_file, jpegs)
    rng = np.random.default_rng(args.seed)
    centres = rng.normal(0, 1, (PICTURES, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for index in range(args.files):
        real = index % args.real_tars
        os.symlink(f"real-{real:05d}.tar", shards / f"{index:05d}.tar")  # holds the real tar's keys
        write_output(out, shards, index, real, per_file, args.dim, centres, rng)
    (out / "_SUCCESS").write_text("")
    stamp.write_text(spec_fingerprint(args))
    print(f"built {args.rows} rows in {args.files} files under {root} in {time.perf_counter() - started:.0f}s",
          file=sys.stderr)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--real-tars", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = build(args)
    report = root / "report.html"
    curator = Path(sys.executable).with_name("curator")
    command = [str(curator), "show", str(root / "out"), "--html", str(report), "--rows", "3"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"curator show failed ({result.returncode}): {result.stderr.strip()}")
    size = report.stat().st_size
    print(result.stdout.strip().splitlines()[-1])
    print(json.dumps({"rows": args.rows, "files": args.files, "dim": args.dim, "seconds": round(seconds, 2),
                      "report_bytes": size, "command": " ".join(["curator", *command[1:]])}))


if __name__ == "__main__":
    main()
