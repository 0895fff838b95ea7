"""`ebmcpilco report RUN`: plots, an animation and a markdown summary of one run directory.

Reading (no drawing, no ROS): `read_run` turns a run directory as the trial manager writes it
(docs/NODES.md: config.json, trials/trial_NNN.json, models/, controllers/, report.json,
checkpoint.json, log.jsonl) into plain dataclasses; `predict_trial` propagates the model fitted
before a trial with the trial's recorded inputs from its first state (particles through
`core.rollout.ParticleDynamics`, as MC-PILCO's rollout does). Drawing (matplotlib, Agg):
`plot_*`, `animate_trial`, and `write_report`, which writes them all and `report.md` into
RUN/report/ (or another folder).

What a run directory holds and does not: the MC-PILCO policy optimisation's cost at every step
(`costs` of each controller update; `opt_costs` in report.json and checkpoint.json), but of
GP-iLQR and of the pretraining only the final figures (plan cost and iterations, RMS errors) and
wall times: their per-iteration costs are not stored (the optimiser's progress events in
log.jsonl name the stage as it starts and MC-PILCO's step and cost every nodes.progress_period).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..core.cartpole import P, THETA, wrap_angle
from ..core.config import SECTIONS, ConfigError, ExperimentConfig, build_section
from ..core.trial import Trial, swing_up_success

if TYPE_CHECKING:
    from ..core.learner import LearningReport

END_EVENTS = ("run_done", "failed", "aborted")
STATE_NAMES = ("p [m]", "pdot [m/s]", "theta [rad]", "thetadot [rad/s]")
KIND_COLOURS = {"random": "tab:gray", "ilqr": "tab:orange", "policy": "tab:blue"}
MAX_GIF_FRAMES = 400  # longer trials are subsampled (every k-th state, the last one kept)


class ReportError(ValueError):
    """A path that is not a run directory, or one with nothing to report."""


# -- reading ---------------------------------------------------------------------------------

@dataclass
class TrialRecord:
    """One trial of the run: its record and its summary (from the run's files, else computed)."""

    index: int
    kind: str
    failed: bool
    outcome: str            # finished, aborted, failed (meta.outcome), '' where not recorded
    times: np.ndarray       # (T+1,) from 0
    states: np.ndarray      # (T+1, 4) measured
    inputs: np.ndarray      # (T,) applied forces
    true_states: np.ndarray | None
    cost: float
    success: bool
    opt_steps: int = 0
    model_points: tuple[int, ...] = ()
    wall_s: dict[str, float] = field(default_factory=dict)
    predicted_cost: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    written: float = math.inf   # when its file was written (st_mtime), for the run's order

    def trial(self) -> Trial:
        return Trial(states=self.states, inputs=self.inputs, times=self.times, kind=self.kind,
                     index=self.index, true_states=self.true_states, failed=self.failed)


@dataclass
class ModelRecord:
    """One model update (models/model_vNNN.json): the trials it was fitted on and the model."""

    version: int
    trial_indices: tuple[int, ...]
    points: tuple[int, ...]
    fit_s: float | None
    model: dict[str, Any]   # ebmcpilco.model/1 (core.model.SpeedIntegrationModel.from_dict)
    written: float = 0.0    # st_mtime: a node restarted within a run counts from v1 again


@dataclass
class ControllerRecord:
    """One controller update (controllers/controller_vNNN.json): what the optimiser did."""

    version: int
    model_version: int | None
    phase: str              # ilqr, policy
    opt_steps: int
    costs: list[float]      # MC-PILCO cost at every optimisation step (policy phase)
    wall_s: dict[str, float]
    info: dict[str, Any]
    predicted_states: np.ndarray | None  # the iLQR plan's nominal states (ilqr phase)
    written: float = 0.0    # st_mtime


@dataclass
class RunData:
    """Everything `write_report` draws, read from one run directory."""

    path: Path
    run_id: str
    config: ExperimentConfig
    trials: list[TrialRecord]
    models: list[ModelRecord]
    controllers: list[ControllerRecord]
    outcome: str            # run_done, failed, aborted, or 'no end' (running or died)
    reason: str
    wall_s: dict[str, float]
    opt_costs: list[list[float]]
    notes: list[str] = field(default_factory=list)

    def learning_report(self) -> "LearningReport":
        """The core's report of these trials (solved, trials to solve, interaction time)."""
        from ..core.learner import LearningReport, TrialSummary

        summaries = [TrialSummary(index=t.index, kind=t.kind, success=t.success, cost=t.cost,
                                  duration_s=float(t.times[-1] - t.times[0]) if len(t.times)
                                  else 0.0, opt_steps=t.opt_steps) for t in self.trials]
        return LearningReport(algorithm=self.config.learner.algorithm,
                              seed=self.config.learner.seed, trials=summaries,
                              opt_costs=self.opt_costs, wall_s=self.wall_s)


def _read_json(path: Path, notes: list[str]) -> Any:
    """A JSON file's content; None (and a note) where it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name}: unreadable ({exc}); ignored")
        return None


def _read_config(data: Any, notes: list[str]) -> ExperimentConfig:
    """The run's configuration; settings this version does not know are left out (a note says
    which), a section it refuses falls back to its defaults."""
    parts: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        values = data.get(name) if isinstance(data, dict) else None
        if not isinstance(values, dict):
            continue
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            notes.append(f"config.json: {name}.{', '.join(unknown)} unknown here; ignored")
        try:
            parts[name] = build_section(name, {k: v for k, v in values.items() if k in known})
        except ConfigError as exc:
            notes.append(f"config.json: {exc}; the defaults of {name} used")
    return ExperimentConfig(**parts)


def _trial_index(key: Any) -> int | None:
    """The trial index of a fit request's key `<run_id>/<index>[/<request_id>]`."""
    parts = str(key).split("/")
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def _summaries(path: Path, notes: list[str]) -> tuple[dict[int, dict], dict[str, Any]]:
    """Trial summaries by index and the run's report: report.json, else checkpoint.json, else
    the trial_done events of log.jsonl."""
    report = _read_json(path / "report.json", notes)
    if isinstance(report, dict) and isinstance(report.get("trials"), list):
        return {int(s["index"]): s for s in report["trials"]}, report
    checkpoint = _read_json(path / "checkpoint.json", notes)
    learner = checkpoint.get("learner") if isinstance(checkpoint, dict) else None
    if isinstance(learner, dict) and isinstance(learner.get("summaries"), list):
        return ({int(s["index"]): s for s in learner["summaries"]},
                {"opt_costs": learner.get("opt_costs", []), "wall_s": learner.get("totals", {})})
    return {int(e["trial"]["index"]): e["trial"] for e in read_log(path)
            if e.get("event") == "trial_done" and isinstance(e.get("trial"), dict)}, {}


