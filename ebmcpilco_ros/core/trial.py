"""A recorded trial (one rollout on the system) and the swing-up success criterion."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import SuccessConfig

TRIAL_FORMAT = "ebmcpilco.trial/1"


@dataclass
class Trial:
    """States x_0..x_T as measured, inputs u_0..u_{T-1} as applied, sample times t_0..t_T.

    `true_states` is the noise-free trajectory where the system knows it (simulation), used for
    evaluation only; learning never sees it. `kind` says which controller produced the trial
    (random, policy, ilqr); `failed` marks a trial cut short by a fault (excluded from learning).
    """

    states: np.ndarray
    inputs: np.ndarray
    times: np.ndarray
    kind: str = "policy"
    index: int = 0
    true_states: np.ndarray | None = None
    failed: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.states = np.asarray(self.states, dtype=float).reshape(-1, 4)
        self.inputs = np.asarray(self.inputs, dtype=float).reshape(-1)
        self.times = np.asarray(self.times, dtype=float).reshape(-1)
        if self.true_states is not None:
            self.true_states = np.asarray(self.true_states, dtype=float).reshape(-1, 4)
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
        if data.get("format") != TRIAL_FORMAT:
            raise ValueError(f"not a trial record of format {TRIAL_FORMAT}: {data.get('format')!r}")
        return cls(states=np.array(data["states"]), inputs=np.array(data["inputs"]),
                   times=np.array(data["times"]), kind=data["kind"], index=int(data["index"]),
                   true_states=(np.array(data["true_states"]) if "true_states" in data else None),
                   failed=bool(data.get("failed", False)), meta=dict(data.get("meta", {})))


def swing_up_success(trial: Trial, criterion: SuccessConfig) -> bool:
    """Solved if over the final `window` seconds |p| < p_tol and ||theta| - pi| < theta_tol.

    Uses the noise-free trajectory when the system provides it, else the measured one. The angle
    is wrapped to (-pi, pi] first, so either direction of swing-up counts.
    """
    x = trial.true_states if trial.true_states is not None else trial.states
    if trial.failed or len(x) == 0:
        return False
    t_end = trial.times[-1]
    in_window = trial.times >= t_end - criterion.window - 1e-9
    p = x[in_window, 0]
    theta = np.angle(np.exp(1j * x[in_window, 2]))
    return bool(np.all(np.abs(p) < criterion.p_tol)
                and np.all(np.abs(np.abs(theta) - np.pi) < criterion.theta_tol))
