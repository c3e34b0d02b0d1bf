"""``make bench``: curator embed against the how-to loop and Ray Data, on the same shards and stages.

Generates (or reuses) photo-like JPEG tar shards under ``bench/data/``, then runs, one after
another and each in its own process: the single-core decode ceilings, each stage alone on
pre-decoded batches, and for each stage (mean pixel, resnet18) the three systems, round-robin,
``--repeats`` times (the median is reported); then ``curator embed`` alone over more resnet18
shards, for its steady throughput beside the stage's own. Last, ``curator embed`` on 4 and on 16
shards for peak memory. Every system's process tree is sampled for RSS every 50 ms.

Prints a table and writes the same numbers to ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import psutil  # noqa: E402  (bench-only dependency)

from datagen import DatasetSpec, ensure_dataset, merged_shards  # noqa: E402

SYSTEMS = ("howto", "ray", "curator")
SYSTEM_LABELS = {"howto": "how-to loop", "ray": "Ray Data", "curator": "curator embed",
                 "curator-small": "curator embed, stage declares decode_size=32",
                 "curator-long": "curator embed, longer run"}
# Extra curator-only runs per stage: (key in the results, stage to run instead).
VARIANTS = {"mean": [("curator-small", "mean-small")], "resnet18": []}
# curator's own cost per image, on every bench shard: (key, near-free stage). The main process's CPU
# per image (the stages' calls aside) on the tensor path and on a plain process() stage, both at
# decode size 256; the decode workers' CPU per image at 224, against the single-core ceiling there.
# The decode run has one worker, so that it has a core to itself, as the single-core ceiling does.
# The main-process runs go over the bench shards (250 images each) and over the same images in
# shards of 2,000 ("/2000"): the difference is what each shard costs (opening, committing, its
# manifest), which img2dataset's 10,000-image shards spread over 40 times more images.
COST_RUNS = (("tensor-256", "mean-tensor", (), False), ("tensor-256/2000", "mean-tensor", (), True),
             ("process-256", "mean-256", (), False), ("process-256/2000", "mean-256", (), True),
             ("decode-224", "mean-tensor-224", ("--num-workers", "1"), False))
MERGED_PER_SHARD = 2000
SAMPLE_SECONDS = 0.05
PSS_SAMPLE_SECONDS = 0.5


@dataclass
class Plan:
    """How much work each part does: shards per stage, repeats, images for the ceilings/model."""

    spec: DatasetSpec = field(default_factory=DatasetSpec)
    mean_shards: int = 8
    resnet_shards: int = 3
    memory_shards: tuple[int, int] = (4, 16)
    repeats: int = 3
    resnet_repeats: int = 1
    resnet_long_shards: int = 16  # curator alone (4,000 images), for throughput past its one-time costs
    ceiling_images: int = 300
    model_images: dict[str, int] = field(default_factory=lambda: {"mean": 250, "resnet18": 250})


QUICK = Plan(spec=DatasetSpec(shards=4, per_shard=40), mean_shards=2, resnet_shards=1, memory_shards=(1, 4),
             resnet_long_shards=2, repeats=1, resnet_repeats=1, ceiling_images=60,
             model_images={"mean": 40, "resnet18": 16})


class TreeSampler:
    """Samples the summed RSS of a process and all its descendants every ``interval`` seconds, and
    their summed PSS (proportional set size: a page shared by k processes counts 1/k in each, so
    shared memory such as curator's batch arenas in /dev/shm, mapped by the main process and every
    decode worker, counts once; RSS counts it once per process that touched it)."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS, pss_interval: float = PSS_SAMPLE_SECONDS) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.pss_interval = pss_interval
        self._pss_at = 0.0
        self.own_cpu = 0.0  # CPU this sampler's thread used: not "other" work on the machine
        self.peak = 0
        self.peak_pss = 0
        self.samples = 0
        self.cpu_seconds: dict[int, float] = {}  # last CPU time (user + system) seen per process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _total(self) -> tuple[int, int]:
        total = pss = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0, 0
        # PSS walks every page table of the tree (smaps_rollup): at 20 Hz that took a third of a core
        # from the runs it measured, so it is sampled less often than RSS (statm, cheap)
        with_pss = time.monotonic() - self._pss_at >= self.pss_interval
        if with_pss:
            self._pss_at = time.monotonic()
        for proc in procs:
            try:
                if with_pss:
                    full = proc.memory_full_info()
                    total += full.rss
                    pss += getattr(full, "pss", full.rss)
                else:
                    total += proc.memory_info().rss
                times = proc.cpu_times()
                self.cpu_seconds[proc.pid] = times.user + times.system
            except psutil.Error:
                pass
        return total, pss

    def _loop(self) -> None:
        cpu0 = time.thread_time()
        while not self._stop.is_set():
            rss, pss = self._total()
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            self.samples += 1
            self.own_cpu = time.thread_time() - cpu0
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


