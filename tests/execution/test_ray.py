"""``--executor ray`` on a real local Ray (one instance shared by these tests): same output as local runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from curator_cli.execution.ray import actor_count, actor_cpus
from curator_cli.stages.resources import Resources

from conftest import ROOT, img2dataset_tar, stage_spec

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    # on loopback: the test cluster's traffic never leaves this machine's 127.0.0.1
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def tables(out):
    return {p.relative_to(out).as_posix(): pq.read_table(p) for p in sorted(out.rglob("[!._]*.parquet"))}


def assert_same_output(a, b):
    ta, tb = tables(a), tables(b)
    assert ta.keys() == tb.keys() and ta
    for name in ta:
        x, y = ta[name], tb[name]
        assert x.schema == y.schema
        for column in x.column_names:
            if column == "embedding":
                dim = x.schema.field(column).type.list_size
                np.testing.assert_allclose(
                    np.array([v or [np.nan] * dim for v in x.column(column).to_pylist()], dtype=float),
                    np.array([v or [np.nan] * dim for v in y.column(column).to_pylist()], dtype=float), rtol=1e-6)
            else:
                assert x.column(column).to_pylist() == y.column(column).to_pylist(), column
    assert (a / "_SUCCESS").exists() == (b / "_SUCCESS").exists()


def test_actor_count_follows_resources():
    assert actor_count(Resources(gpus=0.25), {"GPU": 2.0, "CPU": 64.0}, 100, None) == (8, 0.25)
    assert actor_count(Resources(gpus=0.25), {"CPU": 4.0}, 100, None) == (4, 0.0)  # no GPUs: run on CPUs
    assert actor_count(Resources(cpus=2.0), {"CPU": 8.0}, 100, 3) == (3, 0.0)
    assert actor_count(Resources(), {"CPU": 8.0}, 2, None) == (2, 0.0)


def test_actors_sharing_a_gpu_share_the_cores_between_them():
    one_gpu_box = {"GPU": 1.0, "CPU": 16.0}
    count, gpus = actor_count(Resources(gpus=0.25), one_gpu_box, 100, None)
    assert (count, gpus) == (4, 0.25)
    assert actor_cpus(Resources(gpus=0.25), one_gpu_box, count, gpus) == 4.0  # 4 decode workers each, 16 in all
    assert actor_cpus(Resources(cpus=6.0, gpus=0.25), one_gpu_box, count, gpus) == 6.0  # the stage asks for more
    assert actor_cpus(Resources(cpus=2.0), {"CPU": 8.0}, 4, 0.0) == 2.0  # CPU actors: what the stage asks


def test_ray_run_equals_local_run(cli, tmp_path, ray_cluster):
    local = cli("embed", ROOT / "sample_data", "-o", tmp_path / "local")
    assert local.exit_code == 0, local.output
    distributed = cli("embed", ROOT / "sample_data", "-o", tmp_path / "ray", "--executor", "ray",
                      "--summary-json", tmp_path / "s.json")
    assert distributed.exit_code == 0, distributed.output
    assert_same_output(tmp_path / "local", tmp_path / "ray")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["shards_written"] == 2 and summary["images"] == 14
    assert summary["seconds_setup"] > 0  # the actors' stage setup is in the time split
    assert sum(w["shards"] for w in summary["workers"]) == 2 and all("images_per_second" in w for w in summary["workers"])
    again = cli("embed", ROOT / "sample_data", "-o", tmp_path / "ray", "--executor", "ray",
                "--summary-json", tmp_path / "s.json")
    assert again.exit_code == 0 and json.loads((tmp_path / "s.json").read_text())["shards_skipped"] == 2


def test_setup_once_per_node_and_per_actor(cli, tmp_path, ray_cluster):
    for s in range(4):
        img2dataset_tar(tmp_path / "in" / f"{s}.tar", 2)
    log = tmp_path / "setup.log"
    result = cli("embed", tmp_path / "in", "-o", tmp_path / "out", "--executor", "ray", "--stage",
                 stage_spec("Mean"), "--stage-arg", f"log={log}")
    assert result.exit_code == 0, result.output
    lines = log.read_text().splitlines()
    assert lines.count("node") == 1  # one node
    assert sorted(lines[1:]) == ["worker ray-actor-0 cpu", "worker ray-actor-1 cpu"]  # two actors, 1 CPU each


def test_an_actor_killed_mid_shard_is_retried(cli, tmp_path, ray_cluster):
    for s in range(3):
        img2dataset_tar(tmp_path / "in" / f"{s}.tar", 3, first_seed=10 * s)
    args = ["--stage", stage_spec("Mean")]
    assert cli("embed", tmp_path / "in", "-o", tmp_path / "local", *args).exit_code == 0
    result = cli("embed", tmp_path / "in", "-o", tmp_path / "ray", "--executor", "ray", *args,
                 "--stage-arg", "die_on=000000001", "--stage-arg", f"marker={tmp_path / 'died'}",
                 "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "died").exists()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert len(summary["workers"]) == 3  # two actors, one replacement
    # same rows as a local run (the stage's die_on/marker arguments differ, so compare rows only)
    for name, table in tables(tmp_path / "local").items():
        other = tables(tmp_path / "ray")[name]
        assert table.column("image_id").to_pylist() == other.column("image_id").to_pylist()
        assert table.column("embedding").to_pylist() == other.column("embedding").to_pylist()
    assert not list((tmp_path / "ray").rglob(".*tmp-*"))


def test_resume_after_a_terminated_ray_run(cli, tmp_path, ray_cluster):
    for s in range(6):
        img2dataset_tar(tmp_path / "in" / f"{s}.tar", 4, first_seed=10 * s)
    args = ["--stage", stage_spec("Mean"), "--stage-arg", "delay=0.5", "--batch-size", "2"]
    assert cli("embed", tmp_path / "in", "-o", tmp_path / "local", *args).exit_code == 0
    out = tmp_path / "ray"
    driver = subprocess.Popen([sys.executable, "-m", "curator_cli.cli", "embed", str(tmp_path / "in"), "-o", str(out),
                               "--executor", "ray", "--ray-address", ray_cluster, *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.monotonic() + 120
    while not list(out.glob("*.parquet")):
        assert driver.poll() is None, driver.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    driver.send_signal(signal.SIGTERM)  # as a scheduler stops a job: ray.init's own handler must not replace ours
    driver.wait(timeout=60)
    err = driver.stderr.read()
    assert driver.returncode == 143 and "terminated; finished shards are kept" in err, err
    assert not (out / "_SUCCESS").exists()
    result = cli("embed", tmp_path / "in", "-o", out, "--executor", "ray", *args, "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["shards_skipped"] >= 1
    assert_same_output(tmp_path / "local", out)


def test_without_ray_the_error_names_the_extra(tmp_path):
    shard = img2dataset_tar(tmp_path / "s.tar", 1)
    code = ("import sys; sys.modules['ray'] = None; from curator_cli.cli import main; "
            f"main(['embed', {str(shard)!r}, '-o', {str(tmp_path / 'out')!r}, '--executor', 'ray'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2 and "pip install 'curator-cli[ray]'" in done.stderr
