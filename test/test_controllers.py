"""Controllers and their payloads: what the execution node rebuilds acts identically."""
import json

import numpy as np
import pytest
import torch

from ebmcpilco_ros.core.config import PolicyConfig
from ebmcpilco_ros.core.controllers import (FeedbackPlan, FeedbackPlanController, PolicyController,
                                            RandomController, controller_from_dict, trial_steps)
from ebmcpilco_ros.core.policy import SquashedRBFPolicy


def _through_json(ctrl):
    return controller_from_dict(json.loads(json.dumps(ctrl.to_dict())))


def test_policy_controller_matches_torch_policy_and_survives_payload():
    policy = SquashedRBFPolicy(PolicyConfig(), 10.0, generator=torch.Generator().manual_seed(0))
    ctrl = PolicyController(policy.parameters_snapshot(version=3))
    states = np.random.default_rng(0).normal(0, [0.5, 1, 2, 3], size=(20, 4))
    with torch.no_grad():
        expected = policy(torch.as_tensor(states)).numpy()
    got = np.array([ctrl(0, s) for s in states])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    back = _through_json(ctrl)
    np.testing.assert_allclose([back(0, s) for s in states], got, rtol=0, atol=0)
    assert back.params.version == 3


def test_feedback_plan_law_noise_and_limits():
    T = 5
    plan = FeedbackPlan(X=np.zeros((T + 1, 4)), U=np.full(T, 2.0),
                        K=np.tile([1.0, 0, 0, 0], (T, 1)), sigma=np.zeros(T), u_max=3.0, seed=4)
    ctrl = FeedbackPlanController(plan)
    assert ctrl(0, np.array([0.5, 0, 0, 0])) == pytest.approx(2.5)
    assert ctrl(1, np.array([5.0, 0, 0, 0])) == 3.0          # clipped to u_max
    assert ctrl(99, np.zeros(4)) == pytest.approx(2.0)       # holds the last step
    noisy = FeedbackPlanController(FeedbackPlan(plan.X, plan.U, plan.K, np.full(T, 0.5), 10.0, 7))
    a = [noisy(t, np.zeros(4)) for t in range(T)]
    noisy.reset()
    assert [noisy(t, np.zeros(4)) for t in range(T)] == a    # same seed, same exploration
    back = _through_json(noisy)
    assert [back(t, np.zeros(4)) for t in range(T)] == a
    with pytest.raises(ValueError, match="shapes disagree"):
        FeedbackPlan(np.zeros((3, 4)), np.zeros(5), np.zeros((5, 4)), np.zeros(5), 1.0)


def test_a_trial_runs_as_many_steps_as_a_feedback_plan_drives_at_most_the_plants():
    """controllers.trial_steps, what both the in-process plant and the execution node use: a
    feedback plan's trial ends at its plan's end (through its payload too); the random and
    policy controllers run the plant's whole trial."""
    def plan(T):
        return FeedbackPlanController(FeedbackPlan(np.zeros((T + 1, 4)), np.zeros(T),
                                                   np.zeros((T, 4)), np.zeros(T), 1.0))
    assert trial_steps(plan(40), 60) == 40 and trial_steps(_through_json(plan(40)), 60) == 40
    assert trial_steps(plan(60), 60) == 60 and trial_steps(plan(80), 60) == 60
    assert trial_steps(RandomController(1.0, seed=0), 60) == 60
    policy = SquashedRBFPolicy(PolicyConfig(), 10.0, generator=torch.Generator().manual_seed(0))
    assert trial_steps(PolicyController(policy.parameters_snapshot()), 60) == 60


