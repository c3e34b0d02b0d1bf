"""The GPU check (issue 13): ``curator embed`` on one GPU against the stage alone, the nvJPEG decode
ceiling, the GPU's ceiling (decode + model back to back) and a plain PyTorch DataLoader loop, for
torchvision ``vit_b_32`` (random weights), bf16, batches of 256, on the bench's JPEG tar shards.

Usage (``bench/gpu_check.sh`` runs it on a lent GPU machine)::

    python bench/gpu.py --json gpu.json --markdown gpu.md      # the whole check, on CUDA
    python bench/gpu.py --quick --device cpu                   # harness check without a GPU (~2 min on 2 cores)
    python bench/gpu.py --parts ceiling,ray                    # some parts only

Every part runs in a process of its own (its own session, killed whole at its timeout), so one
part that fails or hangs loses only its own numbers; the JSON and the markdown table are rewritten
after every part. Parts, most important first:

1. ``stage_alone``: the built-in torchvision stage's ``process_tensors`` on ready uint8 squares,
   already on the GPU and from pinned host memory (median of 5 batches after 2 warm-up batches).
2. ``ceiling``: nvJPEG decode of batches of 256 JPEGs + resize 256/crop 224 (``bench/gpu_peers.py``),
   alone and back to back with the model: the GPU's ceiling.
3. ``dataloader``: the plain PyTorch DataLoader loop (``bench/gpu_peers.py``).
4. ``curator_gpu`` / ``curator_cpu``: ``curator embed --decode gpu`` / ``cpu``, built-in torchvision
   stage; ``pillow_core``: one core's Pillow decode + resize, for the CPU decode target;
   ``plain_stage``: ``bench/gpu_stages.py:VitPlainStage``, a plain ``process()`` stage, with
   ``--decode cpu`` (the default, which the target uses) and then ``--decode gpu``.
5. ``whole_64k``: ``--decode gpu`` over 64,000 images (the 16 shards linked 16 times), start to exit.
6. ``workers``: ``bench/stages.py:CentrePixelStage`` (near-free, full-size pictures) with
   ``--num-workers`` 4, 8, 16. (``MeanPixelStage``'s histogram, ~1 ms per image, capped this near
   700 images/s on an H200 machine whatever the workers: it measured the stage.)
7. ``ray``: ``--executor ray`` with ``bench/gpu_stages.py:VitQuarterGpuStage`` (0.25 GPU per actor:
   four actors share the GPU); skipped when ``import ray`` fails.

Every curator run reports images/s over the span its summary reports (``images / seconds`` from
``--summary-json``) and as a whole process (start to exit of the subprocess), and the summary's
``main_cpu_us_per_image`` when it has one. The bench's 16 x 250 JPEG shards (``datagen.py``) are
hard-linked under other names for the longer runs; second and later copies come from the page
cache, as a warm dataset would.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from datagen import DatasetSpec, ensure_dataset  # noqa: E402

QUICK_SPEC = DatasetSpec(shards=2, per_shard=16)


@dataclass(frozen=True)
class Part:
    name: str
    timeout: float  # seconds, full run
    copies: int = 1  # times the shards are linked for its input (full run; quick: 1)
    cuda_only: bool = False


PARTS = [
    Part("stage_alone", 60),
    Part("ceiling", 60),
    Part("dataloader", 90, copies=4),
    Part("curator_gpu", 90, copies=8, cuda_only=True),
    Part("curator_cpu", 90, copies=8),
    Part("pillow_core", 30),
    Part("plain_stage", 90, copies=4),
    Part("whole_64k", 100, copies=16, cuda_only=True),
    Part("workers", 90, copies=4),
    Part("ray", 100, copies=4),
]
QUICK_TIMEOUT = 120  # per part, in --quick


def linked_copies(shards: list[Path], copies: int, directory: Path) -> Path:
    """``directory`` holding ``copies`` hard links (copies where links fail) of every shard."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for k in range(copies):
        for shard in shards:
            target = directory / f"c{k:02d}-{shard.name}"
            try:
                os.link(shard, target)
            except OSError:
                shutil.copyfile(shard, target)
    return directory


