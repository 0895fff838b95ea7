"""EB-MC-PILCO pieces: exploration noise, plan tracking, and policy pretraining on a plan."""
import numpy as np
import pytest
import torch

from ebmcpilco_ros.core import ilqr
from ebmcpilco_ros.core.cartpole import (THETA, cartpole_dynamics, state_difference,
                                         wrap_angle)
from ebmcpilco_ros.core.config import ExperimentConfig, ExplorationConfig, PretrainConfig
from ebmcpilco_ros.core.controllers import FeedbackPlan, FeedbackPlanController
from ebmcpilco_ros.core.exploration import (exploration_noise, exploration_plan,
                                            plan_ends_upright, plan_tracking_error)
from ebmcpilco_ros.core.ilqr_cost import SwingUpCost
from ebmcpilco_ros.core.policy import SquashedRBFPolicy
from ebmcpilco_ros.core.systems import SimulatedCartPole
from ebmcpilco_ros.core.trial import Trial

from helpers import fitted_model

CFG = ExperimentConfig()


@pytest.fixture(scope="module")
def true_plan():
    return ilqr.solve(cartpole_dynamics(CFG.plant), SwingUpCost.from_config(CFG.ilqr),
                      np.zeros(4), CFG.plant.u_max, CFG.ilqr, horizon=CFG.plant.steps,
                      difference=state_difference)


@pytest.fixture(scope="module")
def model():
    return fitted_model(count=2, seed=0)


def test_noise_shrinks_with_iteration_and_grows_with_gp_variance(model, true_plan):
    cfg = ExplorationConfig()
    X, U = true_plan.X, true_plan.U
    sigmas = [exploration_noise(model, X, U, j, cfg, 10.0) for j in range(4)]
    for a, b in zip(sigmas, sigmas[1:]):
        assert np.all(b <= a) and b.mean() < a.mean()
    var = model.predictive_variance(X[:-1], U[:, 0]).mean(1)
    order = np.argsort(var)
    low, high = order[:10], order[-10:]
    assert var[high].mean() > var[low].mean()
    assert sigmas[0][high].mean() > sigmas[0][low].mean()
    # far from any data the model is at its prior: the noise reaches its ceiling
    far = np.tile([0.0, 500.0, 0.0, 3000.0], (3, 1))
    s = exploration_noise(model, far, np.zeros(2), 0, cfg, 10.0)
    assert s == pytest.approx(10.0 * (cfg.noise_scale + cfg.offset), rel=1e-3)


def test_a_swing_up_plan_ends_upright_and_one_that_stays_down_does_not(true_plan):
    """plan_ends_upright: the last nominal state within success.theta_tol of upright, in
    either direction of swing; a plan hanging at rest does not."""
    assert plan_ends_upright(true_plan.X, CFG.success)
    assert not plan_ends_upright(np.zeros_like(true_plan.X), CFG.success)
    mirrored = true_plan.X.copy()
    mirrored[:, THETA] *= -1.0
    assert plan_ends_upright(mirrored, CFG.success)
    short = true_plan.X.copy()
    short[-1, THETA] = np.pi - 1.5 * CFG.success.theta_tol
    assert not plan_ends_upright(short, CFG.success)
    settling = true_plan.X.copy()
    settling[-5, THETA] = np.pi - 3.0 * CFG.success.theta_tol   # only the end is judged
    assert plan_ends_upright(settling, CFG.success)


def test_exploration_plan_on_the_gp_model_and_tracking_error(model):
    plan, feedback = exploration_plan(model, CFG, 0, None, seed=3)
    assert plan.X.shape == (61, 4) and np.all(np.abs(plan.U) <= CFG.plant.u_max)
    assert feedback.sigma.shape == (60,) and np.all(feedback.sigma >= 0)
    trial = SimulatedCartPole(CFG.plant, np.random.default_rng(0)).run(
        FeedbackPlanController(FeedbackPlan.from_plan(plan)), kind="ilqr")
    err = plan_tracking_error(plan.X, trial)
    assert 0 <= err < 10
    assert plan_tracking_error(trial.states, trial) == 0.0
    # cut short by a fault: its first steps may follow the plan, the rollout did not
    cut = Trial(states=trial.states[:12], inputs=trial.inputs[:11], times=trial.times[:12],
                kind="ilqr", failed=True)
    assert plan_tracking_error(trial.states, cut) == float("inf")


