"""iLQR: swing-up on the true cart-pole, the cost, the box constraint and degenerate models."""
from __future__ import annotations

import time

import numpy as np
import pytest

from ebmcpilco_ros.core import ilqr
from ebmcpilco_ros.core.cartpole import cartpole_dynamics, state_difference, wrap_angle
from ebmcpilco_ros.core.config import ConfigError, ILQRConfig, PlantConfig
from ebmcpilco_ros.core.controllers import FeedbackPlan, FeedbackPlanController
from ebmcpilco_ros.core.ilqr_cost import SwingUpCost
from ebmcpilco_ros.core.systems import SimulatedCartPole

PLANT = PlantConfig()
CONFIG = ILQRConfig()
COST = SwingUpCost.from_config(CONFIG)
# Bound on the total iterations (all continuation stages, symmetry kick included) of the 60-step
# swing-up; it takes about 50 with the default config.
ITERATION_BOUND = 120
THETA_TOL = 0.1  # rad from upright
P_TOL = 0.1      # m
CLOSED_LOOP_SEEDS = (0, 1, 2, 3, 4)


def upright_error(theta: np.ndarray | float) -> np.ndarray:
    """Distance to the nearer upright (+pi or -pi), any number of turns."""
    return np.abs(np.abs(wrap_angle(np.asarray(theta, dtype=float))) - np.pi)


@pytest.fixture(scope="module")
def true_dynamics() -> ilqr.FiniteDifferenceDynamics:
    return cartpole_dynamics(PLANT)


@pytest.fixture(scope="module")
def swing_up(true_dynamics) -> tuple[ilqr.ILQRPlan, float]:
    started = time.perf_counter()
    plan = ilqr.solve(true_dynamics, COST, np.zeros(4), PLANT.u_max, CONFIG,
                      horizon=PLANT.steps, difference=state_difference)
    return plan, time.perf_counter() - started


# -- swing-up on the true dynamics --------------------------------------------------------------

@pytest.mark.timeout(60)
def test_swing_up_nominal_reaches_and_holds_upright(swing_up, true_dynamics):
    plan, seconds = swing_up
    assert plan.converged, plan.message
    assert plan.iterations <= ITERATION_BOUND
    assert plan.X.shape == (PLANT.steps + 1, 4) and plan.U.shape == (PLANT.steps, 1)
    assert plan.k.shape == (PLANT.steps, 1) and plan.K.shape == (PLANT.steps, 1, 4)
    # The nominal is a trajectory of the plant itself, not of a linearisation.
    np.testing.assert_allclose(ilqr.rollout(true_dynamics, np.zeros(4), plan.U), plan.X)
    assert upright_error(plan.X[-1, 2]) < THETA_TOL
    assert abs(plan.X[-1, 0]) < P_TOL
    # Balanced, not just passing the top at T: the last second is upright too.
    last_second = plan.X[-int(round(1.0 / PLANT.control_period)) - 1:]
    assert np.all(upright_error(last_second[:, 2]) < THETA_TOL)
    assert np.all(np.abs(last_second[:, 0]) < P_TOL)
    # Within a stage the cost only goes down; overall far below hanging at rest.
    assert np.all(np.diff(plan.cost_history) < 0.0)
    zeros = np.zeros((PLANT.steps, 1))
    hanging = COST.total(ilqr.rollout(true_dynamics, np.zeros(4), zeros), zeros)
    assert plan.cost < 0.2 * hanging
    print(f"\niLQR swing-up: {seconds:.2f} s, {plan.iterations} iterations, J = {plan.cost:.2f}, "
          f"stages {plan.stages}")