# --- the parts (each runs in a process of its own: ``gpu.py --run-part NAME``) ---------------------

def stage_alone(model: str, device: str, batch: int, passes: int = 5,
                emit: Callable[[dict], None] = lambda r: None) -> dict[str, Any]:
    """The built-in torchvision stage's ``process_tensors`` on ready uint8 squares, as curator hands
    them (pinned CPU memory for CPU decode, device memory for ``--decode gpu``); median images/s."""
    import torch

    from curator_cli.stages.runtime import default_precision
    from curator_cli.stages.builtin.torchvision_embedding import TorchvisionEmbeddingStage
    from curator_cli.tasks import ImageBatch, ImageObject
    from curator_cli.stages.worker_metadata import WorkerMetadata

    cuda = device.startswith("cuda")
    precision = default_precision(device)
    stage = TorchvisionEmbeddingStage(model=model, weights="none", batch_size=batch)
    stage.setup(WorkerMetadata(worker_id="bench", device=device, extra={"precision": precision}))
    size = int(stage.decode_size)
    squares = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    if cuda:
        squares = squares.pin_memory()
    inputs = {"host": squares}
    if cuda:
        inputs["device"] = squares.to(device)
    result: dict[str, Any] = {"model": model, "precision": precision, "batch": batch, "decode_size": size,
                              "passes": passes,
                              "gpu": torch.cuda.get_device_name(0) if cuda else None}
    for where in ("device", "host"):
        if where not in inputs:
            continue
        rates = []
        for i in range(passes + 2):  # two warm-up passes
            task = ImageBatch(data=[ImageObject(image_id=str(j)) for j in range(batch)])
            t0 = time.perf_counter()
            stage.process_tensors(inputs[where], task)  # ends with .cpu(): synchronises
            if i >= 2:
                rates.append(batch / (time.perf_counter() - t0))
        result[f"{where}_images_per_second"] = statistics.median(rates)
        emit(result)
    stage.teardown()
    return result


def curator(inputs: Path, out: Path, stage: list[str], device: str, decode: str, batch: int,
            extra: list[str] = ()) -> dict[str, Any]:
    """One ``curator embed`` run: its summary, plus the whole process's wall time and images/s."""
    shutil.rmtree(out, ignore_errors=True)
    summary_path = out.parent / f"{out.name}.summary.json"
    summary_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "curator_cli.cli", "embed", str(inputs), "-o", str(out), *stage,
           "--batch-size", str(batch), "--device", device, "--decode", decode,
           "--summary-json", str(summary_path), "-q", *extra]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0 or not summary_path.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"curator embed exited {proc.returncode} after {wall:.1f}s: {' '.join(cmd)}\n{tail}")
    summary = json.loads(summary_path.read_text())
    images = summary.get("images", 0)
    seconds = summary.get("seconds", 0.0)
    result: dict[str, Any] = {
        "command": " ".join(cmd[3:]), "decode": decode,
        "images": images, "images_failed": summary.get("images_failed"), "seconds": seconds,
        "images_per_second": images / seconds if seconds else 0.0,
        "whole_seconds": wall, "whole_images_per_second": images / wall if wall else 0.0,
        "summary": summary,
    }
    for key in ("main_cpu_us_per_image", "decode_cpu_us_per_image"):
        if key in summary:
            result[key] = summary[key]
    return result


def _line(label: str, run: dict[str, Any]) -> str:
    split = ", ".join(f"{k[8:]} {v:.1f}" for k, v in run["summary"].items()
                      if k.startswith("seconds_") and isinstance(v, (int, float)))
    main = f", main process {run['main_cpu_us_per_image']:.0f} us/image" if "main_cpu_us_per_image" in run else ""
    if "decode_cpu_us_per_image" in run:
        main += f", decode workers {run['decode_cpu_us_per_image']:.0f} us/image"
    return (f"{label}: {run['images']} images ({run['images_failed']} failed), {run['images_per_second']:.0f} img/s "
            f"in the summary's span ({run['seconds']:.1f}s), {run['whole_images_per_second']:.0f} img/s whole "
            f"process ({run['whole_seconds']:.1f}s){main}; seconds: {split}")