def read_log(path: Path) -> list[dict[str, Any]]:
    """log.jsonl's entries (a line a crash cut short is skipped)."""
    try:
        lines = (path / "log.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _outcome(path: Path) -> tuple[str, str]:
    """How the run ended: the last end event after the last start in log.jsonl."""
    ended: dict[str, Any] | None = None
    for entry in read_log(path):
        if entry.get("event") == "started_learning":
            ended = None
        elif entry.get("event") in END_EVENTS:
            ended = entry
    if ended is None:
        return "no end", "no end event in log.jsonl: still running, or died"
    return str(ended["event"]), str(ended.get("reason", ""))


def _trial_record(data: dict[str, Any], summary: dict[str, Any] | None,
                  config: ExperimentConfig) -> TrialRecord:
    trial = Trial.from_dict(data)
    if summary is not None:
        cost, success = float(summary["cost"]), bool(summary["success"])
    else:  # as the Learner computes them
        from ..core.cost import trajectory_cost

        cost = trajectory_cost(trial.true_states if trial.true_states is not None
                               else trial.states, config.cost)
        success = swing_up_success(trial, config.success)
    s = summary or {}
    return TrialRecord(
        index=trial.index, kind=trial.kind, failed=trial.failed,
        outcome=str(trial.meta.get("outcome", "")), times=trial.times - trial.times[0],
        states=trial.states, inputs=trial.inputs, true_states=trial.true_states,
        cost=cost, success=success, opt_steps=int(s.get("opt_steps", 0)),
        model_points=tuple(s.get("model_points", ())), wall_s=dict(s.get("wall_s", {})),
        predicted_cost=s.get("predicted_cost"), info=dict(s.get("info", {})))


def _versioned(path: Path, pattern: str, notes: list[str]
               ) -> list[tuple[dict[str, Any], float]]:
    """Each update file's payload and when it was written (model_vNNN.json, and after a node
    restarted within the run model_vNNN-<request>.json: versions repeat, the order is the
    files')."""
    out = []
    for file in sorted(path.glob(pattern)):
        data = _read_json(file, notes)
        if isinstance(data, dict):
            out.append((data, file.stat().st_mtime))
    return out


def read_run(path: str | Path) -> RunData:
    """A run directory read into plain data; ReportError naming the path if it is none."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ReportError(f"{path} is not a run directory (no such directory)")
    if not (path / "config.json").is_file():
        raise ReportError(f"{path} is not a run directory (no config.json)")
    notes: list[str] = []
    config = _read_config(_read_json(path / "config.json", notes), notes)
    summaries, report = _summaries(path, notes)
    trials = []
    for file in sorted((path / "trials").glob("trial_*.json")):
        data = _read_json(file, notes)
        try:
            index = int(data["index"]) if isinstance(data, dict) else -1
            trials.append(dataclasses.replace(_trial_record(data, summaries.get(index), config),
                                              written=file.stat().st_mtime))
        except (ValueError, KeyError, TypeError) as exc:
            notes.append(f"trials/{file.name}: not a trial record ({exc}); left out")
    if not trials:
        raise ReportError(f"{path}: a run directory with no trials (no trials/trial_NNN.json)")
    trials.sort(key=lambda t: t.index)
    models = []
    for m, written in _versioned(path / "models", "model_v*.json", notes):
        indices = tuple(i for i in map(_trial_index, m.get("trials", [])) if i is not None)
        if isinstance(m.get("model"), dict):
            models.append(ModelRecord(version=int(m.get("version", 0)), trial_indices=indices,
                                      points=tuple(m.get("points", ())), fit_s=m.get("fit_s"),
                                      model=m["model"], written=written))
    controllers = []
    for c, written in _versioned(path / "controllers", "controller_v*.json", notes):
        plan = c.get("predicted_states")
        controllers.append(ControllerRecord(
            version=int(c.get("version", 0)), model_version=c.get("model_version"),
            phase=str(c.get("phase", "")), opt_steps=int(c.get("opt_steps", 0)),
            costs=[float(x) for x in c.get("costs") or []], wall_s=dict(c.get("wall_s", {})),
            info=dict(c.get("info", {})),
            predicted_states=np.asarray(plan, dtype=float) if plan is not None else None,
            written=written))
    outcome, reason = _outcome(path)
    opt_costs = [list(map(float, c)) for c in report.get("opt_costs", [])]
    if not opt_costs:
        opt_costs = [c.costs for c in controllers if c.phase == "policy"]
    return RunData(path=path, run_id=path.name, config=config, trials=trials, models=models,
                   controllers=controllers, outcome=outcome, reason=reason,
                   wall_s={k: float(v) for k, v in report.get("wall_s", {}).items()},
                   opt_costs=opt_costs, notes=notes)


def _recorded(run: RunData, index: int) -> float:
    """When trial `index`'s record was written (inf if it has none)."""
    return next((t.written for t in run.trials if t.index == index), math.inf)


def model_before(run: RunData, index: int) -> ModelRecord | None:
    """The model fitted before trial `index`: on the trials before it, the last one written
    before the trial's record (a resumed run fits the same trials again)."""
    fits = [m for m in run.models if m.trial_indices and max(m.trial_indices) == index - 1
            and m.written <= _recorded(run, index)]
    return max(fits, key=lambda m: (m.written, m.version)) if fits else None


def controller_of(run: RunData, index: int) -> ControllerRecord | None:
    """The controller update trial `index` ran: optimised on the model before it, the last
    one written between that model and the trial's record."""
    model = model_before(run, index)
    if model is None:
        return None
    matches = [c for c in run.controllers if c.model_version == model.version
               and model.written <= c.written <= _recorded(run, index)]
    return max(matches, key=lambda c: (c.written, c.version)) if matches else None


def best_trial(run: RunData) -> TrialRecord:
    """The lowest-cost successful trial, else the lowest-cost one that did not fail."""
    pool = ([t for t in run.trials if t.success] or [t for t in run.trials if not t.failed]
            or run.trials)
    return min(pool, key=lambda t: t.cost)


@dataclass
class Prediction:
    """A model's prediction of one trial: particles propagated with the trial's inputs."""

    trial_index: int
    model_version: int
    model_points: tuple[int, ...]
    particles: int
    mean: np.ndarray        # (T+1, 4)
    std: np.ndarray         # (T+1, 4)


def predict_trial(trial: TrialRecord, model: ModelRecord, particles: int = 200,
                  seed: int = 0) -> Prediction:
    """Propagate `model` from the trial's first state with its recorded inputs (open loop):
    `particles` particles through the core's particle step (GP mean plus a draw with the GP's
    variance each step, MC-PILCO eq. 17), in float64; their mean and standard deviation."""
    import torch

    from ..core.model import SpeedIntegrationModel
    from ..core.policy import state_features
    from ..core.rollout import ParticleDynamics

    gp_model = SpeedIntegrationModel.from_dict(model.model)
    dynamics = ParticleDynamics.from_model(gp_model, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    eps = torch.as_tensor(rng.standard_normal((trial.inputs.size, particles, 2)))
    x = torch.as_tensor(trial.states[0], dtype=torch.float64).repeat(particles, 1)
    path = [x]
    with torch.no_grad():
        for t, u in enumerate(trial.inputs):
            x = dynamics.step(x, state_features(x),
                              torch.full((particles,), float(u), dtype=torch.float64), eps[t])
            path.append(x)
    xs = torch.stack(path).numpy()
    return Prediction(trial_index=trial.index, model_version=model.version,
                      model_points=tuple(gp.size for gp in gp_model.gps), particles=particles,
                      mean=xs.mean(axis=1), std=xs.std(axis=1))


# -- drawing ---------------------------------------------------------------------------------

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _kind_legend(ax: Any, kinds: Sequence[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=KIND_COLOURS.get(k, "tab:purple"), label=k)
               for k in dict.fromkeys(kinds)]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=8)


def plot_cost_per_trial(run: RunData, path: Path) -> Path:
    """Bars: each trial's cost, coloured by kind; a star above a successful trial, an x above a
    failed one; a diamond at the cost the optimiser's model predicted for a policy trial."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    idx = [t.index for t in run.trials]
    costs = [t.cost for t in run.trials]
    ax.bar(idx, costs, color=[KIND_COLOURS.get(t.kind, "tab:purple") for t in run.trials])
    top = max(costs) if costs else 1.0
    for t in run.trials:
        if t.success:
            ax.plot(t.index, t.cost + 0.04 * top, "*", color="tab:green", ms=14)
        if t.failed:
            ax.plot(t.index, t.cost + 0.04 * top, "x", color="tab:red", ms=10, mew=2)
    pred = [(t.index, t.predicted_cost) for t in run.trials if t.predicted_cost is not None]
    if pred:
        ax.plot(*zip(*pred), "D", color="k", ms=6, label="model's predicted cost")
    ax.plot([], [], "*", color="tab:green", ms=12, label="swing-up solved")
    if any(t.failed for t in run.trials):
        ax.plot([], [], "x", color="tab:red", ms=10, mew=2, label="trial failed")
    ax.set_xticks(idx)
    ax.set_xlabel("trial")
    ax.set_ylabel("cost (sum of c(x_t) over the trial)")
    ax.set_ylim(0, top * 1.15)
    ax.set_title(f"{run.run_id}: cost per trial")
    ax.grid(axis="y", alpha=0.3)
    _kind_legend(ax, [t.kind for t in run.trials])
    fig.tight_layout()
    return _save(fig, path)


def plot_optimisation(run: RunData, path: Path) -> Path:
    """Stage by stage: MC-PILCO's cost at each step (one curve per policy trial, its real cost
    dashed), GP-iLQR's final plan cost per exploration trial, the pretraining's final errors,
    and the wall time of each stage per trial."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    policy_trials = [t for t in run.trials if t.kind == "policy"]
    for i, costs in enumerate(run.opt_costs):
        colour = f"C{i % 10}"
        trial = policy_trials[i] if i < len(policy_trials) else None
        label = f"trial {trial.index}" if trial is not None else f"policy round {i}"
        ax.plot(np.arange(1, len(costs) + 1), costs, lw=0.9, color=colour, label=label)
        if trial is not None:
            ax.axhline(trial.cost, color=colour, ls="--", lw=0.8)
    if run.opt_costs:
        ax.plot([], [], "k--", lw=0.8, label="cost on the system")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no policy optimisation in this run", ha="center",
                transform=ax.transAxes)
    ax.set_title("policy (MC-PILCO): model cost J per optimisation step")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("J (particle mean)")
    ax.grid(alpha=0.3)

    ax = axes[0][1]
    explore = [(t, controller_of(run, t.index)) for t in run.trials if t.kind == "ilqr"]
    points = [(t.index, c.info["ilqr_cost"], c.info.get("ilqr_iterations")) for t, c in explore
              if c is not None and "ilqr_cost" in c.info]
    if points:
        ax.bar([p[0] for p in points], [p[1] for p in points], color=KIND_COLOURS["ilqr"])
        for i, cost, its in points:
            ax.annotate(f"{its} it." if its is not None else "", (i, cost), ha="center",
                        va="bottom", fontsize=8)
        ax.set_xticks([p[0] for p in points])
    else:
        ax.text(0.5, 0.5, "no GP-iLQR exploration in this run", ha="center",
                transform=ax.transAxes)
    ax.set_title("GP-iLQR exploration: final plan cost (per-iteration costs not stored)",
                 fontsize=9)
    ax.set_xlabel("trial")
    ax.set_ylabel("plan cost (iLQR cost)")
    ax.grid(axis="y", alpha=0.3)

    ax = axes[1][0]
    pre = [t for t in run.trials if "pretrain_rms_error" in t.info]
    if pre:
        x = np.array([t.index for t in pre], dtype=float)
        ax.bar(x - 0.2, [t.info["pretrain_rms_error"] for t in pre], 0.4,
               label="RMS error, perturbed states")
        ax.bar(x + 0.2, [t.info.get("pretrain_nominal_error", np.nan) for t in pre], 0.4,
               label="RMS error, plan's states")
        for t in pre:
            ax.annotate(str(t.info.get("warm_start", "")), (t.index, 0), ha="center",
                        va="bottom", fontsize=8, color="w")
        ax.set_xticks(x)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no pretraining in this run", ha="center", transform=ax.transAxes)
    ax.set_title("pretraining on the iLQR plan: final error (per-step losses not stored)",
                 fontsize=9)
    ax.set_xlabel("trial")
    ax.set_ylabel("pi(x) - u [N]")
    ax.grid(axis="y", alpha=0.3)

    ax = axes[1][1]
    stages = [s for s in ("model", "ilqr", "pretrain", "policy")
              if any(s in t.wall_s for t in run.trials)]
    bottom = np.zeros(len(run.trials))
    idx = [t.index for t in run.trials]
    for stage in stages:
        values = np.array([t.wall_s.get(stage, 0.0) for t in run.trials])
        ax.bar(idx, values, bottom=bottom, label=stage)
        bottom += values
    ax.set_xticks(idx)
    ax.set_title("wall time before each trial, by stage")
    ax.set_xlabel("trial")
    ax.set_ylabel("s")
    ax.grid(axis="y", alpha=0.3)
    if stages:
        ax.legend(fontsize=8)
    fig.suptitle(f"{run.run_id}: optimisation, stage by stage")
    fig.tight_layout()
    return _save(fig, path)


