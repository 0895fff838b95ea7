"""The Learner's trial loop alone, on fakes of its three collaborators: which trial comes when.

The System, the model learning and the optimisation are fakes that answer at once and record
what they were asked; the Learner itself is the real one. Pinned: random trials first, then
EB-MC-PILCO's GP-iLQR exploration (stopped early once a rollout follows its plan), then policy
trials (pretrained first on an iLQR plan as the config asks), until success or the budget.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

from ebmcpilco_ros.core.cartpole import STATE_DIM, THETA
from ebmcpilco_ros.core.config import ExperimentConfig
from ebmcpilco_ros.core.controllers import RandomController
from ebmcpilco_ros.core.learner import (ControllerUpdate, Learner, LearningReport,
                                        OptimizationRequest, TrialSummary,
                                        failures_since_warm_start, predicted_failure,
                                        summary_from_dict)
from ebmcpilco_ros.core.vocabulary import TrialKind
from ebmcpilco_ros.progress import trial_line
from ebmcpilco_ros.core.trial import Trial

STEPS = 20  # trials of 1 s at 0.05 s: the whole trial is the success window


def _states(upright: bool) -> np.ndarray:
    x = np.zeros((STEPS + 1, STATE_DIM))
    x[:, THETA] = np.pi if upright else 0.0
    return x


class FakeSystem:
    """Trials that swing up where `solves` says (by index); records the kinds it was asked."""

    def __init__(self, solves: set[int] = frozenset(), faults: set[int] = frozenset()) -> None:
        self.solves = solves
        self.faults = faults   # trials cut short (as a lost state does), by index
        self.kinds: list[str] = []

    def run(self, controller: Any, kind: str, index: int) -> Trial:
        self.kinds.append(str(kind))
        return Trial(states=_states(index in self.solves), inputs=np.zeros(STEPS),
                     times=np.arange(STEPS + 1) * 0.05, kind=kind, index=index,
                     failed=index in self.faults)


class FakeModelLearning:
    def __init__(self) -> None:
        self.trials: list[Trial] = []
        self.fits = 0

    def add_trial(self, trial: Trial) -> None:
        self.trials.append(trial)

    def fit(self) -> Any:
        self.fits += 1
        return SimpleNamespace(gps=(SimpleNamespace(size=len(self.trials)),) * 2)


class FakeOptimization:
    """Records each request; its plans (pole down all along, or up with `plans_upright`) are
    followed exactly by the fake system's trial (tracking error 0) or miss by one radian all
    along, as `followed` says per exploration iteration."""

    def __init__(self, followed: tuple[bool, ...] = (), plans_upright: bool = False) -> None:
        self.followed = followed
        self.plans_upright = plans_upright
        self.requests: list[tuple[str, int, bool]] = []

    def next_controller(self, model: Any, request: OptimizationRequest) -> ControllerUpdate:
        self.requests.append((str(request.phase), request.iteration, request.pretrain))
        if request.phase == "explore":
            plan = _states(self.plans_upright)
            if not (request.iteration < len(self.followed) and self.followed[request.iteration]):
                plan[:, THETA] += 1.0
            return ControllerUpdate(controller=RandomController(1.0, seed=0), phase="ilqr",
                                    predicted_states=plan)
        return ControllerUpdate(controller=RandomController(1.0, seed=0), phase="policy",
                                opt_steps=7, costs=[3.0, 2.0],
                                wall_s={"pretrain": 0.25, "policy": 0.5})


class ShortRollouts(FakeSystem):
    """A FakeSystem whose trials end after `steps(kind, index)` steps where that is not None:
    rollouts that exploration.max_deviation ended where they left their plans."""

    def __init__(self, steps: Callable[[str, int], int | None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = steps

    def run(self, controller: Any, kind: str, index: int) -> Trial:
        trial = super().run(controller, kind, index)
        n = self.steps(kind, index)
        if n is None:
            return trial
        return Trial(states=trial.states[:n + 1], inputs=trial.inputs[:n],
                     times=trial.times[:n + 1], kind=kind, index=index, failed=trial.failed)


class PlansOfTheWholeTrial(FakeOptimization):
    """FakeOptimization whose controllers say they drive the whole trial (`steps`), as a
    feedback plan does: the Learner compares each trial's steps with them."""

    def next_controller(self, model: Any, request: OptimizationRequest) -> ControllerUpdate:
        update = super().next_controller(model, request)
        update.controller.steps = STEPS
        return update


