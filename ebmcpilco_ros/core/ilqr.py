"""iLQR with a box-constrained input, Levenberg-Marquardt regularisation and a line search.

Generic in the state size n and the input size m, and depending on numpy alone (as trajax's
optimizer is): EB-MC-PILCO plans swing-ups with it through the GP posterior-mean dynamics, tests
also through the true cart-pole (core/cartpole.py) and small linear systems. Pure functions over
float64 arrays: for a 4-state, 1-input plant numpy beats torch by a wide margin. The maths and
every choice the paper leaves open are in docs/ILQR.md.

Notation (trajax / Tassa et al. 2012):
    x_t (n), u_t (m)                state and input, t = 0..T-1; x_T the final state
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

The input limit |u_i| <= u_max is a box constraint of the per-step QP (box-DDP, Tassa 2014): k_t
is the box-constrained minimiser (box_qp), and the rows of K_t of inputs held at a bound are zero.
`dx` is `difference(x, X_t)`, plain subtraction unless the caller passes its plant's (the
cart-pole's wraps the angle: cartpole.state_difference). Cold starts grow the horizon
(continuation) and break a symmetric start's tie with a small kick; see solve().
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from .cancel import StopCheck, check

__all__ = [
    "ILQRError", "ILQRPlan", "Dynamics", "BatchDynamics", "Cost", "RunningDerivatives", "Settings",
    "FiniteDifferenceDynamics", "BackwardPass", "solve", "rollout", "backward_pass",
    "forward_pass", "forward_passes", "feedback_input", "box_qp", "subtract",
]


class ILQRError(RuntimeError):
    """iLQR cannot proceed: non-finite dynamics/Jacobians/cost, or Q_uu not positive at mu_max."""


# -- interfaces ---------------------------------------------------------------------------------

class Dynamics(Protocol):
    """Deterministic discrete-time dynamics: the GP posterior mean, or a known plant."""

    def step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """x (n,), u (m,) -> x_next (n,)."""
        ...

    def linearize(self, X: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X (T, n), U (T, m) -> A (T, n, n), B (T, n, m), batched over t."""
        ...


@runtime_checkable
class BatchDynamics(Dynamics, Protocol):
    """Dynamics that also step many states in one call; the line search then runs its step
    sizes after the first side by side (forward_passes)."""

    def step_batch(self, X: np.ndarray, U: np.ndarray) -> np.ndarray:
        """X (L, n), U (L, m) -> the L next states (L, n)."""
        ...


@dataclass(frozen=True)
class RunningDerivatives:
    """Derivatives of the running cost along a trajectory of T steps."""

    l_x: np.ndarray   # (T, n)
    l_u: np.ndarray   # (T, m)
    l_xx: np.ndarray  # (T, n, n)
    l_uu: np.ndarray  # (T, m, m)
    l_ux: np.ndarray  # (T, m, n)