def test_a_rollout_of_rollout_duration_records_the_plans_first_steps(model):
    """exploration.rollout_duration: the plan spans the whole trial, the rollout (the feedback
    plan's steps, and so the trial the system records) only its first 1.5 s."""
    cfg = CFG.replace(exploration={"rollout_duration": 1.5})
    assert cfg.exploration.rollout_steps(cfg.plant) == 30
    assert CFG.exploration.rollout_steps(CFG.plant) == CFG.plant.steps   # 0: the whole trial
    plan, feedback = exploration_plan(model, cfg, 0, None, seed=3)
    full_plan, full = exploration_plan(model, CFG, 0, None, seed=3)
    assert plan.X.shape == (61, 4)
    assert feedback.X.shape == (31, 4) and feedback.U.shape == feedback.sigma.shape == (30,)
    np.testing.assert_array_equal(feedback.U, full.U[:30])
    np.testing.assert_array_equal(feedback.sigma, full.sigma[:30])
    trial = SimulatedCartPole(cfg.plant, np.random.default_rng(0)).run(
        FeedbackPlanController(feedback), kind="ilqr")
    whole = SimulatedCartPole(cfg.plant, np.random.default_rng(0)).run(
        FeedbackPlanController(full), kind="ilqr")
    assert trial.steps == 30 and trial.duration == pytest.approx(1.5)
    np.testing.assert_array_equal(trial.inputs, whole.inputs[:30])   # the same rollout, cut


def test_a_rollout_that_leaves_its_plan_ends_there_and_never_counts_as_matched(model):
    """exploration.max_deviation: the in-process plant ends the rollout at the first measured
    state that far from the plan (before that step's force), so the trial is the whole
    rollout's first steps; the plan is not followed, however close those first steps were
    (tracking error inf), and without the limit the same rollout runs to the end."""
    cfg = CFG.replace(exploration={"max_deviation": 0.3})
    plan, feedback = exploration_plan(model, cfg, 0, None, seed=3)
    assert feedback.max_deviation == 0.3
    whole = SimulatedCartPole(cfg.plant, np.random.default_rng(0)).run(
        FeedbackPlanController(FeedbackPlan.from_plan(plan, sigma=feedback.sigma, seed=3)),
        kind="ilqr")
    deviation = np.abs(wrap_angle(whole.states[:, THETA] - plan.X[:, THETA]))
    assert deviation.max() > 0.3, "the rollout must leave this plan for the test to mean much"
    leave = int(np.argmax(deviation > 0.3))
    assert leave > 0
    trial = SimulatedCartPole(cfg.plant, np.random.default_rng(0)).run(
        FeedbackPlanController(feedback), kind="ilqr")
    assert trial.steps == leave and len(trial.states) == leave + 1
    np.testing.assert_array_equal(trial.states, whole.states[:leave + 1])
    np.testing.assert_array_equal(trial.true_states, whole.true_states[:leave + 1])
    np.testing.assert_array_equal(trial.inputs, whole.inputs[:leave])
    assert trial.duration == pytest.approx(leave * cfg.plant.control_period)
    assert plan_tracking_error(plan.X, trial, rollout_steps=len(feedback.U)) == float("inf")
    assert plan_tracking_error(plan.X, whole, rollout_steps=len(feedback.U)) < float("inf")


@pytest.mark.parametrize("method", ["mse", "bayes"])
def test_pretrained_policy_reproduces_the_ilqr_controls(true_plan, method):
    """Stated error: RMS over the plan's nominal states below 0.5 N (5% of u_max)."""
    from ebmcpilco_ros.core.pretrain import pretrain_policy

    policy = SquashedRBFPolicy(CFG.policy, CFG.plant.u_max, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(0))
    before = policy.parameters_snapshot()
    nominal_u = true_plan.U[:, 0]
    err_before = np.sqrt(np.mean([(before(x) - u) ** 2
                                  for x, u in zip(true_plan.X[:-1], nominal_u)]))
    result = pretrain_policy(policy, true_plan, PretrainConfig(method=method, steps=600),
                             np.random.default_rng(0), dropout=0.25)
    after = policy.parameters_snapshot()
    err_after = np.sqrt(np.mean([(after(x) - u) ** 2
                                 for x, u in zip(true_plan.X[:-1], nominal_u)]))
    assert err_after == pytest.approx(result.nominal_error, rel=1e-6)
    assert err_after < 0.5 < err_before
    assert result.rms_error < 1.5   # around the nominal too (the feedback funnel)


