"""JSON payloads in std_msgs/String: structured data (trial records, models, controllers,
requests, events, status) travels as one JSON object with a "format" field
`ebmcpilco.<kind>/<n>` that a receiver checks before reading anything else; NaN/inf travel as
null."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

from std_msgs.msg import String

from ..core.jsonio import to_json
from .payloads import Event


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
