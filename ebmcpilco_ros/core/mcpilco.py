"""MC-PILCO policy optimisation: Adam on the Monte Carlo cost with dropout and the early-stopping
monitor that schedules learning rate and dropout (Amadio et al., T-RO 2022).

Monitor, with J_k the rollout cost at step k:
    dJ_k = J_k - J_{k-1}
    E1_k = a E1_{k-1} + (1 - a) dJ_k
    E2_k = a (E2_{k-1} + (1 - a) (dJ_k - E1_{k-1})^2)
    r_k  = a r_{k-1} + (1 - a) E1_k / sqrt(E2_k)
Past `min_step`, if |r| < sigma_s for the last n_s steps, the optimisation has stalled: halve lr
(down to lr_min), halve sigma_s, lower the dropout; when lr is already lr_min, stop.
"""
from __future__ import annotations

import contextlib
from collections import deque
import math
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .cancel import StopCheck, check
from .cartpole import STATE_DIM
from .config import CostConfig, ExperimentConfig, OptimizerConfig, SuccessConfig
from .model import SpeedIntegrationModel
from .policy import SquashedRBFPolicy
from .native_rollout import resolve_backend
from .trial import stays_in_success_region
from .vocabulary import StopReason
from .rollout import (GradientOperands, ParticleDynamics, RolloutBackend, RolloutGradient,
                      RolloutNoise, rollout, rollout_cost_and_gradient)

MAX_BAD_DRAWS = 10  # consecutive non-finite rollouts before giving up


class OptimizationError(RuntimeError):
    """The policy optimisation cannot proceed (non-finite costs that resampling does not cure)."""


class Decision(Enum):
    CONTINUE = "continue"
    REDUCE = "reduce"
    STOP = "stop"


@dataclass
class ConvergenceMonitor:
    """The MC-PILCO early-stopping monitor and the lr / dropout schedule it drives."""

    alpha: float
    sigma: float
    sigma_min: float
    window: int
    min_step: int
    lr: float
    lr_min: float
    dropout: float
    dropout_step: float
    e1: float = 0.0
    e2: float = 0.0
    r: float = 0.0
    last_cost: float | None = None
    quiet_steps: int = 0
    step: int = 0

    @classmethod
    def from_config(cls, config: OptimizerConfig) -> "ConvergenceMonitor":
        return cls(alpha=config.monitor_alpha, sigma=config.monitor_sigma,
                   sigma_min=config.monitor_sigma_min, window=config.monitor_window,
                   min_step=config.monitor_min_step, lr=config.lr, lr_min=config.lr_min,
                   dropout=config.dropout, dropout_step=config.dropout_step)

    def update(self, cost: float) -> Decision:
        """Feed J_k; says whether to go on, cut lr and dropout, or stop."""
        self.step += 1
        if self.last_cost is not None:
            a = self.alpha
            d = cost - self.last_cost
            e1_prev = self.e1
            self.e1 = a * self.e1 + (1 - a) * d
            self.e2 = a * (self.e2 + (1 - a) * (d - e1_prev) ** 2)
            ratio = self.e1 / math.sqrt(self.e2) if self.e2 > 0 else 0.0
            self.r = a * self.r + (1 - a) * ratio
        self.last_cost = cost
        self.quiet_steps = self.quiet_steps + 1 if abs(self.r) < self.sigma else 0
        if self.step < self.min_step or self.quiet_steps < self.window:
            return Decision.CONTINUE
        return self.reduce()

    def reduce(self) -> Decision:
        """The schedule's next stage (lr and dropout cut), or STOP after the last one."""
        if self.lr > self.lr_min:
            self.lr = max(0.5 * self.lr, self.lr_min)
            self.sigma = max(0.5 * self.sigma, self.sigma_min)
            self.dropout = max(self.dropout - self.dropout_step, 0.0)
            self.min_step = self.step + self.window
            self.quiet_steps = 0
            return Decision.REDUCE
        return Decision.STOP