@pytest.mark.timeout(60)
def test_closed_loop_feedback_law_swings_up_the_true_plant(swing_up):
    """Executed from a random start with sensor noise, U + K dx reaches upright; U alone
    (feedforward only) does not, so the gains do the work."""
    plan, _ = swing_up

    class FeedforwardOnly:
        def reset(self) -> None:
            pass

        def finished(self, step: int, state: np.ndarray) -> bool:
            return False

        def __call__(self, step: int, state: np.ndarray) -> float:
            return float(plan.U[min(step, plan.horizon - 1), 0])

    open_loop_failures = 0
    for seed in CLOSED_LOOP_SEEDS:
        trial = SimulatedCartPole(PLANT, np.random.default_rng(seed)).run(
            FeedbackPlanController(FeedbackPlan.from_plan(plan)), "ilqr")
        final = trial.true_states[-1]
        assert upright_error(final[2]) < THETA_TOL, (seed, final)
        assert abs(final[0]) < P_TOL, (seed, final)
        assert np.all(np.abs(trial.inputs) <= PLANT.u_max)
        trial = SimulatedCartPole(PLANT, np.random.default_rng(seed)).run(FeedforwardOnly(), "ff")
        final = trial.true_states[-1]
        open_loop_failures += not (upright_error(final[2]) < THETA_TOL and abs(final[0]) < P_TOL)
    assert open_loop_failures == len(CLOSED_LOOP_SEEDS)


def test_box_constraint_holds_exactly_and_is_active(swing_up):
    plan, _ = swing_up
    assert np.all(np.abs(plan.U) <= PLANT.u_max)
    assert np.sum(np.abs(plan.U) == PLANT.u_max) >= 3  # the swing-up saturates: test not vacuous
    far = np.array([5.0, 5.0, 0.0, 5.0])
    for t in range(plan.horizon):
        assert abs(plan.control(t, plan.X[t] + far, state_difference)[0]) <= PLANT.u_max
        assert plan.control(t, plan.X[t], state_difference)[0] == pytest.approx(plan.U[t, 0])


def test_backward_pass_clamps_k_and_zeroes_clamped_gains():
    """Linear system, cost that wants far more force than allowed: box-DDP, not clipping."""
    steps, u_max = 10, 1.0
    A = np.broadcast_to(np.eye(4) + 0.05 * np.eye(4, k=1), (steps, 4, 4)).copy()
    B = np.broadcast_to(np.array([[0.0], [0.05], [0.0], [0.05]]), (steps, 4, 1)).copy()
    cost = SwingUpCost(q=(1.0, 1.0, 0.0, 0.0, 1.0), r=1e-3, q_final=(10.0, 10.0, 0.0, 0.0, 10.0))
    x0 = np.array([50.0, 0.0, 0.0, 0.0])  # far away: the unconstrained step is huge
    U = np.zeros((steps, 1))
    U[-1] = u_max  # already at the bound at the last step
    dyn = ilqr.FiniteDifferenceDynamics(lambda x, u: A[0] @ x + B[0] @ u, CONFIG.fd_step)
    X = ilqr.rollout(dyn, x0, U)
    derivs, final = cost.running_derivatives(X[:-1], U), cost.final_derivatives(X[-1])
    bp = ilqr.backward_pass(A, B, derivs, final, U, u_max, mu=0.0)
    assert bp.failed_at is None
    new_u = U + bp.k
    assert np.all(np.abs(new_u) <= u_max + 1e-12)
    clamped = np.isclose(np.abs(new_u[:, 0]), u_max)
    assert clamped.sum() >= steps // 2
    assert np.all(bp.K[clamped] == 0.0)
    # Unconstrained reference with a huge box: the same recursion gives non-zero gains.
    free = ilqr.backward_pass(A, B, derivs, final, U, 1e9, mu=0.0)
    assert np.all(np.abs(free.k) > np.abs(bp.k) - 1e-12)
    assert np.all(np.linalg.norm(free.K[:, 0], axis=1) > 0.0)


def test_expected_change_matches_the_forward_pass_to_first_order(true_dynamics):
    """dV_1 is dJ/dalpha at alpha = 0 of the real forward pass, also with clamping and mu > 0."""
    rng = np.random.default_rng(0)
    U = rng.uniform(-9.0, 9.0, size=(30, 1))
    x0 = np.array([0.1, 0.0, 0.5, 0.0])
    cost = COST
    X = ilqr.rollout(true_dynamics, x0, U)
    A, B = true_dynamics.linearize(X[:-1], U)
    derivs, final = cost.running_derivatives(X[:-1], U), cost.final_derivatives(X[-1])
    J0 = cost.total(X, U)
    alpha = 1e-5
    for mu in (0.0, 1.0):
        bp = ilqr.backward_pass(A, B, derivs, final, U, PLANT.u_max, mu)
        assert np.any(np.abs(U + bp.k) == PLANT.u_max)  # some steps clamped
        X_a, U_a = ilqr.forward_pass(true_dynamics, x0, X, U, bp.k, bp.K, alpha, PLANT.u_max)
        slope = (cost.total(X_a, U_a) - J0) / alpha
        assert bp.dV[0] < 0.0
        assert slope == pytest.approx(bp.dV[0], rel=1e-3)


