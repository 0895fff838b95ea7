"""Bad input at a node's entries: refused, counted, logged at a bounded rate.

Every payload a node receives (trial records, models, controllers, requests, events, heartbeats,
commands) is checked before anything is stored, written or acted on: it is read with its
format's `from_dict` (nodes/payloads.py for the nodes' envelopes, docs/NODES.md "Payloads"; for
the data inside them core.trial.Trial.from_dict, core.model.check_model_dict,
core.controllers.controller_from_dict, core.validate), which refuses it with a ValueError naming
the format and the field. What is here: a refused input is counted per kind for /diagnostics
(`rejected_<kind>`) and logged as a warning, at most once per kind every REFUSAL_LOG_PERIOD
seconds with the number refused in between, so a flood of garbage neither fills the log nor
costs the receiving thread more than a counter.
"""
from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from ..core.trial import Trial

REFUSAL_LOG_PERIOD = 5.0  # [s] between two log lines about refused input of one kind


class Refusals:
    """Counts of refused input per kind, and a rate-limited log line per kind."""

    def __init__(self, log: Callable[[str], Any], kinds: Iterable[str] = (),
                 period: float = REFUSAL_LOG_PERIOD,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.period = period
        self.clock = clock
        self.counts: dict[str, int] = {kind: 0 for kind in kinds}
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def refuse(self, kind: str, what: str, reason: Any, key: str = "") -> None:
        """Count one refused `kind` and log "refused <what>: <reason>", unless a line about this
        kind (and `key`: a topic, a kind of fault) went out less than `period` ago; then the next
        line says how many were held back."""
        line = (kind, key)
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            now = self.clock()
            if now - self._last.get(line, -math.inf) < self.period:
                self._held[line] = self._held.get(line, 0) + 1
                return
            self._last[line] = now
            held = self._held.pop(line, 0)
        more = f" ({held} more like it refused since the last report)" if held else ""
        self.log(f"refused {what}: {reason}{more}")

    def values(self) -> dict[str, int]:
        """The /diagnostics values: rejected_<kind> for every kind."""
        with self._lock:
            return {f"rejected_{kind}": count for kind, count in self.counts.items()}


def received_trial(refusals: Refusals, msg: Any, topic: str,
                   on_invalid: Callable[[dict[str, Any], Exception], None] | None = None
                   ) -> tuple[dict[str, Any], "Trial"] | None:
    """A trial record off `topic` (a String in the ebmcpilco.trial/1 format) as (the record,
    its Trial), or None after refusing it as "records": not JSON of the format, or malformed
    or non-finite (Trial.from_dict); `on_invalid` hears the record and the error of the
    latter (whose wait it ends, where its meta says)."""
    from ..core.trial import TRIAL_FORMAT, Trial
    from .codec import decode

    try:
        record = decode(msg, TRIAL_FORMAT)
    except ValueError as exc:
        refusals.refuse("records", f"a trial record on {topic}", exc)
        return None
    try:
        return record, Trial.from_dict(record)
    except (ValueError, KeyError, TypeError) as exc:
        refusals.refuse("records", f"trial record {record_label(record)} on {topic}", exc)
        if on_invalid is not None:
            on_invalid(record, exc)
        return None


def record_label(record: dict[str, Any]) -> str:
    """A trial record's key `<run_id>/<index>` for a log line, whatever the record holds."""
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    return f"{str(meta.get('run_id', ''))[:80]}/{str(record.get('index'))[:20]}"


def command_fault(data: Any) -> tuple[str, str]:
    """Why a force command (std_msgs/Float64MultiArray data) is refused, as (kind of fault, the
    reason): ("length", ...) for not exactly one value, ("non-finite", ...) for a NaN or inf;
    ("", "") where it is fine."""
    values = list(data)
    if len(values) != 1:
        shown = ", ".join(f"{v:g}" for v in values[:4]) + (", ..." if len(values) > 4 else "")
        return "length", f"{len(values)} values [{shown}], expected exactly one force [N]"
    if not math.isfinite(values[0]):
        return "non-finite", f"the force {values[0]} is not finite"
    return "", ""
