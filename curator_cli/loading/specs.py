"""Turning ``--stage SPEC`` and ``--stage-arg KEY=VALUE`` into configured stage instances.

A SPEC is ``package.module:Class``, ``path/to/file.py:Class``, or a short name published under
the ``curator.stages`` entry-point group (the built-in stages are published there too).
Every mistake raises :class:`StageSpecError` with a one-line message meant for the terminal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
import types
import typing
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from curator_cli.stages.base import ProcessingStage

ENTRY_POINT_GROUP = "curator.stages"
# Built-in stages by short name. Known here rather than as this package's own entry points, so that
# they resolve in a source checkout run without installing (PYTHONPATH=.) too.
BUILT_IN_STAGES = {
    "perceptual": "curator_cli.stages.builtin.perceptual:PerceptualEmbeddingStage",
    "torchvision": "curator_cli.stages.builtin.torchvision_embedding:TorchvisionEmbeddingStage",
    "clip": "curator_cli.stages.builtin.clip_embedding:ClipEmbeddingStage",
    "linear-head": "curator_cli.stages.builtin.linear_head:LinearHeadScoreStage",
}


# What resume needs to know of a stage beyond its class (``loading.identity``): the sha256 of a stage
# file, on the module imported from it, and the converted ``--stage-arg`` values, on the instance.
FILE_HASH_ATTRIBUTE = "__curator_sha256__"
STAGE_ARGS_ATTRIBUTE = "_curator_stage_args"


class StageSpecError(ValueError):
    """A stage spec or stage argument the user got wrong."""


@dataclass
class StageArg:
    """One constructor argument a stage class accepts."""

    name: str
    type: Any
    default: Any = dataclasses.MISSING

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


# --------------------------------------------------------------------------- classes


def stage_entry_points() -> dict[str, str]:
    """Short stage names, mapped to ``module:Class``: the built-in ones, then those published by
    installed packages (which may not take a built-in name)."""
    published = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**published, **BUILT_IN_STAGES}


def _import_file(path: Path) -> types.ModuleType:
    """Import a stage file as a module of its own, named after its path and content: an edited file
    is imported afresh. The module carries the sha256 of the bytes it was made from (what a resume
    compares), which are read once, so the hash is that of the code that runs."""
    if not path.is_file():
        raise StageSpecError(f"stage file {str(path)!r} not found")
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise StageSpecError(f"stage file {str(path)!r} cannot be read: {exc}") from None
    content = hashlib.sha256(source).hexdigest()
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"curator_plugin_{path.stem}_{digest}_{content[:10]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise StageSpecError(f"stage file {str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    setattr(module, FILE_HASH_ATTRIBUTE, content)
    sys.modules[module_name] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)
    except Exception as exc:
        del sys.modules[module_name]
        raise StageSpecError(f"importing stage file {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            where = ", ".join(p or "." for p in sys.path[:6])
            raise StageSpecError(
                f"stage module {name!r} not found (looked in: {where}; "
                "for a file that is not installed use path/to/file.py:Class)"
            ) from exc
        raise StageSpecError(f"importing stage module {name!r} failed: {exc}") from exc
    except Exception as exc:
        raise StageSpecError(f"importing stage module {name!r} failed: {type(exc).__name__}: {exc}") from exc


def _looks_like_file(module_part: str) -> bool:
    return module_part.endswith(".py") or "/" in module_part or "\\" in module_part


def resolve_stage_class(spec: str) -> type[ProcessingStage]:
    """Find the class a SPEC names; raise :class:`StageSpecError` if it is not a usable stage."""
    spec = spec.strip()
    if ":" not in spec:
        published = stage_entry_points()
        if spec not in published:
            known = ", ".join(sorted(published)) or "none installed"
            raise StageSpecError(
                f"unknown stage {spec!r}: use module:Class, path/to/file.py:Class, "
                f"or a registered name ({known})"
            )
        spec = published[spec]
    module_part, _, class_name = spec.rpartition(":")
    if not module_part or not class_name:
        raise StageSpecError(f"stage spec {spec!r} must look like module:Class or file.py:Class")
    module = _import_file(Path(module_part)) if _looks_like_file(module_part) else _import_module(module_part)
    cls = getattr(module, class_name, None)
    if cls is None:
        here = sorted(
            n for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, ProcessingStage) and v is not ProcessingStage
        ) or sorted(n for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("_"))
        raise StageSpecError(
            f"class {class_name!r} not found in {module_part!r} (it has: {', '.join(here) or 'no classes'})"
        )
    if not (isinstance(cls, type) and issubclass(cls, ProcessingStage)):
        raise StageSpecError(
            f"{spec!r} is not a ProcessingStage subclass "
            "(subclass curator_cli.stages.base.ProcessingStage[ImageBatch, ImageBatch])"
        )
    if inspect.isabstract(cls):
        raise StageSpecError(f"{spec!r} is abstract: it must implement process()")
    return cls


# --------------------------------------------------------------------------- arguments


def stage_arguments(cls: type) -> list[StageArg]:
    """Constructor arguments of a stage class: its dataclass fields, else its ``__init__`` signature."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    if dataclasses.is_dataclass(cls):
        args = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default: Any = f.default
            if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            args.append(StageArg(f.name, hints.get(f.name, f.type), default))
        return args
    if cls.__init__ is object.__init__:
        return []
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [
        StageArg(p.name, hints.get(p.name, p.annotation if p.annotation is not p.empty else Any),
                 dataclasses.MISSING if p.default is p.empty else p.default)
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _type_name(tp: Any) -> str:
    """A field's type as a user writes its value: ``int``, ``float | None``, ``relu|gelu|none``."""
    if isinstance(tp, str):
        return tp
    if typing.get_origin(tp) is typing.Literal:
        return "|".join(str(option) for option in typing.get_args(tp))
    if tp is Any:
        return "any"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def coerce_value(raw: str, tp: Any) -> Any:
    """Convert the text of ``--stage-arg`` to the field's type; raise ValueError if it does not fit."""
    if isinstance(tp, str):  # unresolved forward reference: best effort
        tp = {"int": int, "float": float, "bool": bool, "str": str}.get(tp, Any)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and raw.strip().lower() in ("none", "null"):
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return coerce_value(raw, option)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"expected {_type_name(tp)}")
    if origin is typing.Literal:
        for option in args:
            if str(option) == raw:
                return option
        raise ValueError(f"expected one of {', '.join(map(str, args))}")
    if tp is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected a boolean (true/false)")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
    if tp is str:
        return raw
    if tp is Path or (isinstance(tp, type) and issubclass(tp, Path)):
        return Path(raw)
    container = origin or tp
    if container in (list, tuple, dict, set):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            if container is dict:
                raise ValueError("expected a JSON object") from None
            value = [part.strip() for part in raw.split(",") if part.strip()]
        if container is dict:
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
        if not isinstance(value, list):
            value = [value]
        if args and args[0] is not Ellipsis:
            value = [coerce_value(v if isinstance(v, str) else json.dumps(v), args[0]) for v in value]
        return container(value)
    if tp is Any or tp is inspect.Parameter.empty:
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def parse_stage_args(pairs: list[str], classes: list[type]) -> list[dict[str, str]]:
    """Split ``KEY=VALUE`` / ``STAGE.KEY=VALUE`` pairs into raw keyword dicts, one per stage."""
    per_stage: list[dict[str, str]] = [{} for _ in classes]
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise StageSpecError(f"--stage-arg {pair!r} must look like KEY=VALUE or STAGE.KEY=VALUE")
        target, _, field_name = key.strip().rpartition(".")
        if not target:
            if len(classes) != 1:
                raise StageSpecError(
                    f"--stage-arg {pair!r} is ambiguous with {len(classes)} stages: "
                    "write STAGE.KEY=VALUE (STAGE = class name or 0-based position)"
                )
            index = 0
        elif target.isdigit():
            index = int(target)
            if index >= len(classes):
                raise StageSpecError(f"--stage-arg {pair!r}: there is no stage at position {index}")
        else:
            matches = [i for i, c in enumerate(classes) if c.__name__ == target]
            if not matches:
                names = ", ".join(c.__name__ for c in classes)
                raise StageSpecError(f"--stage-arg {pair!r}: no stage named {target!r} (stages: {names})")
            if len(matches) > 1:
                raise StageSpecError(
                    f"--stage-arg {pair!r}: {target!r} is used more than once; use its position instead"
                )
            index = matches[0]
        per_stage[index][field_name] = value
    return per_stage