def test_single_input_backward_pass_is_the_matrix_recursion(true_dynamics):
    """The m = 1 path (vectors and floats) equals the matrix form to rounding: k, K, dV, with
    clamped and free steps, with and without mu, and where Q~_uu fails."""
    rng = np.random.default_rng(3)
    U = rng.uniform(-9.0, 9.0, size=(40, 1))
    x0 = np.array([0.1, 0.0, 0.5, 0.0])
    X = ilqr.rollout(true_dynamics, x0, U)
    A, B = true_dynamics.linearize(X[:-1], U)
    derivs, final = COST.running_derivatives(X[:-1], U), COST.final_derivatives(X[-1])
    for mu in (0.0, 0.3, 10.0):
        fast = ilqr.backward_pass(A, B, derivs, final, U, PLANT.u_max, mu)
        ref = ilqr._matrix_backward_pass(A, B, derivs, final, U, PLANT.u_max, mu)
        assert fast.failed_at is None and ref.failed_at is None
        clamped = np.abs(U + ref.k) == PLANT.u_max
        assert 0 < clamped.sum() < len(U)  # both kinds of step: the test is not vacuous
        np.testing.assert_allclose(fast.k, ref.k, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fast.K, ref.K, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fast.dV, ref.dV, rtol=1e-10)
        assert np.all(fast.K[clamped[:, 0]] == 0.0)
    # a negative input weight makes Q_uu negative where B is small: both fail at the same t
    bad = COST.running_derivatives(X[:-1], U)
    bad.l_uu[:] = -1e6
    fast = ilqr.backward_pass(A, B, bad, final, U, PLANT.u_max, 0.0)
    ref = ilqr._matrix_backward_pass(A, B, bad, final, U, PLANT.u_max, 0.0)
    assert fast.failed_at == ref.failed_at == len(U) - 1
    assert fast.Q_uu_failed == pytest.approx(ref.Q_uu_failed, rel=1e-12)


class _WithoutBatch:
    """The same dynamics without step_batch: the line search then runs alpha by alpha."""

    def __init__(self, dynamics: ilqr.FiniteDifferenceDynamics) -> None:
        self.step, self.linearize = dynamics.step, dynamics.linearize


