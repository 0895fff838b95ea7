"""The nodes' payload formats (docs/NODES.md, "Payloads"), one dataclass per format.

Each is built by the sender and written with `to_dict()`; a receiver reads it with
`from_dict()`, which refuses a payload of another format, a missing required field or a field of
the wrong type or value with a ValueError naming the format and the field
(`ebmcpilco.event/1: field 'cost' must be a finite number, got None`). Optional fields are the
ones docs/NODES.md documents as optional (per event, per role, per status event); an optional
field left at None is not sent. Fields a payload carries beyond these are ignored.

The data inside (trial records, models, controllers) belongs to core: `core.trial.Trial`,
`core.model.check_model_dict`, `core.controllers.controller_from_dict`; the envelopes here call
them for their nested payloads. This module imports no torch (the execution node uses it): the
model check is imported when a model update is read.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, ClassVar, Iterable, TypeVar

from ..core.validate import finite_array, is_integer, is_number
from ..core.vocabulary import Phase, Stage, TrialKind

TRIAL_REQUEST_FORMAT = "ebmcpilco.trial_request/1"
FIT_REQUEST_FORMAT = "ebmcpilco.fit_request/1"
OPTIMIZATION_REQUEST_FORMAT = "ebmcpilco.optimization_request/1"
EVENT_FORMAT = "ebmcpilco.event/1"
MODEL_UPDATE_FORMAT = "ebmcpilco.model_update/1"
CONTROLLER_UPDATE_FORMAT = "ebmcpilco.controller_update/1"
STATUS_FORMAT = "ebmcpilco.status/1"
HEARTBEAT_FORMAT = "ebmcpilco.heartbeat/1"
PROGRESS_FORMAT = "ebmcpilco.progress/1"
INTERRUPTED_FORMAT = "ebmcpilco.interrupted_trial/1"


class EventKind(str, Enum):
    """`ebmcpilco.event/1`'s `event`: what happened to a request."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    MISSING = "missing"
    STARTED = "started"
    FINISHED = "finished"
    ABORTED = "aborted"
    FAILED = "failed"
    PROGRESS = "progress"


class StatusEvent(str, Enum):
    """`ebmcpilco.status/1`'s `event`."""

    STARTED = "started"
    READY = "ready"
    NOT_READY = "not_ready"
    STARTED_LEARNING = "started_learning"
    RESUMED = "resumed"
    STARTED_RUNNING_TRIAL = "started_running_trial"
    PHASE = "phase"
    PROGRESS = "progress"
    TRIAL_DONE = "trial_done"
    RUN_DONE = "run_done"
    FAILED = "failed"
    ABORTED = "aborted"


# Events that answer a request (sent once per request id; a resent request gets the same one).
ANSWER_EVENTS = (EventKind.ACCEPTED.value, EventKind.REFUSED.value, EventKind.MISSING.value)
# What a trial, the optimiser (its stages) and a status report are about: core's vocabulary
# (core/vocabulary.py), whose values are these payloads' strings.
TRIAL_KINDS = (TrialKind.RANDOM.value, TrialKind.POLICY.value, TrialKind.ILQR.value)
STAGES = (Stage.ILQR.value, Stage.PRETRAIN.value, Stage.POLICY.value)  # the optimiser's
UPDATE_PHASES = (TrialKind.POLICY.value, TrialKind.ILQR.value)  # the kind of trial it runs
REQUEST_PHASES = (Phase.POLICY.value, Phase.EXPLORE.value)
ROLES = ("policy_execution", "model_learning", "policy_optimization")
ACTIVITIES = ("idle", "learning", "running_trial")


def _values(enum: type[Enum]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


# -- field checks: each takes the value and returns it (normalised) or raises ValueError --------
Check = Callable[[Any], Any]


class _Bad(ValueError):
    """A field's value is wrong: the message says how, the reader adds format and field."""


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {value!r}")
    return value


def _id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"must be a non-empty string, got {value!r}")
    return value


def _one_of(choices: Iterable[str]) -> Check:
    choices = tuple(choices)

    def check(value: Any) -> str:
        if value not in choices:
            raise _Bad(f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)
    return check