@dataclass
class Measured:
    """What ``run_measured`` saw of one process tree."""

    code: int
    wall: float
    peak_rss: int
    peak_pss: int
    other_cpu: float  # share of all CPUs busy with processes outside the tree (other work on the machine)


def run_measured(cmd: list[str], log: Path) -> Measured:
    """Run ``cmd`` (output to ``log``) while sampling its process tree's RSS and the machine's CPU use."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as handle:
        busy0, t0 = _busy_seconds(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        with TreeSampler(proc.pid) as sampler:
            code = proc.wait()
        wall, busy = time.perf_counter() - t0, _busy_seconds() - busy0
    tree = sum(sampler.cpu_seconds.values())
    other = max(0.0, busy - tree - sampler.own_cpu) / (wall * (os.cpu_count() or 1))
    return Measured(code, wall, sampler.peak, sampler.peak_pss, min(1.0, other))


def curator_bin() -> Path:
    """The ``curator`` script of the environment running this benchmark."""
    return Path(sys.executable).parent / "curator"


class Bench:
    """Runs the parts of the benchmark and collects their results."""

    def __init__(self, plan: Plan, data_dir: Path) -> None:
        self.plan = plan
        self.data_dir = data_dir
        self.runs_dir = data_dir / "runs"
        self.logs_dir = data_dir / "logs"
        self.shards: list[Path] = []

    def system(self, system: str, stage: str, shards: list[Path], tag: str,
               extra: tuple[str, ...] = ()) -> dict[str, Any]:
        """One run of ``system`` with ``stage`` on ``shards``: its own numbers plus wall time and peak RSS."""
        work = self.runs_dir / tag
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        result_file = work / "result.json"
        paths = [str(p) for p in shards]
        if system == "curator":
            from systems import STAGES

            stage_spec = f"{BENCH_DIR / 'stages.py'}:{STAGES[stage].__name__}"
            inputs = [str(shards[0].parent)] if shards == self.shards else paths
            cmd = [str(curator_bin()), "embed", *inputs, "-o", str(work / "out"), "--stage", stage_spec,
                   "--summary-json", str(result_file), "-q", *extra]
        else:
            cmd = [sys.executable, str(BENCH_DIR / "systems.py"), system, *paths, "--stage", stage,
                   "--result", str(result_file), "--out", str(work / "out")]
        m = run_measured(cmd, self.logs_dir / f"{tag}.log")
        if m.code != 0 or not result_file.exists():
            raise RuntimeError(f"{tag} failed (exit {m.code}); see {self.logs_dir / (tag + '.log')}:\n"
                               + (self.logs_dir / f"{tag}.log").read_text()[-3000:])
        result = json.loads(result_file.read_text())
        result.update(wall_seconds=m.wall, peak_rss_bytes=m.peak_rss, peak_pss_bytes=m.peak_pss, shards=len(shards),
                      other_cpu=m.other_cpu,
                      load_average_1m=os.getloadavg()[0])
        if system == "curator":
            result["images_per_second"] = result["images"] / result["seconds"]
            result["stage"] = stage
        print(f"  {tag:<28} {result['images']:>5} images  {result['images_per_second']:8.1f} img/s  "
              f"(wall {m.wall:5.1f}s, peak RSS {m.peak_rss / 2**20:6.0f} MiB, other CPU use {m.other_cpu:4.0%})",
              flush=True)
        result["_out"] = str(work / "out")
        return result

    def helper(self, system: str, stage: str, shards: list[Path], limit: int) -> dict[str, Any]:
        """The ceiling / stage-alone measurements (their own process, not RSS-critical)."""
        result_file = self.runs_dir / f"{system}-{stage}.json"
        cmd = [sys.executable, str(BENCH_DIR / "systems.py"), system, *map(str, shards), "--stage", stage,
               "--result", str(result_file), "--limit", str(limit)]
        m = run_measured(cmd, self.logs_dir / f"{system}-{stage}.log")
        if m.code != 0:
            raise RuntimeError(f"{system} {stage} failed:\n" + (self.logs_dir / f"{system}-{stage}.log").read_text()[-3000:])
        result = json.loads(result_file.read_text())
        result["other_cpu"] = m.other_cpu
        return result


def check_outputs(stage: str, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Do the systems agree? Same keys; embeddings compared to the how-to loop's (max |diff|, min cosine)."""
    import numpy as np
    import pyarrow.parquet as pq

    def load(system: str) -> dict[str, Any]:
        out = Path(runs[system]["_out"])
        if system.startswith("curator"):
            vectors: dict[str, Any] = {}
            for file in sorted(out.rglob("*.parquet")):
                table = pq.read_table(file, columns=["image_id", "embedding"]).to_pydict()
                vectors.update(zip(table["image_id"], table["embedding"]))
            return {k: np.asarray(v, dtype=np.float32) for k, v in vectors.items() if v is not None}
        keys = json.loads((out / "keys.json").read_text())
        return dict(zip(keys, np.load(out / "embeddings.npy")))

    reference = load("howto")
    report: dict[str, Any] = {}
    for system in runs:
        if system == "howto":
            continue
        other = load(system)
        common = sorted(reference.keys() & other.keys())
        a = np.stack([reference[k] for k in common])
        b = np.stack([other[k] for k in common])
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        report[system] = {"same_keys": reference.keys() == other.keys(), "max_abs_diff": float(np.abs(a - b).max()),
                          "min_cosine": float(cos.min())}
    return report