def run_part(name: str, cfg: dict[str, Any], emit: Callable[[dict], None]) -> dict[str, Any]:
    """Body of part ``name`` (in its own process); returns its result."""
    device, model, batch = cfg["device"], cfg["model"], cfg["batch"]
    shards = [Path(p) for p in cfg["shards"]]
    inputs = Path(cfg["inputs"]) if cfg.get("inputs") else None
    out = Path(cfg["work_dir"]) / f"out-{name}"
    tv_stage = ["--stage", "torchvision", "--stage-arg", f"model={model}", "--stage-arg", "weights=none",
                "--stage-arg", f"batch_size={batch}"]
    if name == "stage_alone":
        return stage_alone(model, device, batch, passes=cfg["passes"] + 2, emit=emit)
    if name == "ceiling":
        import gpu_peers
        return gpu_peers.ceiling(shards, device, model, batch, passes=cfg["passes"], emit=emit)
    if name == "dataloader":
        import gpu_peers
        return gpu_peers.dataloader(sorted(inputs.glob("*.tar")), device, batch, model)
    if name == "pillow_core":
        import gpu_peers
        return gpu_peers.pillow_core(shards, count=300, passes=cfg["passes"])
    if name in ("curator_gpu", "curator_cpu", "whole_64k"):
        decode = "cpu" if name == "curator_cpu" else "gpu"
        run = curator(inputs, out, tv_stage, device, decode, batch)
        print(_line(f"curator --decode {decode}", run), flush=True)
        return run
    if name == "plain_stage":
        stage = ["--stage", f"{BENCH_DIR / 'gpu_stages.py'}:VitPlainStage", "--stage-arg", f"model={model}",
                 "--stage-arg", f"model_batch={batch}"]
        result = {"stage": "bench/gpu_stages.py:VitPlainStage", "runs": []}
        for decode in ("cpu", "gpu") if device.startswith("cuda") else ("cpu",):  # cpu: curator's default
            run = curator(inputs, out, stage, device, decode, batch)
            print(_line(f"curator plain process() stage, --decode {decode}", run), flush=True)
            result["runs"].append(run)
            result.setdefault("images_per_second", run["images_per_second"])  # the target: the default decode
            emit(result)
        return result
    if name == "workers":
        result: dict[str, Any] = {"stage": "bench/stages.py:CentrePixelStage", "runs": []}
        stage = ["--stage", f"{BENCH_DIR / 'stages.py'}:CentrePixelStage"]
        for workers in cfg["worker_counts"]:
            run = curator(inputs, out, stage, device, "cpu", batch, ["--num-workers", str(workers)])
            run["num_workers"] = workers
            print(_line(f"curator CentrePixelStage --num-workers {workers}", run), flush=True)
            result["runs"].append(run)
            emit(result)
        return result
    if name == "ray":
        try:
            import ray  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install
            return {"skipped": f"ray is not installed here (import ray: {type(exc).__name__}: {exc})"}
        cuda = device.startswith("cuda")
        stage = ["--stage", f"{BENCH_DIR / 'gpu_stages.py'}:VitQuarterGpuStage", "--stage-arg", f"model={model}",
                 "--stage-arg", "weights=none", "--stage-arg", f"batch_size={batch}",
                 "--stage-arg", f"cpus_per_worker={cfg['ray_cpus_per_actor']}"]
        run = curator(inputs, out, stage, device, "gpu" if cuda else "cpu", batch, ["--executor", "ray"])
        run["actors"] = len(run["summary"].get("workers") or [])
        run["workers"] = run["summary"].get("workers")
        print(_line(f"curator --executor ray ({run['actors']} actors)", run), flush=True)
        return run
    raise ValueError(f"unknown part {name!r}")