def plot_prediction(run: RunData, trial: TrialRecord, prediction: Prediction | None,
                    path: Path) -> Path:
    """The trial's four states (and the force) against the model's prediction: particle mean
    and a band of +-2 standard deviations; the iLQR plan's nominal states where it ran one."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 2, figsize=(10, 8), sharex=True)
    t = trial.times
    plan = None
    controller = controller_of(run, trial.index)
    if controller is not None and controller.predicted_states is not None:
        plan = controller.predicted_states
    for k, ax in enumerate([axes[0][0], axes[1][0], axes[0][1], axes[1][1]]):
        if prediction is not None:
            m, s = prediction.mean[:, k], prediction.std[:, k]
            ax.fill_between(t, m - 2 * s, m + 2 * s, color="tab:blue", alpha=0.25,
                            label="model: mean +- 2 std")
            ax.plot(t, m, color="tab:blue", lw=1.2, label="model: particle mean")
        if plan is not None and len(plan) == len(t):
            ax.plot(t, plan[:, k], color="tab:orange", ls="--", lw=1,
                    label="iLQR plan (nominal)")
        ax.plot(t, trial.states[:, k], color="k", lw=1.4, label="recorded")
        seen = [trial.states[:, k]] + ([prediction.mean[:, k]] if prediction else [])
        lo, hi = min(map(np.min, seen)), max(map(np.max, seen))
        pad = 0.25 * max(hi - lo, 1e-3)
        ax.set_ylim(lo - pad, hi + pad)  # a band that grows past the trial's range is cut
        if k == 2:
            for level in (-math.pi, math.pi):
                ax.axhline(level, color="tab:green", lw=0.6, ls=":")
        ax.set_ylabel(STATE_NAMES[k])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    ax = axes[2][0]
    ax.stairs(trial.inputs, t, baseline=None, color="tab:red", lw=1.2)
    ax.set_ylabel("u [N] (applied)")
    ax.set_xlabel("t [s]")
    ax.grid(alpha=0.3)
    ax = axes[2][1]
    ax.axis("off")
    if prediction is not None:
        about = (f"model v{prediction.model_version} (GP points "
                 f"{', '.join(map(str, prediction.model_points))}), fitted on the trials "
                 f"before this one;\n{prediction.particles} particles from the trial's first "
                 f"state,\ndriven open loop by its recorded inputs")
    else:
        about = "no model was fitted before this trial:\nrecorded states only"
    ax.text(0, 0.9, f"trial {trial.index} ({trial.kind}): cost {trial.cost:.2f}, "
            f"{'solved' if trial.success else 'not solved'}"
            + (", FAILED" if trial.failed else "") + "\n\n" + about,
            va="top", fontsize=9, transform=ax.transAxes)
    axes[2][1].set_xlabel("t [s]")
    fig.suptitle(f"{run.run_id}: trial {trial.index} against the model's prediction")
    fig.tight_layout()
    return _save(fig, path)


def _window_errors(trial: TrialRecord, run: RunData) -> tuple[float, float]:
    """max |p| / p_tol and max ||theta| - pi| / theta_tol over the success window (the
    criterion holds when both are below 1)."""
    crit = run.config.success
    x = trial.true_states if trial.true_states is not None else trial.states
    window = trial.times >= trial.times[-1] - crit.window - 1e-9
    theta = wrap_angle(x[window, THETA])
    return (float(np.max(np.abs(x[window, P]))) / crit.p_tol,
            float(np.max(np.abs(np.abs(theta) - np.pi))) / crit.theta_tol)


def plot_success(run: RunData, path: Path) -> Path:
    """Top: solved or not per trial, coloured by kind. Bottom: how far each trial was from the
    criterion over its final window (largest |p| and angle error, as multiples of the
    tolerances: below 1 is inside)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 2]})
    idx = [t.index for t in run.trials]
    top.bar(idx, [1.0 if t.success else 0.0 for t in run.trials],
            color=[KIND_COLOURS.get(t.kind, "tab:purple") for t in run.trials])
    for t in run.trials:
        top.text(t.index, 0.5 if t.success else 0.05,
                 "solved" if t.success else ("failed" if t.failed else "no"), ha="center",
                 fontsize=8, color="w" if t.success else "k")
    top.set_yticks([0, 1], ["no", "yes"])
    top.set_ylim(0, 1.1)
    top.set_title(f"{run.run_id}: swing-up solved per trial")
    _kind_legend(top, [t.kind for t in run.trials])
    errors = np.array([_window_errors(t, run) for t in run.trials])
    x = np.array(idx, dtype=float)
    crit = run.config.success
    bottom.bar(x - 0.2, errors[:, 0], 0.4, label=f"max |p| / {crit.p_tol:g} m")
    bottom.bar(x + 0.2, errors[:, 1], 0.4,
               label=f"max ||theta| - pi| / {crit.theta_tol:g} rad")
    bottom.axhline(1.0, color="tab:green", lw=1.2, label="tolerance")
    bottom.set_yscale("log")
    bottom.set_ylabel(f"over the last {crit.window:g} s")
    bottom.set_xlabel("trial")
    bottom.set_xticks(idx)
    bottom.legend(fontsize=8)
    bottom.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def gif_frames(states: int, max_frames: int = MAX_GIF_FRAMES) -> list[int]:
    """The states drawn: all of them up to `max_frames`, else every k-th and the last."""
    step = max(1, math.ceil(states / max_frames))
    frames = list(range(0, states, step))
    if frames[-1] != states - 1:
        frames.append(states - 1)
    return frames