def machine() -> dict[str, Any]:
    """CPU model, core count, Python/torch/Ray versions and the date."""
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import ray
        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "curator_cli"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    where = subprocess.run([sys.executable, "-c", "import curator_cli; print(curator_cli.__file__)"], cwd=BENCH_DIR,
                           capture_output=True, text=True).stdout.strip()
    from curator_cli.stages.runtime import default_precision

    return {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "curator_precision": default_precision("cpu"),
            # whether the bench measured this checkout, without recording the machine's paths
            "curator_cli": ("this checkout" if where and Path(where).resolve().parent == (ROOT / "curator_cli").resolve()
                            else "another install" if where else None),
            "ray": ray_version, "platform": platform.platform(), "commit": commit + ("+dirty curator_cli" if dirty else ""),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def median_by(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (the lower middle one for an even count), with every run's value."""
    ordered = sorted(runs, key=lambda r: r[key])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen.pop("_out", None)
    chosen["all_" + key] = [round(r[key], 1) for r in runs]
    return chosen


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median images/s (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r["images_per_second"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["all_images_per_second"] = [round(r["images_per_second"], 1) for r in runs]
    return chosen


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it holds."""
    mean, resnet = results["stages"]["mean"]["systems"], results["stages"]["resnet18"]["systems"]
    ceiling = results["decode_ceiling"]
    cores = results["machine"]["cpu_count"]
    # The trivial stage as curator users write it declares the size it needs (a mean needs none:
    # decode_size=32); the full-size variant (declares nothing, NeMo behaviour) is reported beside it.
    cur_mean = mean["curator-small"]["images_per_second"]
    cur_full = mean["curator"]["images_per_second"]
    cur_resnet = resnet["curator"]["images_per_second"]
    long = resnet["curator-long"]
    long_rate = long["images"] / long["seconds"]
    long_past_setup = long["images"] / (long["seconds"] - long.get("seconds_setup", 0.0))
    alone = results["stages"]["resnet18"]["alone"]
    precision = alone["tensors_precision"]
    tensors = (alone["tensors_images_per_second"] + alone["tensors_after"]) / 2  # before and after the long run
    forward = alone["forward_bf16_images_per_second" if precision == "bf16" else "forward_images_per_second"]
    mem = results["memory"]
    costs = results["costs"]
    checks = [
        ("main-process CPU per image, tensor path, decode size 256 (us) <= 60",
         costs["tensor-256"]["main_cpu_us_per_image"], 60.0),
        ("the same on 2,000-image shards (us) <= 60", costs["tensor-256/2000"]["main_cpu_us_per_image"], 60.0),
        ("main-process CPU per image, plain process() stage, decode size 256 (us) <= 150",
         costs["process-256"]["main_cpu_us_per_image"], 150.0),
        ("the same on 2,000-image shards (us) <= 150", costs["process-256/2000"]["main_cpu_us_per_image"], 150.0),
        ("decode worker CPU per image at 224 / Pillow draft + resize to 224 alone (CPU per image) <= 1.15",
         costs["decode-224"]["decode_cpu_us_per_image"] / ceiling["draft_decode_resize224_cpu_us"], 1.15),
        ("mean (decode_size=32): curator / how-to loop >= 3", cur_mean / mean["howto"]["images_per_second"], 3.0),
        ("mean (decode_size=32): curator / Ray Data >= 1.5", cur_mean / mean["ray"]["images_per_second"], 1.5),
        (f"mean (decode_size=32): curator / ({cores} x decode+resize-to-224 ceiling) >= 0.8",
         cur_mean / (cores * ceiling["decode_resize224"]), 0.8),
        ("(full size, declares nothing) mean: curator / how-to loop", cur_full / mean["howto"]["images_per_second"],
         None),
        ("(full size, declares nothing) mean: curator / Ray Data >= 1.5", cur_full / mean["ray"]["images_per_second"],
         1.5),
        (f"(full size) mean: curator / ({cores} x full-size decode ceiling) >= 0.8",
         cur_full / (cores * ceiling["decode_full"]), 0.8),
        (f"resnet18: curator ({long['images']} images, past its {long.get('seconds_setup', 0):.1f}s of stage setup) / "
         f"stage alone on pre-decoded batches as curator calls it (process_tensors, {precision}; mean of the "
         f"measurements before and after) >= 0.9",
         long_past_setup / tensors, 0.9),
        (f"resnet18: the same, setup included ({long['images']} images, end to end)", long_rate / tensors, None),
        (f"resnet18: curator ({resnet['curator']['images']} images, end to end) / stage alone as curator calls it",
         cur_resnet / tensors, None),
        (f"(stricter) resnet18: curator ({long['images']} images, past setup) / model alone on ready normalised "
         f"tensors ({precision})", long_past_setup / forward, None),
        ("resnet18: curator / how-to loop >= 1.2", cur_resnet / resnet["howto"]["images_per_second"], 1.2),
        (f"memory: peak PSS {mem['large']['shards']} shards / {mem['small']['shards']} shards <= 1.1",
         mem["large"]["peak_pss_bytes"] / mem["small"]["peak_pss_bytes"], 1.1),
    ]
    out = []
    for name, value, threshold in checks:
        if name.startswith(("memory", "main-process", "decode worker", "the same on")):
            ok = value <= threshold
        else:
            ok = None if threshold is None else value >= threshold
        out.append({"target": name, "value": round(value, 3), "holds": ok})
    return out


def plan_images(results: dict[str, Any]) -> int:
    return next(iter(results["costs"].values()))["images"]


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (printed, and pasted into RESULTS.md)."""
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cpu_count']} CPUs; Python {m['python']}, torch {m['torch']}, "
             f"Ray {m['ray']}; commit {m['commit']}; curator_cli from {m['curator_cli']}; {m['date']}", ""]
    lines += ["| stage | system | images | images/s (median) | runs | curator / this | peak RSS MiB | other CPU |",
              "|---|---|---:|---:|---|---:|---:|---:|"]
    for stage, block in results["stages"].items():
        cur = block["systems"]["curator"]["images_per_second"]
        for system in block["systems"]:
            r = block["systems"][system]
            ratio = "" if system == "curator" else f"{cur / r['images_per_second']:.2f}x"
            if system == "curator-small":
                ratio = f"{r['images_per_second'] / block['systems']['howto']['images_per_second']:.2f}x how-to"
            if system == "curator-long":
                both = (block["alone"]["tensors_images_per_second"] + block["alone"]["tensors_after"]) / 2
                ratio = f"{r['images_per_second'] / both:.2f}x stage alone"
            lines.append(f"| {stage} | {SYSTEM_LABELS[system]} | {r['images']} | {r['images_per_second']:.1f} | "
                         f"{', '.join(map(str, r['all_images_per_second']))} | {ratio} | "
                         f"{r['peak_rss_bytes'] / 2**20:.0f} | {r['other_cpu']:.0%} |")
        alone = block["alone"]
        other_cpu = f"{alone['other_cpu']:.0%}"
        for key, label, other in (
            ("process_images_per_second", "stage alone, pre-decoded (`process`)", other_cpu),
            ("tensors_images_per_second", "stage alone, pre-decoded, as curator calls it (`process_tensors`, "
             f"{alone.get('tensors_precision')})", other_cpu),
            ("tensors_after", "the same, again right after the longer run", ""),
            ("forward_images_per_second", "model alone on ready tensors", other_cpu),
            ("forward_bf16_images_per_second", "model alone on ready tensors, bf16 autocast", other_cpu),
        ):
            if key in alone:
                lines.append(f"| {stage} | {label} | {alone['images']} | {alone[key]:.1f} | | "
                             f"{cur / alone[key]:.2f}x | | {other} |")
    c = results["decode_ceiling"]
    cores = m["cpu_count"]
    lines += ["", "Single-core decode ceiling (one process, images/s; x CPU count in brackets):", "",
              f"- PIL decode + bicubic resize to 224: {c['decode_resize224']:.1f} ({cores * c['decode_resize224']:.0f})",
              f"- with `Image.draft` (DCT scaling) + resize to 224: {c['draft_decode_resize224']:.1f} "
              f"({cores * c['draft_decode_resize224']:.0f})",
              f"- PIL full-size decode to RGB array, no resize: {c['decode_full']:.1f} ({cores * c['decode_full']:.0f})"]
    mem = results["memory"]
    lines += ["", "Peak memory of the curator process tree (mean stage), RSS / PSS: "
              + ", ".join(f"{r['shards']} shards ({r['images']} images) {r['peak_rss_bytes'] / 2**20:.0f} / "
                          f"{r['peak_pss_bytes'] / 2**20:.0f} MiB"
                          for r in (mem["small"], mem["large"]))]
    lines += ["", "Curator time split (median run, seconds): "]
    for stage, block in results["stages"].items():
        for system in ("curator", "curator-long"):
            if system not in block["systems"]:
                continue
            r = block["systems"][system]
            split = ", ".join(f"{k[len('seconds_'):]} {r[k]:.1f}" for k in
                              ("seconds_setup", "seconds_read", "seconds_decode", "seconds_wait_input",
                               "seconds_stages", "seconds_write") if k in r)
            cpu = (f"; main-process CPU {r['main_cpu_us_per_image']:.0f} us/image (stages' calls aside)"
                   if "main_cpu_us_per_image" in r else "")
            lines.append(f"- {stage}, {r['images']} images: total {r['seconds']:.1f}; {split}{cpu}")
    c = results["decode_ceiling"]
    lines += ["", f"Curator's own cost per image ({plan_images(results)} images, near-free stages, median of runs):", ""]
    labels = {"tensor-256": "tensor path (process_tensors), decode size 256",
              "tensor-256/2000": "the same, 2,000-image shards",
              "process-256": "plain process() stage, decode size 256",
              "process-256/2000": "the same, 2,000-image shards",
              "decode-224": "tensor path, decode size 224, one decode worker"}
    for key, r in results["costs"].items():
        runs = r.get("all_main_cpu_us_per_image") or r.get("all_decode_cpu_us_per_image")
        measure = "main process" if "all_main_cpu_us_per_image" in r else "decode workers"
        lines.append(f"- {labels[key]}: main process {r['main_cpu_us_per_image']:.0f} us, decode workers "
                     f"{r['decode_cpu_us_per_image']:.0f} us ({measure} in each run: {runs}), "
                     f"{r['images_per_second']:.0f} images/s")
    lines.append(f"- Pillow `draft` + resize to 224 alone, one core: {c['draft_decode_resize224_cpu_us']:.0f} us "
                 "of CPU per image")
    ray_threads = results["stages"]["resnet18"]["systems"]["ray"].get("actor_torch_threads")
    lines += ["", f"Ray actor torch threads: {ray_threads}"]
    others = [r["other_cpu"] for b in results["stages"].values() for r in b["systems"].values()]
    others += [results["decode_ceiling"]["other_cpu"], *(b["alone"]["other_cpu"] for b in results["stages"].values())]
    lines += ["", f"CPU used by processes outside the benchmark during the measurements: {min(others):.0%} to "
              f"{max(others):.0%} of the machine" + (" (other work was running: numbers are noisy)"
                                                     if max(others) > 0.1 else "")]
    lines += ["", "Targets:", ""]
    marks = {True: "x", False: " ", None: "-"}
    lines += [f"- [{marks[t['holds']]}] {t['target']}: {t['value']}" for t in results["targets"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the whole benchmark; exit 0 even when targets miss (they are reported, not enforced)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help="runs per system for the mean stage (median)")
    parser.add_argument("--resnet-repeats", type=int, default=None, help="runs per system for resnet18")
    parser.add_argument("--quick", action="store_true", help="tiny dataset, one run each: checks the harness")
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results.json")
    args = parser.parse_args(argv)
    plan = dataclasses.replace(QUICK) if args.quick else Plan()
    if args.repeats:
        plan.repeats = args.repeats
    if args.resnet_repeats:
        plan.resnet_repeats = args.resnet_repeats
    data_dir = args.data_dir / "quick" if args.quick else args.data_dir
    if not curator_bin().exists():
        sys.exit(f"bench: {curator_bin()} not found (run make install)")

    started = time.perf_counter()
    bench = Bench(plan, data_dir)
    t0 = time.perf_counter()
    bench.shards = ensure_dataset(data_dir, plan.spec, workers=os.cpu_count() or 2)
    print(f"dataset: {len(bench.shards)} shards x {plan.spec.per_shard} JPEGs ~{plan.spec.width}x{plan.spec.height} "
          f"q{plan.spec.quality} under {data_dir} ({time.perf_counter() - t0:.0f}s)", flush=True)
    results: dict[str, Any] = {"machine": machine(), "plan": {
        "shards": plan.spec.shards, "per_shard": plan.spec.per_shard, "mean_shards": plan.mean_shards,
        "resnet_shards": plan.resnet_shards, "repeats": plan.repeats, "resnet_repeats": plan.resnet_repeats,
        "resnet_long_shards": plan.resnet_long_shards},
        "load_average_start": os.getloadavg()}

    print("single-core decode ceiling and stages alone ...", flush=True)
    results["decode_ceiling"] = bench.helper("ceiling", "mean", bench.shards[:2], plan.ceiling_images)
    results["stages"] = {}
    for stage, count, repeats in (("mean", plan.mean_shards, plan.repeats),
                                  ("resnet18", plan.resnet_shards, plan.resnet_repeats)):
        alone = bench.helper("model", stage, bench.shards[:1], plan.model_images[stage])
        shards = bench.shards[:count]
        variants = VARIANTS[stage]
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in (*SYSTEMS, *(key for key, _ in variants))}
        print(f"{stage}: {count} shards, {repeats} round(s) of {', '.join(runs)}", flush=True)
        for round_ in range(repeats):
            for system in SYSTEMS:
                runs[system].append(bench.system(system, stage, shards, f"{stage}-{system}-{round_}"))
            for key, variant in variants:
                runs[key].append(bench.system("curator", variant, shards, f"{variant}-curator-{round_}"))
        if stage == "resnet18":  # the stage alone is timed again right after: the machine's speed drifts
            runs["curator-long"] = [bench.system("curator", stage, bench.shards[:plan.resnet_long_shards],
                                                 f"{stage}-curator-long")]
            alone["tensors_after"] = bench.helper("tensors", stage, bench.shards[:1],
                                                  plan.model_images[stage])["tensors_images_per_second"]
        last = {s: r[-1] for s, r in runs.items() if s != "curator-long"}  # other shards: nothing to compare
        results["stages"][stage] = {"shards": count, "alone": alone, "agreement": check_outputs(stage, last),
                                    "systems": {s: median_run(r) for s, r in runs.items()}}

    print("curator's own cost per image (main process, decode workers) ...", flush=True)
    results["costs"] = {}
    merged = merged_shards(bench.shards, data_dir / "merged", MERGED_PER_SHARD if not args.quick else 80)
    for key, stage, extra, regrouped in COST_RUNS:
        shards = merged if regrouped else bench.shards
        runs = [bench.system("curator", stage, shards, f"cost-{key.replace('/', '-')}-{round_}", extra)
                for round_ in range(plan.repeats)]
        results["costs"][key] = median_by(runs, "main_cpu_us_per_image" if key != "decode-224"
                                          else "decode_cpu_us_per_image")

    print("curator peak memory ...", flush=True)
    small, large = plan.memory_shards
    results["memory"] = {"small": bench.system("curator", "mean", bench.shards[:small], f"memory-{small}"),
                         "large": bench.system("curator", "mean", bench.shards[:large], f"memory-{large}")}
    results["load_average_end"] = os.getloadavg()
    results["targets"] = evaluate(results)
    results["seconds_total"] = time.perf_counter() - started
    shutil.rmtree(bench.runs_dir, ignore_errors=True)
    for r in [*results["memory"].values(), *(r for b in results["stages"].values() for r in b["systems"].values())]:
        r.pop("_out", None)
    text = table(results)
    print("\n" + text)
    agreement = {stage: block["agreement"] for stage, block in results["stages"].items()}
    print("\nAgreement with the how-to loop's embeddings:", json.dumps(agreement))
    print(f"\nbench: {results['seconds_total']:.0f}s in all; results in {args.json}")
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
