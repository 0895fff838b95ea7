"""EB-MC-PILCO's GP-iLQR exploration: plan through the GP mean, execute with feedback and
variance-adaptive noise, and judge how well the executed rollout matched the plan.

    sigma_t = u_max (noise_scale decay_rate^j + offset) sqrt( mean_i var_i(X_t, U_t) / sf_i^2 )
Noise is large where the model is as unsure as its prior and vanishes where it is confident,
shrinks with the iteration index j, and keeps a floor `offset`. The paper names decay_rate and
offset (its eq. 29 is not available); this form and the normalisation are this package's choice.
"""
from __future__ import annotations

import numpy as np

from . import ilqr
from .cartpole import INPUT_DIM, STATE_DIM, THETA, state_difference, wrap_angle
from .cancel import StopCheck
from .config import ExperimentConfig, ExplorationConfig, SuccessConfig
from .controllers import FeedbackPlan
from .ilqr_cost import SwingUpCost
from .model import SpeedIntegrationModel
from .trial import Trial


def exploration_noise(model: SpeedIntegrationModel, X: np.ndarray, U: np.ndarray,
                      iteration: int, config: ExplorationConfig, u_max: float) -> np.ndarray:
    """sigma_t (T,) along the nominal (X[:-1], U)."""
    var = model.predictive_variance(X[:-1], np.asarray(U).reshape(-1))          # (T, 2)
    prior = np.array([gp.kernel.variance for gp in model.gps])
    relative = np.sqrt(np.clip(var / prior, 0.0, 1.0).mean(axis=1))             # in [0, 1]
    scale = config.noise_scale * config.decay_rate**iteration + config.offset
    return u_max * scale * relative


def plan_swing_up(model: SpeedIntegrationModel, config: ExperimentConfig,
                  previous: ilqr.ILQRPlan | None = None,
                  should_stop: StopCheck = None) -> ilqr.ILQRPlan:
    """iLQR through the GP mean from the nominal start (pole down, at rest).

    Solved from scratch (as the paper recommends, to avoid stagnating in the previous plan) and,
    with exploration.warm_start, also from the previous plan's inputs; the cheaper plan wins.
    `should_stop`: see ilqr.solve.
    """
    x0 = np.zeros(STATE_DIM)
    horizon = config.plant.steps

    def solve(U_init: np.ndarray | None) -> ilqr.ILQRPlan:
        return ilqr.solve(model, SwingUpCost.from_config(config.ilqr), x0, config.plant.u_max,
                          config.ilqr, horizon=horizon, U_init=U_init, input_dim=INPUT_DIM,
                          difference=state_difference, should_stop=should_stop)

    plan = solve(None)
    if config.exploration.warm_start and previous is not None and previous.horizon == horizon:
        warm = solve(previous.U)
        if warm.cost < plan.cost:
            plan = warm
    return plan


def exploration_plan(model: SpeedIntegrationModel, config: ExperimentConfig, iteration: int,
                     previous: ilqr.ILQRPlan | None, seed: int,
                     should_stop: StopCheck = None) -> tuple[ilqr.ILQRPlan, FeedbackPlan]:
    """The iLQR plan for exploration iteration j and its executable form with noise, cut to
    exploration.rollout_duration (the plan spans the whole trial: its cost is the swing-up's
    and the balance's, the rollout records its first part) and ending where the rollout leaves
    it by exploration.max_deviation."""
    plan = plan_swing_up(model, config, previous, should_stop)
    sigma = exploration_noise(model, plan.X, plan.U, iteration, config.exploration,
                              config.plant.u_max)
    return plan, FeedbackPlan.from_plan(plan, sigma=sigma, seed=seed, version=iteration,
                                        steps=config.exploration.rollout_steps(config.plant),
                                        max_deviation=config.exploration.max_deviation)


def plan_ends_upright(predicted: np.ndarray, criterion: SuccessConfig) -> bool:
    """Whether a plan's last nominal state has the pole within the success criterion's
    theta_tol of upright. A plan through the model mean can stay at the hanging position (at
    rest there the swing-up cost's gradient vanishes), and a rollout that follows such a plan
    says nothing of the model where the swing-up needs it."""
    theta = float(wrap_angle(np.asarray(predicted)[-1, THETA]))
    return abs(abs(theta) - np.pi) < criterion.theta_tol


def plan_tracking_error(predicted: np.ndarray, trial: Trial,
                        rollout_steps: int | None = None) -> float:
    """RMS angle error [rad] between the plan's nominal states and the executed rollout; inf
    for a rollout cut short, by a fault (`trial.failed`) or before its `rollout_steps` (it
    left the plan: exploration.max_deviation), which did not follow its plan to the end
    however well its first steps did (seen through the graph: a rollout lost its state at
    0.55 s, matched its plan's first 11 states to 0.03 rad and ended exploration)."""
    if trial.failed or (rollout_steps is not None and trial.steps < rollout_steps):
        return float("inf")
    n = min(len(predicted), len(trial.states))
    d = wrap_angle(trial.states[:n, THETA] - predicted[:n, THETA])
    return float(np.sqrt(np.mean(d * d)))