def _run(algorithm: str, system: FakeSystem, optimizer: FakeOptimization, **learner: Any):
    config = ExperimentConfig().replace(
        plant={"trial_duration": STEPS * 0.05}, learner={"algorithm": algorithm, **learner})
    models = FakeModelLearning()
    report = Learner(config, system, models, optimizer, np.random.default_rng(0)).run()
    return report, models


def test_eb_runs_random_then_exploration_then_pretrained_policies():
    system, optimizer = FakeSystem(), FakeOptimization()
    report, models = _run("eb", system, optimizer, max_trials=6)
    assert system.kinds == ["random", "ilqr", "ilqr", "ilqr", "policy", "policy"]
    assert optimizer.requests == [("explore", 0, False), ("explore", 1, False),
                                  ("explore", 2, False), ("policy", 0, True), ("policy", 1, True)]
    assert [t.kind for t in report.trials] == system.kinds and not report.solved
    assert models.fits == 5 and len(models.trials) == 6   # a fit before every optimisation
    assert report.opt_costs == [[3.0, 2.0], [3.0, 2.0]]  # the policy trials' optimisation only


def test_pretraining_only_before_the_first_policy_unless_every_trial():
    assert ExperimentConfig().pretrain.every_trial  # the default: the previous test
    optimizer = FakeOptimization()
    config = ExperimentConfig().replace(plant={"trial_duration": STEPS * 0.05},
                                        learner={"algorithm": "eb", "max_trials": 6},
                                        pretrain={"every_trial": False})
    Learner(config, FakeSystem(), FakeModelLearning(), optimizer,
            np.random.default_rng(0)).run()
    assert [r for r in optimizer.requests if r[0] == "policy"] == [("policy", 0, True),
                                                                   ("policy", 1, False)]


def test_mc_pilco_never_explores_nor_pretrains():
    system, optimizer = FakeSystem(), FakeOptimization()
    _run("mc", system, optimizer, max_trials=4, random_trials=2)
    assert system.kinds == ["random", "random", "policy", "policy"]
    assert optimizer.requests == [("policy", 0, False), ("policy", 1, False)]


@pytest.mark.parametrize("followed, explored", [((True,), 1), ((False, True), 2),
                                                ((False, False, False), 3)])
def test_exploration_stops_once_a_rollout_follows_its_plan(followed, explored):
    """exploration.match_tol: a rollout within it of a plan that ends upright through the
    model ends exploration early; at most exploration.iterations plans otherwise."""
    # the followed plans' trials are upright like their plans (trial j + 1 for iteration j)
    system = FakeSystem(solves={j + 1 for j, f in enumerate(followed) if f})
    report, _ = _run("eb", system, FakeOptimization(followed, plans_upright=True),
                     max_trials=explored + 2)
    assert system.kinds == ["random"] + ["ilqr"] * explored + ["policy"]
    explored_trials = [t for t in report.trials if t.kind == "ilqr"]
    error = explored_trials[-1].info["tracking_error"]
    assert error == 0.0 if followed[explored - 1] else error > 1.0
    # the plans the rollouts missed are a radian off upright: they do not end upright either
    assert [t.info["plan_ends_upright"] for t in explored_trials] == list(followed)


def test_a_followed_plan_that_stays_down_does_not_end_exploration():
    """A GP-iLQR plan can stay at the hanging position (the swing-up cost is flat there); its
    rollout follows it to the radian's thousandth and says nothing of the model near upright,
    so exploration goes on (seen through the node graph: seed 3 explored once, then never
    solved in 10 trials)."""
    system = FakeSystem()
    report, _ = _run("eb", system, FakeOptimization((True, True, True)), max_trials=5)
    assert system.kinds == ["random", "ilqr", "ilqr", "ilqr", "policy"]
    explored = [t for t in report.trials if t.kind == "ilqr"]
    assert [t.info["tracking_error"] for t in explored] == [0.0] * 3
    assert [t.info["plan_ends_upright"] for t in explored] == [False] * 3