class Cost(Protocol):
    """Running and terminal cost with derivatives (ilqr_cost.SwingUpCost for the cart-pole)."""

    def total(self, X: np.ndarray, U: np.ndarray) -> float: ...

    def running_derivatives(self, X: np.ndarray, U: np.ndarray) -> RunningDerivatives: ...

    def final_derivatives(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class Settings(Protocol):
    """The solver's settings: config.ILQRConfig has them (ranges and meanings there)."""

    max_iterations: int
    tolerance: float
    grad_tolerance: float
    mu_init: float
    mu_min: float
    mu_max: float
    mu_factor: float
    line_search_alphas: tuple[float, ...]
    accept_ratio: float
    symmetry_kick: float
    continuation_start: int
    continuation_step: int


StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
Difference = Callable[[np.ndarray, np.ndarray], np.ndarray]


def subtract(x: np.ndarray, X: np.ndarray) -> np.ndarray:
    """dx = x - X: the state difference of a plant without periodic coordinates."""
    return np.asarray(x, dtype=float) - np.asarray(X, dtype=float)


class FiniteDifferenceDynamics:
    """Dynamics whose linearize() is central differences (step `step_size`) of a step function.

    With `vectorized=True` the step function must accept leading batch axes, x (..., n) and
    u (..., m); then all 2 (n + m) T perturbed steps of a trajectory are one call, which for the
    RK4 cart-pole is ~20x faster than looping.
    """

    def __init__(self, step_fn: StepFn, step_size: float, vectorized: bool = False) -> None:
        self.step_fn = step_fn
        self.step_size = float(step_size)
        self.vectorized = vectorized

    def step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        return np.asarray(self.step_fn(np.asarray(x, dtype=float), np.asarray(u, dtype=float)),
                          dtype=float)

    def step_batch(self, X: np.ndarray, U: np.ndarray) -> np.ndarray:
        if self.vectorized:
            return self.step(X, U)
        return np.stack([self.step(x, u) for x, u in zip(X, U)])

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


# -- the plan and its control law ---------------------------------------------------------------

def feedback_input(X_t: np.ndarray, U_t: np.ndarray, K_t: np.ndarray, x: np.ndarray,
                   difference: Difference = subtract) -> np.ndarray:
    """u = U_t + K_t dx, dx = difference(x, X_t): the closed-loop law about a nominal, before
    the input limit. The forward passes run it (with U_t + alpha k_t; x and U_t may carry a
    leading batch axis), and so does a plan executed on the system
    (controllers.FeedbackPlanController, which adds noise first)."""
    return U_t + np.matmul(K_t, difference(x, X_t)[..., None])[..., 0]


@dataclass(frozen=True)
class ILQRPlan:
    """A solved plan: nominal trajectory, gains and how the solve went.

    X (T+1, n) and U (T, m) are the nominal. k (T, m) and K (T, m, n) come from a backward pass
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

    def control(self, t: int, x: np.ndarray, difference: Difference = subtract) -> np.ndarray:
        """u_t = clip(U_t + K_t dx, +-u_max) (m,); beyond the horizon the last step's law."""
        t = min(max(int(t), 0), self.horizon - 1)
        u = feedback_input(self.X[t], self.U[t], self.K[t], x, difference)
        return np.clip(u, -self.u_max, self.u_max)


# -- passes -------------------------------------------------------------------------------------

def _check_state(x: np.ndarray, t: int, u: np.ndarray, n: int) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.shape != (n,):
        raise ILQRError(f"dynamics.step returned shape {x.shape} at t={t}, expected ({n},)")
    if not np.all(np.isfinite(x)):
        raise ILQRError(f"dynamics.step returned a non-finite state {x} at t={t} (u={u}): "
                        "degenerate model")
    return x


def rollout(dynamics: Dynamics, x0: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Open-loop X (T+1, n) from x0 (n,) under U (T, m); ILQRError on a non-finite state."""
    n = len(x0)
    X = np.empty((U.shape[0] + 1, n))
    X[0] = x0
    for t in range(U.shape[0]):
        X[t + 1] = _check_state(dynamics.step(X[t], U[t]), t, U[t], n)
    return X


def forward_pass(dynamics: Dynamics, x0: np.ndarray, X: np.ndarray, U: np.ndarray,
                 k: np.ndarray, K: np.ndarray, alpha: float, u_max: float,
                 difference: Difference = subtract) -> tuple[np.ndarray, np.ndarray]:
    """Roll out u_t = clip(U_t + alpha k_t + K_t dx_t, +-u_max) through the dynamics.

    The clip only catches K_t dx pushing a free input past the limit; U_t + alpha k_t is inside
    the box already (box-constrained backward pass, and the box is convex).
    """
    steps, n = U.shape[0], X.shape[1]
    X_new = np.empty_like(X)
    U_new = np.empty_like(U)
    X_new[0] = x0
    for t in range(steps):
        u = feedback_input(X[t], U[t] + alpha * k[t], K[t], X_new[t], difference)
        U_new[t] = np.clip(u, -u_max, u_max)
        X_new[t + 1] = _check_state(dynamics.step(X_new[t], U_new[t]), t, U_new[t], n)
    return X_new, U_new


def forward_passes(dynamics: BatchDynamics, x0: np.ndarray, X: np.ndarray, U: np.ndarray,
                   k: np.ndarray, K: np.ndarray, alphas: Sequence[float], u_max: float,
                   difference: Difference = subtract
                   ) -> tuple[np.ndarray, np.ndarray, list[ILQRError | None]]:
    """forward_pass for every alpha at once: X (L, T+1, n), U (L, T, m), and per alpha the
    ILQRError its own forward_pass would have raised (None if none). A pass that goes
    non-finite is carried on as NaN, so that its error reaches the caller only if the line
    search gets to that alpha."""
    steps, n = U.shape[0], X.shape[1]
    a = np.asarray(alphas, dtype=float)[:, None]
    L = len(a)
    Xs = np.empty((L, steps + 1, n))
    Us = np.empty((L, steps, U.shape[1]))
    errors: list[ILQRError | None] = [None] * L
    Xs[:, 0] = x0
    for t in range(steps):
        u = feedback_input(X[t], U[t] + a * k[t], K[t], Xs[:, t], difference)
        Us[:, t] = np.clip(u, -u_max, u_max)
        x_next = np.asarray(dynamics.step_batch(Xs[:, t], Us[:, t]), dtype=float)
        if x_next.shape != (L, n):
            raise ILQRError(f"dynamics.step_batch returned shape {x_next.shape} at t={t}, "
                            f"expected ({L}, {n})")
        for i in np.flatnonzero(~np.isfinite(x_next).all(axis=1)):
            if errors[i] is None and np.isfinite(Xs[i, t]).all():
                errors[i] = ILQRError(f"dynamics.step returned a non-finite state {x_next[i]} "
                                      f"at t={t} (u={Us[i, t]}): degenerate model")
        Xs[:, t + 1] = x_next
    return Xs, Us, errors


def box_qp(H: np.ndarray, g: np.ndarray, lower: np.ndarray, upper: np.ndarray,
           max_iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """argmin 1/2 du^T H du + g^T du over lower <= du <= upper (H positive definite), and which
    inputs are free (not held at a bound by the minimum).

    One input: the closed form, -g/H clamped into the box (free where it needed no clamp).
    Several: projected Newton (Bertsekas 1982), as box-DDP does (Tassa et al. 2014): a Newton
    step on the inputs not held at a bound, projected onto the box, with an Armijo search along
    the projected arc; the QP is convex, so it converges to the minimum.
    """
    if len(g) == 1:
        k_free = -float(g[0]) / float(H[0, 0])
        lo, hi = float(lower[0]), float(upper[0])
        return np.array([min(max(k_free, lo), hi)]), np.array([lo <= k_free <= hi])

    def held(du: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return ((du <= lower) & (grad > 0.0)) | ((du >= upper) & (grad < 0.0))

    def value(du: np.ndarray) -> float:
        return float(0.5 * du @ H @ du + g @ du)

    du = np.clip(np.zeros(len(g)), lower, upper)
    for _ in range(max_iterations):
        grad = g + H @ du
        free = ~held(du, grad)
        if not free.any():
            break
        step = np.zeros(len(g))
        step[free] = -np.linalg.solve(H[np.ix_(free, free)], grad[free])
        if np.max(np.abs(step)) <= 1e-14 * (1.0 + np.max(np.abs(du))):
            break
        alpha, before = 1.0, value(du)
        while True:
            trial = np.clip(du + alpha * step, lower, upper)
            if before - value(trial) >= -0.1 * float(grad @ (trial - du)) or alpha < 1e-12:
                break
            alpha *= 0.5
        du = trial
    return du, ~held(du, g + H @ du)


@dataclass(frozen=True)
class BackwardPass:
    """k (T, m), K (T, m, n) and the expected-change terms; failed_at = t where the regularised
    Q_uu was not positive definite (then k, K are incomplete and must not be used), and
    Q_uu_failed its smallest eigenvalue there."""

    k: np.ndarray
    K: np.ndarray
    dV: tuple[float, float]
    failed_at: int | None = None
    Q_uu_failed: float = float("nan")


def _positive_definite(Q: np.ndarray) -> bool:
    if Q.shape == (1, 1):
        return math.isfinite(Q[0, 0]) and Q[0, 0] > 0.0
    if not np.all(np.isfinite(Q)):
        return False
    try:
        np.linalg.cholesky(Q)
    except np.linalg.LinAlgError:
        return False
    return True


def backward_pass(A: np.ndarray, B: np.ndarray, derivs: RunningDerivatives,
                  final: tuple[np.ndarray, np.ndarray], U: np.ndarray, u_max: float,
                  mu: float) -> BackwardPass:
    """Riccati-like recursion from t = T-1 down to 0, box-constrained in u (box_qp).

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
    if U.shape[1] == 1:
        return _single_input_backward_pass(A, B, derivs, final, U, u_max, mu)
    return _matrix_backward_pass(A, B, derivs, final, U, u_max, mu)


def _matrix_backward_pass(A: np.ndarray, B: np.ndarray, derivs: RunningDerivatives,
                          final: tuple[np.ndarray, np.ndarray], U: np.ndarray, u_max: float,
                          mu: float) -> BackwardPass:
    """backward_pass for any m, in matrices (box_qp per step)."""
    steps, m = U.shape
    n = A.shape[1]
    # mu's terms, batched over t: B^T (V'_xx + mu I) B = B^T V'_xx B + mu B^T B, likewise for A.
    BtB = np.einsum("tim,tik->tmk", B, B)
    BtA = np.einsum("tim,tik->tmk", B, A)
    k = np.zeros((steps, m))
    K = np.zeros((steps, m, n))
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
        BtV = B_t.T @ V_xx
        Q_uu = derivs.l_uu[t] + BtV @ B_t
        Q_ux = derivs.l_ux[t] + BtV @ A_t
        Q_uu_reg = Q_uu + mu * BtB[t]
        Q_ux_reg = Q_ux + mu * BtA[t]
        if not _positive_definite(Q_uu_reg):
            smallest = (float(np.linalg.eigvalsh(Q_uu_reg)[0])
                        if np.all(np.isfinite(Q_uu_reg)) else float("nan"))
            return BackwardPass(k, K, (dV1, 0.0), failed_at=t, Q_uu_failed=smallest)
        # Box QP: min_du 1/2 du^T Q~_uu du + Q_u^T du, U_t + du in [-u_max, u_max].
        k[t], free = box_qp(Q_uu_reg, Q_u, -u_max - U[t], u_max - U[t])
        if m == 1:  # the closed form: a division (a solve would round differently)
            K[t] = -Q_ux_reg / float(Q_uu_reg[0, 0]) if free[0] else 0.0
        elif free.any():
            K[t][free] = -np.linalg.solve(Q_uu_reg[np.ix_(free, free)], Q_ux_reg[free])
        K_t, k_v = K[t], k[t]
        dV1 += float(k_v @ q_u)
        change += float(k_v @ Q_u + 0.5 * k_v @ Q_uu @ k_v)
        v_x = q_x + K_t.T @ q_u
        V_x = Q_x + K_t.T @ Q_uu @ k_v + K_t.T @ Q_u + Q_ux.T @ k_v
        V_xx = Q_xx + K_t.T @ Q_uu @ K_t + K_t.T @ Q_ux + Q_ux.T @ K_t
        V_xx = 0.5 * (V_xx + V_xx.T)
    return BackwardPass(k, K, (dV1, 2.0 * (change - dV1)))


def _single_input_backward_pass(A: np.ndarray, B: np.ndarray, derivs: RunningDerivatives,
                                final: tuple[np.ndarray, np.ndarray], U: np.ndarray,
                                u_max: float, mu: float) -> BackwardPass:
    """backward_pass for m = 1, the same recursion with b_t = B_t[:, 0] and scalar Q_u, Q_uu, k_t.

    Why: a plan runs this loop hundreds of times over 60 steps and at n = 4 its cost is numpy's
    per-call overhead, not arithmetic; vectors and Python floats need about a third of the calls
    of the matrix form (V'_xx is symmetric, so B^T V'_xx A = (V'_xx b)^T A). Equal to the matrix
    form to rounding (test_ilqr).
    """
    steps, n = U.shape[0], A.shape[1]
    b = B[:, :, 0]                                  # (T, n)
    btb = np.einsum("ti,ti->t", b, b).tolist()      # mu's terms: b^T b and b^T A, batched
    btA = np.einsum("ti,tij->tj", b, A)
    l_u = derivs.l_u[:, 0].tolist()
    l_uu = derivs.l_uu[:, 0, 0].tolist()
    l_ux = derivs.l_ux[:, 0, :]
    U_t = U[:, 0].tolist()
    k = np.zeros((steps, 1))
    K = np.zeros((steps, 1, n))
    V_x = np.array(final[0], dtype=float)
    V_xx = np.array(final[1], dtype=float)
    v_x = V_x.copy()
    dV1 = change = 0.0
    for t in range(steps - 1, -1, -1):
        A_t, b_t = A[t], b[t]
        Vb = V_xx @ b_t
        Q_uu = l_uu[t] + float(b_t @ Vb)
        Q_uu_reg = Q_uu + mu * btb[t]
        if not (math.isfinite(Q_uu_reg) and Q_uu_reg > 0.0):
            return BackwardPass(k, K, (dV1, 0.0), failed_at=t,
                                Q_uu_failed=Q_uu_reg if math.isfinite(Q_uu_reg) else math.nan)
        Q_u = l_u[t] + float(b_t @ V_x)
        q_u = l_u[t] + float(b_t @ v_x)
        Q_ux = l_ux[t] + Vb @ A_t
        # box QP in one input: -Q_u / Q~_uu clamped to the box, its gain zero when clamped
        k_free = -Q_u / Q_uu_reg
        lo, hi = -u_max - U_t[t], u_max - U_t[t]
        k_v = min(max(k_free, lo), hi)
        k[t, 0] = k_v
        dV1 += k_v * q_u
        change += k_v * Q_u + 0.5 * k_v * k_v * Q_uu
        Q_x = derivs.l_x[t] + V_x @ A_t
        q_x = derivs.l_x[t] + v_x @ A_t
        Q_xx = derivs.l_xx[t] + A_t.T @ V_xx @ A_t
        if lo <= k_free <= hi:
            K_t = -(Q_ux + mu * btA[t]) / Q_uu_reg
            K[t, 0] = K_t
            v_x = q_x + K_t * q_u
            V_x = Q_x + K_t * (Q_uu * k_v + Q_u) + Q_ux * k_v
            KQ = np.outer(K_t, Q_uu * K_t + Q_ux)
            V_xx = Q_xx + KQ + np.outer(Q_ux, K_t)
        else:
            v_x = q_x
            V_x = Q_x + Q_ux * k_v
            V_xx = Q_xx
        V_xx = 0.5 * (V_xx + V_xx.T)
    return BackwardPass(k, K, (dV1, 2.0 * (change - dV1)))


# -- the solver ---------------------------------------------------------------------------------

class _Mu:
    """Tassa's schedule: mu moves by a factor that itself grows while moving the same way."""

    def __init__(self, config: Settings) -> None:
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
    (steps, m), n = U.shape, X.shape[1]
    A, B = dynamics.linearize(X[:-1], U)
    A = np.asarray(A, dtype=float)
    B = np.asarray(B, dtype=float)
    if A.shape != (steps, n, n) or B.shape != (steps, n, m):
        raise ILQRError(f"dynamics.linearize returned A {A.shape}, B {B.shape}; expected "
                        f"({steps}, {n}, {n}) and ({steps}, {n}, {m})")
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
                f"Q_uu not positive definite at t={bp.failed_at} (smallest eigenvalue "
                f"{bp.Q_uu_failed:.3g}) "
                f"with mu > mu_max = {mu.config.mu_max:g}: the model has no usable input effect "
                "(B ~ 0 with R = 0?)")


def _best_predicted_reduction(dV1: float, dV2: float) -> float:
    """max over alpha in (0, 1] of -(alpha dV_1 + alpha^2/2 dV_2); dV_1 <= 0 by construction."""
    alpha = 1.0 if dV2 <= 0.0 else min(1.0, -dV1 / dV2)
    return -(alpha * dV1 + 0.5 * alpha * alpha * dV2)


def _line_search(dynamics: Dynamics, cost: Cost, x0: np.ndarray, X: np.ndarray, U: np.ndarray,
                 J: float, bp: BackwardPass, u_max: float, config: Settings,
                 difference: Difference
                 ) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """The first alpha of line_search_alphas whose forward pass is accepted: (X, U, J, alpha),
    or None.

    The first alpha runs alone (near convergence it is the one accepted). With BatchDynamics
    the others then run side by side (forward_passes): one batched pass costs about as much as
    one single pass at these sizes, while a failing search tried up to ten in a row. The choice
    is the sequential search's: the same order, the same test, the same errors.
    """
    dV1, dV2 = bp.dV

    def accepted(alpha: float, J_new: float) -> bool:
        expected = -(alpha * dV1 + 0.5 * alpha * alpha * dV2)
        actual = J - J_new
        ratio = actual / expected if expected > 0.0 else math.copysign(1.0, actual)
        return ratio > config.accept_ratio

    def rollouts() -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
        """(alpha, X, U) in line_search_alphas' order, each rolled out only when reached."""
        first, *rest = config.line_search_alphas
        yield (first, *forward_pass(dynamics, x0, X, U, bp.k, bp.K, first, u_max, difference))
        if rest and isinstance(dynamics, BatchDynamics):
            Xs, Us, errors = forward_passes(dynamics, x0, X, U, bp.k, bp.K, rest, u_max,
                                            difference)
            for alpha, X_a, U_a, error in zip(rest, Xs, Us, errors):
                if error is not None:
                    raise error
                yield alpha, X_a, U_a
        else:
            for alpha in rest:
                yield (alpha, *forward_pass(dynamics, x0, X, U, bp.k, bp.K, alpha, u_max,
                                            difference))

    for alpha, X_new, U_new in rollouts():
        J_new = _total(cost, X_new, U_new)
        if accepted(alpha, J_new):
            return X_new, U_new, J_new, alpha
    return None


def _optimise(dynamics: Dynamics, cost: Cost, x0: np.ndarray, U: np.ndarray, u_max: float,
              config: Settings, difference: Difference, should_stop: StopCheck = None
              ) -> tuple[ILQRPlan, bool]:
    """The iLQR loop from U; also says whether U was already a stationary point."""
    X = rollout(dynamics, x0, U)
    J = _total(cost, X, U)
    history = [J]
    mu = _Mu(config)
    k = np.zeros_like(U)
    K = np.zeros((U.shape[0], U.shape[1], len(x0)))
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
            # nearly at the stationary point (the pole a hair off the bottom, a model mean not
            # quite symmetric): k is not zero, but no step is worth taking from here either
            stationary_start = iterations == 1
            break
        step = _line_search(dynamics, cost, x0, X, U, J, bp, u_max, config, difference)
        if step is not None:
            X_new, U_new, J_new, alpha = step
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
                 config: Settings, difference: Difference, should_stop: StopCheck = None
                 ) -> ILQRPlan:
    """One horizon: iLQR from U0, with the symmetry kick if U0 is a stationary point."""
    plan, stationary = _optimise(dynamics, cost, x0, U0, u_max, config, difference,
                                 should_stop)
    if not (stationary and config.symmetry_kick > 0.0):
        return plan
    U_kick = np.clip(U0 + config.symmetry_kick, -u_max, u_max)
    kicked, _ = _optimise(dynamics, cost, x0, U_kick, u_max, config, difference, should_stop)
    best = kicked if kicked.cost < plan.cost else plan
    note = "symmetry kick" if best is kicked else "symmetry kick rejected"
    return dataclasses.replace(
        best, iterations=plan.iterations + kicked.iterations,
        message=f"{best.message} ({note}: initial guess was stationary)")


