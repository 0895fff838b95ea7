"""Controllers a trial runs, and their JSON payload (what travels to the policy execution node).

    random          u_t ~ U(-u_max, u_max) i.i.d. (first exploration trial)
    squashed_rbf    the learned policy (policy_numpy.PolicyParameters: numpy, no torch)
    feedback_plan   an iLQR plan with feedback and exploration noise:
                    u_t = U_t + K_t (x - X_t) + sigma_t eps_t,   eps_t ~ N(0, 1)
                    and, with max_deviation > 0, the trial ends at the first step whose
                    measured angle is further than max_deviation from X_t's
All are evaluated in microseconds with numpy; the system clips to +-u_max. This module imports no
torch, so neither does the execution node's control loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .cartpole import STATE_DIM, THETA, state_difference, wrap_angle
from .ilqr import ILQRPlan, feedback_input
from .policy_numpy import POLICY_FORMAT, PolicyParameters
from .validate import finite_array, finite_number, is_integer
from .vocabulary import ControllerKind

CONTROLLER_FORMAT = "ebmcpilco.controller/1"


class Controller(Protocol):
    """Maps the measured state at control step t to a force; reset() before each trial.
    `steps`: the most control steps it drives (a trial ends there; trial_steps), None for as
    many as the plant's trial has. `finished(step, state)`: True ends the trial at this step,
    before its force (the state is the trial's last)."""

    steps: int | None

    def reset(self) -> None: ...

    def finished(self, step: int, state: np.ndarray) -> bool: ...

    def __call__(self, step: int, state: np.ndarray) -> float: ...

    def to_dict(self) -> dict[str, Any]: ...


def trial_steps(controller: Controller, plant_steps: int) -> int:
    """Control steps of a trial that runs `controller`: the plant's trial, or fewer where the
    controller drives fewer (a GP-iLQR rollout of exploration.rollout_duration)."""
    steps = getattr(controller, "steps", None)
    return plant_steps if steps is None else max(1, min(plant_steps, int(steps)))


class RandomController:
    """u_t ~ U(-u_max, u_max) i.i.d. each step: the exploration of the first trial."""

    kind = ControllerKind.RANDOM
    steps = None

    def __init__(self, u_max: float, seed: int | None = None,
                 rng: np.random.Generator | None = None) -> None:
        self.u_max = u_max
        self.seed = seed
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def reset(self) -> None:
        """Draws continue across trials: reusing one controller gives fresh exploration."""

    def finished(self, step: int, state: np.ndarray) -> bool:
        return False

    def __call__(self, step: int, state: np.ndarray) -> float:
        return float(self.rng.uniform(-self.u_max, self.u_max))

    def to_dict(self) -> dict[str, Any]:
        seed = self.seed if self.seed is not None else int(self.rng.integers(2**31))
        return {"format": CONTROLLER_FORMAT, "kind": self.kind, "u_max": self.u_max,
                "seed": seed}


class PolicyController:
    """The learned squashed RBF policy (no dropout), evaluated in numpy (core/policy_numpy.py):
    SquashedRBFPolicy's u in evaluation mode to float64 rounding, without torch."""

    kind = ControllerKind.SQUASHED_RBF
    steps = None

    def __init__(self, params: PolicyParameters) -> None:
        self.params = params

    def reset(self) -> None:
        pass

    def finished(self, step: int, state: np.ndarray) -> bool:
        return False

    def __call__(self, step: int, state: np.ndarray) -> float:
        return self.params(state)

    def to_dict(self) -> dict[str, Any]:
        return {"format": CONTROLLER_FORMAT, "kind": self.kind, "policy": self.params.to_dict()}


@dataclass
class FeedbackPlan:
    """Nominal states X (T+1, 4), inputs U (T,), gains K (T, 4), exploration std sigma (T,);
    max_deviation [rad]: the rollout ends once the measured angle leaves X's by more (0 =
    never)."""

    X: np.ndarray
    U: np.ndarray
    K: np.ndarray
    sigma: np.ndarray
    u_max: float
    seed: int = 0
    version: int = 0
    max_deviation: float = 0.0

    def __post_init__(self) -> None:
        self.X = np.asarray(self.X, dtype=float).reshape(-1, STATE_DIM)
        self.U = np.asarray(self.U, dtype=float).reshape(-1)
        self.K = np.asarray(self.K, dtype=float).reshape(-1, STATE_DIM)
        self.sigma = np.asarray(self.sigma, dtype=float).reshape(-1)
        T = len(self.U)
        if len(self.X) != T + 1 or len(self.K) != T or len(self.sigma) != T:
            raise ValueError(f"feedback plan shapes disagree: X {self.X.shape}, U {self.U.shape}"
                             f", K {self.K.shape}, sigma {self.sigma.shape}")
        if not (np.isfinite(self.max_deviation) and self.max_deviation >= 0):
            raise ValueError(f"max_deviation must be >= 0 [rad], got {self.max_deviation!r}")

    @classmethod
    def from_plan(cls, plan: ILQRPlan, sigma: np.ndarray | None = None, seed: int = 0,
                  version: int = 0, steps: int | None = None,
                  max_deviation: float = 0.0) -> "FeedbackPlan":
        """An iLQR plan of the cart-pole (one input) as an executable payload, optionally with
        exploration noise sigma (T,), cut to its first `steps` steps (the rollout then ends
        there: trial_steps), and ending where it leaves the plan by max_deviation."""
        if plan.U.shape[1] != 1:
            raise ValueError(f"a feedback plan drives one input, the plan has {plan.U.shape[1]}")
        T = plan.horizon if steps is None else max(1, min(plan.horizon, steps))
        sigma = np.zeros(plan.horizon) if sigma is None else np.asarray(sigma)
        return cls(X=plan.X[:T + 1], U=plan.U[:T, 0], K=plan.K[:T, 0, :], sigma=sigma[:T],
                   u_max=plan.u_max, seed=seed, version=version, max_deviation=max_deviation)


class FeedbackPlanController:
    """Closed-loop execution of an iLQR plan: the solver's law (ilqr.feedback_input, with the
    cart-pole's wrapped angle difference) plus exploration noise, clipped. It drives as many
    steps as the plan has (`steps`): a trial that runs it ends at the plan's end or the
    plant's trial's, whichever comes first, or earlier once the rollout has lost the plan
    (`finished`: the angle further than plan.max_deviation from the nominal one)."""

    kind = ControllerKind.FEEDBACK_PLAN

    def __init__(self, plan: FeedbackPlan) -> None:
        self.plan = plan
        self.steps = len(plan.U)
        self.rng = np.random.default_rng(plan.seed)

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.plan.seed)

    def finished(self, step: int, state: np.ndarray) -> bool:
        p = self.plan
        if p.max_deviation <= 0.0:
            return False
        nominal = p.X[min(step, len(p.X) - 1), THETA]
        return bool(abs(wrap_angle(state[THETA] - nominal)) > p.max_deviation)

    def __call__(self, step: int, state: np.ndarray) -> float:
        p = self.plan
        t = min(step, len(p.U) - 1)
        u = feedback_input(p.X[t], p.U[t], p.K[t], state, state_difference)
        u = u + p.sigma[t] * self.rng.standard_normal()
        return float(np.clip(u, -p.u_max, p.u_max))

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        return {"format": CONTROLLER_FORMAT, "kind": self.kind, "u_max": p.u_max,
                "seed": p.seed, "version": p.version, "X": p.X.tolist(), "U": p.U.tolist(),
                "K": p.K.tolist(), "sigma": p.sigma.tolist(), "max_deviation": p.max_deviation}