def animate_trial(run: RunData, trial: TrialRecord, path: Path,
                  max_frames: int = MAX_GIF_FRAMES) -> Path:
    """A GIF of the trial drawn from its recorded states: cart, pole, the force applied during
    the step (arrow, scaled to plant.u_max) and the time; one frame per recorded state at the
    control rate (subsampled above `max_frames`, in real time still)."""
    plt = _pyplot()
    from matplotlib.animation import FuncAnimation, PillowWriter
    from matplotlib.patches import FancyArrow, Rectangle

    plant = run.config.plant
    length, u_max = plant.pole_length, plant.u_max
    frames = gif_frames(len(trial.states), max_frames)
    p = trial.states[:, P]
    x_lo, x_hi = min(p.min(), -0.5) - length - 0.2, max(p.max(), 0.5) + length + 0.2
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(-length - 0.25, length + 0.3)
    ax.set_aspect("equal")
    ax.axhline(0.0, color="0.6", lw=1)
    ax.set_xlabel("p [m]")
    ax.set_yticks([])
    cart_w, cart_h = 0.2, 0.1
    cart = Rectangle((0, -cart_h / 2), cart_w, cart_h, color="tab:blue", zorder=3)
    ax.add_patch(cart)
    (pole,) = ax.plot([], [], color="tab:brown", lw=4, solid_capstyle="round", zorder=4)
    (trail,) = ax.plot([], [], color="tab:brown", lw=0.6, alpha=0.4)
    label = ax.text(0.01, 0.97, "", transform=ax.transAxes, va="top", fontsize=9)
    arrow: list[Any] = []
    ax.set_title(f"{run.run_id}: trial {trial.index} ({trial.kind}), cost {trial.cost:.2f}",
                 fontsize=9)
    tips = np.stack([p + length * np.sin(trial.states[:, THETA]),
                     -length * np.cos(trial.states[:, THETA])], axis=1)

    def draw(k: int) -> list[Any]:
        x, theta = trial.states[k, P], trial.states[k, THETA]
        cart.set_x(x - cart_w / 2)
        pole.set_data([x, tips[k, 0]], [0.0, tips[k, 1]])
        trail.set_data(tips[: k + 1, 0], tips[: k + 1, 1])
        for a in arrow:
            a.remove()
        arrow.clear()
        u = float(trial.inputs[k]) if k < len(trial.inputs) else 0.0  # none after x_T
        if abs(u) > 1e-3:
            dx = 0.4 * u / u_max
            start = x + math.copysign(cart_w / 2, u)
            arrow.append(ax.add_patch(FancyArrow(start, 0.0, dx, 0.0, width=0.02,
                                                 head_width=0.06, head_length=0.04,
                                                 length_includes_head=False,
                                                 color="tab:red", zorder=5)))
        force = f"{u:+.1f} N" if k < len(trial.inputs) else "-"
        label.set_text(f"t = {trial.times[k]:.2f} s   u = {force}   "
                       f"theta = {math.degrees(theta):.0f} deg")
        return [cart, pole, trail, label, *arrow]

    period = (float(trial.times[-1]) / (len(trial.times) - 1) if len(trial.times) > 1
              else plant.control_period)
    stride = frames[1] - frames[0] if len(frames) > 1 else 1
    fps = 1.0 / (period * stride)
    fig.tight_layout()
    animation = FuncAnimation(fig, draw, frames=frames, blit=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    animation.save(str(path), writer=PillowWriter(fps=fps), dpi=80)
    plt.close(fig)
    return path


# -- the report ------------------------------------------------------------------------------

@dataclass
class ReportFiles:
    """What `write_report` wrote."""

    directory: Path
    markdown: Path
    cost_per_trial: Path
    optimisation: Path
    success: Path
    predictions: list[Path]
    animation: Path
    animated_trial: int

    def all(self) -> list[Path]:
        return [self.markdown, self.cost_per_trial, self.optimisation, self.success,
                *self.predictions, self.animation]


def _headline(run: RunData) -> list[str]:
    rep = run.learning_report()
    best = best_trial(run)
    outcome = {"run_done": "finished", "failed": f"failed: {run.reason}",
               "aborted": f"aborted: {run.reason}"}.get(run.outcome, run.reason)
    solved = (f"**solved** after {rep.trials_to_solve} trials, {rep.interaction_s:.1f} s of "
              f"interaction" if rep.solved else
              f"**not solved** in {len(run.trials)} trials ({rep.interaction_s:.1f} s of "
              f"interaction)")
    lines = [f"- run: {outcome}; {solved}",
             f"- algorithm: {run.config.learner.algorithm}, seed {run.config.learner.seed}; "
             f"{sum(t.opt_steps for t in run.trials)} policy optimisation steps",
             f"- best trial: {best.index} ({best.kind}), cost {best.cost:.2f}"]
    if run.wall_s:
        lines.append("- wall time: " + ", ".join(f"{k} {v:.1f} s"
                                                 for k, v in run.wall_s.items()))
    return lines


def _markdown(run: RunData, files: ReportFiles, predictions: dict[int, Prediction]) -> str:
    rel = files.directory
    lines = [f"# Run {run.run_id}", "", f"`{run.path}`", "", *_headline(run), "",
             "| trial | kind | cost | solved | optimisation steps | GP points | model before |",
             "|---|---|---|---|---|---|---|"]
    for t in run.trials:
        pred = predictions.get(t.index)
        lines.append(f"| {t.index} | {t.kind}{' (failed)' if t.failed else ''} | {t.cost:.2f} "
                     f"| {'yes' if t.success else 'no'} | {t.opt_steps} | "
                     f"{', '.join(map(str, t.model_points)) or '-'} | "
                     f"{f'v{pred.model_version}' if pred else '-'} |")
    lines += ["", "## Cost per trial", "",
              f"![cost per trial]({files.cost_per_trial.relative_to(rel)})", "",
              "Bars coloured by the trial's kind; a star marks a solved swing-up, a diamond the "
              "cost the model predicted for a policy trial (the optimiser's last step).", "",
              "## Optimisation, stage by stage", "",
              f"![optimisation]({files.optimisation.relative_to(rel)})", "",
              "The run directory stores MC-PILCO's cost at every optimisation step (the "
              "controller updates' `costs`), but of GP-iLQR and of the pretraining only their "
              "final figures and wall times: their per-iteration costs are not stored.", "",
              "## Success per trial", "", f"![success]({files.success.relative_to(rel)})", "",
              "## Each trial against the model's prediction", "",
              "The model fitted on the trials before each one, propagated from the trial's "
              "first recorded state with its recorded (applied) inputs, open loop: particles "
              "through the GP speed-integration model, mean and +-2 standard deviations.", ""]
    for p in files.predictions:
        lines += [f"![{p.stem}]({p.relative_to(rel)})", ""]
    lines += [f"## Trial {files.animated_trial}, animated", "",
              f"![trial {files.animated_trial}]({files.animation.relative_to(rel)})", "",
              "Drawn from the recorded (measured) states, one frame per control step; the red "
              "arrow is the force applied during the step.", ""]
    if run.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in run.notes], ""]
    return "\n".join(lines)