def _integer(low: int | None = None) -> Check:
    def check(value: Any) -> int:
        if not is_integer(value) or (low is not None and value < low):
            bound = "" if low is None else f" >= {low}"
            raise _Bad(f"must be an integer{bound}, got {value!r}")
        return int(value)
    return check


_count = _integer(0)


def _number(value: Any) -> float:
    if not is_number(value) or not math.isfinite(value):
        raise _Bad(f"must be a finite number, got {value!r}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {value!r}")
    return value


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"must be a list of strings, got {value!r}")
    return list(value)


def _integers(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(is_integer(v) for v in value):
        raise _Bad(f"must be a list of integers, got {value!r}")
    return [int(v) for v in value]


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"must be an object, got {type(value).__name__}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad(f"must be a list, got {type(value).__name__}")
    return value


def _numbers(value: Any) -> list[float]:
    """A list of finite numbers; the message names the first bad element (`[1] is not ...`)."""
    return finite_array({"": value}, "", ndim=1).tolist()


def _states(value: Any) -> list[list[float]]:
    """(T+1, 4) finite states."""
    states = finite_array({"": value}, "", ndim=2)
    if states.shape[1] != 4:
        raise _Bad(f"must be (T+1, 4), got {states.shape}")
    return states.tolist()


def _number_map(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
            is_number(v) and math.isfinite(v) for v in value.values()):
        raise _Bad(f"must map names to finite numbers, got {value!r}")
    return {str(k): float(v) for k, v in value.items()}


def _model(value: Any) -> dict[str, Any]:
    from ..core.model import check_model_dict  # here: core.model imports torch, and the
    # execution node, which imports this module but receives no models, runs without it
    check_model_dict(value)
    return value


def _controller(value: Any) -> dict[str, Any]:
    from ..core.controllers import controller_from_dict

    try:
        controller_from_dict(value)
    except (KeyError, TypeError) as exc:
        raise _Bad(f"{type(exc).__name__}: {exc}") from None
    return value


def _optimization(value: Any) -> dict[str, Any]:
    """`core.learner.OptimizationRequest.to_dict()`: phase, iteration >= 0, pretrain,
    optionally failed_since_warm_start >= 0 and predicted_failure."""
    data = _object(value)
    try:
        OptimizationSpec.from_dict({**data, "format": OptimizationSpec.FORMAT})
    except ValueError as exc:
        raise _Bad(str(exc).removeprefix(f"{OptimizationSpec.FORMAT}: ")) from None
    return value


def _nullable(check: Check) -> Check:
    def nullable(value: Any) -> Any:
        return None if value is None else check(value)
    return nullable


def request_id_of(data: dict[str, Any], fmt: str) -> str:
    """A request's id before anything else is read (a refusal needs it to answer)."""
    try:
        return _id(data.get("request_id"))
    except ValueError as exc:
        raise ValueError(f"{fmt}: field 'request_id' {exc}") from None


def required(check: Check) -> Any:
    """A field every payload of the format carries."""
    return field(metadata={"check": check, "required": True})


def optional(check: Check) -> Any:
    """A field the format documents as optional: None when absent, not sent when None."""
    return field(default=None, metadata={"check": check, "required": False})


P = TypeVar("P", bound="Payload")


class Payload:
    """A format's dataclass: `to_dict()` for the wire, `from_dict()` refusing what is wrong."""

    FORMAT: ClassVar[str]
    # a field a sender may send as null where the format allows it (a plan, a state age)
    NULLABLE: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.FORMAT}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and not f.metadata["required"]:
                continue
            out[f.name] = value.value if isinstance(value, Enum) else value
        return out

    @classmethod
    def from_dict(cls: type[P], data: Any) -> P:
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"expected format {cls.FORMAT}, got {got!r}")
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                if f.metadata["required"]:
                    raise ValueError(f"{cls.FORMAT}: missing field {f.name!r}")
                continue
            value = data[f.name]
            if value is None and f.name in cls.NULLABLE:  # else null is a NaN, or a wrong type
                values[f.name] = None
                continue
            try:
                values[f.name] = f.metadata["check"](value)
            except ValueError as exc:
                how = str(exc)
                how = how[len("field ''"):].lstrip() if how.startswith("field ''") else how
                sep = ("" if how.startswith("[") else " " if how.startswith(("must", "is "))
                       else ": ")
                raise ValueError(f"{cls.FORMAT}: field {f.name!r}{sep}{how}") from None
        return cls(**values)