@dataclass
class DivergenceGuard:
    """Keeps the parameters of the best cost window and says when the cost has run away.

    Adam can jump out of a good basin (a large gradient meets a small second-moment estimate);
    the policy may then saturate, the cost goes flat at a bad value and the monitor, seeing no
    trend, runs out its schedule there. This guard fires as soon as the mean cost over the last
    `window` steps exceeds `ratio` x the best such mean, and holds the parameters of the last
    step of the best window for the optimiser to restore.
    """

    ratio: float
    window: int
    best_mean: float = math.inf
    best_step: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    _recent: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self._recent = deque(maxlen=self.window)

    def update(self, step: int, cost: float, parameters: dict[str, torch.Tensor]) -> bool:
        """Feed J_k and the parameters that produced it; True: diverged, stop."""
        self._recent.append(cost)
        if self.ratio <= 0 or len(self._recent) < self.window:
            return False
        mean = sum(self._recent) / self.window
        if mean < self.best_mean:
            self.best_mean, self.best_step = mean, step
            self.best_state = {k: v.detach().clone() for k, v in parameters.items()}
            return False
        return mean > self.ratio * self.best_mean

    def restart(self) -> None:
        """After a restore: judge the continuation by its own window (the best is kept)."""
        self._recent.clear()


@dataclass(frozen=True)
class SuccessStop:
    """optimizer.success_stop: stop once the model predicts the task solved.

    MC-PILCO's particles are samples of the closed loop through the model, so the share of them
    that meets the swing-up criterion (SuccessConfig: its window, p_tol, theta_tol) estimates
    the probability, under the model, that the policy solves the task. Every `every` steps a
    rollout without dropout (the policy as it runs on the system) on fresh particles measures
    it; `checks` checks in a row at or above `threshold` stop the optimisation. Why: the
    monitor stops only once J has stalled through its whole schedule (at least about
    3 x monitor_window steps), while a warm-started policy is often good enough to try on the
    system long before; a trial that fails costs one rollout and adds the data where the model
    was wrong. `stalls` > 0 also stops at the schedule's n-th cut (a monitor stall or a
    divergence restore) while no check has reached the threshold: the model does not predict
    success and J has stopped falling, so new data may help more than refinement. The paper is
    silent on this (MC-PILCO has only the monitor); both are off (0) by default.
    """

    criterion: SuccessConfig
    control_period: float
    threshold: float
    every: int
    checks: int
    stalls: int = 0   # stop at the schedule's n-th cut if no check reached the threshold
    patience: int = 0  # stop after this many checks without a new best share (> 0); end on it

    @classmethod
    def from_config(cls, config: ExperimentConfig) -> "SuccessStop | None":
        opt = config.optimizer
        if opt.success_stop <= 0.0:
            return None
        return cls(config.success, config.plant.control_period, opt.success_stop,
                   opt.success_check_every, opt.success_checks, opt.success_stalls,
                   opt.success_patience)


@dataclass(frozen=True)
class BestCheck:
    """success_patience: the success check with the highest share so far, and its policy."""

    step: int
    share: float
    state: dict[str, torch.Tensor]