def controller_from_dict(data: dict[str, Any]) -> Controller:
    """Rebuild a controller from its payload; ValueError (naming the field) for unknown formats
    and kinds, missing or mistyped fields, wrong shapes and values that are not finite."""
    if not isinstance(data, dict) or data.get("format") != CONTROLLER_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not a controller of format {CONTROLLER_FORMAT}: {got!r}")
    kind = data.get("kind")
    try:
        if kind == RandomController.kind:
            return RandomController(finite_number(data, "u_max", 0.0, low_open=True),
                                    seed=_integer(data, "seed"))
        if kind == PolicyController.kind:
            policy = data.get("policy")
            if not isinstance(policy, dict) or policy.get("format") != POLICY_FORMAT:
                got = policy.get("format") if isinstance(policy, dict) else policy
                raise ValueError(f"policy payload of unknown format {got!r}")
            return PolicyController(PolicyParameters.from_dict(policy))
        if kind == FeedbackPlanController.kind:
            U = finite_array(data, "U", ndim=1)
            T = len(U)
            if T < 1:
                raise ValueError("field 'U' must hold at least one step")
            sigma = finite_array(data, "sigma", shape=(T,))
            if np.any(sigma < 0):
                raise ValueError("field 'sigma' must be >= 0")
            return FeedbackPlanController(FeedbackPlan(
                X=finite_array(data, "X", shape=(T + 1, STATE_DIM)), U=U,
                K=finite_array(data, "K", shape=(T, STATE_DIM)), sigma=sigma,
                u_max=finite_number(data, "u_max", 0.0, low_open=True),
                seed=_integer(data, "seed"), version=_integer(data, "version"),
                max_deviation=(finite_number(data, "max_deviation", 0.0)
                               if "max_deviation" in data else 0.0)))
    except ValueError as exc:
        raise ValueError(f"{kind} controller: {exc}") from None
    raise ValueError(f"unknown controller kind {kind!r}: field 'kind' must be one of "
                     f"{RandomController.kind}, {PolicyController.kind}, "
                     f"{FeedbackPlanController.kind}")


def _integer(data: dict[str, Any], name: str) -> int:
    value = data.get(name)  # missing: None, refused
    if not is_integer(value):
        raise ValueError(f"field {name!r} must be an integer, got {value!r}")
    return int(value)
