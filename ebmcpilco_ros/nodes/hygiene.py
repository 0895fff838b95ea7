"""Bad input at a node's entries: refused, counted, logged at a bounded rate.

Every payload a node receives (trial records, models, controllers, requests, events, heartbeats,
commands) is checked before anything is stored, written or acted on. What is about the data
itself lives in core (core.trial.Trial.from_dict, core.model.check_model_dict,
core.controllers.controller_from_dict, core.validate); the checks here are of the nodes' own
envelopes (docs/NODES.md, "Payloads"). A refused input is counted per kind for /diagnostics
(`rejected_<kind>`) and logged as a warning, at most once per kind every REFUSAL_LOG_PERIOD
seconds with the number refused in between, so a flood of garbage neither fills the log nor
costs the receiving thread more than a counter.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Iterable

from ..core.controllers import controller_from_dict
from ..core.validate import finite_array, finite_number, is_integer, is_number

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


# -- the nodes' envelopes (docs/NODES.md) ---------------------------------------------------------
def _string(data: dict[str, Any], name: str, required: bool = True, empty: bool = False) -> None:
    if name not in data and not required:
        return
    value = data.get(name)
    if not isinstance(value, str) or (not empty and not value):
        raise ValueError(f"field {name!r} must be a{'' if empty else ' non-empty'} string, got "
                         f"{value!r}")


def _integer(data: dict[str, Any], name: str, low: int | None = None,
             required: bool = True) -> None:
    if name not in data and not required:
        return
    value = data.get(name)
    if not is_integer(value) or (low is not None and value < low):
        bound = "" if low is None else f" >= {low}"
        raise ValueError(f"field {name!r} must be an integer{bound}, got {value!r}")


def _strings(data: dict[str, Any], name: str, required: bool = True) -> None:
    if name not in data and not required:
        return
    value = data.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"field {name!r} must be a list of strings, got {value!r}")


def _finite_numbers(data: dict[str, Any], names: Iterable[str]) -> None:
    """The fields present among `names` must be finite numbers (a NaN arrives as null)."""
    for name in names:
        if name in data:
            finite_number(data, name)


def check_event(ev: dict[str, Any]) -> None:
    """`ebmcpilco.event/1`: request_id, event (and node) strings; the optional reason a string,
    missing a list of trial keys, record a bool; numbers (steps, period, progress) finite."""
    _string(ev, "request_id")
    _string(ev, "event")
    _string(ev, "node", required=False)
    _string(ev, "reason", required=False, empty=True)
    _strings(ev, "missing", required=False)
    if "record" in ev and not isinstance(ev["record"], bool):
        raise ValueError(f"field 'record' must be true or false, got {ev['record']!r}")
    _finite_numbers(ev, ("stamp", "steps", "period", "trials", "step", "cost", "lr", "dropout"))


def check_heartbeat(beat: dict[str, Any], roles: Iterable[str]) -> None:
    """`ebmcpilco.heartbeat/1`: a role the receiver knows, a finite stamp."""
    roles = tuple(roles)
    if beat.get("role") not in roles:
        raise ValueError(f"field 'role' must be one of {', '.join(roles)}, got "
                         f"{beat.get('role')!r}")
    finite_number(beat, "stamp")
    if "fresh" in beat and not isinstance(beat["fresh"], bool):
        raise ValueError(f"field 'fresh' must be true or false, got {beat['fresh']!r}")


def check_fit_request(req: dict[str, Any]) -> None:
    """`ebmcpilco.fit_request/1`: request_id, run_id, trials (a list of trial keys)."""
    _string(req, "request_id")
    _string(req, "run_id", required=False, empty=True)
    _strings(req, "trials")


def _optional_object(payload: dict[str, Any], name: str) -> None:
    """An optional JSON object (the optimiser's state: core's load_state_dict checks inside)."""
    if payload.get(name) is not None and not isinstance(payload[name], dict):
        raise ValueError(f"field {name!r} must be an object, got "
                         f"{type(payload[name]).__name__}")


def check_optimization_request(req: dict[str, Any]) -> None:
    """`ebmcpilco.optimization_request/1`'s envelope (the OptimizationRequest in `request` is
    checked by building it)."""
    _string(req, "request_id")
    _string(req, "model_request_id")
    _string(req, "run_id", required=False, empty=True)
    _integer(req, "seed", required=False)
    _string(req, "session", required=False, empty=True)
    _optional_object(req, "optimizer_state")
    request = req.get("request")
    if not isinstance(request, dict):
        raise ValueError(f"field 'request' must be an object, got {request!r}")
    try:
        _string(request, "phase")
        _integer(request, "iteration", low=0, required=False)
        if not isinstance(request.get("pretrain", False), bool):
            raise ValueError(f"field 'pretrain' must be true or false, got "
                             f"{request['pretrain']!r}")
    except ValueError as exc:
        raise ValueError(f"field 'request': {exc}") from None


def check_trial_request(req: dict[str, Any]) -> None:
    """`ebmcpilco.trial_request/1`'s envelope (the controller is checked by building it)."""
    _string(req, "request_id")
    _string(req, "run_id", required=False, empty=True)
    _string(req, "kind", required=False)
    _integer(req, "index", low=0, required=False)


def check_model_update(update: dict[str, Any]) -> None:
    """`ebmcpilco.model_update/1`: the envelope, and the model (core.model.check_model_dict:
    shapes and finite values, without building the GPs)."""
    _string(update, "request_id")
    _string(update, "run_id", required=False, empty=True)
    _integer(update, "version", low=0)
    _strings(update, "trials", required=False)
    _finite_numbers(update, ("fit_s",))
    if "points" in update and not (isinstance(update["points"], list)
                                   and all(is_integer(p) for p in update["points"])):
        raise ValueError(f"field 'points' must be a list of integers, got {update['points']!r}")
    from ..core.model import check_model_dict  # here: core.model imports torch, and the
    # execution node, which imports this module but receives no models, runs without it
    try:
        check_model_dict(update.get("model"))
    except ValueError as exc:
        raise ValueError(f"field 'model': {exc}") from None


def check_controller_update(update: dict[str, Any]) -> None:
    """`ebmcpilco.controller_update/1`: the envelope, finite costs, wall times and predicted
    states, and a controller that core.controllers.controller_from_dict accepts."""
    _string(update, "request_id")
    _string(update, "run_id", required=False, empty=True)
    _string(update, "phase", required=False)
    _integer(update, "version", low=0)
    _integer(update, "opt_steps", low=0, required=False)
    if "costs" in update:
        finite_array(update, "costs", ndim=1)
    if update.get("predicted_states") is not None:
        states = finite_array(update, "predicted_states", ndim=2)
        if states.shape[1] != 4:
            raise ValueError(f"field 'predicted_states' must be (T+1, 4), got {states.shape}")
    wall = update.get("wall_s", {})
    if not isinstance(wall, dict) or not all(is_number(v) and math.isfinite(v)
                                             for v in wall.values()):
        raise ValueError(f"field 'wall_s' must map phases to finite numbers, got {wall!r}")
    _finite_numbers(update, ("node_wall_s",))
    _optional_object(update, "optimizer_state")
    try:
        controller_from_dict(update.get("controller"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"field 'controller': {exc}") from None