def test_a_rollout_that_ended_before_its_plan_is_not_matched_however_close_its_start():
    """exploration.max_deviation ends a rollout where it left its plan; the steps before
    matched the plan, the rollout did not follow it, so exploration goes on (the Learner
    compares the trial's steps with the controller's)."""
    system = ShortRollouts(lambda kind, index: 5 if index == 1 else None, solves={1, 2})
    report, _ = _run("eb", system, PlansOfTheWholeTrial((True, True), plans_upright=True),
                     max_trials=4)
    assert system.kinds == ["random", "ilqr", "ilqr", "policy"]
    explored = [t for t in report.trials if t.kind == "ilqr"]
    assert [t.info["tracking_error"] for t in explored] == [float("inf"), 0.0]
    assert [t.info["rollout_share"] for t in explored] == [0.25, 1.0]
    assert explored[0].duration_s == pytest.approx(0.25)


def test_rollouts_that_left_their_plans_count_as_the_share_they_ran():
    """exploration.iterations is a budget of rollout time: rollouts that max_deviation ended
    halfway count half, so six of them make the three iterations; a faulted one counts
    nothing, and a summary without rollout_share (recorded before it) counts whole."""
    system = ShortRollouts(lambda kind, index: STEPS // 2 if kind == "ilqr" else None,
                           faults={2})
    report, _ = _run("eb", system, PlansOfTheWholeTrial(), max_trials=9)
    assert system.kinds == ["random"] + ["ilqr"] * 7 + ["policy"]
    explored = [t for t in report.trials if t.kind == "ilqr" and not t.faulted]
    assert [t.info["rollout_share"] for t in explored] == [0.5] * 6
    learner = Learner(ExperimentConfig().replace(learner={"algorithm": "eb"}), FakeSystem(),
                      FakeModelLearning(), FakeOptimization(), np.random.default_rng(0))

    def summaries(info: dict[str, Any]) -> list[TrialSummary]:
        return [summary_from_dict({"index": 0, "kind": "random", "success": False,
                                   "cost": 1.0, "duration_s": 1.0})] + [
            summary_from_dict({"index": i, "kind": "ilqr", "success": False, "cost": 1.0,
                               "duration_s": 0.5, "info": {"tracking_error": 1.0, **info}})
            for i in (1, 2, 3)]
    assert learner.next_step(summaries({})).phase == "policy"          # 3 whole rollouts
    assert learner.next_step(summaries({"rollout_share": 0.5})).phase == "explore"


def test_a_summary_without_plan_ends_upright_is_matched_on_its_tracking_error_alone():
    """Runs recorded before plan_ends_upright resume as they were decided: matched alone ends
    exploration."""
    config = ExperimentConfig().replace(learner={"algorithm": "eb"})
    learner = Learner(config, FakeSystem(), FakeModelLearning(), FakeOptimization(),
                      np.random.default_rng(0))
    random = TrialSummary(index=0, kind=TrialKind.RANDOM, success=False, cost=40.0,
                          duration_s=1.0)
    explored = TrialSummary(index=1, kind=TrialKind.ILQR, success=False, cost=40.0,
                            duration_s=1.0, info={"tracking_error": 0.01})
    step = learner.next_step([random, explored])
    assert isinstance(step, OptimizationRequest) and step.phase == "policy"
    refuted = TrialSummary(index=1, kind=TrialKind.ILQR, success=False, cost=40.0,
                           duration_s=1.0,
                           info={"tracking_error": 0.01, "plan_ends_upright": False})
    step = learner.next_step([random, refuted])
    assert isinstance(step, OptimizationRequest) and step.phase == "explore"


def test_a_solving_policy_ends_the_run_and_a_solving_plan_does_not():
    system = FakeSystem(solves={2, 5})   # trial 2 is an iLQR rollout, trial 5 a policy's
    report, _ = _run("eb", system, FakeOptimization(), max_trials=10)
    assert system.kinds == ["random", "ilqr", "ilqr", "ilqr", "policy", "policy"]
    assert report.trials[2].success and report.solved and report.trials_to_solve == 6


