"""The package layout is the architecture: each folder is a layer of the data flow, and no module
imports from a layer above its own (a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "curator_cli"
# lowest first: what a stage author imports, then what finds stages, then I/O, decoding, running, the CLI;
# report (HTML pages over outputs) reads through io only, beside decode; so does dedup (near-duplicates
# from embedding parquet), which imports neither of its siblings, nor they it
LAYERS = ["tasks", "options", "stages", "loading", "io", "decode", "report", "dedup", "execution", "cli"]
LEVEL = {"tasks": 0, "options": 0, "stages": 1, "loading": 2, "io": 3, "decode": 4, "report": 4, "dedup": 4,
         "execution": 5, "cli": 6}
APART = "dedup"  # a layer that shares its level with others but imports none of them


def layer_of(module: str) -> str | None:
    """``curator_cli.io.writer`` -> ``io``; the package root itself (its version and re-exports) has none."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "curator_cli" else None


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [name for name in found if name.startswith("curator_cli.")]


def test_every_module_belongs_to_a_layer():
    strays = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.glob("*.py")
              if p.stem not in LEVEL and p.name != "__init__.py"]
    assert strays == [], f"modules outside the layers {LAYERS}: {strays}"


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer_of("curator_cli." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if own not in LEVEL:  # the package root: its version, and ``device`` re-exported for stages
            continue
        for name in imports(path):
            target = layer_of(name)
            if target in LEVEL and (LEVEL[target] > LEVEL[own] or own != target and APART in (own, target)
                                    and LEVEL[target] == LEVEL[own]):
                upward.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert upward == []
