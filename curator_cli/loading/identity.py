"""A stage's identity for resume: what its outputs' manifests record, so that a rerun with another
stage, another version of its code, or other arguments is not taken for the same work.

An identity is JSON, compared as a whole; which keys it has depends on where the class came from:

- a built-in stage (``perceptual``, ``clip``, ...; however it was named): its registered name and
  the class's ``identity_version`` (default 1), which a maintainer bumps when the stage's outputs
  change. Not curator's version, so an upgrade that leaves a stage's outputs alone resumes;
  not the module path, so moving a built-in to another module does not either.
- a ``path/to/file.py:Class`` stage: the class's qualified name and the sha256 of the file as it
  was imported (not its path: a moved file is the same code, an edited one is not).
- a ``package.module:Class`` stage (or a name published by an installed package): the module,
  the class's qualified name, the distribution that provides the module (``name==version``, or
  None) and the sha256 of the module's file.

Every identity has ``args``: a dataclass stage's init fields as they are after construction;
another stage's ``__init__`` defaults overlaid with the ``--stage-arg`` values as converted
(:func:`~curator_cli.loading.specs.build_stage` records those on the instance). Instance
attributes are not read: a value a stage sets from the clock or an id would make every rerun a
mismatch. A stage may declare ``identity_version`` too, to mark a change its source does not show
(new weights behind the same path, say).

Manifests written before identities had sources (``{"class": "module:Class", "args": ...}``) still
match for built-in stages, under their old module paths too; for other stages they cannot be checked
and do not match.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from curator_cli.loading.specs import BUILT_IN_STAGES, FILE_HASH_ATTRIBUTE, STAGE_ARGS_ATTRIBUTE, stage_arguments

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _stable_text(value: Any) -> str:
    """``str(value)`` without the memory address a default ``repr`` carries, which differs every run."""
    return _ADDRESS.sub("", str(value))


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_stable_text, sort_keys=True))


def _built_in_names() -> dict[str, str]:
    """``module:Class`` -> registered name, for the built-in stages where they live now and where
    earlier versions had them (``curator_cli.stages.perceptual`` before ``stages/builtin/``)."""
    names = {}
    for name, target in BUILT_IN_STAGES.items():
        names[target] = name
        names[target.replace("curator_cli.stages.builtin.", "curator_cli.stages.", 1)] = name
    return names


def built_in_name(cls: type) -> str | None:
    """The registered name of a built-in stage class (however ``--stage`` named it), else None."""
    return _built_in_names().get(f"{cls.__module__}:{cls.__qualname__}")


def _sha256(path: str | Path | None) -> str | None:
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


@functools.lru_cache(maxsize=None)
def distribution_of(module_name: str) -> str | None:
    """``name==version`` of the installed distribution that provides ``module_name``, or None
    (a module on ``sys.path`` that no package installed)."""
    from importlib.metadata import PackageNotFoundError, version

    names = sorted(set(_distributions().get(module_name.partition(".")[0], [])))
    found = []
    for name in names:
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found) or None


def _source(cls: type) -> dict[str, Any]:
    """Where the class's code came from (see the module docstring)."""
    version = getattr(cls, "identity_version", 1)
    name = built_in_name(cls)
    if name is not None:
        return {"builtin": name, "identity_version": version}
    module = sys.modules.get(cls.__module__)
    file_hash = getattr(module, FILE_HASH_ATTRIBUTE, None)
    if file_hash is not None:
        return {"class": cls.__qualname__, "file_sha256": file_hash, "identity_version": version}
    return {"class": cls.__qualname__, "module": cls.__module__, "distribution": distribution_of(cls.__module__),
            "source_sha256": _sha256(getattr(module, "__file__", None)), "identity_version": version}


def _arguments(stage: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(stage):
        return {f.name: getattr(stage, f.name, None) for f in dataclasses.fields(stage) if f.init}
    args = {a.name: a.default for a in stage_arguments(type(stage)) if not a.required}
    args.update(getattr(stage, "__dict__", {}).get(STAGE_ARGS_ATTRIBUTE) or {})
    return args


def stage_identity(stage: Any) -> dict[str, Any]:
    """A stage's source, class and constructor arguments, as JSON: a change in any changes the identity."""
    return _plain({**_source(type(stage)), "args": _arguments(stage)})


def _upgraded(identity: Any) -> Any:
    """A stage identity of an earlier version, as this version writes it, where that is known
    (built-in stages); anything else as it is."""
    if isinstance(identity, dict) and set(identity) == {"class", "args"}:
        name = _built_in_names().get(identity["class"])
        if name is not None:
            return {"builtin": name, "identity_version": 1, "args": identity["args"]}
    return identity


def is_legacy_identity(identity: Any) -> bool:
    """An identity from before sources were recorded, that :func:`_upgraded` cannot carry over."""
    return isinstance(identity, dict) and set(_upgraded(identity)) == {"class", "args"}


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A manifest's config with its stage identities as this version writes them."""
    stages = config.get("stages")
    if not isinstance(stages, list):
        return config
    return {**config, "stages": [_upgraded(s) for s in stages]}


def same_config(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether an output whose manifest records ``recorded`` was made by a run of config ``current``."""
    return isinstance(recorded, dict) and comparable_config(recorded) == current