def part_main(name: str, config: Path, result_path: Path) -> int:
    cfg = json.loads(config.read_text())

    def emit(result: dict[str, Any]) -> None:
        partial = result_path.with_suffix(".partial")
        partial.write_text(json.dumps(result, indent=2, default=str) + "\n")
        partial.replace(result_path)

    result = run_part(name, cfg, emit)
    emit(result)
    return 0


# --- the orchestrator -------------------------------------------------------------------------------

def spawn_part(name: str, config: Path, result_path: Path, timeout: float) -> dict[str, Any]:
    """Run one part in a new session; kill the whole session at ``timeout``. Returns its record."""
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run-part", name, "--config", str(config),
           "--result", str(result_path)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, bufsize=1)
    tail: collections.deque[str] = collections.deque(maxlen=30)

    def pump() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip())
            print(f"  [{name}] {line.rstrip()}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    status, reason = "ok", None
    try:
        rc = proc.wait(timeout=timeout)
        if rc != 0:
            status, reason = "failed", f"exit status {rc}"
    except subprocess.TimeoutExpired:
        status, reason = "timeout", f"killed after {timeout:.0f}s (its time limit)"
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=3)
    record: dict[str, Any] = {"status": status, "seconds": round(time.perf_counter() - t0, 2)}
    if reason:
        record["reason"] = reason
        record["log_tail"] = list(tail)[-15:]
    if result_path.exists():
        try:
            record["result"] = json.loads(result_path.read_text())
        except ValueError:
            pass
    if isinstance(record.get("result"), dict) and "skipped" in record["result"]:
        record["status"], record["reason"] = "skipped", record["result"]["skipped"]
    return record


def _get(results: dict[str, Any], part: str, *keys: str) -> Any:
    value: Any = results["parts"].get(part, {}).get("result")
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _worker_rate(results: dict[str, Any], workers: int) -> float | None:
    for run in _get(results, "workers", "runs") or []:
        if run.get("num_workers") == workers:
            return run.get("images_per_second")
    return None


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's ratios: each {label, value, reference, factor, ok}; ok None when a number is missing."""
    ceiling = _get(results, "ceiling", "back_to_back_images_per_second")
    loader = _get(results, "dataloader", "images_per_second")
    gpu = _get(results, "curator_gpu", "images_per_second")
    cpu = _get(results, "curator_cpu", "images_per_second")
    whole = _get(results, "whole_64k", "whole_images_per_second")
    plain = _get(results, "plain_stage", "images_per_second")
    pillow = _get(results, "pillow_core", "pillow_draft_x_cores")
    counts = results["meta"]["worker_counts"]
    few, many = _worker_rate(results, counts[0]), _worker_rate(results, counts[-1])
    cores = results["meta"]["cores"]
    rows = [
        ("`--decode gpu` span", gpu, "the GPU ceiling (decode + model back to back)", ceiling, 0.8),
        ("`--decode gpu` span", gpu, "the DataLoader loop", loader, 3.0),
        ("`--decode gpu` whole process, 64k images", whole, "the GPU ceiling", ceiling, 0.7),
        ("`--decode cpu` span", cpu, "the DataLoader loop", loader, 1.5),
        ("`--decode cpu` span", cpu, f"{cores} cores x one core's Pillow draft + resize 256/crop 224", pillow, 0.8),
        ("plain `process()` stage span (`--decode cpu`)", plain, "the DataLoader loop", loader, 1.5),
        (f"near-free stage, {counts[-1]} workers", many, f"{counts[0]} workers", few, 3.0),
    ]
    out = []
    for label, value, name, reference, factor in rows:
        ok = None if value is None or reference is None else value >= factor * reference
        out.append({"label": label, "value": value, "reference_name": name, "reference": reference,
                    "factor": factor, "ok": ok, "ratio": value / reference if ok is not None and reference else None})
    return out


