"""Comparing shard snapshots (nested dicts of numpy arrays) in tests."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


def snapshot_diff(a: Any, b: Any, path: str = "snap") -> list[str]:
    """Where two snapshots differ (keys, types, dtypes, shapes, values); empty when they are equal."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return [f"{path}: {type(a).__name__} != {type(b).__name__}"]
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"]
        return [] if np.array_equal(a, b) else [f"{path}: values differ"]
    if type(a) is not type(b):
        return [f"{path}: {type(a).__name__} != {type(b).__name__}"]
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(map(str, a.keys() ^ b.keys()))} in one only"]
        return [d for k in a for d in snapshot_diff(a[k], b[k], f"{path}[{k!r}]")]
    if dataclasses.is_dataclass(a) and not isinstance(a, type):  # held events (EventColumns)
        return snapshot_diff(
            {f.name: getattr(a, f.name) for f in dataclasses.fields(a)},
            {f.name: getattr(b, f.name) for f in dataclasses.fields(b)},
            path,
        )
    if isinstance(a, list | tuple):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in snapshot_diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]