def test_a_feedback_plan_finishes_where_the_angle_leaves_the_plans_by_max_deviation():
    """exploration.max_deviation: finished(t, x) once |wrap(theta - X_t theta)| exceeds it
    (never with 0, the default, and never for the random and policy controllers); the limit
    travels in the payload, and a payload without it (an older sender) never finishes."""
    T = 4
    X = np.zeros((T + 1, 4))
    X[:, 2] = [0.0, 1.0, np.pi, np.pi, np.pi]
    plan = FeedbackPlan(X, np.zeros(T), np.zeros((T, 4)), np.zeros(T), 1.0, max_deviation=0.5)

    def at(theta):
        return np.array([0.0, 0.0, theta, 0.0])
    ctrl = FeedbackPlanController(plan)
    assert not ctrl.finished(0, at(0.4)) and ctrl.finished(0, at(0.6))
    assert ctrl.finished(0, at(-0.6))
    assert not ctrl.finished(1, at(0.6)) and ctrl.finished(1, at(0.4))
    assert not ctrl.finished(2, at(-np.pi + 0.2))       # wrapped: 0.2 rad from upright
    assert not ctrl.finished(9, at(np.pi + 0.4)) and ctrl.finished(9, at(np.pi - 0.6))  # last X
    back = _through_json(ctrl)
    assert back.plan.max_deviation == 0.5 and back.finished(1, at(0.4))
    never = FeedbackPlanController(FeedbackPlan(X, plan.U, plan.K, plan.sigma, 1.0))
    assert not never.finished(0, at(3.0))
    older = ctrl.to_dict()
    del older["max_deviation"]
    assert controller_from_dict(older).plan.max_deviation == 0.0
    assert not RandomController(1.0, seed=0).finished(0, at(3.0))
    policy = SquashedRBFPolicy(PolicyConfig(), 10.0, generator=torch.Generator().manual_seed(0))
    assert not PolicyController(policy.parameters_snapshot()).finished(0, at(3.0))
    with pytest.raises(ValueError, match="max_deviation must be >= 0"):
        FeedbackPlan(X, plan.U, plan.K, plan.sigma, 1.0, max_deviation=-1.0)


def test_random_controller_payload_and_bad_payloads():
    ctrl = RandomController(10.0, seed=5)
    back = _through_json(ctrl)
    assert [back(t, np.zeros(4)) for t in range(5)] == [ctrl(t, np.zeros(4)) for t in range(5)]
    with pytest.raises(ValueError, match="format"):
        controller_from_dict({"format": "nope"})
    with pytest.raises(ValueError, match="unknown controller kind"):
        controller_from_dict({"format": "ebmcpilco.controller/1", "kind": "lqr"})


def _policy_payload():
    policy = SquashedRBFPolicy(PolicyConfig(num_basis=4), 10.0,
                               generator=torch.Generator().manual_seed(0))
    return json.loads(json.dumps(PolicyController(policy.parameters_snapshot()).to_dict()))


def _plan_payload():
    T = 5
    plan = FeedbackPlan(np.zeros((T + 1, 4)), np.ones(T), np.zeros((T, 4)), np.full(T, 0.1), 5.0)
    return json.loads(json.dumps(FeedbackPlanController(plan).to_dict()))


@pytest.mark.parametrize("build, edit, message", [  # None: a NaN or inf, as it travels
    (_policy_payload, lambda d: d["policy"]["weights"].__setitem__(1, None),
     r"squashed_rbf controller: field 'weights'\[1\] is not finite"),
    (_policy_payload, lambda d: d["policy"]["centres"][2].__setitem__(4, None),
     r"field 'centres'\[2\]\[4\] is not finite"),
    (_policy_payload, lambda d: d["policy"].__setitem__("centres", d["policy"]["centres"][:3]),
     r"field 'centres' must have shape \(4, 5\)"),
    (_policy_payload, lambda d: d["policy"]["lengthscales"].__setitem__(0, 0.0),
     "field 'lengthscales' must be > 0"),
    (_policy_payload, lambda d: d["policy"].__setitem__("u_max", None),
     "field 'u_max' must be a finite number > 0"),
    (_plan_payload, lambda d: d["K"][3].__setitem__(0, None),
     r"feedback_plan controller: field 'K'\[3\]\[0\] is not finite"),
    (_plan_payload, lambda d: d["X"].pop(), r"field 'X' must have shape \(6, 4\)"),
    (_plan_payload, lambda d: d["sigma"].__setitem__(0, -1.0), "field 'sigma' must be >= 0"),
    (_plan_payload, lambda d: d.update(U=[], X=[[0.0] * 4], K=[], sigma=[]),
     "at least one step"),
    (_plan_payload, lambda d: d.__setitem__("seed", 1.5), "field 'seed' must be an integer"),
    (lambda: RandomController(10.0, seed=1).to_dict(),
     lambda d: d.__setitem__("u_max", float("inf")), "random controller: field 'u_max'"),
    (lambda: RandomController(10.0, seed=1).to_dict(), lambda d: d.pop("seed"),
     "field 'seed' must be an integer"),
    (_plan_payload, lambda d: d.__setitem__("max_deviation", -0.5),
     "field 'max_deviation' must be a finite number >= 0"),
    (_plan_payload, lambda d: d.__setitem__("max_deviation", "1"),
     "field 'max_deviation' must be a finite number"),
])
def test_controller_payloads_that_are_malformed_or_not_finite_are_refused(build, edit, message):
    data = build()
    controller_from_dict(dict(data))    # the unedited payload is fine
    edit(data)
    with pytest.raises(ValueError, match=message):
        controller_from_dict(data)