def _n(value: Any) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    parts = results["parts"]
    gpu_name = _get(results, "stage_alone", "gpu") or meta.get("gpu") or meta["device"]
    lines = [f"# GPU check: {gpu_name}, {meta['cores']} cores, torch {meta['torch']}, torchvision "
             f"{meta['torchvision']}, {meta['model']} (random weights), batch {meta['batch']}", ""]
    if meta["quick"]:
        lines += ["**Quick harness check** (tiny dataset, `--device " + meta["device"] + "`): the numbers say "
                  "nothing about speed.", ""]
    lines += ["| part | measurement | images | img/s in span | img/s whole process | notes |",
              "|---|---|---:|---:|---:|---|"]

    def row(part: str, label: str, images: Any, span: Any, whole: Any = None, notes: str = "") -> None:
        lines.append(f"| {part} | {label} | {_n(images) if isinstance(images, (int, float)) else images or ''} | "
                     f"{_n(span)} | {'' if whole is None else _n(whole)} | {notes} |")

    def status_row(part: str, label: str) -> bool:
        record = parts.get(part)
        if record is None:
            row(part, label, "", None, None, "not run")
            return False
        if record["status"] != "ok" and not record.get("result"):
            row(part, label, "", None, None, f"{record['status']}: {record.get('reason', '')}")
            return False
        return True

    def curator_row(part: str, label: str, run: dict[str, Any] | None, extra: str = "") -> None:
        if not run:
            return
        s = run.get("summary", {})
        notes = [f"setup {s.get('seconds_setup', 0):.1f}s, wait for input {s.get('seconds_wait_input', 0):.1f}s, "
                 f"stages {s.get('seconds_stages', 0):.1f}s"]
        if "main_cpu_us_per_image" in run:
            notes.insert(0, f"main process {run['main_cpu_us_per_image']:.0f} us/image")
        if run.get("images_failed"):
            notes.insert(0, f"**{run['images_failed']} failed**")
        if extra:
            notes.append(extra)
        row(part, label, run.get("images"), run.get("images_per_second"), run.get("whole_images_per_second"),
            "; ".join(notes))

    if status_row("stage_alone", "stage alone (`process_tensors`)"):
        r = parts["stage_alone"]["result"]
        note = f"{r['decode_size']}-px squares, {r['precision']}"
        if "device_images_per_second" in r:
            row("stage_alone", "stage alone, uint8 squares already on the GPU", f"{r['batch']} x {r['passes']}",
                r["device_images_per_second"], None, note)
        label = "stage alone, from pinned host memory" if r.get("gpu") else f"stage alone, {meta['device']}"
        row("stage_alone", label, f"{r['batch']} x {r['passes']}", r.get("host_images_per_second"), None, note)
    if status_row("ceiling", "nvJPEG ceiling"):
        r = parts["ceiling"]["result"]
        where = "nvJPEG" if r["device"].startswith("cuda") else "torchvision CPU (harness check)"
        row("ceiling", f"{where} decode + resize 256/crop 224 (decode ceiling)",
            f"{r['images_per_pass']} x {r['passes']}", r.get("decode_images_per_second"))
        row("ceiling", "decode + model back to back (**GPU ceiling**)", f"{r['images_per_pass']} x {r['passes']}",
            r.get("back_to_back_images_per_second"))
    if status_row("dataloader", "DataLoader loop"):
        r = parts["dataloader"]["result"]
        whole = r["images"] / parts["dataloader"]["seconds"] if parts["dataloader"]["status"] == "ok" else None
        row("dataloader", f"plain PyTorch DataLoader, {r['num_workers']} workers, pin_memory={r['pin_memory']}",
            r["images"], r["images_per_second"], whole,
            f"span = model build to last embeddings on the CPU; first batch after {r['seconds_to_first_batch']:.1f}s")
    for part, label in (("curator_gpu", "`curator embed --decode gpu`, torchvision stage"),
                        ("curator_cpu", "`curator embed --decode cpu`, torchvision stage")):
        if status_row(part, label):
            curator_row(part, label, parts[part]["result"])
    if status_row("pillow_core", "one core's Pillow"):
        r = parts["pillow_core"]["result"]
        row("pillow_core", "one core: Pillow draft + resize 256/crop 224", r["images"],
            r["pillow_draft_images_per_second"], None,
            f"x {r['cores']} cores = {_n(r['pillow_draft_x_cores'])}; curator's CPU decoder "
            f"{_n(r['curator_decoder_images_per_second'])}/core")
    if status_row("plain_stage", "plain process() stage"):
        for run in parts["plain_stage"]["result"].get("runs", []):
            curator_row("plain_stage", f"`curator embed --decode {run['decode']}`, plain `process()` stage "
                        "(VitPlainStage)", run)
    if status_row("whole_64k", "64k whole process"):
        curator_row("whole_64k", "`curator embed --decode gpu`, 64k images, whole process",
                    parts["whole_64k"]["result"])
    if status_row("workers", "near-free stage"):
        for run in parts["workers"]["result"].get("runs", []):
            curator_row("workers", f"`curator embed`, CentrePixelStage, --num-workers {run['num_workers']}", run)
    if status_row("ray", "--executor ray"):
        run = parts["ray"]["result"]
        per = ", ".join(f"{w.get('images', 0)} img/{w.get('seconds', 0):.0f}s" for w in run.get("workers") or [])
        curator_row("ray", f"`curator embed --executor ray`, {run.get('actors')} actors x 0.25 GPU", run,
                    f"per actor: {per}")
    for name, record in parts.items():  # a part whose numbers are in but that did not end well
        if record["status"] not in ("ok", "skipped") and record.get("result"):
            lines.append(f"| {name} | (partial: {record['status']}, {record.get('reason', '')}) | | | | |")

    lines += ["", "## Targets (issue 13)", ""]
    for c in results.get("checks", []):
        mark = "[x]" if c["ok"] else "[ ]"
        if c["ok"] is None:
            lines.append(f"- {mark} {c['label']} >= {c['factor']} x {c['reference_name']}: n/a "
                         f"({_n(c['value'])} vs {_n(c['reference'])})")
        else:
            lines.append(f"- {mark} {c['label']} {_n(c['value'])} img/s >= {c['factor']} x {c['reference_name']} "
                         f"{_n(c['reference'])} = {_n(c['factor'] * c['reference'])} (ratio {c['ratio']:.2f})")
    lines += ["", "## Parts", "", "| part | status | seconds | note |", "|---|---|---:|---|"]
    for name, record in parts.items():
        lines.append(f"| {name} | {record['status']} | {record['seconds']:.0f} | {record.get('reason', '') or ''} |")
    lines.append(f"\nTotal {results.get('seconds_total', 0):.0f}s.")
    return "\n".join(lines) + "\n"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="torchvision model, random weights (default vit_b_32; quick: mobilenet_v3_small)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (quick: 16)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny dataset (2 x 16 images), one copy per run, short passes: checks the harness")
    parser.add_argument("--parts", default=None, help="comma-separated parts to run (default: all)")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds for the whole check; a part gets at most what is left")
    parser.add_argument("--part-timeout", type=float, default=None,
                        help="every part's time limit, in seconds (default: each its own; quick: 120)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="default bench/data (quick: $TMPDIR/curator-gpu-check-quick)")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "data" / "gpu-results.json",
                        help="results file (default bench/data/gpu-results.json, git-ignored)")
    parser.add_argument("--markdown", type=Path, default=None, help="default: --json with .md")
    parser.add_argument("--run-part", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_part:
        return part_main(args.run_part, args.config, args.result)

    started = time.perf_counter()
    deadline = started + args.budget
    cuda = args.device.startswith("cuda")
    quick = args.quick
    batch = args.batch_size or (16 if quick else 256)
    args.model = args.model or ("mobilenet_v3_small" if quick else "vit_b_32")
    wanted = set(args.parts.split(",")) if args.parts else {p.name for p in PARTS}
    unknown = wanted - {p.name for p in PARTS}
    if unknown:
        parser.error(f"unknown parts {', '.join(sorted(unknown))} (known: {', '.join(p.name for p in PARTS)})")
    data_dir = args.data_dir or (Path(os.environ.get("TMPDIR", "/tmp")) / "curator-gpu-check-quick" if quick
                                 else BENCH_DIR / "data")
    markdown_path = args.markdown or args.json.with_suffix(".md")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    import gpu_peers

    cores = gpu_peers.cores()
    worker_counts = [1, 2] if quick else [4, 8, 16]
    results: dict[str, Any] = {
        "meta": {"device": args.device, "model": args.model, "batch": batch, "quick": quick, "cores": cores,
                 "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "torch": _version("torch"),
                 "torchvision": _version("torchvision"), "pyarrow": _version("pyarrow"), "pillow": _version("pillow"),
                 "ray": _version("ray"), "worker_counts": worker_counts, "budget_seconds": args.budget},
        "parts": {}, "checks": []}

    def save() -> None:
        results["checks"] = checks(results)
        results["seconds_total"] = round(time.perf_counter() - started, 1)
        for path, text in ((args.json, json.dumps(results, indent=2, default=str) + "\n"),
                           (markdown_path, markdown(results))):
            partial = path.with_name(path.name + ".partial")
            partial.write_text(text)
            partial.replace(path)

    t0 = time.perf_counter()
    spec = QUICK_SPEC if quick else DatasetSpec()
    shards = ensure_dataset(data_dir, spec, workers=max(2, cores))
    results["meta"]["images_per_copy"] = spec.shards * spec.per_shard
    results["meta"]["seconds_dataset"] = round(time.perf_counter() - t0, 1)
    print(f"dataset: {len(shards)} shards x {spec.per_shard} JPEGs in {data_dir} "
          f"({results['meta']['seconds_dataset']}s)", flush=True)
    work_dir = data_dir / "gpu-check"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    save()
    for part in PARTS:
        if part.name not in wanted:
            continue
        remaining = deadline - time.perf_counter()
        if part.cuda_only and not cuda:
            record = {"status": "skipped", "seconds": 0.0, "reason": f"needs CUDA (--decode gpu); --device {args.device}"}
        elif remaining < 20:
            record = {"status": "skipped", "seconds": 0.0, "reason": f"out of time budget ({remaining:.0f}s left)"}
        elif part.name == "ray" and importlib.util.find_spec("ray") is None:
            record = {"status": "skipped", "seconds": 0.0,
                      "reason": "ray is not installed here (no module named 'ray'); carry a wheel to run it"}
        else:
            copies = 1 if quick else part.copies
            inputs = linked_copies(shards, copies, work_dir / f"x{copies}") if part.copies > 1 else None
            cfg = {"device": args.device, "model": args.model, "batch": batch, "shards": [str(s) for s in shards],
                   "inputs": str(inputs) if inputs else None, "work_dir": str(work_dir),
                   "passes": 1 if quick else 3, "worker_counts": worker_counts,
                   "ray_cpus_per_actor": 1 if not cuda else max(1, cores // 4)}
            config = work_dir / f"{part.name}.config.json"
            config.write_text(json.dumps(cfg, indent=2) + "\n")
            timeout = min(args.part_timeout or (QUICK_TIMEOUT if quick else part.timeout), remaining - 5)
            print(f"== {part.name} (time limit {timeout:.0f}s)", flush=True)
            record = spawn_part(part.name, config, work_dir / f"{part.name}.result.json", timeout)
            if inputs is not None:
                shutil.rmtree(inputs, ignore_errors=True)
        results["parts"][part.name] = record
        line = f"== {part.name}: {record['status']} in {record['seconds']:.0f}s"
        print(line + (f" ({record['reason']})" if record.get("reason") else ""), flush=True)
        for text in record.get("log_tail", []) if record["status"] in ("failed", "timeout") else []:
            print(f"   | {text}", flush=True)
        save()
    shutil.rmtree(work_dir, ignore_errors=True)
    save()
    print(f"\n{markdown_path.read_text()}results in {args.json} and {markdown_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