def test_forward_passes_are_one_forward_pass_per_alpha(true_dynamics):
    rng = np.random.default_rng(4)
    U = rng.uniform(-9.0, 9.0, size=(30, 1))
    x0 = np.array([0.1, 0.0, 0.5, 0.0])
    X = ilqr.rollout(true_dynamics, x0, U)
    A, B = true_dynamics.linearize(X[:-1], U)
    bp = ilqr.backward_pass(A, B, COST.running_derivatives(X[:-1], U),
                            COST.final_derivatives(X[-1]), U, PLANT.u_max, 0.5)
    alphas = CONFIG.line_search_alphas
    Xs, Us, errors = ilqr.forward_passes(true_dynamics, x0, X, U, bp.k, bp.K, alphas,
                                         PLANT.u_max, state_difference)
    assert errors == [None] * len(alphas)
    for i, alpha in enumerate(alphas):
        X_a, U_a = ilqr.forward_pass(true_dynamics, x0, X, U, bp.k, bp.K, alpha, PLANT.u_max,
                                     state_difference)
        np.testing.assert_allclose(Xs[i], X_a, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(Us[i], U_a, rtol=1e-12, atol=1e-12)
    assert not np.allclose(Xs[0], Xs[-1])  # the step sizes made different rollouts


def test_forward_passes_keep_each_alphas_own_error():
    """A pass that goes non-finite carries its error (raised only if the search reaches it);
    the others are unaffected."""
    def step(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        out = x + 0.1 * u
        out[..., 0] = np.where(u[..., 0] > 0.5, np.nan, out[..., 0])
        return out

    dyn = ilqr.FiniteDifferenceDynamics(step, 1e-6, vectorized=True)
    T = 5
    X, U = np.zeros((T + 1, 4)), np.zeros((T, 1))
    k, K = np.ones((T, 1)), np.zeros((T, 1, 4))
    Xs, _, errors = ilqr.forward_passes(dyn, np.zeros(4), X, U, k, K, (1.0, 0.75, 0.5, 0.25),
                                        10.0)
    assert [e is None for e in errors] == [False, False, True, True]
    assert "non-finite state" in str(errors[0]) and "t=0" in str(errors[0])
    assert np.isfinite(Xs[2:]).all()


@pytest.mark.timeout(120)
def test_batched_line_search_finds_the_sequential_plan(true_dynamics):
    """Step sizes side by side (BatchDynamics) or one by one: the same plan."""
    x0 = np.zeros(4)
    batched = ilqr.solve(true_dynamics, COST, x0, PLANT.u_max, CONFIG, horizon=40,
                         difference=state_difference)
    sequential = ilqr.solve(_WithoutBatch(true_dynamics), COST, x0, PLANT.u_max, CONFIG,
                            horizon=40, difference=state_difference)
    assert isinstance(true_dynamics, ilqr.BatchDynamics)
    assert not isinstance(_WithoutBatch(true_dynamics), ilqr.BatchDynamics)
    # the same accepted steps; batched and single RK4 steps round differently in the last
    # bits, which 40+ iterations amplify to ~1e-7 N
    assert batched.iterations == sequential.iterations
    np.testing.assert_allclose(batched.U, sequential.U, atol=1e-5)
    np.testing.assert_allclose(batched.cost_history, sequential.cost_history, rtol=1e-9)


# -- the cost ------------------------------------------------------------------------------------

def test_cost_is_mirror_symmetric_and_zero_at_both_uprights():
    cost = COST
    rng = np.random.default_rng(1)
    X = rng.normal(scale=3.0, size=(50, 4))
    U = rng.uniform(-10.0, 10.0, size=(50, 1))
    np.testing.assert_allclose(cost.running(X, U), cost.running(-X, -U), rtol=1e-14)
    np.testing.assert_allclose(cost.final(X), cost.final(-X), rtol=1e-14)
    for theta in (np.pi, -np.pi, 3 * np.pi):
        assert cost.final(np.array([0.0, 0.0, theta, 0.0])) == pytest.approx(0.0, abs=1e-25)


@pytest.mark.timeout(60)
def test_solve_is_mirror_symmetric(true_dynamics):
    """J(x0, U) = J(-x0, -U) on the plant, and iLQR from -x0 returns the mirror plan."""
    x0 = np.array([0.01, -0.01, 0.02, 0.01])
    cost = COST
    U = np.random.default_rng(2).uniform(-10.0, 10.0, size=(PLANT.steps, 1))
    J_plus = cost.total(ilqr.rollout(true_dynamics, x0, U), U)
    J_minus = cost.total(ilqr.rollout(true_dynamics, -x0, -U), -U)
    assert J_plus == pytest.approx(J_minus, rel=1e-12)
    plus, minus = (ilqr.solve(true_dynamics, cost, start, PLANT.u_max, CONFIG,
                              horizon=PLANT.steps, difference=state_difference)
                   for start in (x0, -x0))
    assert plus.cost == pytest.approx(minus.cost, rel=1e-9)
    np.testing.assert_allclose(plus.U, -minus.U, atol=1e-6)
    np.testing.assert_allclose(plus.X, -minus.X, atol=1e-6)
    np.testing.assert_allclose(plus.K, minus.K, atol=1e-6)


@pytest.mark.parametrize("hessian", ["gauss_newton", "exact"])
def test_cost_derivatives_match_finite_differences(hessian):
    cost = SwingUpCost(CONFIG.q, CONFIG.r, CONFIG.q_final, hessian=hessian)
    rng = np.random.default_rng(3)
    X = rng.normal(scale=2.0, size=(20, 4))
    U = rng.uniform(-10.0, 10.0, size=(20, 1))
    d = cost.running_derivatives(X, U)
    h = 1e-6
    eye = np.eye(4)
    fd_x = np.stack([(cost.running(X + h * eye[i], U) - cost.running(X - h * eye[i], U)) / (2 * h)
                     for i in range(4)], axis=-1)
    np.testing.assert_allclose(d.l_x, fd_x, rtol=1e-6, atol=1e-6)
    fd_u = (cost.running(X, U + h) - cost.running(X, U - h)) / (2 * h)
    np.testing.assert_allclose(d.l_u[:, 0], fd_u, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d.l_uu[:, 0, 0], CONFIG.r)
    l_x_final, l_xx_final = cost.final_derivatives(X[0])
    fd_final = np.array([(cost.final(X[0] + h * eye[i]) - cost.final(X[0] - h * eye[i])) / (2 * h)
                         for i in range(4)])
    np.testing.assert_allclose(l_x_final, fd_final, rtol=1e-6, atol=1e-6)
    # Hessian: FD of the analytic gradient (exact), or E^T Q E being PSD (Gauss-Newton).

    def grad(x):
        return cost.running_derivatives(x[None], np.zeros((1, 1))).l_x[0]

    fd_xx = np.stack([(grad(X[0] + h * eye[i]) - grad(X[0] - h * eye[i])) / (2 * h)
                      for i in range(4)], axis=-1)
    if hessian == "exact":
        np.testing.assert_allclose(d.l_xx[0], fd_xx, rtol=1e-5, atol=1e-5)
    else:
        assert np.all(np.linalg.eigvalsh(d.l_xx) >= -1e-12)
        upright = np.array([0.0, 0.0, np.pi, 0.0])  # zero residual: Gauss-Newton is exact there
        gn = cost.running_derivatives(upright[None], np.zeros((1, 1))).l_xx[0]
        exact = SwingUpCost(CONFIG.q, CONFIG.r, CONFIG.q_final, hessian="exact")
        np.testing.assert_allclose(gn, exact.running_derivatives(upright[None],
                                                                 np.zeros((1, 1))).l_xx[0])


def test_track_penalty_derivatives_match_finite_differences():
    cost = SwingUpCost(CONFIG.q, CONFIG.r, CONFIG.q_final, track_limit=0.5, track_weight=1e4)
    free = SwingUpCost(CONFIG.q, CONFIG.r, CONFIG.q_final)
    rng = np.random.default_rng(5)
    X = rng.normal(scale=1.0, size=(40, 4))
    X = X[np.abs(np.abs(X[:, 0]) - 0.5) > 1e-3]          # off the kink at |p| = p_lim
    U = np.zeros((len(X), 1))
    beyond = np.maximum(0.0, np.abs(X[:, 0]) - 0.5)
    assert np.any(beyond > 0) and np.any(beyond == 0)
    np.testing.assert_allclose(cost.running(X, U) - free.running(X, U), 0.5e4 * beyond ** 2)
    np.testing.assert_allclose(cost.final(X) - free.final(X), 0.5e4 * beyond ** 2)
    h, eye = 1e-7, np.eye(4)
    d = cost.running_derivatives(X, U)
    fd_x = np.stack([(cost.running(X + h * eye[i], U) - cost.running(X - h * eye[i], U)) / (2 * h)
                     for i in range(4)], axis=-1)
    np.testing.assert_allclose(d.l_x, fd_x, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(d.l_xx[:, 0, 0] - free.running_derivatives(X, U).l_xx[:, 0, 0],
                               1e4 * (beyond > 0))
    l_x_final, l_xx_final = cost.final_derivatives(X[0])
    assert l_xx_final[0, 0] == pytest.approx(CONFIG.q_final[0] + 1e4 * (beyond[0] > 0))


@pytest.mark.timeout(60)
def test_a_track_limit_keeps_the_swing_up_on_the_track(swing_up, true_dynamics):
    """The free swing-up travels about 0.7 m; with a 0.3 m track the plan swings up within it."""
    free, _ = swing_up
    assert np.abs(free.X[:, 0]).max() > 0.5
    config = ILQRConfig(track_limit=0.3)
    plan = ilqr.solve(true_dynamics, SwingUpCost.from_config(config), np.zeros(4), PLANT.u_max,
                      config, horizon=PLANT.steps, difference=state_difference)
    assert plan.converged, plan.message
    assert np.abs(plan.X[:, 0]).max() < 0.3 + 0.01
    assert upright_error(plan.X[-1, 2]) < THETA_TOL and abs(plan.X[-1, 0]) < P_TOL


def test_hanging_at_rest_is_stationary_and_the_kick_breaks_the_tie(true_dynamics):
    """With no kick, U = 0 from the hanging state is a fixed point of iLQR (zero gradient by
    symmetry); that is why symmetry_kick exists."""
    config = ILQRConfig(symmetry_kick=0.0, continuation_start=0)
    plan = ilqr.solve(true_dynamics, SwingUpCost.from_config(config), np.zeros(4), PLANT.u_max,
                      config, horizon=PLANT.steps, difference=state_difference)
    assert plan.iterations == 1 and plan.converged
    assert np.all(plan.U == 0.0)


@pytest.mark.parametrize("offset", [1e-5, 1e-3])
def test_a_start_near_the_bottom_is_kicked_too(true_dynamics, offset):
    """A pole a hair off the bottom (or a GP mean not quite symmetric there) gives a small
    non-zero step whose predicted reduction is below tolerance: without the kick the plan stays
    down (seen on a fitted GP through the node graph), with it the plan swings up."""
    x0 = np.array([0.0, 0.0, offset, 0.0])
    for kick in (0.0, ILQRConfig().symmetry_kick):
        config = ILQRConfig(symmetry_kick=kick, continuation_start=0)
        plan = ilqr.solve(true_dynamics, SwingUpCost.from_config(config), x0, PLANT.u_max,
                          config, horizon=PLANT.steps, difference=state_difference)
        if kick == 0.0:
            assert plan.iterations == 1 and upright_error(plan.X[-1, 2]) > 3.0
        else:
            assert "symmetry kick" in plan.message
            assert upright_error(plan.X[-1, 2]) < THETA_TOL and abs(plan.X[-1, 0]) < P_TOL


# -- dynamics wrappers ---------------------------------------------------------------------------

def test_finite_difference_dynamics_recovers_a_linear_model():
    rng = np.random.default_rng(4)
    A_true = rng.normal(size=(4, 4))
    B_true = rng.normal(size=(4, 1))

    def step(x, u):  # batches over leading axes
        return x @ A_true.T + u @ B_true.T

    X = rng.normal(size=(7, 4))
    U = rng.normal(size=(7, 1))
    for vectorized in (False, True):
        dynamics = ilqr.FiniteDifferenceDynamics(step, CONFIG.fd_step, vectorized=vectorized)
        A, B = dynamics.linearize(X, U)
        np.testing.assert_allclose(A, np.broadcast_to(A_true, (7, 4, 4)), atol=1e-8)
        np.testing.assert_allclose(B, np.broadcast_to(B_true, (7, 4, 1)), atol=1e-8)


def test_cartpole_dynamics_vectorized_and_looped_jacobians_agree(true_dynamics):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(5, 4))
    U = rng.uniform(-10.0, 10.0, size=(5, 1))
    looped = ilqr.FiniteDifferenceDynamics(true_dynamics.step_fn, CONFIG.fd_step,
                                           vectorized=False)
    for fast, slow in zip(true_dynamics.linearize(X, U), looped.linearize(X, U)):
        np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)


# -- degenerate models and bounds ----------------------------------------------------------------

class _LinearModel:
    """x_{t+1} = A x + B u with analytic Jacobians; optionally poisoned."""

    def __init__(self, B: np.ndarray, nan_after: int | None = None,
                 nan_jacobian: bool = False) -> None:
        self.A = np.eye(4) + 0.05 * np.eye(4, k=1)
        self.B = B
        self.nan_after = nan_after
        self.nan_jacobian = nan_jacobian
        self.calls = 0

    def step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.nan_after is not None and self.calls > self.nan_after:
            return np.full(4, np.nan)
        return self.A @ x + self.B @ u

    def linearize(self, X: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        A = np.broadcast_to(self.A, (len(X), 4, 4)).copy()
        B = np.broadcast_to(self.B, (len(X), 4, 1)).copy()
        if self.nan_jacobian:
            A[len(X) // 2, 1, 2] = np.nan
        return A, B


B_WORKING = np.array([[0.0], [0.05], [0.0], [0.05]])
X0 = np.array([0.1, 0.0, 0.5, 0.0])


@pytest.mark.timeout(10)
@pytest.mark.parametrize("nan_after", [0, 25])
def test_nan_dynamics_raise_ilqr_error(nan_after):
    model = _LinearModel(B_WORKING, nan_after=nan_after)
    with pytest.raises(ilqr.ILQRError, match="non-finite state"):
        ilqr.solve(model, COST, X0, PLANT.u_max, CONFIG, horizon=20)


@pytest.mark.timeout(10)
def test_nan_jacobian_raises_ilqr_error():
    model = _LinearModel(B_WORKING, nan_jacobian=True)
    with pytest.raises(ilqr.ILQRError, match="non-finite A_t"):
        ilqr.solve(model, COST, X0, PLANT.u_max, CONFIG, horizon=20)


@pytest.mark.timeout(10)
def test_zero_input_effect_with_r_zero_raises_instead_of_hanging():
    config = ILQRConfig(r=0.0)
    model = _LinearModel(np.zeros((4, 1)))
    started = time.perf_counter()
    with pytest.raises(ilqr.ILQRError, match="Q_uu not positive definite"):
        ilqr.solve(model, SwingUpCost.from_config(config), X0, PLANT.u_max, config, horizon=20)
    assert time.perf_counter() - started < 2.0


@pytest.mark.timeout(30)
def test_iterations_are_bounded(true_dynamics):
    config = ILQRConfig(max_iterations=2, continuation_start=0)
    plan = ilqr.solve(true_dynamics, SwingUpCost.from_config(config), X0, PLANT.u_max, config,
                      horizon=PLANT.steps, difference=state_difference)
    assert plan.iterations == 2 and not plan.converged
    assert "max_iterations" in plan.message


def test_config_validation():
    with pytest.raises(ConfigError):
        ILQRConfig(line_search_alphas=(0.5, 1.0))
    with pytest.raises(ConfigError):
        ILQRConfig(line_search_alphas=(1.0, 0.0))
    with pytest.raises(ConfigError):
        ILQRConfig(mu_min=1.0, mu_max=0.1)
    with pytest.raises(ConfigError):
        ILQRConfig(q=(1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ConfigError):
        ILQRConfig(r=-1.0)
    with pytest.raises(ConfigError):
        ILQRConfig(mu_factor=1.0)
    with pytest.raises(ConfigError):
        ILQRConfig(hessian="newton")


# -- generic sizes: n = 4 states, m = 2 inputs ---------------------------------------------------

class _PointMass:
    """A point mass in the plane, x = [px, py, vx, vy], u = [fx, fy]: linear, exact Jacobians."""

    dt = 0.1
    A = np.eye(4) + dt * np.eye(4, k=2)
    B = np.vstack([0.5 * dt**2 * np.eye(2), dt * np.eye(2)])

    def step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.A @ x + self.B @ u

    def linearize(self, X: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.broadcast_to(self.A, (len(X), 4, 4)).copy(),
                np.broadcast_to(self.B, (len(X), 4, 2)).copy())


class _Quadratic:
    """c = 1/2 x^T Q x + 1/2 u^T R u, c_f = 1/2 x^T Q_f x."""

    Q, R, Q_f = np.diag([1.0, 1.0, 0.1, 0.1]), np.diag([0.01, 0.02]), 100.0 * np.eye(4)

    def total(self, X: np.ndarray, U: np.ndarray) -> float:
        return float(0.5 * np.einsum("ti,ij,tj->", X[:-1], self.Q, X[:-1])
                     + 0.5 * np.einsum("ti,ij,tj->", U, self.R, U)
                     + 0.5 * X[-1] @ self.Q_f @ X[-1])

    def running_derivatives(self, X: np.ndarray, U: np.ndarray) -> ilqr.RunningDerivatives:
        T = len(X)
        return ilqr.RunningDerivatives(
            l_x=X @ self.Q, l_u=U @ self.R, l_xx=np.broadcast_to(self.Q, (T, 4, 4)).copy(),
            l_uu=np.broadcast_to(self.R, (T, 2, 2)).copy(), l_ux=np.zeros((T, 2, 4)))

    def final_derivatives(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.Q_f @ x, self.Q_f


def _lqr_inputs(x0: np.ndarray, steps: int) -> np.ndarray:
    """The finite-horizon LQR optimum by its own Riccati recursion (no box)."""
    sys, cost = _PointMass(), _Quadratic()
    P, gains = cost.Q_f, []
    for _ in range(steps):
        gain = np.linalg.solve(cost.R + sys.B.T @ P @ sys.B, sys.B.T @ P @ sys.A)
        P = cost.Q + sys.A.T @ P @ (sys.A - sys.B @ gain)
        gains.append(gain)
    x, U = x0, []
    for gain in reversed(gains):
        U.append(-gain @ x)
        x = sys.step(x, U[-1])
    return np.array(U)


def test_a_two_input_plant_without_a_binding_box_gets_the_lqr_optimum():
    x0 = np.array([1.0, -2.0, 0.5, 0.0])
    tight = ILQRConfig(continuation_start=0, tolerance=1e-12, grad_tolerance=1e-10)
    plan = ilqr.solve(_PointMass(), _Quadratic(), x0, 20.0, tight, horizon=30, input_dim=2)
    assert np.abs(plan.U).max() < 0.6 * 20.0  # the box does not bind
    assert plan.U.shape == (30, 2) and plan.K.shape == (30, 2, 4) and plan.converged
    np.testing.assert_allclose(plan.U, _lqr_inputs(x0, 30), atol=1e-5)


def test_a_two_input_plant_with_a_binding_box_stays_inside_it_and_beats_clipping():
    x0 = np.array([1.0, -2.0, 0.5, 0.0])
    u_max = 2.0
    sys, cost = _PointMass(), _Quadratic()
    plan = ilqr.solve(sys, cost, x0, u_max, ILQRConfig(continuation_start=0), horizon=30,
                      input_dim=2)
    assert np.all(np.abs(plan.U) <= u_max) and np.any(np.abs(plan.U) == u_max)
    clipped = np.clip(_lqr_inputs(x0, 30), -u_max, u_max)
    assert plan.cost < cost.total(ilqr.rollout(sys, x0, clipped), clipped)
    held = np.abs(plan.U + plan.k) >= u_max - 1e-12       # rows of held inputs are zero
    assert np.all(plan.K[held] == 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_box_qp_finds_the_constrained_minimum(seed):
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    M = rng.normal(size=(3, 3))
    H = M @ M.T + 0.1 * np.eye(3)
    g = rng.normal(scale=5.0, size=3)
    lower, upper = -rng.uniform(0.1, 1.0, 3), rng.uniform(0.1, 1.0, 3)
    du, free = ilqr.box_qp(H, g, lower, upper)
    ref = minimize(lambda z: 0.5 * z @ H @ z + g @ z, np.zeros(3), jac=lambda z: H @ z + g,
                   bounds=list(zip(lower, upper)), method="L-BFGS-B",
                   options={"ftol": 1e-15, "gtol": 1e-12})
    np.testing.assert_allclose(du, ref.x, atol=1e-6)
    assert np.all((lower <= du) & (du <= upper))
    grad = H @ du + g
    np.testing.assert_allclose(grad[free], 0.0, atol=1e-9)   # stationary in the free inputs
    assert np.all(~free == (((du == lower) & (grad > 0)) | ((du == upper) & (grad < 0))))
    one, one_free = ilqr.box_qp(H[:1, :1], g[:1], lower[:1], upper[:1])  # the closed form
    assert one[0] == min(max(-g[0] / H[0, 0], lower[0]), upper[0])
    assert one_free[0] == (lower[0] <= -g[0] / H[0, 0] <= upper[0])
