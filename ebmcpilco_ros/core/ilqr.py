"""iLQR with box-constrained input, Levenberg-Marquardt regularisation and a line search.

Used by EB-MC-PILCO to plan swing-ups through the GP posterior-mean dynamics (and, in tests, the
true cart-pole). Pure functions over numpy float64: the matrices are 4 x 4 and the input scalar,
so numpy beats torch by a wide margin here. The maths and every choice the paper leaves open are
in docs/ILQR.md.

Notation (trajax / Tassa et al. 2012):
    x_t (n = 4), u_t (m = 1)        state and input, t = 0..T-1; x_T the final state
    X (T+1, n), U (T, m)            the nominal trajectory; dx = x - X_t, du = u - U_t
    f                               dynamics x_{t+1} = f(x_t, u_t), called sequentially
    A_t = df/dx, B_t = df/du        its Jacobians at the nominal, batched over t
    c, c_f                          running, terminal cost: J(x0, U) = sum_t c(x_t,u_t) + c_f(x_T)
    l_x, l_u, l_xx, l_uu, l_ux      derivatives of c at (X_t, U_t)
    V_x, V_xx                       gradient and Hessian of the cost-to-go at X_t (V' at t+1)
    Q_x, Q_u, Q_xx, Q_uu, Q_ux      derivatives of the state-action value Q(dx, du)
    k_t, K_t                        feedforward and feedback: du* = k_t + K_t dx
    mu                              Levenberg-Marquardt term, added to V'_xx (Tassa 2012)
    alpha                           line-search step on k
    dV = (dV_1, dV_2)               expected change dJ(alpha) = alpha dV_1 + alpha^2/2 dV_2

The input limit |u| <= u_max is a box constraint of the per-step QP (box-DDP, Tassa 2014): k_t is
the box-constrained minimiser, and K_t is zeroed where the constraint is active. Cold starts grow
the horizon (continuation) and break the hanging-state symmetry with a small kick; see solve().
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .cancel import StopCheck, check
from .config import ILQRConfig, PlantConfig
from .controllers import FeedbackPlan, FeedbackPlanController
from .ilqr_cost import INPUT_DIM, STATE_DIM, THETA, RunningDerivatives, SwingUpCost
from . import cartpole

__all__ = [
    "ILQRConfig", "ILQRError", "ILQRPlan", "Dynamics", "Cost",
    "FiniteDifferenceDynamics", "BackwardPass", "solve", "rollout", "backward_pass",
    "forward_pass", "closed_loop_control", "state_difference", "cartpole_dynamics",
    "SwingUpCost",
]


class ILQRError(RuntimeError):
    """iLQR cannot proceed: non-finite dynamics/Jacobians/cost, or Q_uu not positive at mu_max."""


# -- interfaces ---------------------------------------------------------------------------------

class Dynamics(Protocol):
    """Deterministic discrete-time dynamics: the GP posterior mean, or a known plant."""

    def step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """x (4,), u (1,) -> x_next (4,)."""
        ...

    def linearize(self, X: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X (T, 4), U (T, 1) -> A (T, 4, 4), B (T, 4, 1), batched over t."""
        ...


