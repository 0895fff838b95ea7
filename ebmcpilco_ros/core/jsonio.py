"""JSON the package writes (payloads, run directories, checkpoints, benchmark figures), in one
place: numpy and torch values as plain Python, NaN and inf as null (they are not JSON), and a
file written atomically.

Imports numpy and the standard library only (the execution node encodes its payloads with it and
imports no torch): a torch tensor is recognised by its type's module.
"""
from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np


def jsonable(obj: Any) -> Any:
    """What json.dumps cannot write itself, as plain Python (its `default` hook): numpy arrays
    and scalars, torch tensors, sets and tuples; TypeError for anything else."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if type(obj).__module__.startswith("torch") and hasattr(obj, "tolist"):
        return obj.detach().cpu().tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def plain(value: Any) -> Any:
    """`value` made JSON-ready all the way down: containers to dicts (string keys) and lists,
    numpy and torch values to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (str, int)) or value is None:
        return value
    return plain(jsonable(value))


def to_json(data: Any, indent: int | None = None) -> str:
    """`data` as JSON text; NaN and inf as null. The quick path lets json.dumps walk the data
    (jsonable for what it cannot write); only data holding a non-finite float is walked again
    by `plain`."""
    try:
        return json.dumps(data, default=jsonable, allow_nan=False, indent=indent)
    except ValueError:
        return json.dumps(plain(data), allow_nan=False, indent=indent)


def write_json_atomic(path: str | Path, data: Any, indent: int | None = None) -> Path:
    """Write `data` (or JSON text) to a temporary name, fsync, rename: a crash leaves the old
    file or the new one, never a part. The directory entry is fsynced too (the rename survives
    a power loss)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    text = data if isinstance(data, str) else json.dumps(plain(data), allow_nan=False,
                                                         indent=indent)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    try:
        fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return target
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return target