def write_report(run_path: str | Path, out: str | Path | None = None,
                 particles: int = 200) -> ReportFiles:
    """Every plot, the GIF of the best trial and report.md into `out` (default RUN/report)."""
    run = read_run(run_path)
    directory = Path(out).expanduser() if out is not None else run.path / "report"
    directory.mkdir(parents=True, exist_ok=True)
    predictions: dict[int, Prediction] = {}
    prediction_files = []
    for trial in run.trials:
        model = model_before(run, trial.index)
        if model is not None:
            predictions[trial.index] = predict_trial(trial, model, particles)
        prediction_files.append(plot_prediction(
            run, trial, predictions.get(trial.index),
            directory / f"trial_{trial.index:03d}_prediction.png"))
    best = best_trial(run)
    files = ReportFiles(
        directory=directory, markdown=directory / "report.md",
        cost_per_trial=plot_cost_per_trial(run, directory / "cost_per_trial.png"),
        optimisation=plot_optimisation(run, directory / "optimisation.png"),
        success=plot_success(run, directory / "success.png"),
        predictions=prediction_files,
        animation=animate_trial(run, best, directory / f"trial_{best.index:03d}.gif"),
        animated_trial=best.index)
    files.markdown.write_text(_markdown(run, files, predictions), encoding="utf-8")
    return files