def policy_request(iteration: int, failed: int = 0, predicted: bool = False):
    from ebmcpilco_ros.core.learner import OptimizationRequest

    return OptimizationRequest("policy", iteration, pretrain=True,
                               failed_since_warm_start=failed, predicted_failure=predicted)


def test_later_warm_start_keeps_whichever_policy_has_the_lower_model_cost(model):
    """A candidate pretrained on a fresh plan replaces the policy only if J is lower."""
    from ebmcpilco_ros.core.learner import LocalPolicyOptimization
    from ebmcpilco_ros.core.mcpilco import model_costs

    cfg = CFG.replace(optimizer={"particles": 50}, pretrain={"steps": 50})
    opt = LocalPolicyOptimization(cfg, np.random.default_rng(0))
    wall, info = {}, {}
    opt._warm_start(model, policy_request(0), wall, info)   # first trial: always pretrained
    assert info["warm_start"] == "pretrained" and "warm_start_costs" not in info
    pretrained = {k: v.clone() for k, v in opt.policy.state_dict().items()}

    def cost(policy: SquashedRBFPolicy) -> float:
        return model_costs([policy], model, cfg.optimizer, cfg.cost,
                           cfg.plant.initial_state_std, np.random.default_rng(5))[0]

    # a policy that pushes the cart off the track at full force is worse than any plan
    with torch.no_grad():
        opt.policy.weights.fill_(100.0)
    idle = cost(opt.policy)
    wall, info = {}, {}
    opt._warm_start(model, policy_request(1), wall, info)
    before, after = info["warm_start_costs"]
    assert before == pytest.approx(idle, rel=0.05) and after < before
    assert info["warm_start"] == "pretrained" and wall["pretrain"] > 0
    assert cost(opt.policy) < idle
    # the same pretrained policy against a candidate from the same plan: the lower J wins
    opt.policy.load_state_dict(pretrained)
    wall, info = {}, {}
    opt._warm_start(model, policy_request(2), wall, info)
    before, after = info["warm_start_costs"]
    kept = info["warm_start"] == "kept"
    assert kept == (after >= before)
    same = all(torch.equal(v, pretrained[k]) for k, v in opt.policy.state_dict().items())
    assert same == kept


@pytest.mark.parametrize("limit, failed, predicted, on_predicted, compared",
                         [(2, 1, False, True, True), (2, 2, False, True, False),
                          (2, 3, False, True, False), (0, 5, False, True, True),
                          (2, 1, True, True, False), (0, 1, True, True, False),
                          (2, 1, True, False, True)])
def test_a_policy_the_system_refuted_gives_way_to_the_warm_start(model, limit, failed,
                                                                 predicted, on_predicted,
                                                                 compared):
    """pretrain.restart_after_failures: once the current policy has failed that many policy
    trials since a warm start last replaced it, the candidate replaces it without the model-cost
    comparison (which the optimised policy wins on the model the system refuted);
    pretrain.restart_on_predicted_failure: at once after a failure the model had predicted."""
    from ebmcpilco_ros.core.learner import LocalPolicyOptimization

    cfg = CFG.replace(optimizer={"particles": 50},
                      pretrain={"steps": 50, "restart_after_failures": limit,
                                "restart_on_predicted_failure": on_predicted})
    opt = LocalPolicyOptimization(cfg, np.random.default_rng(0))
    opt._warm_start(model, policy_request(0), {}, {})
    with torch.no_grad():
        opt.policy.weights.mul_(0.5)   # not what a fresh pretraining gives
    current = {k: v.clone() for k, v in opt.policy.state_dict().items()}
    info: dict = {}
    opt._warm_start(model, policy_request(3, failed, predicted), {}, info)
    assert info.get("predicted_failure", False) == (predicted and on_predicted)
    assert ("warm_start_costs" in info) == compared, info
    replaced = not all(torch.equal(v, current[k]) for k, v in opt.policy.state_dict().items())
    if compared:
        before, after = info["warm_start_costs"]
        assert replaced == (after < before) and "warm_start_restart" not in info
    else:
        assert replaced and info["warm_start"] == "pretrained"
        assert info["warm_start_restart"] == failed
