"""Checks of data that arrives from outside a process (payloads over ROS, files): arrays of the
right shape whose values are finite, numbers in range. Each failure is a ValueError that names the
field, so a receiver can log it and refuse the payload; nothing non-finite is stored or fitted."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def finite_array(data: dict[str, Any], name: str, ndim: int | None = None,
                 shape: tuple[int, ...] | None = None) -> np.ndarray:
    """data[name] as a float array of the given shape (or number of dimensions) whose values
    are all finite; ValueError naming the field (and the first bad element) otherwise."""
    if name not in data:
        raise ValueError(f"missing field {name!r}")
    try:
        value = np.asarray(data[name], dtype=float)  # null (a NaN in JSON) becomes nan
    except (TypeError, ValueError) as exc:
        raise ValueError(f"field {name!r} is not an array of numbers: {exc}") from None
    if shape is not None and value.shape != shape:
        raise ValueError(f"field {name!r} must have shape {shape}, got {value.shape}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"field {name!r} must have {ndim} dimensions, got shape "
                         f"{value.shape}")
    check_finite(value, f"field {name!r}")
    return value


def check_finite(value: np.ndarray, what: str) -> None:
    """ValueError naming `what` and the first non-finite element of `value`."""
    bad = np.argwhere(~np.isfinite(value))
    if len(bad):
        where = "".join(f"[{int(i)}]" for i in bad[0])
        raise ValueError(f"{what}{where} is not finite ({value[tuple(bad[0])]}; "
                         f"{len(bad)} such value{'s' if len(bad) > 1 else ''})")


def is_number(value: Any) -> bool:
    """An int or float (numpy's too), not a bool."""
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool))


def is_integer(value: Any) -> bool:
    """An int (numpy's too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def finite_number(data: dict[str, Any], name: str, low: float = -math.inf,
                  low_open: bool = False) -> float:
    """data[name] as a finite float >= low (> low with low_open); ValueError naming it."""
    value = data.get(name)
    if not is_number(value) or not math.isfinite(value) or value < low or (
            low_open and value == low):
        bound = "" if low == -math.inf else f" {'>' if low_open else '>='} {low:g}"
        raise ValueError(f"field {name!r} must be a finite number{bound}, got {value!r}")
    return float(value)