# -- requests -------------------------------------------------------------------------------------
@dataclass
class OptimizationSpec(Payload):
    """The `request` inside an optimisation request (core.learner.OptimizationRequest)."""

    FORMAT: ClassVar[str] = "request"
    phase: str = required(_one_of(REQUEST_PHASES))
    iteration: int = required(_count)
    pretrain: bool = required(_bool)
    failed_since_warm_start: int | None = optional(_count)
    predicted_failure: bool | None = optional(_bool)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        del out["format"]
        return out


@dataclass
class TrialRequest(Payload):
    """trial_manager -> policy_execution: run one trial with `controller`."""

    FORMAT: ClassVar[str] = TRIAL_REQUEST_FORMAT
    request_id: str = required(_id)
    run_id: str = required(_string)
    index: int = required(_count)
    kind: str = required(_one_of(TRIAL_KINDS))
    controller: dict[str, Any] = required(_controller)   # ebmcpilco.controller/1


@dataclass
class FitRequest(Payload):
    """trial_manager -> model_learning: fit on exactly these trial keys."""

    FORMAT: ClassVar[str] = FIT_REQUEST_FORMAT
    request_id: str = required(_id)
    run_id: str = required(_string)
    trials: list[str] = required(_strings)


@dataclass
class OptimizationRequestPayload(Payload):
    """trial_manager -> policy_optimization: the next controller, on the model of a fit."""

    FORMAT: ClassVar[str] = OPTIMIZATION_REQUEST_FORMAT
    request_id: str = required(_id)
    run_id: str = required(_string)
    seed: int = required(_integer())
    model_version: int = required(_count)
    model_request_id: str = required(_id)
    request: dict[str, Any] = required(_optimization)   # OptimizationRequest.to_dict()
    session: str = required(_string)
    optimizer_state: dict[str, Any] | None = optional(_object)


# -- results --------------------------------------------------------------------------------------
@dataclass
class ModelUpdate(Payload):
    """model_learning -> policy_optimization, trial_manager: a fitted model."""

    FORMAT: ClassVar[str] = MODEL_UPDATE_FORMAT
    request_id: str = required(_id)
    run_id: str = required(_string)
    version: int = required(_count)
    trials: list[str] = required(_strings)
    points: list[int] = required(_integers)
    fit_s: float = required(_number)
    model: dict[str, Any] = required(_model)   # ebmcpilco.model/1


@dataclass
class ControllerUpdatePayload(Payload):
    """policy_optimization -> trial_manager: the controller an optimisation request asked for."""

    FORMAT: ClassVar[str] = CONTROLLER_UPDATE_FORMAT
    NULLABLE: ClassVar[tuple[str, ...]] = ("predicted_states",)
    request_id: str = required(_id)
    run_id: str = required(_string)
    version: int = required(_count)
    model_version: int = required(_count)
    phase: str = required(_one_of(UPDATE_PHASES))
    opt_steps: int = required(_count)
    wall_s: dict[str, float] = required(_number_map)
    node_wall_s: float = required(_number)
    costs: list[float] = required(_numbers)
    predicted_states: list[list[float]] | None = required(_states)   # iLQR plan or null
    info: dict[str, Any] = required(_object)
    optimizer_state: dict[str, Any] = required(_object)
    controller: dict[str, Any] = required(_controller)   # ebmcpilco.controller/1