def solve(dynamics: Dynamics, cost: Cost, x0: np.ndarray, u_max: float, config: Settings,
          horizon: int | None = None, U_init: np.ndarray | None = None, input_dim: int = 1,
          difference: Difference = subtract, should_stop: StopCheck = None) -> ILQRPlan:
    """Minimise J(x0, U) over T = horizon steps s.t. x_{t+1} = f(x_t, u_t), |u_t| <= u_max.

    x0 (n,) fixes the state size; U_init (T0, m) with T0 <= T is the initial guess, clipped into
    the box (box-DDP needs a feasible nominal). Without it the guess is zeros of m = input_dim
    inputs and length continuation_start (or T when that is 0). While the guess is shorter than
    T, the plan is solved, extended by continuation_step zero inputs, and solved again from
    there (horizon continuation): a cold 60-step cart-pole swing-up otherwise settles in local
    minima where the pole passes the top and falls, because the linearisation about a falling
    nominal cannot see the catch.
    If a guess is a stationary point of J (the pole hanging at rest with U = 0: a
    direction-neutral cost has zero gradient there by symmetry), or so near one that the first
    backward pass predicts no reduction worth a step, that stage is also solved from
    guess + symmetry_kick and the better plan kept; the kick only breaks the tie between the two
    mirror-image swing-ups. `difference` is the plant's state difference (see the module doc).
    Raises ILQRError on a degenerate model; all loops are bounded. `should_stop` is asked at
    every iteration (a node shutting down must not wait for a plan): True raises Cancelled.
    """
    x0 = np.asarray(x0, dtype=float).reshape(-1)
    if not np.all(np.isfinite(x0)):
        raise ILQRError(f"x0 is non-finite: {x0}")
    if not (math.isfinite(u_max) and u_max > 0.0):
        raise ValueError(f"u_max must be positive and finite, got {u_max}")
    if U_init is None:
        if horizon is None or horizon < 1:
            raise ValueError("give U_init or a positive horizon")
        start = config.continuation_start or horizon
        U = np.zeros((min(start, horizon), input_dim))
    else:
        U_init = np.asarray(U_init, dtype=float)
        U = np.clip(U_init.reshape(len(U_init), -1), -u_max, u_max)
        horizon = U.shape[0] if horizon is None else horizon
        if not 1 <= U.shape[0] <= horizon:
            raise ValueError(f"U_init has {U.shape[0]} steps, horizon is {horizon}")

    stages: list[tuple[int, int, float]] = []
    while True:  # bounded: the horizon grows by continuation_step >= 1 each stage
        plan = _solve_fixed(dynamics, cost, x0, U, u_max, config, difference, should_stop)
        stages.append((plan.horizon, plan.iterations, plan.cost))
        if plan.horizon >= horizon:
            break
        grow = min(config.continuation_step, horizon - plan.horizon)
        U = np.concatenate([plan.U, np.zeros((grow, U.shape[1]))])
    return dataclasses.replace(plan, iterations=sum(s[1] for s in stages), stages=tuple(stages))