def test_time_to_solve_counts_simulated_rollouts_as_their_duration():
    """In process the rollouts take no wall time; the time from learn to solved counts each as
    its duration, what a rig takes, plus the computation by stage."""
    system = FakeSystem(solves={5})
    report, _ = _run("eb", system, FakeOptimization(), max_trials=10)
    times = report.time_to_solve()
    assert list(times) == ["rollouts", "fit", "ilqr", "pretrain", "policy", "other",
                           "learn_to_solve"]
    assert times["rollouts"] == pytest.approx(6 * STEPS * 0.05)   # six 1 s trials
    assert times["policy"] == pytest.approx(2 * 0.5) and times["pretrain"] == pytest.approx(0.5)
    assert times["learn_to_solve"] == pytest.approx(sum(v for k, v in times.items()
                                                        if k != "learn_to_solve"))
    assert times["learn_to_solve"] >= report.wall_s["total"] - report.wall_s["system"] + 6.0
    assert report.to_dict()["time_to_solve_s"]["rollouts"] == pytest.approx(6.0)


def test_time_to_solve_through_the_graph_is_the_measured_wall_time():
    """Through the nodes the rollouts run in real time (and the trial's reset and record with
    them): the system's wall time is the rollouts' row and the rows add up to the run's."""
    trials = [TrialSummary(index=i, kind=kind, success=i == 1, cost=1.0, duration_s=3.0)
              for i, kind in enumerate((TrialKind.RANDOM, TrialKind.POLICY))]
    report = LearningReport(algorithm="mc", seed=1, trials=trials, opt_costs=[[1.0]],
                            wall_s={"model": 1.0, "policy": 4.0, "system": 7.5, "total": 14.0})
    assert report.time_to_solve() == {"rollouts": 7.5, "fit": 1.0, "ilqr": 0.0, "pretrain": 0.0,
                                      "policy": 4.0, "other": 1.5, "learn_to_solve": 14.0}


def _summary(kind: str, success: bool = False, warm_start: str | None = None) -> TrialSummary:
    return TrialSummary(index=0, kind=TrialKind(kind), success=success, cost=0.0, duration_s=1.0,
                        info={} if warm_start is None else {"warm_start": warm_start})


@pytest.mark.parametrize("policies, failed", [
    ((), 0),
    ((("pretrained", False),), 1),
    ((("pretrained", False), ("kept", False)), 2),
    ((("pretrained", False), ("kept", False), ("pretrained", False)), 1),
    ((("pretrained", False), ("kept", False), ("pretrained", False), ("kept", False)), 2),
    ((("pretrained", False), ("kept", True)), 0),
])
def test_failures_since_warm_start_counts_the_refutations_of_the_policy(policies, failed):
    """Policy trials that failed since a warm start last replaced the policy, that trial
    included; exploration and random trials between them do not count."""
    summaries = [_summary("random"), _summary("ilqr")]
    for warm_start, success in policies:
        summaries += [_summary("policy", success, warm_start), _summary("ilqr")]
    assert failures_since_warm_start(summaries) == failed


def test_each_policy_request_says_how_often_the_current_policy_failed():
    """The Learner puts the count in every policy request (the optimiser's rule acts on it):
    with a fake optimiser that never reports a warm start, every failure counts."""
    optimizer = FakeOptimization()
    seen: list[int] = []
    next_controller = optimizer.next_controller

    def recording(model: Any, request: OptimizationRequest) -> ControllerUpdate:
        if request.phase == "policy":
            seen.append(request.failed_since_warm_start)
        return next_controller(model, request)
    optimizer.next_controller = recording  # type: ignore[method-assign]
    _run("eb", FakeSystem(), optimizer, max_trials=7)
    assert seen == [0, 1, 2]


def _policy(success: bool, share: float | None, faulted: bool = False) -> TrialSummary:
    return TrialSummary(index=0, kind=TrialKind.POLICY, success=success, cost=0.0,
                        duration_s=1.0, faulted=faulted,
                        info={} if share is None else {"predicted_success": share})


