"""``plugins/`` examples run as a user runs them, and ``curator stages`` lists what ``--stage`` can name."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, embeddings, img2dataset_tar, read_output, unit_norms

PLUGINS = ROOT / "plugins"


def test_custom_embedding_plugin_matches_the_builtin_torchvision_stage(cli, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    shard = img2dataset_tar(tmp_path / "s.tar", 3)
    result = cli("embed", shard, "-o", tmp_path / "plugin", "--stage", f"{PLUGINS / 'custom_embedding.py'}:MyCustomEmbeddingStage",
                 "--stage-arg", f"model_path={tmp_path / 'resnet18.pth'}", "--stage-arg", "batch_size=2",
                 "--precision", "fp32")  # bf16 results depend on each stage's op order
    assert result.exit_code == 0, result.output
    plugin = read_output(tmp_path / "plugin" / "s.parquet")
    assert embeddings(plugin).shape == (3, 512) and np.allclose(unit_norms(plugin), 1.0, atol=1e-5)

    builtin = ["--stage", "torchvision", "--stage-arg", "model=resnet18", "--stage-arg", f"weights={tmp_path / 'resnet18.pth'}",
               "--precision", "fp32"]
    result = cli("embed", shard, "-o", tmp_path / "builtin", *builtin, "--decode-size", "full")  # the list path
    assert result.exit_code == 0, result.output
    listed = embeddings(read_output(tmp_path / "builtin" / "s.parquet"))
    assert np.allclose(embeddings(plugin), listed, atol=1e-5)

    # at its defaults the built-in stage takes the tensor fast path (decoders resize and crop): nearly the same
    result = cli("embed", shard, "-o", tmp_path / "fast", *builtin)
    assert result.exit_code == 0, result.output
    fast = embeddings(read_output(tmp_path / "fast" / "s.parquet"))
    assert (np.sum(fast * listed, axis=1) > 0.999).all()


def test_timm_backbone_plugin_random_init_and_checkpoint(cli, tmp_path):
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), tmp_path / "test_vit.pth")
    shard = img2dataset_tar(tmp_path / "s.tar", 3)
    spec = f"{PLUGINS / 'timm_backbone.py'}:TimmBackboneStage"
    runs = {}
    for label, extra in (("random", []), ("file", ["--stage-arg", f"checkpoint_path={tmp_path / 'test_vit.pth'}"]),
                         ("file-again", ["--stage-arg", f"checkpoint_path={tmp_path / 'test_vit.pth'}"])):
        result = cli("embed", shard, "-o", tmp_path / label, "--stage", spec, "--stage-arg", "model_name=test_vit", *extra)
        assert result.exit_code == 0, result.output
        table = read_output(tmp_path / label / "s.parquet")
        assert np.allclose(unit_norms(table), 1.0, atol=1e-5)
        runs[label] = embeddings(table)
    assert runs["random"].shape == (3, timm.create_model("test_vit", num_classes=0).num_features)
    assert np.allclose(runs["file"], runs["file-again"], atol=1e-6)  # the weights came from the file


def test_timm_backbone_plugin_without_timm_says_how_to_install(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    result = cli("embed", img2dataset_tar(tmp_path / "s.tar", 1), "-o", tmp_path / "out",
                 "--stage", f"{PLUGINS / 'timm_backbone.py'}:TimmBackboneStage")
    assert result.exit_code == 2
    assert "needs timm: pip install timm" in result.output


def test_stages_lists_builtins_with_description_and_arguments(cli):
    result = cli("stages")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Built-in stages:"
    for name in ("perceptual", "torchvision", "clip", "linear-head"):
        assert any(line.startswith(f"  {name} ") for line in lines), name
    assert "Weight-free perceptual embedding" in result.output
    assert "model: str = 'resnet50', weights: str = 'DEFAULT', normalize: bool = True" in result.output
    assert "head_path: str (required)" in result.output
    assert "target: aesthetic_score|nsfw_score = 'aesthetic_score'" in result.output


def test_builtin_names_work_from_a_source_checkout_that_was_never_installed(tmp_path):
    """With only PYTHONPATH pointing at the checkout (no package metadata, so no entry points), the
    built-in stages still resolve by name, the default one included."""
    shard = img2dataset_tar(tmp_path / "s.tar", 2)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = ("import sys, importlib.metadata as m\n"
            "published = m.entry_points  # curator's own group empty: as if it were not installed\n"
            "m.entry_points = lambda **kw: [] if kw.get('group') == 'curator.stages' else published(**kw)\n"
            "from curator_cli.cli import main\n"
            "sys.argv = ['curator', *sys.argv[1:]]\n"
            "main()\n")
    for out, stage in (("default", []),
                       ("torchvision", ["--stage", "torchvision", "--stage-arg", "model=resnet18",
                                        "--stage-arg", "weights=none"])):
        done = subprocess.run([sys.executable, "-c", code, "embed", str(shard), "-o", str(tmp_path / out), "-q",
                               *stage], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert read_output(tmp_path / out / "s.parquet").num_rows == 2


def test_stages_name_shows_one_in_full(cli):
    result = cli("stages", "torchvision")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("torchvision  (curator_cli.stages.builtin.torchvision_embedding:TorchvisionEmbeddingStage, built in)")
    assert "downloaded into the torch cache" in result.output  # the module's documentation
    assert re.search(r"^  weights +str +'DEFAULT'$", result.output, re.MULTILINE)
    by_path = cli("stages", f"{PLUGINS / 'custom_embedding.py'}:MyCustomEmbeddingStage")
    assert by_path.exit_code == 0 and re.search(r"^  model_path +str +\(required\)$", by_path.output, re.MULTILINE)
    unknown = cli("stages", "no-such-stage")
    assert unknown.exit_code == 2 and "unknown stage 'no-such-stage'" in unknown.output


@pytest.mark.slow
def test_plugin_package_installs_and_runs_by_short_name(tmp_path):
    source = tmp_path / "example-package"
    shutil.copytree(PLUGINS / "example-package", source)  # build in a copy: keeps plugins/ free of build output
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", "--no-build-isolation", str(source)],
                   check=True, capture_output=True, text=True)
    try:
        curator = [sys.executable, "-m", "curator_cli.cli"]
        listed = subprocess.run([*curator, "stages"], capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
        installed = listed.stdout.split("Stages from installed packages:")[1]
        assert "colour-histogram" in installed and "bins: int = 4" in installed

        shard = img2dataset_tar(tmp_path / "s.tar", 3)
        done = subprocess.run([*curator, "embed", str(shard), "-o", str(tmp_path / "out"), "--quiet",
                               "--stage", "colour-histogram", "--stage-arg", "bins=3"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        table = read_output(tmp_path / "out" / "s.parquet")
        assert embeddings(table).shape == (3, 27) and np.allclose(unit_norms(table), 1.0, atol=1e-5)
    finally:
        subprocess.run([*pip, "uninstall", "--yes", "--quiet", "curator-colour-histogram"], capture_output=True)