@dataclass
class OptimizationResult:
    """What one trial's policy optimisation did."""

    steps: int
    costs: list[float]
    stopped_early: bool
    wall_s: float
    schedule: list[dict] = field(default_factory=list)  # (step, lr, dropout) at each change
    # divergence guard: at "step" the parameters of "restored_step" were restored
    restarts: list[dict[str, int]] = field(default_factory=list)
    stop_reason: StopReason = StopReason.MAX_STEPS   # why it ended
    # the success checks: [step, share of the particles meeting the criterion]
    predicted_success: list[tuple[int, float]] = field(default_factory=list)
    # success_patience: the check whose policy the optimisation ended on, when not the last
    restored_check: tuple[int, float] | None = None


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with `threads` intra-op threads (0 leaves torch's setting alone)."""
    if threads <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def rollout_backend(config: OptimizerConfig) -> RolloutBackend:
    """optimizer.backend resolved once for its dtype and device (native_rollout), with the
    particles shared over optimizer.particle_workers threads."""
    return resolve_backend(config.backend, torch_dtype(config.dtype),
                           torch.device(config.device)).split(config.particle_workers)


def initial_particles(particles: int, std: float, rng: np.random.Generator,
                      dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
    """x0 ~ N(0, std^2 I): the pole hanging down, as each real trial starts."""
    return torch.as_tensor(rng.normal(0.0, std, size=(particles, STATE_DIM)), dtype=dtype,
                           device=device)


def model_costs(policies: Sequence[SquashedRBFPolicy], model: SpeedIntegrationModel,
                config: OptimizerConfig, cost: CostConfig, initial_state_std: float,
                rng: np.random.Generator) -> list[float]:
    """The MC-PILCO objective J of each policy on `model`, without dropout, all on the same
    particles and sampling noise (common random numbers: the comparison is not noise)."""
    dtype, device = torch_dtype(config.dtype), torch.device(config.device)
    dynamics = ParticleDynamics.from_model(model, dtype=dtype, device=device,
                                           rank_tol=config.variance_rank_tol)
    backend = rollout_backend(config)
    with torch_threads(config.threads):
        x0 = initial_particles(config.particles, initial_state_std, rng, dtype, device)
        noise = RolloutNoise.draw(config.horizon, config.particles, policies[0].num_basis, 0.0,
                                  rng, dtype, device)
        return [rollout_cost_and_gradient(p.to(dtype=dtype, device=device), dynamics, x0, noise,
                                          config.horizon, cost, backend).cost for p in policies]


def predicted_success(policy: SquashedRBFPolicy, dynamics: ParticleDynamics, x0: torch.Tensor,
                      noise: RolloutNoise, horizon: int, criterion: SuccessConfig,
                      control_period: float, backend: RolloutBackend | None = None) -> float:
    """The share of the particles whose rollout through the model meets the swing-up
    criterion over its final window (core.trial.swing_up_success's test, particle by particle):
    the model's estimate of the probability that `policy` solves the task. The rollout is the
    backend's forward pass where it has one (the native kernel's), else the torch reference
    `rollout`."""
    with torch.no_grad():
        if backend is not None and backend.states is not None:
            ops = GradientOperands.build(policy, dynamics, noise.keep_scale)
            states = backend.states(ops, dynamics, x0, noise, horizon)
        else:
            states, _ = rollout(policy, dynamics, x0, noise, horizon)    # (H+1, M, 4)
    # the samples at times >= t_end - window, as swing_up_success takes them
    window = min(int(math.floor(criterion.window / control_period + 1e-9)), horizon) + 1
    last = states[-window:].cpu().double().numpy()
    return float(stays_in_success_region(last, criterion).mean())


def optimize_policy(policy: SquashedRBFPolicy, model: SpeedIntegrationModel,
                    config: OptimizerConfig, cost: CostConfig, initial_state_std: float,
                    max_steps: int, rng: np.random.Generator,
                    on_step: Callable[[int, RolloutGradient, ConvergenceMonitor], None] | None
                    = None, should_stop: StopCheck = None,
                    success: SuccessStop | None = None) -> OptimizationResult:
    """Adam on the particle cost until the monitor stops it, `success` predicts the task
    solved, or `max_steps`; updates `policy`.

    Fresh particles, sampling noise and dropout masks every step (no fixed PEGASUS seeds), a new
    Adam each call (the policy itself carries over between trials), as MC-PILCO.
    `should_stop` is asked before every rollout; True raises core.cancel.Cancelled.
    """
    dtype, device = torch_dtype(config.dtype), torch.device(config.device)
    policy.to(dtype=dtype, device=device)
    dynamics = ParticleDynamics.from_model(model, dtype=dtype, device=device,
                                           rank_tol=config.variance_rank_tol)
    backend = rollout_backend(config)
    monitor = ConvergenceMonitor.from_config(config)
    guard = DivergenceGuard(config.divergence_ratio, config.divergence_window)
    restarts: list[dict[str, int]] = []
    opt = torch.optim.Adam(policy.parameters(), lr=monitor.lr)
    params = (policy.weights, policy.centres, policy.log_lengthscales)
    costs: list[float] = []
    schedule = [{"step": 0, "lr": monitor.lr, "dropout": monitor.dropout}]
    started = time.perf_counter()
    stopped_early, stop_reason = False, StopReason.MAX_STEPS
    # the checks draw from their own generator: the optimisation's draws do not depend on them
    check_rng = (np.random.default_rng(int(rng.integers(2**62))) if success is not None
                 else None)
    predictions: list[tuple[int, float]] = []
    passed = 0
    # success.patience: the best check so far and the checks since it
    best: BestCheck | None = None
    since_best = 0

    def stalled() -> bool:
        """success.stalls cuts of the schedule so far and no check at the threshold yet."""
        return (success is not None and 0 < success.stalls <= len(schedule) - 1
                and not any(share >= success.threshold for _, share in predictions))
    with torch_threads(config.threads):
        for step in range(max_steps):
            grad = None
            for _ in range(MAX_BAD_DRAWS):
                check(should_stop, f"at optimisation step {step}")
                x0 = initial_particles(config.particles, initial_state_std, rng, dtype, device)
                noise = RolloutNoise.draw(config.horizon, config.particles, policy.num_basis,
                                          monitor.dropout, rng, dtype, device)
                g = rollout_cost_and_gradient(policy, dynamics, x0, noise, config.horizon, cost,
                                              backend)
                if math.isfinite(g.cost) and all(
                        bool(torch.isfinite(t).all()) for t in
                        (g.grad_weights, g.grad_centres, g.grad_log_lengthscales)):
                    grad = g
                    break
            if grad is None:
                raise OptimizationError(
                    f"{MAX_BAD_DRAWS} consecutive rollouts gave a non-finite cost or gradient "
                    f"at step {step}: the model or policy has diverged")
            costs.append(grad.cost)
            # the parameters that produced J_k, before Adam moves them
            if guard.update(step, grad.cost, policy.state_dict()):
                # back to the best parameters, on to the schedule's next stage with a fresh
                # Adam (its moment estimates belong to the run-away), or stop after the last
                assert guard.best_state is not None
                policy.load_state_dict(guard.best_state)
                restarts.append({"step": step, "restored_step": guard.best_step})
                guard.restart()
                if monitor.reduce() is Decision.STOP:
                    stopped_early, stop_reason = True, StopReason.DIVERGED
                    break
                opt = torch.optim.Adam(policy.parameters(), lr=monitor.lr)
                schedule.append({"step": step + 1, "lr": monitor.lr, "dropout": monitor.dropout})
                if stalled():
                    stopped_early, stop_reason = True, StopReason.STALLED
                    break
                continue
            for p, gp in zip(params, (grad.grad_weights, grad.grad_centres,
                                      grad.grad_log_lengthscales)):
                p.grad = gp
            opt.step()
            decision = monitor.update(grad.cost)
            if on_step is not None:
                on_step(step, grad, monitor)
            if decision is Decision.STOP:
                stopped_early, stop_reason = True, StopReason.MONITOR
                break
            if decision is Decision.REDUCE:
                for group in opt.param_groups:
                    group["lr"] = monitor.lr
                schedule.append({"step": step + 1, "lr": monitor.lr, "dropout": monitor.dropout})
                if stalled():
                    stopped_early, stop_reason = True, StopReason.STALLED
                    break
            if success is not None and (step + 1) % success.every == 0:
                assert check_rng is not None
                x0 = initial_particles(config.particles, initial_state_std, check_rng, dtype,
                                       device)
                noise = RolloutNoise.draw(config.horizon, config.particles, policy.num_basis,
                                          0.0, check_rng, dtype, device)
                share = predicted_success(policy, dynamics, x0, noise, config.horizon,
                                          success.criterion, success.control_period, backend)
                predictions.append((step + 1, share))
                passed = passed + 1 if share >= success.threshold else 0
                if passed >= success.checks:
                    stopped_early, stop_reason = True, StopReason.PREDICTED_SUCCESS
                    break
                if success.patience > 0:
                    if best is None or share > best.share:
                        best = BestCheck(step + 1, share, {k: v.detach().clone() for k, v
                                                           in policy.state_dict().items()})
                        since_best = 0
                    else:
                        since_best += 1
                    # only once the model predicted some success: with every share 0 there is
                    # no best policy to keep, and J may still be on its way down (plant B)
                    if best.share > 0.0 and since_best >= success.patience:
                        stopped_early, stop_reason = True, StopReason.NO_BETTER_CHECK
                        break
    restored_check = None
    if (best is not None and predictions[-1][1] < best.share
            and stop_reason != StopReason.PREDICTED_SUCCESS):
        policy.load_state_dict(best.state)  # the policy the model rated best goes to the trial
        restored_check = (best.step, best.share)
    return OptimizationResult(steps=len(costs), costs=costs, stopped_early=stopped_early,
                              wall_s=time.perf_counter() - started, schedule=schedule,
                              restarts=restarts, stop_reason=stop_reason,
                              predicted_success=predictions, restored_check=restored_check)
