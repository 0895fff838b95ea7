"""Validated configuration: the one source of truth for every constant.

Each section is a frozen dataclass whose fields carry their allowed range and a description in the
field metadata (see `setting`). The same metadata validates YAML here and, in the nodes, becomes
ROS parameter descriptors, so ranges are written once.

YAML files in `config/` use the ROS 2 parameter-file layout (`/**: ros__parameters: {...}`), so the
same file feeds `ros2 launch` and `ebmcpilco`; `load_config` also accepts a plain mapping.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

# Dimensions of the iLQR swing-up cost (ilqr_cost.py): e = [p, pdot, 1 + cos theta, sin theta,
# thetadot]; and its Hessian options.
ERROR_DIM = 5
HESSIANS = ("gauss_newton", "exact")
ROLLOUT_BACKENDS = ("auto", "native", "torch")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def setting(default: Any, lo: float | None = None, hi: float | None = None, *,
            doc: str = "", choices: tuple[str, ...] | None = None,
            lo_open: bool = False) -> Any:
    """A dataclass field with its allowed range and description (used by validation and ROS)."""
    meta = {"lo": lo, "hi": hi, "doc": doc, "choices": choices, "lo_open": lo_open}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def range_text(meta: Mapping[str, Any]) -> str:
    """The allowed values of a setting in words, as errors and ROS descriptors state them."""
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta.get("lo"), meta.get("hi")
    left = "(" if meta.get("lo_open") else "["
    return f"in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def _check_value(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None:
        if value not in choices:
            raise ConfigError(f"{name} = {value!r}: must be {range_text(meta)}")
        return
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        lo, hi = meta.get("lo"), meta.get("hi")
        bad = (not math.isfinite(float(v))
               or (lo is not None and (v <= lo if meta.get("lo_open") else v < lo))
               or (hi is not None and v > hi))
        if bad:
            raise ConfigError(f"{name} = {value!r}: must be {range_text(meta)}")


class Section:
    """Mixin: validate every field against its metadata after construction."""

    _section: str = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
                value = tuple(value)
            _check_value(f"{self._section}.{f.name}", value, f.metadata)
        self.check()

    def check(self) -> None:
        """Cross-field checks; override where needed."""

    def fail(self, name: str, message: str) -> None:
        raise ConfigError(f"{self._section}.{name} = {getattr(self, name)!r}: {message}")


@dataclass(frozen=True)
class PlantConfig(Section):
    """The cart-pole: physical parameters, actuation, sampling and sensing (MC-PILCO benchmark)."""

    _section = "plant"
    cart_mass: float = setting(0.5, 0.0, None, lo_open=True, doc="cart mass m1 [kg]")
    pole_mass: float = setting(0.5, 0.0, None, lo_open=True, doc="pole mass m2 [kg]")
    pole_length: float = setting(0.5, 0.0, None, lo_open=True, doc="pole length l [m]")
    friction: float = setting(0.1, 0.0, None, doc="viscous cart friction b [N s/m]")
    gravity: float = setting(9.81, 0.0, None, lo_open=True, doc="gravity g [m/s^2]")
    u_max: float = setting(10.0, 0.0, None, lo_open=True, doc="force limit |u| <= u_max [N]")
    control_period: float = setting(0.05, 0.0, 1.0, lo_open=True, doc="Ts [s]")
    trial_duration: float = setting(3.0, 0.0, 600.0, lo_open=True, doc="length of one trial [s]")
    sensor_noise_std: float = setting(0.01, 0.0, None, doc="measurement noise std, all states")
    initial_state_std: float = setting(0.01, 0.0, None, doc="x0 ~ N(0, std^2 I), pole down")
    integrator_substeps: int = setting(10, 1, 1000, doc="RK4 substeps per control period")

    def check(self) -> None:
        if self.steps < 1:
            self.fail("trial_duration", "must cover at least one control_period")

    @property
    def steps(self) -> int:
        """Control steps per trial (transitions recorded)."""
        return int(round(self.trial_duration / self.control_period))


@dataclass(frozen=True)
class SuccessConfig(Section):
    """Swing-up success: over the last `window` s, |p| < p_tol and ||theta| - pi| < theta_tol."""

    _section = "success"
    window: float = setting(1.0, 0.0, None, lo_open=True, doc="final window checked [s]")
    p_tol: float = setting(0.1, 0.0, None, lo_open=True, doc="cart position tolerance [m]")
    theta_tol: float = setting(0.1, 0.0, None, lo_open=True, doc="angle tolerance to upright [rad]")


@dataclass(frozen=True)
class ModelConfig(Section):
    """Speed-integration GP model: kernel, hyperparameter fit and subset-of-data sparsification."""

    _section = "model"
    kernel: str = setting("se", choices=("se",), doc="GP kernel: squared-exponential ARD")
    fit_iterations: int = setting(200, 1, 100000,
                                  doc="L-BFGS iterations for the marginal likelihood")
    init_lengthscale: float = setting(1.0, 0.0, None, lo_open=True, doc="initial ARD lengthscales")
    init_signal_std: float = setting(1.0, 0.0, None, lo_open=True, doc="initial signal std")
    init_noise_std: float = setting(0.1, 0.0, None, lo_open=True, doc="initial noise std")
    min_noise_std: float = setting(1e-4, 0.0, None, lo_open=True, doc="floor on the noise std")
    train_signal_std: bool = setting(True, doc="fit the signal std (MC-PILCO fixes it at 1)")
    sod_threshold: float = setting(0.5, 0.0, None,
                                   doc="keep a point if posterior std > thr*sigma_n")
    max_points: int = setting(400, 1, 100000, doc="hard cap on the SoD subset size")


@dataclass(frozen=True)
class PolicyConfig(Section):
    """Squashed RBF policy pi(x) = u_max tanh(sum_i w_i phi_i(x) / u_max)."""

    _section = "policy"
    num_basis: int = setting(200, 1, 10000, doc="number of RBF centres")
    init_lengthscale: float = setting(1.0, 0.0, None, lo_open=True, doc="initial lengthscales")
    centre_range: float = setting(math.pi, 0.0, None, lo_open=True,
                                  doc="centres of (p, pdot, thetadot) ~ U(-r, r) at init")


@dataclass(frozen=True)
class CostConfig(Section):
    """Saturating swing-up cost c = 1 - exp(-(|theta|-pi)^2/l_theta^2 - p^2/l_p^2)."""

    _section = "cost"
    length_theta: float = setting(3.0, 0.0, None, lo_open=True, doc="angle lengthscale l_theta")
    length_p: float = setting(1.0, 0.0, None, lo_open=True, doc="position lengthscale l_p")


@dataclass(frozen=True)
class OptimizerConfig(Section):
    """MC-PILCO Monte Carlo policy optimisation (Adam, dropout, early-stopping monitor)."""

    _section = "optimizer"
    particles: int = setting(400, 1, 100000, doc="Monte Carlo particles M")
    horizon: int = setting(60, 1, 100000, doc="rollout horizon H in control steps")
    lr: float = setting(0.01, 0.0, 1.0, lo_open=True, doc="initial Adam learning rate")
    lr_min: float = setting(0.0025, 0.0, 1.0, lo_open=True, doc="lowest learning rate")
    dropout: float = setting(0.25, 0.0, 0.99, doc="initial dropout on the RBF activations")
    dropout_step: float = setting(0.125, 0.0, 1.0, doc="dropout reduction at each lr cut")
    max_steps_first: int = setting(2000, 1, 1000000, doc="max Adam steps, first learning trial")
    max_steps: int = setting(4000, 1, 1000000, doc="max Adam steps, later trials")
    monitor_alpha: float = setting(0.99, 0.0, 1.0, lo_open=True, doc="monitor filter alpha_s")
    monitor_sigma: float = setting(0.08, 0.0, None, lo_open=True, doc="monitor threshold sigma_s")
    monitor_sigma_min: float = setting(0.01, 0.0, None, lo_open=True, doc="floor on sigma_s")
    monitor_window: int = setting(200, 1, 1000000, doc="monitor window n_s")
    monitor_min_step: int = setting(200, 0, 1000000, doc="no decision before this step")
    divergence_ratio: float = setting(
        1.5, 0.0, None, doc="stop and restore the best policy once the windowed mean cost "
                            "exceeds this multiple of its best (0 = off)")
    divergence_window: int = setting(50, 1, 1000000,
                                     doc="steps in the windowed mean of the divergence guard")
    variance_rank_tol: float = setting(
        1e-3, 0.0, 1.0, doc="drop GP variance directions with eigenvalue <= tol*sigma_n^2 "
                            "(variance over-estimated by <= tol*sigma_f^2; 0 = exact)")
    dtype: str = setting("float32", choices=("float32", "float64"),
                         doc="particle rollout precision (models are fitted in float64)")
    threads: int = setting(0, 0, 1024,
                           doc="torch CPU threads for a learning run (0 = torch's default)")
    fit_threads: int = setting(
        0, 0, 1024, doc="torch CPU threads of the fits between trials, the GP hyperparameters' "
                        "and the warm start's pretraining: no rollout and no optimisation step "
                        "runs then, so the cores the particle workers share are free "
                        "(0 = optimizer.threads)")
    success_stop: float = setting(
        0.95, 0.0, 1.0, doc="stop once this share of the particles meets the success criterion "
                            "through the model (no dropout) at success_checks checks in a row; "
                            "0 = off (MC-PILCO's monitor alone)")
    success_check_every: int = setting(10, 1, 1000000,
                                       doc="optimisation steps between two success checks")
    success_checks: int = setting(3, 1, 1000,
                                  doc="checks in a row at or above success_stop that stop")
    success_stalls: int = setting(
        0, 0, 100, doc="with success_stop: stop at the monitor's n-th stall (its lr cut) when no "
                       "check has reached success_stop yet (0 = the monitor's whole schedule)")
    success_patience: int = setting(
        30, 0, 100000, doc="with success_stop: once a check predicted some success, stop after "
                           "this many checks in a row without a share above the best so far, "
                           "and in any case end on the policy of the best check if the last "
                           "one fell below it (0 = off)")
    particle_workers: int = setting(
        1, 1, 256, doc="threads that each roll out a share of the particles in an optimisation "
                       "step (CPU; the shares' gradients are joined into one)")
    device: str = setting("cpu", doc="torch device for the rollout: cpu, cuda, cuda:1, ...")
    backend: str = setting(
        "auto", choices=ROLLOUT_BACKENDS,
        doc="rollout gradient: native (compiled C kernel, float32 on the CPU, built at first "
            "use with the system C compiler), torch, or auto (native where it applies and "
            "builds, else torch)")

    def check(self) -> None:
        if self.lr_min > self.lr:
            self.fail("lr_min", f"must be <= optimizer.lr = {self.lr}")
        if 0.0 < self.divergence_ratio <= 1.0:
            self.fail("divergence_ratio", "must be 0 (off) or greater than 1")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            self.fail("device", "must be 'cpu' or 'cuda[:N]'")
        if self.backend == "native" and (self.dtype != "float32" or self.device != "cpu"):
            self.fail("backend", "'native' runs float32 on the cpu only: set optimizer.dtype "
                                 "float32 and optimizer.device cpu, or backend auto/torch")


@dataclass(frozen=True)
class ILQRConfig(Section):
    """iLQR weights and solver settings (the paper gives none of these: docs/ILQR.md)."""

    _section = "ilqr"
    q: tuple[float, ...] = setting(
        (1.0, 0.1, 5.0, 5.0, 0.1), 0.0, None,
        doc="running weights on e = [p, pdot, 1 + cos theta, sin theta, thetadot]")
    r: float = setting(0.01, 0.0, None, doc="running input weight R [1/N^2]")
    q_final: tuple[float, ...] = setting(
        (50.0, 5.0, 200.0, 200.0, 5.0), 0.0, None, doc="terminal weights Q_f on e(x_T)")
    hessian: str = setting("gauss_newton", choices=HESSIANS,
                           doc="cost Hessian wrt x: Gauss-Newton E^T Q E, or exact")
    track_limit: float = setting(0.0, 0.0, None,
                                 doc="[m] plans are penalised for |p| beyond this (a rig's "
                                     "track; inside its soft limits); 0 = no track")
    track_weight: float = setting(1.0e4, 0.0, None,
                                  doc="[1/m^2] weight W of 1/2 W (|p| - track_limit)^2 beyond "
                                      "the limit, at every step and the end")
    max_iterations: int = setting(100, 1, 100000, doc="outer iterations (backward+forward passes)")
    tolerance: float = setting(1e-6, 0.0, None, lo_open=True,
                               doc="converged when an accepted step changes J by less than this "
                                   "fraction of J, or predicts less")
    grad_tolerance: float = setting(1e-6, 0.0, None, lo_open=True,
                                    doc="converged when max_t |k_t| / u_max is below this")
    mu_init: float = setting(1.0, 0.0, None, doc="initial Levenberg-Marquardt mu (on V'_xx)")
    mu_min: float = setting(1e-6, 0.0, None, lo_open=True,
                            doc="mu snaps to 0 below this; increases restart from here")
    mu_max: float = setting(1e10, 0.0, None, lo_open=True,
                            doc="above this: ILQRError (backward pass) or stop (line search)")
    mu_factor: float = setting(1.6, 1.0, None, lo_open=True,
                               doc="base factor of Tassa's accelerating mu schedule")
    line_search_alphas: tuple[float, ...] = setting(
        (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625,
         0.001953125, 0.0009765625), 0.0, 1.0, lo_open=True,
        doc="step sizes tried on k, in order")
    accept_ratio: float = setting(0.1, 0.0, 1.0, lo_open=True,
                                  doc="accept a step when actual / expected reduction > this")
    symmetry_kick: float = setting(0.1, 0.0, None,
                                   doc="force [N] added to U_init when it is a stationary point "
                                       "(e.g. hanging at rest with U = 0); 0 disables")
    continuation_start: int = setting(
        25, 0, 100000, doc="cold starts solve this many steps first, then grow the horizon "
                           "(0: the full horizon at once)")
    continuation_step: int = setting(10, 1, 100000,
                                     doc="steps added per continuation stage (zero inputs)")
    fd_step: float = setting(1e-6, 0.0, None, lo_open=True,
                             doc="central-difference step of FiniteDifferenceDynamics")

    def check(self) -> None:
        for name in ("q", "q_final"):
            if len(getattr(self, name)) != ERROR_DIM:
                self.fail(name, f"needs {ERROR_DIM} weights (p, pdot, 1 + cos theta, sin theta, "
                                "thetadot)")
        if not self.mu_min <= self.mu_max:
            self.fail("mu_min", f"must be <= ilqr.mu_max = {self.mu_max}")
        if not self.mu_init <= self.mu_max:
            self.fail("mu_init", f"must be <= ilqr.mu_max = {self.mu_max}")
        alphas = self.line_search_alphas
        if not alphas or any(b >= a for a, b in zip(alphas, alphas[1:])):
            self.fail("line_search_alphas", "must be non-empty and strictly decreasing")


@dataclass(frozen=True)
class ExplorationConfig(Section):
    """EB-MC-PILCO's GP-iLQR exploration: plans executed on the system before MC-PILCO.

    Exploration noise (the paper's eq. 29 is not available; docs/ALGORITHM.md):
        sigma_t = u_max (noise_scale decay_rate^j + offset) sqrt(mean_i var_i(x_t, u_t) / sf_i^2)
    j = iteration index from 0, var_i the GP latent variance along the plan, sf_i^2 its prior.
    """

    _section = "exploration"
    iterations: int = setting(3, 0, 100, doc="max GP-iLQR rollouts (the paper fixes 3); one "
                                             "that max_deviation ended counts as the share of "
                                             "its steps it ran")
    match_tol: float = setting(0.25, 0.0, None,
                               doc="stop exploring once a rollout's RMS angle error to the plan "
                                   "is below this [rad] (0 disables the rule)")
    noise_scale: float = setting(0.3, 0.0, None, doc="noise at j = 0, fraction of u_max")
    decay_rate: float = setting(0.5, 0.0, 1.0, doc="noise decay per iteration")
    offset: float = setting(0.02, 0.0, None, doc="noise floor, fraction of u_max")
    warm_start: bool = setting(True, doc="start each iLQR from the previous plan's inputs")
    rollout_duration: float = setting(
        0.0, 0.0, 600.0, doc="length of a GP-iLQR rollout on the system [s]; the plan still "
                             "spans the whole trial (0, or plant.trial_duration or more: the "
                             "whole trial)")
    max_deviation: float = setting(
        1.0, 0.0, None, doc="a GP-iLQR rollout ends once its measured pole angle is further "
                            "than this from the plan's [rad]: the plan is lost, and its "
                            "feedback law drives the cart away (0 = never, as the paper)")

    def rollout_steps(self, plant: "PlantConfig") -> int:
        """Control steps of one GP-iLQR rollout (at least one)."""
        if self.rollout_duration <= 0.0:
            return plant.steps
        return max(1, min(plant.steps, int(round(self.rollout_duration / plant.control_period))))


@dataclass(frozen=True)
class PretrainConfig(Section):
    """Fitting the policy to the iLQR plans before MC-PILCO (EB-MC-PILCO's warm start)."""

    _section = "pretrain"
    method: str = setting("bayes", choices=("none", "mse", "bayes"),
                          doc="none, MSE fit, or Bayesian (marginal-likelihood) fit")
    every_trial: bool = setting(
        True, doc="before every policy trial, not only the first: re-plan on the current model, "
                  "pretrain a candidate, keep it if its model cost beats the current policy's")
    restart_after_failures: int = setting(
        3, 0, 1000, doc="with every_trial: the candidate replaces the policy without the cost "
                        "comparison once the policy has failed this many policy trials on the "
                        "system since it last came from a warm start (0 = on model cost only)")
    restart_on_predicted_failure: bool = setting(
        True, doc="with every_trial: the candidate replaces the policy without the cost "
                  "comparison once a policy trial failed whose optimisation ended with no "
                  "particle meeting the success criterion through the model (its last "
                  "optimizer.success_stop check at 0)")
    samples_per_step: int = setting(8, 0, 10000,
                                    doc="states drawn around each plan step (feedback targets)")
    perturbation: tuple[float, ...] = setting(
        (0.05, 0.2, 0.1, 0.4), 0.0, None, doc="std of those draws in p, pdot, theta, thetadot")
    steps: int = setting(500, 1, 1000000, doc="Adam steps of the fit (both methods)")
    lr: float = setting(0.01, 0.0, 1.0, lo_open=True, doc="Adam learning rate (mse)")
    squash_clip: float = setting(0.98, 0.0, 1.0, lo_open=True,
                                 doc="targets u/u_max clipped to this before atanh (bayes)")

    def check(self) -> None:
        if len(self.perturbation) != 4:
            self.fail("perturbation", "needs 4 values (p, pdot, theta, thetadot)")


@dataclass(frozen=True)
class LearnerConfig(Section):
    """The trial loop: which algorithm, how many trials, the random first trial, seeds."""

    _section = "learner"
    algorithm: str = setting("mc", choices=("mc", "eb"), doc="mc = MC-PILCO, eb = EB-MC-PILCO")
    max_trials: int = setting(6, 1, 1000, doc="rollouts on the system, all kinds counted")
    random_trials: int = setting(1, 0, 100, doc="initial trials with u ~ U(-u_max, u_max)")
    stop_on_success: bool = setting(True, doc="stop at the first successful rollout")
    seed: int = setting(1, 0, 2**31 - 1, doc="seed for every random draw of the run")


# Sections of the same YAML that other layers own (hardware driver, the simulated rig behind the
# firmware emulator and simulator, node settings); the learning core skips them, their owners
# validate them.
FOREIGN_SECTIONS = ("hardware", "emulator", "sim_plant", "execution", "nodes")

SECTIONS: dict[str, type] = {
    "plant": PlantConfig,
    "success": SuccessConfig,
    "model": ModelConfig,
    "policy": PolicyConfig,
    "cost": CostConfig,
    "optimizer": OptimizerConfig,
    "ilqr": ILQRConfig,
    "exploration": ExplorationConfig,
    "pretrain": PretrainConfig,
    "learner": LearnerConfig,
}


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one learning run needs; each part validated on construction."""

    plant: PlantConfig = field(default_factory=PlantConfig)
    success: SuccessConfig = field(default_factory=SuccessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ilqr: ILQRConfig = field(default_factory=ILQRConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)

    def replace(self, **overrides: Mapping[str, Any]) -> "ExperimentConfig":
        """A copy with some fields of some sections changed, e.g. replace(learner={"seed": 3})."""
        parts = {name: getattr(self, name) for name in SECTIONS}
        for name, values in overrides.items():
            if name not in SECTIONS:
                raise ConfigError(f"unknown config section {name!r}")
            parts[name] = build_section(name, {**dataclasses.asdict(parts[name]), **values})
        return ExperimentConfig(**parts)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


def _coerce(name: str, value: Any, f: dataclasses.Field) -> Any:
    """YAML gives ints where floats are meant, lists for tuples: accept those, refuse the rest."""
    kind = type(f.default) if f.default is not dataclasses.MISSING else tuple
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is tuple and isinstance(value, list):
        return tuple(value)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} = {value!r}: must be true or false")
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{name} = {value!r}: must be a number")
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{name} = {value!r}: must be an integer")
        return int(value)
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{name} = {value!r}: must be a string")
    return value


def section_from_mapping(cls: type, values: Mapping[str, Any] | None) -> Any:
    """Any Section dataclass from its mapping of parameters, validated; also what the hardware
    and node layers use for their own sections of the same file."""
    name = cls._section
    values = values or {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name}: must be a mapping of parameters")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown parameter (known: {', '.join(known)})")
    return cls(**{k: _coerce(f"{name}.{k}", v, known[k]) for k, v in values.items()})


def build_section(name: str, values: Mapping[str, Any]) -> Any:
    return section_from_mapping(SECTIONS[name], values)


def read_parameters(path: str | Path) -> Mapping[str, Any]:
    """The sections of a YAML config file, unwrapped from the ROS parameter-file layout."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: must hold a mapping of sections")
    return _ros_parameters(data)


def config_from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Build from a nested mapping; accepts the ROS parameter-file layout too."""
    data = _ros_parameters(data)
    unknown = sorted(set(data) - set(SECTIONS) - set(FOREIGN_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
    parts = {}
    for name in SECTIONS:
        values = data.get(name) or {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"{name}: must be a mapping of parameters")
        parts[name] = build_section(name, values)
    return ExperimentConfig(**parts)


def _ros_parameters(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Unwrap `<node or /**>: ros__parameters: {...}`; merges all node entries in file order."""
    if not data:
        return {}
    if all(isinstance(v, Mapping) and "ros__parameters" in v for v in data.values()):
        merged: dict[str, Any] = {}
        for entry in data.values():
            for section, values in (entry["ros__parameters"] or {}).items():
                if section in SECTIONS or section in FOREIGN_SECTIONS:
                    merged.setdefault(section, {}).update(values or {})
        return merged
    return data


def load_config(path: str | Path, **overrides: Mapping[str, Any]) -> ExperimentConfig:
    """Read a YAML config; `overrides` per section, e.g. learner={"seed": 2}."""
    config = config_from_dict(read_parameters(path))
    return config.replace(**overrides) if overrides else config


def config_dir() -> Path:
    """The installed share/<pkg>/config when ament knows the package, else the source tree's."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("ebmcpilco_ros")) / "config"
        if installed.is_dir():
            return installed
    except Exception:  # noqa: BLE001 - not installed through ament: use the source tree
        pass
    return Path(__file__).resolve().parents[2] / "config"


def find_config(name_or_path: str) -> Path:
    """A path as given, or a config name such as 'paper_cartpole' looked up in config_dir()."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = config_dir() / (path.name if path.suffix else f"{path.name}.yaml")
    if candidate.exists():
        return candidate
    raise ConfigError(f"config {name_or_path!r} not found (looked in {config_dir()})")
