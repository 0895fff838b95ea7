"""A recorded trial (one rollout on the system) and the swing-up success criterion."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cartpole import P, STATE_DIM, THETA, wrap_angle
from .config import SuccessConfig
from .validate import check_finite as check_array_finite
from .validate import finite_array, is_integer
from .vocabulary import TrialKind

TRIAL_FORMAT = "ebmcpilco.trial/1"


@dataclass
class Trial:
    """States x_0..x_T as measured, inputs u_0..u_{T-1} as applied, sample times t_0..t_T.

    `true_states` is the noise-free trajectory where the system knows it (simulation), used for
    evaluation only; learning never sees it. `kind` says which controller produced the trial
    (a vocabulary.TrialKind: random, ilqr, policy); `failed` marks a trial cut short by a fault
    (excluded from learning).
    """

    states: np.ndarray
    inputs: np.ndarray
    times: np.ndarray
    kind: str = TrialKind.POLICY
    index: int = 0
    true_states: np.ndarray | None = None
    failed: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.states = np.asarray(self.states, dtype=float).reshape(-1, STATE_DIM)
        self.inputs = np.asarray(self.inputs, dtype=float).reshape(-1)
        self.times = np.asarray(self.times, dtype=float).reshape(-1)
        if self.true_states is not None:
            self.true_states = np.asarray(self.true_states, dtype=float).reshape(-1, STATE_DIM)
        n = len(self.inputs)
        if len(self.states) != n + 1 or len(self.times) != n + 1:
            raise ValueError(f"trial needs T+1 states and times for T={n} inputs, got "
                             f"{len(self.states)} states and {len(self.times)} times")

    @property
    def duration(self) -> float:
        return float(self.times[-1] - self.times[0]) if len(self.times) else 0.0

    @property
    def steps(self) -> int:
        return len(self.inputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the payload format of trial records on ROS and in run directories)."""
        out: dict[str, Any] = {
            "format": TRIAL_FORMAT, "kind": self.kind, "index": self.index,
            "failed": self.failed, "meta": self.meta,
            "times": self.times.tolist(), "states": self.states.tolist(),
            "inputs": self.inputs.tolist(),
        }
        if self.true_states is not None:
            out["true_states"] = self.true_states.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trial":
        """The trial of a record; ValueError naming the field where the record is malformed:
        a missing or mistyped field, arrays of the wrong shape, any value not finite (NaN and
        inf travel as null in JSON). Such a record is never stored or fitted."""
        if not isinstance(data, dict) or data.get("format") != TRIAL_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a trial record of format {TRIAL_FORMAT}: {got!r}")
        states = finite_array(data, "states", ndim=2)
        steps = len(states) - 1
        if steps < 0 or states.shape[1] != STATE_DIM:
            raise ValueError(f"trial record field 'states' must be (T+1, {STATE_DIM}), got "
                             f"{states.shape}")
        inputs = finite_array(data, "inputs", shape=(steps,))
        times = finite_array(data, "times", shape=(steps + 1,))
        true_states = (finite_array(data, "true_states", shape=(steps + 1, STATE_DIM))
                       if data.get("true_states") is not None else None)
        for name in ("kind", "index"):
            if name not in data:
                raise ValueError(f"trial record ({TRIAL_FORMAT}): missing field {name!r}")
        kind, index = data["kind"], data["index"]
        if not isinstance(kind, str):
            raise ValueError(f"trial record field 'kind' must be a string, got {kind!r}")
        if not is_integer(index) or index < 0:
            raise ValueError(f"trial record field 'index' must be an integer >= 0, got "
                             f"{index!r}")
        for name in ("failed", "meta"):
            if name not in data:
                raise ValueError(f"trial record ({TRIAL_FORMAT}): missing field {name!r}")
        failed, meta = data["failed"], data["meta"]
        if not isinstance(failed, bool):
            raise ValueError(f"trial record field 'failed' must be true or false, got "
                             f"{failed!r}")
        if not isinstance(meta, dict):
            raise ValueError(f"trial record field 'meta' must be an object, got "
                             f"{type(meta).__name__}")
        return cls(states=states, inputs=inputs, times=times, kind=kind, index=int(index),
                   true_states=true_states, failed=failed, meta=dict(meta))

    def check_finite(self) -> None:
        """ValueError naming the first non-finite value of states, inputs, times (true_states
        too, where present): such a trial is never fitted."""
        for name in ("states", "inputs", "times", "true_states"):
            value = getattr(self, name)
            if value is not None:
                check_array_finite(np.asarray(value, dtype=float),
                                   f"trial {self.index}: {name}")


def stays_in_success_region(window: np.ndarray, criterion: SuccessConfig) -> np.ndarray:
    """Whether states (time first, then any batch axes, then the state) stay at every sample
    within p_tol of the centre and theta_tol of upright (the angle wrapped first): one verdict
    per trajectory, for a recorded trial and for the model's particles alike."""
    p, theta = window[..., P], wrap_angle(window[..., THETA])
    return ((np.abs(p) < criterion.p_tol)
            & (np.abs(np.abs(theta) - np.pi) < criterion.theta_tol)).all(axis=0)


def _final_window(trial: Trial, criterion: SuccessConfig) -> np.ndarray:
    """The states of the final `window` seconds: noise-free where the system provides them."""
    x = trial.true_states if trial.true_states is not None else trial.states
    return x[trial.times >= trial.times[-1] - criterion.window - 1e-9]


def swing_up_success(trial: Trial, criterion: SuccessConfig) -> bool:
    """Solved if over the final `window` seconds |p| < p_tol and ||theta| - pi| < theta_tol.

    Uses the noise-free trajectory when the system provides it, else the measured one. The angle
    is wrapped to [-pi, pi) first, so either direction of swing-up counts.
    """
    return not trial.failed and bool(stays_in_success_region(_final_window(trial, criterion),
                                                             criterion))


def final_window_extremes(trial: Trial, criterion: SuccessConfig) -> dict[str, float]:
    """How far the final window strayed, against p_tol and theta_tol: the largest |p| [m] and
    distance to upright [rad] in it. Why: a failed trial at a low cost is a near miss, and these
    say which tolerance it missed (the cart off centre, or the pole not settled)."""
    window = _final_window(trial, criterion)
    theta = wrap_angle(window[:, THETA])
    return {"max_abs_p": float(np.max(np.abs(window[:, P]))),
            "max_angle_error": float(np.max(np.abs(np.abs(theta) - np.pi)))}