def build_stage(cls: type[ProcessingStage], raw_args: dict[str, str]) -> ProcessingStage:
    """Instantiate ``cls`` with coerced arguments, checking names, types and required ones first."""
    accepted = {a.name: a for a in stage_arguments(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in raw_args.items():
        if key not in accepted:
            valid = ", ".join(accepted) or "none"
            raise StageSpecError(f"{cls.__name__} has no argument {key!r} (valid: {valid})")
        arg = accepted[key]
        try:
            kwargs[key] = coerce_value(raw, arg.type)
        except ValueError as exc:
            raise StageSpecError(f"{cls.__name__} argument {key}={raw!r}: {exc}") from None
    missing = [a.name for a in accepted.values() if a.required and a.name not in kwargs]
    if missing:
        hint = " ".join(f"--stage-arg {m}=..." for m in missing)
        raise StageSpecError(f"{cls.__name__} needs argument(s) {', '.join(missing)} ({hint})")
    try:
        stage = cls(**kwargs)
    except Exception as exc:
        raise StageSpecError(f"{cls.__name__} rejected its arguments: {type(exc).__name__}: {exc}") from exc
    if not dataclasses.is_dataclass(stage):  # a dataclass's fields say it already
        try:  # the arguments as converted, for the stage's identity (loading.identity)
            object.__setattr__(stage, STAGE_ARGS_ATTRIBUTE, dict(kwargs))
        except (AttributeError, TypeError):  # __slots__ without room for it: its defaults stand in
            pass
    return stage


def load_stages(specs: list[str], arg_pairs: list[str]) -> list[ProcessingStage]:
    """Resolve each SPEC, split the arguments among them and build the stage instances, in order."""
    classes = [resolve_stage_class(spec) for spec in specs]
    raw = parse_stage_args(arg_pairs, classes)
    return [build_stage(cls, args) for cls, args in zip(classes, raw)]
