"""JSON payloads in std_msgs/String: structured data (trial records, models, controllers,
requests, events, status) travels as one JSON object with a "format" field
`ebmcpilco.<kind>/<n>` that a receiver checks before reading anything else; NaN/inf travel as
null."""
from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

import numpy as np
from std_msgs.msg import String

from .payloads import Event


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """NaN/inf are not JSON: they travel as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(payload: dict[str, Any]) -> str:
    try:
        return json.dumps(payload, default=_jsonable, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(json.loads(json.dumps(payload, default=_jsonable))),
                          allow_nan=False)


def encode(payload: dict[str, Any]) -> String:
    return String(data=to_json(payload))


def decode(msg: String, expected_format: str) -> dict[str, Any]:
    """The payload of a String message; ValueError unless it is JSON of the expected format."""
    try:
        payload = json.loads(msg.data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"expected format {expected_format}, got {got!r}")
    return payload


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def event(node: str, request_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    """An acknowledgement, refusal or progress note about one request (`payloads.Event`: a
    field the format does not know is a TypeError here, at the sender)."""
    return Event(node=node, request_id=request_id, event=kind, stamp=time.time(),
                 **fields).to_dict()
