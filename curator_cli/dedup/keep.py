"""Step 5, keep: which image of each group stays (``--keep``).

- ``first`` (the default): the group's first image in input order (files in the order found, rows
  in file order). Deterministic: the same inputs keep the same images, whatever the partitioning.
- ``highest:COLUMN``: the largest value of a numeric column (e.g. ``aesthetic_score``); images
  whose value is null or NaN come last; ties go to the first.
- ``largest``: the most pixels, from ``original_width``/``original_height`` or ``width``/``height``
  columns, else the same keys in the ``metadata`` JSON (what img2dataset records); images without
  a size come last; ties go to the first.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curator_cli.dedup.components import Groups
from curator_cli.dedup.inputs import METADATA_COLUMN, InputSet, read_columns
from curator_cli.dedup.settings import KeepRule

_SIZE_COLUMNS = (("original_width", "original_height"), ("width", "height"))


def choose_keep(groups: Groups, values: np.ndarray | None) -> np.ndarray:
    """Whether each member is its group's kept image: the highest value (NaN lowest), ties and
    ``values=None`` going to the first member."""
    keep = np.zeros(len(groups.members), bool)
    if not len(keep):
        return keep
    score = np.zeros(len(keep)) if values is None else np.where(np.isnan(values), -np.inf, values)
    order = np.lexsort((groups.members, -score, groups.group))
    first = np.r_[True, groups.group[order][1:] != groups.group[order][:-1]]
    keep[order[first]] = True
    return keep


def _pixels_from_metadata(texts: list[str | None]) -> np.ndarray:
    out = np.full(len(texts), np.nan)
    for i, text in enumerate(texts):
        try:
            data = json.loads(text) if text else None
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        for w, h in _SIZE_COLUMNS:
            try:
                out[i] = float(data[w]) * float(data[h])
                break
            except (KeyError, TypeError, ValueError):
                continue
    return out


def member_values(inputs: InputSet, members: np.ndarray, rule: KeepRule, batch_rows: int) -> np.ndarray | None:
    """The value ``rule`` ranks each member by (float64, NaN where unknown); None for ``first``."""
    if rule.kind == "first":
        return None
    values = np.full(len(members), np.nan)
    for file in inputs.files:
        lo, hi = np.searchsorted(members, [file.start, file.start + file.rows])
        if lo == hi:
            continue
        if rule.kind == "highest":
            columns = [rule.column]
        else:
            pair = next((p for p in _SIZE_COLUMNS if file.has(p[0]) and file.has(p[1])), None)
            columns = list(pair) if pair else ([METADATA_COLUMN] if file.has(METADATA_COLUMN) else [])
        if not columns:
            continue
        position = lo
        for start, batch in read_columns(inputs, file, columns, batch_rows):
            end = np.searchsorted(members, start + batch.num_rows)
            if end == position:
                continue
            rows = pa.array(members[position:end] - start)
            taken = [pc.take(batch.column(i), rows) for i in range(len(columns))]
            if rule.kind == "highest":
                values[position:end] = pc.cast(taken[0], pa.float64()).to_numpy(zero_copy_only=False)
            elif len(columns) == 2:
                w = pc.cast(taken[0], pa.float64()).to_numpy(zero_copy_only=False)
                h = pc.cast(taken[1], pa.float64()).to_numpy(zero_copy_only=False)
                values[position:end] = w * h
            else:
                values[position:end] = _pixels_from_metadata(taken[0].to_pylist())
            position = end
    return values