class Cost(Protocol):
    """Running and terminal cost with derivatives; SwingUpCost is the one used here."""

    def total(self, X: np.ndarray, U: np.ndarray) -> float: ...

    def running_derivatives(self, X: np.ndarray, U: np.ndarray) -> RunningDerivatives: ...

    def final_derivatives(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class FiniteDifferenceDynamics:
    """Dynamics whose linearize() is central differences of any step function.

    With `vectorized=True` the step function must accept leading batch axes, x (..., 4) and
    u (..., 1); then all 2 (n + m) T perturbed steps of a trajectory are one call, which for the
    RK4 cart-pole is ~20x faster than looping.
    """

    def __init__(self, step_fn: StepFn, step_size: float | None = None,
                 vectorized: bool = False) -> None:
        self.step_fn = step_fn
        self.step_size = ILQRConfig().fd_step if step_size is None else float(step_size)
        self.vectorized = vectorized

    def step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        return np.asarray(self.step_fn(np.asarray(x, dtype=float), np.asarray(u, dtype=float)),
                          dtype=float)

    def linearize(self, X: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=float)
        U = np.asarray(U, dtype=float)
        steps, n = X.shape
        m = U.shape[1]
        h = self.step_size
        # Perturbation directions in the joint (x, u) space: +h e_i then -h e_i.
        eye = np.eye(n + m) * h
        deltas = np.concatenate([eye, -eye])                        # (2(n+m), n+m)
        Z = np.concatenate([X, U], axis=1)[:, None, :] + deltas     # (T, 2(n+m), n+m)
        flat = Z.reshape(-1, n + m)
        if self.vectorized:
            out = np.asarray(self.step_fn(flat[:, :n], flat[:, n:]), dtype=float)
        else:
            out = np.stack([self.step(z[:n], z[n:]) for z in flat])
        out = out.reshape(steps, 2, n + m, n)
        jac = (out[:, 0] - out[:, 1]) / (2.0 * h)                   # (T, n+m, n): d x_next / dz_j
        jac = np.swapaxes(jac, 1, 2)                                # (T, n, n+m)
        return jac[:, :, :n], jac[:, :, n:]


def cartpole_dynamics(plant: PlantConfig, step_size: float | None = None
                      ) -> FiniteDifferenceDynamics:
    """The true cart-pole (RK4, zero-order hold) with finite-difference Jacobians."""

    def step_fn(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        return cartpole.step(x, u[..., 0], plant)

    return FiniteDifferenceDynamics(step_fn, step_size=step_size, vectorized=True)


# -- the plan and its control law ---------------------------------------------------------------

def state_difference(x: np.ndarray, X: np.ndarray) -> np.ndarray:
    """dx = x - X with the angle difference wrapped to [-pi, pi): theta and theta + 2 pi are the
    same pole position, and both the dynamics and the cost are 2 pi periodic in theta."""
    dx = np.asarray(x, dtype=float) - np.asarray(X, dtype=float)
    dx[..., THETA] = np.mod(dx[..., THETA] + math.pi, 2.0 * math.pi) - math.pi
    return dx


@dataclass(frozen=True)
class ILQRPlan:
    """A solved plan: nominal trajectory, gains and how the solve went.

    X (T+1, 4) and U (T, 1) are the nominal. k (T, 1) and K (T, 1, 4) come from a backward pass
    at this nominal: k is the step a further iteration would take (~0 at convergence), K the
    feedback gains (zero rows where the input limit is active). cost_history[0] is the cost of
    the last stage's initial guess, then one entry per accepted step; `iterations` counts all
    stages, `stages` lists (horizon, iterations, cost) per continuation stage, and `converged`
    and `message` describe the last (full-horizon) stage.
    """

    X: np.ndarray
    U: np.ndarray
    k: np.ndarray
    K: np.ndarray
    cost: float
    iterations: int
    converged: bool
    cost_history: np.ndarray
    u_max: float
    mu: float
    message: str
    stages: tuple[tuple[int, int, float], ...] = ()

    @property
    def horizon(self) -> int:
        return int(self.U.shape[0])

    def control(self, t: int, x: np.ndarray) -> float:
        """u_t = clip(U_t + K_t (x - X_t), +-u_max); see closed_loop_control."""
        return closed_loop_control(self, t, x)

    def feedback_plan(self, sigma: np.ndarray | None = None, seed: int = 0,
                      version: int = 0) -> FeedbackPlan:
        """The plan as an executable payload, optionally with exploration noise sigma (T,)."""
        return FeedbackPlan(X=self.X, U=self.U[:, 0], K=self.K[:, 0, :],
                            sigma=np.zeros(self.horizon) if sigma is None else sigma,
                            u_max=self.u_max, seed=seed, version=version)

    def controller(self) -> FeedbackPlanController:
        """This plan as a Controller for SimulatedCartPole or the node graph (no noise)."""
        return FeedbackPlanController(self.feedback_plan())


def closed_loop_control(plan: ILQRPlan, t: int, x: np.ndarray) -> float:
    """The iLQR feedback law at step t; beyond the horizon the last step's law is held."""
    t = min(max(int(t), 0), plan.horizon - 1)
    dx = state_difference(x, plan.X[t])
    u = plan.U[t, 0] + float(plan.K[t, 0] @ dx)
    return float(np.clip(u, -plan.u_max, plan.u_max))


# -- passes -------------------------------------------------------------------------------------

def _check_state(x: np.ndarray, t: int, u: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.shape != (STATE_DIM,):
        raise ILQRError(f"dynamics.step returned shape {x.shape} at t={t}, expected ({STATE_DIM},)")
    if not np.all(np.isfinite(x)):
        raise ILQRError(f"dynamics.step returned a non-finite state {x} at t={t} (u={u}): "
                        "degenerate model")
    return x


def rollout(dynamics: Dynamics, x0: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Open-loop X (T+1, 4) from x0 under U (T, 1); ILQRError on a non-finite state."""
    X = np.empty((U.shape[0] + 1, STATE_DIM))
    X[0] = x0
    for t in range(U.shape[0]):
        X[t + 1] = _check_state(dynamics.step(X[t], U[t]), t, U[t])
    return X


def forward_pass(dynamics: Dynamics, x0: np.ndarray, X: np.ndarray, U: np.ndarray,
                 k: np.ndarray, K: np.ndarray, alpha: float, u_max: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Roll out u_t = clip(U_t + alpha k_t + K_t (x_t - X_t), +-u_max) through the dynamics.

    The clip only catches K_t dx pushing a free input past the limit; U_t + alpha k_t is inside
    the box already (box-constrained backward pass, and the box is convex).
    """
    steps = U.shape[0]
    X_new = np.empty_like(X)
    U_new = np.empty_like(U)
    X_new[0] = x0
    for t in range(steps):
        dx = state_difference(X_new[t], X[t])
        U_new[t] = np.clip(U[t] + alpha * k[t] + K[t] @ dx, -u_max, u_max)
        X_new[t + 1] = _check_state(dynamics.step(X_new[t], U_new[t]), t, U_new[t])
    return X_new, U_new


@dataclass(frozen=True)
class BackwardPass:
    """k (T, 1), K (T, 1, 4) and the expected-change terms; failed_at = t where the regularised
    Q_uu was not positive (then k, K are incomplete and must not be used)."""

    k: np.ndarray
    K: np.ndarray
    dV: tuple[float, float]
    failed_at: int | None = None
    Q_uu_failed: float = float("nan")


def backward_pass(A: np.ndarray, B: np.ndarray, derivs: RunningDerivatives,
                  final: tuple[np.ndarray, np.ndarray], U: np.ndarray, u_max: float,
                  mu: float) -> BackwardPass:
    """Riccati-like recursion from t = T-1 down to 0, box-constrained in u (scalar input).

    Regularisation on V'_xx (Tassa 2012): Q~_uu = l_uu + B^T (V'_xx + mu I) B and likewise Q~_ux.
    It penalises the step's effect on the next state rather than the input itself, so the damping
    follows the model's sensitivities, and it cannot mask a model with no input effect (B = 0):
    then Q~_uu = l_uu for every mu.
    The value function is propagated with the unregularised Q_uu, Q_ux: it is the exact quadratic
    model of following (k, K). Along u = U + alpha k + K dx that model's change is exactly
    quadratic in alpha, dJ(alpha) = alpha dV_1 + alpha^2/2 dV_2, with dV_1 = sum_t k_t^T q_u,t
    from the closed-loop costate v (the k-free part of V_x) and dV_1 + dV_2/2 the change at
    alpha = 1. (The textbook sum k^T Q_u is only right without clamping and with mu = 0: there
    the k terms of V_x cancel.)
    """
    steps = U.shape[0]
    eye = np.eye(STATE_DIM)
    k = np.zeros((steps, INPUT_DIM))
    K = np.zeros((steps, INPUT_DIM, STATE_DIM))
    V_x, V_xx = final
    V_x = np.array(V_x, dtype=float)
    V_xx = np.array(V_xx, dtype=float)
    v_x = V_x.copy()    # closed-loop costate: the part of V_x that does not depend on k
    dV1 = change = 0.0  # dJ/dalpha at alpha = 0, and the predicted change at alpha = 1
    for t in range(steps - 1, -1, -1):
        A_t, B_t = A[t], B[t]
        Q_x = derivs.l_x[t] + A_t.T @ V_x
        Q_u = derivs.l_u[t] + B_t.T @ V_x
        q_x = derivs.l_x[t] + A_t.T @ v_x
        q_u = derivs.l_u[t] + B_t.T @ v_x
        Q_xx = derivs.l_xx[t] + A_t.T @ V_xx @ A_t
        Q_uu = derivs.l_uu[t] + B_t.T @ V_xx @ B_t
        Q_ux = derivs.l_ux[t] + B_t.T @ V_xx @ A_t
        V_reg = V_xx + mu * eye
        Q_uu_reg = float((derivs.l_uu[t] + B_t.T @ V_reg @ B_t)[0, 0])
        Q_ux_reg = derivs.l_ux[t] + B_t.T @ V_reg @ A_t
        if not (math.isfinite(Q_uu_reg) and Q_uu_reg > 0.0):
            return BackwardPass(k, K, (dV1, 0.0), failed_at=t, Q_uu_failed=Q_uu_reg)
        # Box QP for the scalar input: min_du 1/2 Q_uu du^2 + Q_u du, U_t + du in [-u_max, u_max].
        k_free = -float(Q_u[0]) / Q_uu_reg
        lower, upper = -u_max - float(U[t, 0]), u_max - float(U[t, 0])
        k_t = min(max(k_free, lower), upper)
        clamped = k_free < lower or k_free > upper
        k[t, 0] = k_t
        K[t] = 0.0 if clamped else -Q_ux_reg / Q_uu_reg
        K_t, k_v = K[t], k[t]
        dV1 += float(k_v @ q_u)
        change += float(k_v @ Q_u + 0.5 * k_v @ Q_uu @ k_v)
        v_x = q_x + K_t.T @ q_u
        V_x = Q_x + K_t.T @ Q_uu @ k_v + K_t.T @ Q_u + Q_ux.T @ k_v
        V_xx = Q_xx + K_t.T @ Q_uu @ K_t + K_t.T @ Q_ux + Q_ux.T @ K_t
        V_xx = 0.5 * (V_xx + V_xx.T)
    return BackwardPass(k, K, (dV1, 2.0 * (change - dV1)))


# -- the solver ---------------------------------------------------------------------------------

class _Mu:
    """Tassa's schedule: mu moves by a factor that itself grows while moving the same way."""

    def __init__(self, config: ILQRConfig) -> None:
        self.config = config
        self.mu = config.mu_init
        self.delta = 1.0

    def increase(self) -> None:
        f = self.config.mu_factor
        self.delta = max(f, self.delta * f)
        self.mu = max(self.config.mu_min, self.mu * self.delta)

    def decrease(self) -> None:
        f = self.config.mu_factor
        self.delta = min(1.0 / f, self.delta / f)
        self.mu = self.mu * self.delta if self.mu * self.delta > self.config.mu_min else 0.0

    @property
    def exhausted(self) -> bool:
        return self.mu > self.config.mu_max


def _linearize(dynamics: Dynamics, X: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    steps = U.shape[0]
    A, B = dynamics.linearize(X[:-1], U)
    A = np.asarray(A, dtype=float)
    B = np.asarray(B, dtype=float)
    if A.shape != (steps, STATE_DIM, STATE_DIM) or B.shape != (steps, STATE_DIM, INPUT_DIM):
        raise ILQRError(f"dynamics.linearize returned A {A.shape}, B {B.shape}; expected "
                        f"({steps}, {STATE_DIM}, {STATE_DIM}) and ({steps}, {STATE_DIM}, "
                        f"{INPUT_DIM})")
    for name, M in (("A", A), ("B", B)):
        bad = ~np.all(np.isfinite(M.reshape(steps, -1)), axis=1)
        if np.any(bad):
            raise ILQRError(f"dynamics.linearize returned a non-finite {name}_t at "
                            f"t={int(np.argmax(bad))}: degenerate model")
    return A, B


def _total(cost: Cost, X: np.ndarray, U: np.ndarray) -> float:
    J = float(cost.total(X, U))
    if not math.isfinite(J):
        raise ILQRError(f"cost is non-finite ({J}) along the trajectory")
    return J


def _regularised_backward_pass(dynamics: Dynamics, cost: Cost, X: np.ndarray, U: np.ndarray,
                               u_max: float, mu: _Mu) -> BackwardPass:
    """Linearise at (X, U) and run the backward pass, raising mu until Q~_uu > 0 at every t."""
    A, B = _linearize(dynamics, X, U)
    derivs = cost.running_derivatives(X[:-1], U)
    final = cost.final_derivatives(X[-1])
    while True:  # bounded: after the first increase mu grows at least geometrically to mu_max
        bp = backward_pass(A, B, derivs, final, U, u_max, mu.mu)
        if bp.failed_at is None:
            return bp
        mu.increase()
        if mu.exhausted:
            raise ILQRError(
                f"Q_uu not positive definite at t={bp.failed_at} (Q_uu = {bp.Q_uu_failed:.3g}) "
                f"with mu > mu_max = {mu.config.mu_max:g}: the model has no usable input effect "
                "(B ~ 0 with R = 0?)")


def _best_predicted_reduction(dV1: float, dV2: float) -> float:
    """max over alpha in (0, 1] of -(alpha dV_1 + alpha^2/2 dV_2); dV_1 <= 0 by construction."""
    alpha = 1.0 if dV2 <= 0.0 else min(1.0, -dV1 / dV2)
    return -(alpha * dV1 + 0.5 * alpha * alpha * dV2)


def _optimise(dynamics: Dynamics, cost: Cost, x0: np.ndarray, U: np.ndarray, u_max: float,
              config: ILQRConfig, should_stop: StopCheck = None) -> tuple[ILQRPlan, bool]:
    """The iLQR loop from U; also says whether U was already a stationary point."""
    X = rollout(dynamics, x0, U)
    J = _total(cost, X, U)
    history = [J]
    mu = _Mu(config)
    k = np.zeros_like(U)
    K = np.zeros((U.shape[0], INPUT_DIM, STATE_DIM))
    converged, stationary_start, message = False, False, "max_iterations reached"
    iterations = 0
    fresh = False  # do k, K belong to the current nominal (X, U)?
    for iterations in range(1, config.max_iterations + 1):
        check(should_stop, f"at iLQR iteration {iterations}")
        bp = _regularised_backward_pass(dynamics, cost, X, U, u_max, mu)
        k, K, fresh = bp.k, bp.K, True
        if float(np.max(np.abs(k))) / u_max < config.grad_tolerance:
            converged, message = True, "feedforward step below grad_tolerance"
            stationary_start = iterations == 1
            mu.decrease()
            break
        dV1, dV2 = bp.dV
        # The model's best reduction over alpha in (0, 1]; trusted only while mu is not inflated
        # by failures (a large mu shrinks every predicted step).
        if (mu.mu <= config.mu_init
                and _best_predicted_reduction(dV1, dV2) < config.tolerance * abs(J)):
            converged, message = True, "predicted reduction below tolerance"
            break
        accepted = False
        for alpha in config.line_search_alphas:
            X_new, U_new = forward_pass(dynamics, x0, X, U, k, K, alpha, u_max)
            J_new = _total(cost, X_new, U_new)
            expected = -(alpha * dV1 + 0.5 * alpha * alpha * dV2)
            actual = J - J_new
            ratio = actual / expected if expected > 0.0 else math.copysign(1.0, actual)
            if ratio > config.accept_ratio:
                accepted = True
                break
        if accepted:
            mu.decrease()
            relative = (J - J_new) / max(abs(J), np.finfo(float).tiny)
            X, U, J = X_new, U_new, J_new
            fresh = False
            history.append(J)
            # Only a full step says the model is exhausted; a short one may just be cautious.
            if relative < config.tolerance and alpha == config.line_search_alphas[0]:
                converged, message = True, "relative cost change below tolerance"
                break
        else:
            mu.increase()
            if mu.exhausted:
                message = f"line search failed with mu > mu_max = {config.mu_max:g}"
                break
    if not fresh:  # gains for the final nominal, so the feedback law matches X and U
        bp = _regularised_backward_pass(dynamics, cost, X, U, u_max, mu)
        k, K = bp.k, bp.K
    plan = ILQRPlan(X=X, U=U, k=k, K=K, cost=J, iterations=iterations, converged=converged,
                    cost_history=np.asarray(history), u_max=float(u_max), mu=mu.mu,
                    message=message)
    return plan, stationary_start


def _solve_fixed(dynamics: Dynamics, cost: Cost, x0: np.ndarray, U0: np.ndarray, u_max: float,
                 config: ILQRConfig, should_stop: StopCheck = None) -> ILQRPlan:
    """One horizon: iLQR from U0, with the symmetry kick if U0 is a stationary point."""
    plan, stationary = _optimise(dynamics, cost, x0, U0, u_max, config, should_stop)
    if not (stationary and config.symmetry_kick > 0.0):
        return plan
    U_kick = np.clip(U0 + config.symmetry_kick, -u_max, u_max)
    kicked, _ = _optimise(dynamics, cost, x0, U_kick, u_max, config, should_stop)
    best = kicked if kicked.cost < plan.cost else plan
    note = "symmetry kick" if best is kicked else "symmetry kick rejected"
    return dataclasses.replace(
        best, iterations=plan.iterations + kicked.iterations,
        message=f"{best.message} ({note}: initial guess was stationary)")


def solve(dynamics: Dynamics, cost: Cost, x0: np.ndarray, u_max: float,
          horizon: int | None = None, U_init: np.ndarray | None = None,
          config: ILQRConfig | None = None, should_stop: StopCheck = None) -> ILQRPlan:
    """Minimise J(x0, U) over T = horizon steps s.t. x_{t+1} = f(x_t, u_t), |u_t| <= u_max.

    U_init (T0, 1) with T0 <= T is the initial guess, clipped into the box (box-DDP needs a
    feasible nominal). Without it the guess is zeros of length continuation_start (or T when
    that is 0). While the guess is shorter than T, the plan is solved, extended by
    continuation_step zero inputs, and solved again from there (horizon continuation): a cold
    60-step swing-up solve otherwise settles in local minima where the pole passes the top and
    falls, because the linearisation about a falling nominal cannot see the catch.
    If a guess is a stationary point of J (the pole hanging at rest with U = 0: a
    direction-neutral cost has zero gradient there by symmetry), that stage is also solved from
    guess + symmetry_kick and the better plan kept; the kick only breaks the tie between the two
    mirror-image swing-ups. Raises ILQRError on a degenerate model; all loops are bounded.
    `should_stop` is asked at every iteration (a node shutting down must not wait for a plan):
    True raises Cancelled.
    """
    config = ILQRConfig() if config is None else config
    x0 = np.asarray(x0, dtype=float).reshape(STATE_DIM)
    if not np.all(np.isfinite(x0)):
        raise ILQRError(f"x0 is non-finite: {x0}")
    if not (math.isfinite(u_max) and u_max > 0.0):
        raise ValueError(f"u_max must be positive and finite, got {u_max}")
    if U_init is None:
        if horizon is None or horizon < 1:
            raise ValueError("give U_init or a positive horizon")
        start = config.continuation_start or horizon
        U = np.zeros((min(start, horizon), INPUT_DIM))
    else:
        U = np.clip(np.asarray(U_init, dtype=float).reshape(-1, INPUT_DIM), -u_max, u_max)
        horizon = U.shape[0] if horizon is None else horizon
        if not 1 <= U.shape[0] <= horizon:
            raise ValueError(f"U_init has {U.shape[0]} steps, horizon is {horizon}")

    stages: list[tuple[int, int, float]] = []
    while True:  # bounded: the horizon grows by continuation_step >= 1 each stage
        plan = _solve_fixed(dynamics, cost, x0, U, u_max, config, should_stop)
        stages.append((plan.horizon, plan.iterations, plan.cost))
        if plan.horizon >= horizon:
            break
        grow = min(config.continuation_step, horizon - plan.horizon)
        U = np.concatenate([plan.U, np.zeros((grow, INPUT_DIM))])
    return dataclasses.replace(plan, iterations=sum(s[1] for s in stages), stages=tuple(stages))