@pytest.mark.parametrize("summaries, expected", [
    ([], False),
    ([_policy(False, 0.0)], True),                       # failed as the model predicted
    ([_policy(False, 0.3)], False),                      # the model gave it a chance
    ([_policy(False, None)], False),                     # no success checks (success_stop 0)
    ([_policy(False, 0.0), _policy(False, 0.5)], False),  # the last one counts
    ([_policy(False, 0.0), _summary("ilqr")], True),     # the last policy trial
    ([_policy(False, 0.0), _policy(False, 0.9, faulted=True)], True),  # a fault says nothing
    ([_policy(True, 0.0)], False),                       # solved after all
])
def test_predicted_failure_is_the_last_policy_trial_failing_as_its_model_said(summaries,
                                                                              expected):
    assert predicted_failure(summaries) is expected


def test_each_policy_request_says_whether_the_last_failure_was_predicted():
    """The Learner puts predicted_failure in every policy request (the optimiser's
    restart_on_predicted_failure acts on it), from the last policy trial's predicted share."""
    optimizer = FakeOptimization()
    shares = iter([0.0, 0.5, 0.0])
    seen: list[bool] = []
    next_controller = optimizer.next_controller

    def reporting(model: Any, request: OptimizationRequest) -> ControllerUpdate:
        update = next_controller(model, request)
        if request.phase == "policy":
            seen.append(request.predicted_failure)
            update.info["predicted_success"] = next(shares)
        return update
    optimizer.next_controller = reporting  # type: ignore[method-assign]
    _run("eb", FakeSystem(), optimizer, max_trials=7)
    assert seen == [False, True, False]


def test_a_faulted_exploration_rollout_is_planned_again_and_not_counted():
    """A rollout the system cut short brought no data: its iteration is planned again, and
    the three exploration rollouts are three that ran; every trial counts against the budget."""
    system, optimizer = FakeSystem(faults={2}), FakeOptimization()
    report, _ = _run("eb", system, optimizer, max_trials=7)
    assert system.kinds == ["random", "ilqr", "ilqr", "ilqr", "ilqr", "policy", "policy"]
    assert [r[:2] for r in optimizer.requests] == [("explore", 0), ("explore", 1),
                                                   ("explore", 1), ("explore", 2),
                                                   ("policy", 0), ("policy", 1)]
    assert [t.faulted for t in report.trials] == [False, False, True, False, False, False, False]


def test_a_faulted_policy_trial_does_not_count_against_the_policy():
    """pretrain.restart_after_failures counts the trials that refuted the policy; one cut
    short by a fault refutes nothing, and still marks where a warm start replaced it."""
    pretrained = _summary("policy", warm_start="pretrained")
    faulted = TrialSummary(index=0, kind=TrialKind.POLICY, success=False, cost=0.0,
                           duration_s=0.2, faulted=True)
    assert failures_since_warm_start([pretrained, faulted, _summary("policy")]) == 2
    faulted_warm = TrialSummary(index=0, kind=TrialKind.POLICY, success=False, cost=0.0,
                                duration_s=0.2, faulted=True, info={"warm_start": "pretrained"})
    assert failures_since_warm_start([pretrained, _summary("policy"), faulted_warm]) == 0
    assert failures_since_warm_start([_summary("policy"), faulted_warm, _summary("policy")]) == 1


def test_a_summary_recorded_before_faulted_counts_as_a_trial_that_ran():
    """Runs recorded before the field resume as they were decided."""
    restored = summary_from_dict({"index": 1, "kind": "ilqr", "success": False, "cost": 1.0,
                                  "duration_s": 3.0})
    assert restored.faulted is False


def test_a_faulted_trial_says_so_in_its_line():
    line = trial_line({"index": 3, "kind": "policy", "success": False, "cost": 50.0,
                       "faulted": True, "final_window": {"max_abs_p": 0.0,
                                                         "max_angle_error": 3.1}})
    assert "cut short by a fault" in line and "final window" not in line
