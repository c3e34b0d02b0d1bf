"""``curator stages``: which stages can be named with ``--stage``, what they do, and their arguments.

Built-in stages and those of installed plugin packages are all published under the
``curator.stages`` entry-point group; each is described by its class docstring and its dataclass
fields (name, type, default), the same fields ``--stage-arg`` accepts.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from dataclasses import dataclass, field

from curator_cli.loading.specs import StageArg, StageSpecError, resolve_stage_class, stage_arguments, stage_entry_points

BUILTIN_PREFIX = "curator_cli."


@dataclass
class StageInfo:
    """One stage as ``curator stages`` shows it; ``error`` is set when its class cannot be loaded."""

    name: str
    target: str
    summary: str = ""
    doc: str = ""
    arguments: list[StageArg] = field(default_factory=list)
    error: str | None = None

    @property
    def builtin(self) -> bool:
        return self.target.startswith(BUILTIN_PREFIX)


def _docstring(cls: type) -> str:
    own = cls.__dict__.get("__doc__")
    if not own or (dataclasses.is_dataclass(cls) and own.startswith(cls.__name__ + "(")):
        return ""  # dataclass's generated signature is no description
    return inspect.cleandoc(own)


def describe_class(name: str, target: str, cls: type) -> StageInfo:
    """A :class:`StageInfo` for a resolved stage class."""
    doc = _docstring(cls)
    module_doc = inspect.cleandoc(getattr(sys.modules.get(cls.__module__), "__doc__", None) or "")
    full = "\n\n".join(part for part in (doc, module_doc) if part)
    return StageInfo(
        name=name,
        target=target,
        summary=doc.splitlines()[0] if doc else "(no description)",
        doc=full,
        arguments=stage_arguments(cls),
    )


def list_stages() -> list[StageInfo]:
    """Every published stage, built-in ones first, each by name; one that fails to load says why."""
    infos = []
    for name, target in stage_entry_points().items():
        try:
            infos.append(describe_class(name, target, resolve_stage_class(name)))
        except StageSpecError as exc:
            infos.append(StageInfo(name=name, target=target, error=str(exc)))
    return sorted(infos, key=lambda info: (not info.builtin, info.name))


def find_stage(spec: str) -> StageInfo:
    """One stage by registered name, ``module:Class`` or ``file.py:Class``; StageSpecError if unknown."""
    target = stage_entry_points().get(spec, spec)
    return describe_class(spec, target, resolve_stage_class(spec))


def default_text(arg: StageArg) -> str:
    return "(required)" if arg.required else repr(arg.default)


def format_list(infos: list[StageInfo]) -> str:
    """The ``curator stages`` listing: name, one-line description, then the arguments."""
    lines: list[str] = []
    for title, group in (("Built-in stages", [i for i in infos if i.builtin]),
                         ("Stages from installed packages", [i for i in infos if not i.builtin])):
        if not group:
            continue
        if lines:
            lines.append("")
        lines.append(f"{title}:")
        width = max(len(info.name) for info in group)
        for info in group:
            if info.error:
                lines.append(f"  {info.name:<{width}}  (cannot load: {info.error})")
                continue
            lines.append(f"  {info.name:<{width}}  {info.summary}")
            args = ", ".join(
                f"{a.name}: {a.type_name} (required)" if a.required else f"{a.name}: {a.type_name} = {default_text(a)}"
                for a in info.arguments
            )
            lines.append(f"  {'':<{width}}  args: {args or 'none'}")
    if not infos:
        lines.append("no stages are registered (is curator installed with pip?)")
    lines.append("")
    lines.append("Details of one: curator stages NAME.  Use one: curator embed INPUT -o OUT --stage NAME --stage-arg KEY=VALUE")
    return "\n".join(lines)


def format_one(info: StageInfo) -> str:
    """``curator stages NAME``: the full description and a table of the arguments."""
    origin = "built in" if info.builtin else "plugin"
    lines = [f"{info.name}  ({info.target}, {origin})", ""]
    if info.doc:
        lines += [info.doc, ""]
    lines.append("Arguments (--stage-arg KEY=VALUE):")
    if not info.arguments:
        lines.append("  none")
    else:
        rows = [(a.name, a.type_name, default_text(a)) for a in info.arguments]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        for arg_name, type_name, default in rows:
            lines.append(f"  {arg_name:<{widths[0]}}  {type_name:<{widths[1]}}  {default}")
    example = " ".join(f"--stage-arg {a.name}=..." for a in info.arguments if a.required)
    lines += ["", f"Example: curator embed INPUT -o OUT --stage {info.name} {example}".rstrip()]
    return "\n".join(lines)
