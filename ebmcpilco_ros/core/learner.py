"""The trial loop, written once against three small protocols.

    System              runs a controller for one trial and returns the recorded Trial
    ModelLearning       keeps every trial, fits the GP model (versioned)
    PolicyOptimization  given a model, returns the next controller

`LocalModelLearning` and `LocalPolicyOptimization` do the work in-process (benchmarks, demo);
in the node graph the trial manager implements the same protocols as calls to other nodes, so
the same Learner runs in benchmarks and on the robot. Data flows one way round the loop:
trial -> dataset -> model -> controller -> trial.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from .cancel import StopCheck, check
from .checkpoint import (CHECKPOINT_FORMAT, CheckpointError, check_checkpoint, load_module_state,
                         module_state, plan_from_dict, plan_to_dict, rng_state, set_rng_state,
                         summary_to_dict, torch_rng_from, torch_rng_state)
from .config import ExperimentConfig, OptimizerConfig
from .cost import trajectory_cost
from .dataset import TrialDataset
from .jsonio import plain
from .mcpilco import (OptimizationResult, SuccessStop, model_costs, optimize_policy,
                      torch_dtype, torch_threads)
from .model import SpeedIntegrationModel
from .controllers import (Controller, FeedbackPlanController, PolicyController, RandomController,
                          trial_steps)
from .exploration import (exploration_plan, plan_ends_upright, plan_swing_up,
                          plan_tracking_error)
from .ilqr import ILQRPlan
from .pretrain import pretrain_policy
from .policy import SquashedRBFPolicy
from .systems import System
from .trial import Trial, final_window_extremes, swing_up_success
from .vocabulary import Phase, Stage, TrialKind, WarmStart


class ModelLearning(Protocol):
    def add_trial(self, trial: Trial) -> None: ...

    def fit(self) -> SpeedIntegrationModel: ...


@dataclass(frozen=True)
class OptimizationRequest:
    """Which controller the Learner wants next.

    Phase.POLICY: MC-PILCO optimisation; `iteration` counts the learning trials (the first
    gets max_steps_first); `pretrain` asks to fit the policy to an iLQR plan first.
    Phase.EXPLORE: a GP-iLQR plan with exploration noise for iteration `iteration`.
    """

    phase: Phase
    iteration: int = 0
    pretrain: bool = False
    # Phase.POLICY: policy trials the current policy failed since a warm start last replaced it
    # (failures_since_warm_start; pretrain.restart_after_failures acts on it)
    failed_since_warm_start: int = 0
    # Phase.POLICY: the last policy trial failed as its optimisation's model had predicted
    # (predicted_failure; pretrain.restart_on_predicted_failure acts on it)
    predicted_failure: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase", Phase(self.phase))  # a payload's string too

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ControllerUpdate:
    """What an optimisation phase hands back: the controller to run next, and its statistics.

    `phase` is the kind of trial the controller runs (TrialKind.ILQR or POLICY); `wall_s` is
    keyed by stage (ilqr, pretrain, policy) and summed into the run's totals;
    `predicted_states` is the model's nominal trajectory where the phase has one (iLQR).
    """

    controller: Controller
    phase: TrialKind
    opt_steps: int = 0
    wall_s: dict[str, float] = field(default_factory=dict)
    costs: list[float] = field(default_factory=list)
    predicted_states: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.phase = TrialKind(self.phase)  # a payload's string too


class PolicyOptimization(Protocol):
    def next_controller(self, model: SpeedIntegrationModel, request: OptimizationRequest
                        ) -> ControllerUpdate: ...


def policy_step_limit(config: OptimizerConfig, iteration: int) -> int:
    """MC-PILCO's step limit in learning trial `iteration` (the first has its own)."""
    return config.max_steps_first if iteration == 0 else config.max_steps