# -- events, heartbeats, status -------------------------------------------------------------------
@dataclass
class Event(Payload):
    """A worker node's note about one request (answers, trial progress, results' failures)."""

    FORMAT: ClassVar[str] = EVENT_FORMAT
    node: str = required(_string)
    request_id: str = required(_id)
    event: str = required(_one_of(_values(EventKind)))
    stamp: float = required(_number)
    reason: str | None = optional(_string)           # refused, failed, aborted
    missing: list[str] | None = optional(_strings)   # missing: trial keys
    steps: int | None = optional(_count)             # accepted trial, a trial's end
    period: float | None = optional(_number)         # accepted trial
    record: bool | None = optional(_bool)            # a trial's end: a record went out
    trials: int | None = optional(_count)            # accepted fit
    phase: str | None = optional(_one_of(REQUEST_PHASES))   # accepted optimisation
    stage: str | None = optional(_one_of(STAGES))    # progress
    step: int | None = optional(_count)              # progress within a stage
    max_steps: int | None = optional(_count)         # progress: the stage's step limit
    cost: float | None = optional(_number)
    lr: float | None = optional(_number)
    dropout: float | None = optional(_number)
    cancelled: bool | None = optional(_bool)         # failed: stopped by abort or shutdown

    def extras(self) -> dict[str, Any]:
        """The per-event fields that were sent (a progress report's content)."""
        return {k: v for k, v in self.to_dict().items()
                if k not in ("format", "node", "request_id", "event", "stamp")}


@dataclass
class Heartbeat(Payload):
    """A worker node's sign of life, every nodes.status_period."""

    FORMAT: ClassVar[str] = HEARTBEAT_FORMAT
    NULLABLE: ClassVar[tuple[str, ...]] = ("state_age_s", "running", "busy")
    role: str = required(_one_of(ROLES))
    node: str = required(_string)
    stamp: float = required(_number)
    # policy_execution
    fresh: bool | None = optional(_bool)
    state_age_s: float | None = optional(_number)    # null before any state
    request_state_timeout: float | None = optional(_number)
    running: str | None = optional(_string)          # the running trial's request id
    # model_learning, policy_optimization
    busy: str | None = optional(_string)             # the request worked on
    trials: int | None = optional(_count)
    model_version: int | None = optional(_count)
    device: str | None = optional(_string)
    backend: str | None = optional(_string)


@dataclass
class Status(Payload):
    """trial_manager -> anyone (and log.jsonl): what the learning does."""

    FORMAT: ClassVar[str] = STATUS_FORMAT
    event: str = required(_one_of(_values(StatusEvent)))
    state: str = required(_one_of(ACTIVITIES))
    ready: bool = required(_bool)
    waiting_for: list[str] = required(_strings)
    run_id: str = required(_string)
    phase: str = required(_string)
    trials: int = required(_count)
    stamp: float = required(_number)
    node: str = required(_string)
    trial: dict[str, Any] | None = optional(_object)         # trial_done: a TrialSummary
    report: dict[str, Any] | None = optional(_object)        # run_done
    solved: bool | None = optional(_bool)                    # run_done
    reason: str | None = optional(_string)                   # failed, aborted
    progress: dict[str, Any] | None = optional(_object)      # progress
    previous: str | None = optional(_string)                 # resumed: died, failed, aborted
    from_trial: int | None = optional(_count)
    last_completed: str | None = optional(_string)
    cut_off_in: str | None = optional(_string)
    interrupted: list[Any] | None = optional(_list)
    message: str | None = optional(_string)


# -- run directory files --------------------------------------------------------------------------
@dataclass
class Progress(Payload):
    """progress.json: the phase running now and the one completed before it."""

    FORMAT: ClassVar[str] = PROGRESS_FORMAT
    NULLABLE: ClassVar[tuple[str, ...]] = ("trial",)
    run_id: str = required(_string)
    state: str = required(_string)
    phase: str = required(_string)
    last_completed: str = required(_string)
    trials_completed: int = required(_count)
    trial: dict[str, Any] | None = required(_object)   # the trial request out, or null
    pid: int = required(_integer())
    host: str = required(_string)


@dataclass
class InterruptedTrial(Payload):
    """trials/interrupted/: a trial a crash cut off, of which no record arrived."""

    FORMAT: ClassVar[str] = INTERRUPTED_FORMAT
    NULLABLE: ClassVar[tuple[str, ...]] = ("record",)
    index: int = required(_count)
    kind: str = required(_string)
    request_id: str = required(_string)
    failed: bool = required(_bool)
    record: None = required(_nullable(_object))
    reason: str = required(_string)
