"""A stage's identity for resume: what its outputs' manifests record, so that a rerun with another
stage class or other arguments is not taken for the same work."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def stage_identity(stage: Any) -> dict[str, Any]:
    """A stage's class and constructor arguments, as JSON: a changed argument changes the identity."""
    cls = type(stage)
    args: dict[str, Any] = {}
    if dataclasses.is_dataclass(stage):
        args = {f.name: getattr(stage, f.name, None) for f in dataclasses.fields(stage) if f.init}
    return _plain({"class": f"{cls.__module__.split('curator_plugin_')[0] or 'file'}:{cls.__qualname__}",
                   "args": args})