class LocalModelLearning:
    """The run's trial dataset and the GP fit, in-process."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.dataset = TrialDataset()
        self.version = 0

    def add_trial(self, trial: Trial) -> None:
        self.dataset.add(trial)

    def fit(self) -> SpeedIntegrationModel:
        self.version += 1
        with torch_threads(self.config.optimizer.fit_threads):
            return SpeedIntegrationModel.fit(self.dataset, self.config.plant.control_period,
                                             self.config.model, version=self.version)

    def state_dict(self) -> dict[str, Any]:
        """The dataset and the model version, for a checkpoint."""
        return {**self.dataset.state_dict(), "version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
        self.version = int(state["version"])


class LocalPolicyOptimization:
    """The optimiser side of both algorithms, in-process (and inside the optimisation node).

    Phase.EXPLORE: GP-iLQR plan with variance-adaptive noise (EB-MC-PILCO).
    Phase.POLICY:  MC-PILCO on a policy that persists across trials (a fresh Adam each
                   trial), optionally pretrained first on an iLQR plan through the current
                   model (EB-MC-PILCO's warm start).
    `should_stop` is asked at every iteration of iLQR, pretraining and MC-PILCO (True raises
    core.cancel.Cancelled: a node shutting down); `on_stage` hears each Stage as it starts
    (ilqr, pretrain, policy), for progress reports.
    """

    def __init__(self, config: ExperimentConfig, rng: np.random.Generator,
                 on_step: Callable | None = None, should_stop: StopCheck = None,
                 on_stage: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.rng = rng
        self.on_step = on_step
        self.should_stop = should_stop
        self.on_stage = on_stage
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        self.policy = SquashedRBFPolicy(config.policy, config.plant.u_max, generator=generator,
                                        dtype=torch_dtype(config.optimizer.dtype))
        self.version = 0
        self.last_plan: ILQRPlan | None = None

    def next_controller(self, model: SpeedIntegrationModel, request: OptimizationRequest
                        ) -> ControllerUpdate:
        if request.phase == Phase.EXPLORE:
            return self._explore(model, request.iteration)
        if request.phase == Phase.POLICY:
            return self._policy(model, request)
        raise ValueError(f"unknown optimisation phase {request.phase!r}")

    def state_dict(self) -> dict[str, Any]:
        """What persists across trials (the policy, the last plan, the controller version) and
        the generators this side draws from (its numpy rng; torch's global one, which the
        pretraining's dropout uses), for a checkpoint or a request that resumes a run."""
        return {"policy": module_state(self.policy), "last_plan": plan_to_dict(self.last_plan),
                "version": self.version, "rng": rng_state(self.rng),
                "torch_rng": torch_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_module_state(self.policy, state["policy"], "the persistent policy")
        self.last_plan = plan_from_dict(state.get("last_plan"))
        self.version = int(state["version"])
        set_rng_state(self.rng, state["rng"])
        torch.set_rng_state(torch_rng_from(state["torch_rng"]))

    def _stage(self, stage: str) -> None:
        check(self.should_stop, f"before {stage}")
        if self.on_stage is not None:
            self.on_stage(stage)

    def _explore(self, model: SpeedIntegrationModel, iteration: int) -> ControllerUpdate:
        started = time.perf_counter()
        self._stage(Stage.ILQR)
        plan, feedback = exploration_plan(model, self.config, iteration, self.last_plan,
                                          seed=int(self.rng.integers(2**31)),
                                          should_stop=self.should_stop)
        self.last_plan = plan
        return ControllerUpdate(
            controller=FeedbackPlanController(feedback), phase=TrialKind.ILQR,
            wall_s={Stage.ILQR: time.perf_counter() - started}, predicted_states=plan.X,
            info={"ilqr_cost": plan.cost, "ilqr_iterations": plan.iterations,
                  "noise_mean": float(np.mean(feedback.sigma))})

    def _warm_start(self, model: SpeedIntegrationModel, request: OptimizationRequest,
                    wall: dict[str, float], info: dict[str, Any]) -> None:
        """Pretrain a candidate on an iLQR plan through `model`; it replaces the current policy
        on the first policy trial, later if its model cost J is lower (common random numbers),
        so a policy stuck in a poor optimum can restart from a fresh plan, and without that
        comparison once the system has refuted the current policy
        pretrain.restart_after_failures times: the optimised policy wins on the model it was
        fitted to, the system says the model is wrong there; and at once, with
        pretrain.restart_on_predicted_failure, after a failure the model had predicted (the
        optimisation ended on a policy that no particle swings up with: a poor optimum the
        comparison, against a candidate not yet optimised, would keep)."""
        started = time.perf_counter()
        self._stage(Stage.ILQR)
        plan = plan_swing_up(model, self.config, self.last_plan, self.should_stop)
        self.last_plan = plan
        wall[Stage.ILQR] = time.perf_counter() - started
        candidate = copy.deepcopy(self.policy)
        self._stage(Stage.PRETRAIN)
        with torch_threads(self.config.optimizer.fit_threads):
            result = pretrain_policy(candidate, plan, self.config.pretrain, self.rng,
                                     dropout=self.config.optimizer.dropout,
                                     should_stop=self.should_stop)
        wall[Stage.PRETRAIN] = result.wall_s
        info.update({"pretrain_rms_error": result.rms_error,
                     "pretrain_nominal_error": result.nominal_error})
        limit = self.config.pretrain.restart_after_failures
        predicted = self.config.pretrain.restart_on_predicted_failure and request.predicted_failure
        refuted = (limit > 0 and request.failed_since_warm_start >= limit) or predicted
        keep = request.iteration == 0 or refuted
        if refuted:
            info["warm_start_restart"] = request.failed_since_warm_start
        if predicted:
            info["predicted_failure"] = True
        if not keep:
            check(self.should_stop, "before the warm start's cost comparison")
            started = time.perf_counter()
            costs = model_costs((self.policy, candidate), model, self.config.optimizer,
                                self.config.cost, self.config.plant.initial_state_std,
                                np.random.default_rng(int(self.rng.integers(2**62))))
            keep = costs[1] < costs[0]
            wall[Stage.PRETRAIN] += time.perf_counter() - started
            info.update({"warm_start_costs": costs})
        info["warm_start"] = WarmStart.PRETRAINED if keep else WarmStart.KEPT
        if keep:
            self.policy.load_state_dict(candidate.state_dict())

    def _policy(self, model: SpeedIntegrationModel, request: OptimizationRequest
                ) -> ControllerUpdate:
        wall: dict[str, float] = {}
        info: dict[str, Any] = {}
        if request.pretrain and self.config.pretrain.method != "none":
            self._warm_start(model, request, wall, info)
        opt = self.config.optimizer
        max_steps = policy_step_limit(opt, request.iteration)
        self._stage(Stage.POLICY)
        result_opt: OptimizationResult = optimize_policy(
            self.policy, model, opt, self.config.cost, self.config.plant.initial_state_std,
            max_steps, self.rng, self.on_step, self.should_stop,
            SuccessStop.from_config(self.config))
        wall[Stage.POLICY] = result_opt.wall_s
        info["stop_reason"] = result_opt.stop_reason
        if result_opt.predicted_success:
            info["predicted_success"] = result_opt.predicted_success[-1][1]
        if result_opt.restored_check is not None:   # success_patience: ended on a better check
            info["restored_check"] = list(result_opt.restored_check)
            info["predicted_success"] = result_opt.restored_check[1]
        if result_opt.restarts:
            info["restarts"] = result_opt.restarts
        self.version += 1
        params = self.policy.parameters_snapshot(version=self.version)
        return ControllerUpdate(controller=PolicyController(params), phase=TrialKind.POLICY,
                                opt_steps=result_opt.steps, wall_s=wall,
                                costs=result_opt.costs, info=info)


@dataclass
class TrialSummary:
    """One rollout on the system and the computation that preceded it: what a status's
    trial_done event carries and progress.trial_line prints, in process and in the graph."""

    index: int
    kind: TrialKind
    success: bool
    cost: float
    duration_s: float
    opt_steps: int = 0
    model_points: tuple[int, ...] = ()
    wall_s: dict[str, float] = field(default_factory=dict)
    predicted_cost: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # the final window's largest |p| [m] and distance to upright [rad] (trial.final_window_extremes)
    final_window: dict[str, float] = field(default_factory=dict)
    # the system cut the trial short (trial.failed: state lost, a controller error): it says
    # nothing about its controller, so next_step neither counts nor judges it
    faulted: bool = False

    @classmethod
    def of(cls, trial: Trial, config: ExperimentConfig, **fields: Any) -> "TrialSummary":
        """The summary of `trial`: swing-up success and the saturating cost, both on the
        noise-free trajectory where the system knows it (simulation), else the measured one."""
        states = trial.true_states if trial.true_states is not None else trial.states
        return cls(index=trial.index, kind=TrialKind(trial.kind),
                   success=swing_up_success(trial, config.success),
                   cost=trajectory_cost(states, config.cost), duration_s=trial.duration,
                   final_window=final_window_extremes(trial, config.success),
                   faulted=trial.failed, **fields)


@dataclass
class LearningReport:
    """The result of a learning run, in the shape the benchmark JSON uses."""

    algorithm: str
    seed: int
    trials: list[TrialSummary]
    opt_costs: list[list[float]]  # per learning trial, the cost at each optimisation step
    wall_s: dict[str, float]

    @property
    def solved(self) -> bool:
        """A learned policy swung up and balanced (an iLQR rollout doing so does not count)."""
        return self.trials_to_solve is not None

    @property
    def trials_to_solve(self) -> int | None:
        """Rollouts on the system up to and including the first successful policy rollout,
        every kind (random, ilqr, policy) counted."""
        for i, t in enumerate(self.trials):
            if t.success and t.kind == TrialKind.POLICY:
                return i + 1
        return None

    @property
    def interaction_s(self) -> float:
        """Seconds on the system up to and including the solving rollout (all if unsolved)."""
        n = self.trials_to_solve or len(self.trials)
        return float(sum(t.duration_s for t in self.trials[:n]))

    def time_to_solve(self) -> dict[str, float]:
        """Where the wall time from the learn call to the end of the run went (the solving
        rollout's end when solved: the run stops there unless learner.stop_on_success is off).

        Rows: `rollouts` (the system's runs), the computation by stage (`fit`, `ilqr`,
        `pretrain`, `policy`), `other` (the rest: messages, waits, records), and
        `learn_to_solve`, their sum. A rollout takes at least its duration: on the rig and in the
        graph's real-time simulation it does, so this is the measured wall time; the in-process
        simulation runs faster than real time, and there the rollouts count as their duration,
        what they would take on a rig."""
        wall = dict(self.wall_s)
        total, system = wall.pop("total", 0.0), wall.pop("system", 0.0)
        stages = {Stage.FIT.value: wall.pop("model", 0.0),
                  **{stage.value: wall.pop(stage, 0.0)
                     for stage in (Stage.ILQR, Stage.PRETRAIN, Stage.POLICY)}}
        out = {"rollouts": max(system, self.interaction_s), **stages,
               "other": max(0.0, total - system - sum(stages.values()))}
        out["learn_to_solve"] = sum(out.values())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "seed": self.seed, "solved": self.solved,
                "trials_to_solve": self.trials_to_solve,
                "interaction_s": round(self.interaction_s, 6),
                "time_to_solve_s": {k: round(v, 3) for k, v in self.time_to_solve().items()},
                "opt_steps": int(sum(t.opt_steps for t in self.trials)),
                "success_per_trial": [t.success for t in self.trials],
                "kind_per_trial": [t.kind for t in self.trials],
                "cost_per_trial": [round(t.cost, 4) for t in self.trials],
                "opt_steps_per_trial": [t.opt_steps for t in self.trials],
                "wall_s": {k: round(v, 3) for k, v in self.wall_s.items()},
                "trials": [asdict(t) for t in self.trials]}


def _state_of(component: Any) -> dict[str, Any] | None:
    """A protocol implementation's checkpoint state, where it has one (a node's proxy for a
    stateless System has none)."""
    get = getattr(component, "state_dict", None)
    return get() if callable(get) else None


def _load_state_of(component: Any, state: dict[str, Any] | None, what: str) -> None:
    if state is None:
        return
    load = getattr(component, "load_state_dict", None)
    if not callable(load):
        raise CheckpointError(f"the checkpoint holds a {what} state, this run's {what} "
                              f"({type(component).__name__}) keeps none")
    try:
        load(state)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's {what} state is unusable: "
                              f"{type(exc).__name__}: {exc}") from exc


def failures_since_warm_start(summaries: Sequence[TrialSummary]) -> int:
    """Policy trials that failed since a warm start last replaced the policy (that trial
    included): how often the system has refuted the policy the optimiser now holds. From the
    trials alone, so a resumed run counts as the uninterrupted one."""
    failed = 0
    for summary in reversed(summaries):
        if summary.kind != TrialKind.POLICY:
            continue
        if summary.success:
            break
        failed += not summary.faulted   # a trial cut short refutes nothing
        if summary.info.get("warm_start") == WarmStart.PRETRAINED:
            break
    return failed


def predicted_failure(summaries: Sequence[TrialSummary]) -> bool:
    """Whether the last policy trial that ran (not faulted) failed, and its optimisation had
    ended with the model predicting no success (`predicted_success` 0 in its info: no particle
    met the criterion at the last check). From the trials alone, as failures_since_warm_start."""
    for summary in reversed(summaries):
        if summary.kind != TrialKind.POLICY or summary.faulted:
            continue
        return not summary.success and summary.info.get("predicted_success") == 0.0
    return False


def summary_from_dict(data: dict[str, Any]) -> TrialSummary:
    return TrialSummary(**{**data, "kind": TrialKind(data["kind"]),
                           "model_points": tuple(data.get("model_points", ())),
                           "wall_s": dict(data.get("wall_s", {})),
                           "info": dict(data.get("info", {})),
                           "final_window": dict(data.get("final_window", {}))})


class Learner:
    """Random exploration, then model fit -> optimisation -> rollout until success or budget.

    The next step is decided from the trials so far alone (`next_step`), so a run restored from a
    checkpoint (`run(resume=...)`) goes on exactly where it stopped; `on_checkpoint` gets one
    (`checkpoint()`) at every trial boundary.
    """

    def __init__(self, config: ExperimentConfig, system: System, models: ModelLearning,
                 optimizer: PolicyOptimization, rng: np.random.Generator,
                 on_trial: Callable[[TrialSummary, Trial], None] | None = None,
                 on_checkpoint: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.system = system
        self.models = models
        self.optimizer = optimizer
        self.rng = rng
        self.on_trial = on_trial
        self.on_checkpoint = on_checkpoint
        self.summaries: list[TrialSummary] = []
        self.opt_costs: list[list[float]] = []
        self.totals: dict[str, float] = {"model": 0.0, Stage.POLICY: 0.0, "system": 0.0}
        self._elapsed_before = 0.0  # seconds of the run before it was resumed
        self._started = time.perf_counter()

    def _record(self, trial: Trial, summary_kw: dict[str, Any]) -> TrialSummary:
        self.models.add_trial(trial)
        summary = TrialSummary.of(trial, self.config, **summary_kw)
        if self.on_trial is not None:
            self.on_trial(summary, trial)
        return summary

    def _round(self, request: OptimizationRequest, index: int, totals: dict[str, float]
               ) -> tuple[ControllerUpdate, Trial, dict[str, Any]]:
        """The round every phase makes: fit the model, get a controller, run it on the system."""
        t0 = time.perf_counter()
        model = self.models.fit()
        t_model = time.perf_counter() - t0
        update = self.optimizer.next_controller(model, request)
        t1 = time.perf_counter()
        trial = self.system.run(update.controller, kind=update.phase, index=index)
        totals["system"] += time.perf_counter() - t1
        totals["model"] += t_model
        for k, v in update.wall_s.items():
            totals[k] = totals.get(k, 0.0) + v
        summary_kw = {"opt_steps": update.opt_steps,
                      "model_points": tuple(gp.size for gp in model.gps),
                      "wall_s": {"model": t_model, **update.wall_s},
                      "predicted_cost": update.costs[-1] if update.costs else None,
                      "info": dict(update.info)}
        return update, trial, summary_kw

    def next_step(self, summaries: list[TrialSummary]
                  ) -> TrialKind | OptimizationRequest | None:
        """What the run does next, from its trials so far: a random trial (TrialKind.RANDOM), an
        optimisation round, or nothing (budget spent or solved).

        EB-MC-PILCO explores with GP-iLQR plans after the random trials, and stops exploring
        early once a rollout follows a plan that ends upright (through the model) to within
        exploration.match_tol (the model is good where it matters). A rollout the system cut
        short (faulted) is not one of the exploration.iterations: it brought no data, and the
        same iteration is planned again. One that left its plan (exploration.max_deviation)
        counts as the share of its rollout's steps it ran (`rollout_share`): the iterations
        are a budget of rollout time, and a lost plan gives back what it did not use. Every
        trial counts against learner.max_trials."""
        cfg, n = self.config.learner, len(summaries)
        if n >= cfg.max_trials:
            return None
        if n < cfg.random_trials:
            return TrialKind.RANDOM
        if cfg.algorithm == "eb":
            explored = [s for s in summaries if s.kind == TrialKind.ILQR and not s.faulted]
            tol = self.config.exploration.match_tol
            error = explored[-1].info.get("tracking_error") if explored else None
            # a summary from before plan_ends_upright was recorded: matched alone, as then
            matched = (tol > 0 and error is not None and error < tol
                       and explored[-1].info.get("plan_ends_upright", True))
            ran = sum(float(s.info.get("rollout_share", 1.0)) for s in explored)
            if ran < self.config.exploration.iterations - 1e-9 and not matched:
                return OptimizationRequest(Phase.EXPLORE, len(explored))
        if cfg.stop_on_success and any(s.success and s.kind == TrialKind.POLICY
                                       for s in summaries):
            return None
        learning_trial = sum(s.kind == TrialKind.POLICY for s in summaries)
        return OptimizationRequest(Phase.POLICY, learning_trial, pretrain=(
            cfg.algorithm == "eb" and (learning_trial == 0 or self.config.pretrain.every_trial)),
            failed_since_warm_start=failures_since_warm_start(summaries),
            predicted_failure=predicted_failure(summaries))

    def _step(self, step: TrialKind | OptimizationRequest) -> None:
        """One trial (and the computation before it), appended to the run's summaries."""
        index = len(self.summaries)
        if step == TrialKind.RANDOM:
            t0 = time.perf_counter()
            controller = RandomController(self.config.plant.u_max,
                                          seed=int(self.rng.integers(2**31)))
            trial = self.system.run(controller, kind=TrialKind.RANDOM, index=index)
            self.totals["system"] += time.perf_counter() - t0
            self.summaries.append(self._record(trial, {}))
            return
        assert isinstance(step, OptimizationRequest)
        update, trial, summary_kw = self._round(step, index, self.totals)
        if step.phase == Phase.EXPLORE:
            planned = update.predicted_states
            rollout_steps = trial_steps(update.controller, self.config.plant.steps)
            summary_kw["info"]["tracking_error"] = (
                plan_tracking_error(planned, trial, rollout_steps)
                if planned is not None else float("inf"))
            summary_kw["info"]["rollout_share"] = min(1.0, trial.steps / rollout_steps)
            summary_kw["info"]["plan_ends_upright"] = (
                planned is not None and plan_ends_upright(planned, self.config.success))
        else:
            self.opt_costs.append(update.costs)
        self.summaries.append(self._record(trial, summary_kw))

    def checkpoint(self) -> dict[str, Any]:
        """The run at this trial boundary (core.checkpoint): JSON-ready."""
        totals = {**self.totals,
                  "total": self._elapsed_before + time.perf_counter() - self._started}
        return plain({
            "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
            "trials_completed": len(self.summaries),
            "learner": {"summaries": [summary_to_dict(s) for s in self.summaries],
                        "opt_costs": self.opt_costs, "totals": totals,
                        "rng": rng_state(self.rng)},
            "system": _state_of(self.system), "models": _state_of(self.models),
            "optimizer": _state_of(self.optimizer)})

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from `checkpoint` (CheckpointError if it is not one of this config)."""
        check_checkpoint(checkpoint, self.config)
        learner = checkpoint["learner"]
        try:
            self.summaries = [summary_from_dict(s) for s in learner["summaries"]]
            self.opt_costs = [list(c) for c in learner["opt_costs"]]
            totals = {k: float(v) for k, v in learner["totals"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's learner state is unusable: {exc}") from exc
        if len(self.summaries) != checkpoint["trials_completed"]:
            raise CheckpointError(f"the checkpoint says {checkpoint['trials_completed']} "
                                  f"trials completed but holds {len(self.summaries)}")
        self._elapsed_before = totals.pop("total", 0.0)
        self.totals = totals
        set_rng_state(self.rng, learner["rng"])
        _load_state_of(self.system, checkpoint.get("system"), "system")
        _load_state_of(self.models, checkpoint.get("models"), "model learning")
        _load_state_of(self.optimizer, checkpoint.get("optimizer"), "optimisation")

    def run(self, resume: dict[str, Any] | None = None) -> LearningReport:
        """The whole run, or its rest from `resume` (a checkpoint)."""
        self._started = time.perf_counter()
        if resume is not None:
            self.restore(resume)
        while (step := self.next_step(self.summaries)) is not None:
            self._step(step)
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.checkpoint())
        cfg = self.config.learner
        totals = {**self.totals,
                  "total": self._elapsed_before + time.perf_counter() - self._started}
        return LearningReport(algorithm=cfg.algorithm, seed=cfg.seed, trials=self.summaries,
                              opt_costs=self.opt_costs, wall_s=totals)


class SeededSystem:
    """The in-process simulated cart-pole with its generator's state in checkpoints."""

    def __init__(self, config: ExperimentConfig, seed: int) -> None:
        from .systems import SimulatedCartPole

        self.inner = SimulatedCartPole(config.plant, np.random.default_rng([seed, 0]))

    def run(self, controller: Controller, kind: str, index: int) -> Trial:
        return self.inner.run(controller, kind=kind, index=index)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.inner.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(self.inner.rng, state["rng"])


def build_in_process(config: ExperimentConfig,
                     on_trial: Callable[[TrialSummary, Trial], None] | None = None,
                     on_step: Callable | None = None,
                     on_checkpoint: Callable[[dict[str, Any]], None] | None = None) -> Learner:
    """A seeded Learner on the in-process simulated cart-pole (every generator seeded here)."""
    seed = config.learner.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    return Learner(config, SeededSystem(config, seed), LocalModelLearning(config),
                   LocalPolicyOptimization(config, rng, on_step), rng, on_trial, on_checkpoint)


def run_in_process(config: ExperimentConfig,
                   on_trial: Callable[[TrialSummary, Trial], None] | None = None,
                   on_step: Callable | None = None,
                   on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                   resume: dict[str, Any] | None = None) -> LearningReport:
    """One seeded learning run on the in-process simulated cart-pole; `resume` (a checkpoint
    from `on_checkpoint`) continues an interrupted one, with the same result."""
    learner = build_in_process(config, on_trial, on_step, on_checkpoint)
    # One thread setting for the run (iLQR, optimisation; the fits between trials take
    # optimizer.fit_threads where set): bench caps both when runs share a machine.
    with torch_threads(config.optimizer.threads):
        return learner.run(resume)
