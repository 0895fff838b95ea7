"""`ebmcpilco profile RUN`: where the wall time of a learning run through the node graph went.

The trial manager's log.jsonl stamps every phase as it starts (a trial, a fit, an optimisation,
a wait), so the time from one status to the next is the phase's wall time as the learning loop
saw it. The nodes' own figures for the same phase are in the run directory: a model update's
`fit_s`, a controller update's `wall_s` per stage (ilqr, pretrain, policy) and `node_wall_s`, a
trial's `duration_s` (the rollout itself). What the loop waited beyond them is overhead: the
request and result messages (DDS, JSON), the plant's reset, waiting for a node, the trial's
record. A phase a crash cut off (its session ended without its result) counts as lost.

Files are matched to phases by when they were written (st_mtime inside the phase's interval):
the trial manager writes an update as it arrives, so this holds for a run directory as written
and copied with its times (cp -p, rsync -t).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..nodes.rundir import read_log

# The rows of the table, in order: the nodes' work by kind, then what the loop spent around it.
WORK = ("rollout", "fit", "ilqr", "pretrain", "policy")
AROUND = ("trial overhead", "fit overhead", "optimisation overhead", "other", "lost to crashes")
# The statuses that start or end a phase (progress events come within one).
BOUNDARIES = ("phase", "trial_done", "run_done", "failed", "aborted", "started_learning",
              "resumed", "started_running_trial")


class ProfileError(ValueError):
    """A path that is not a run directory with a log."""


@dataclass
class Phase:
    """One phase as the learning loop saw it, and the nodes' work in it."""

    label: str                  # the status `phase` text, e.g. "trial 3 (ilqr)"
    kind: str                   # trial, fit, optimise, other
    start: float                # status stamp [s since the epoch]
    wall_s: float               # to the next status of the run
    work_s: dict[str, float] = field(default_factory=dict)   # the nodes' figures by kind
    completed: bool = True      # False: the session ended before its result (a crash)

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.wall_s - sum(self.work_s.values()))


@dataclass
class Profile:
    run_id: str
    phases: list[Phase]
    totals: dict[str, float]    # WORK + AROUND rows, seconds
    wall_s: float               # first status to last
    trials: int
    solved: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "wall_s": self.wall_s, "trials": self.trials,
                "solved": self.solved, "totals": self.totals,
                "phases": [asdict(p) for p in self.phases]}


def _kind(label: str) -> str:
    if label.startswith("trial "):
        return "trial"
    if label.startswith("fitting"):
        return "fit"
    if label.startswith("optimising"):
        return "optimise"
    return "other"


def _files(path: Path, pattern: str) -> list[tuple[float, dict[str, Any]]]:
    out = []
    for file in sorted(path.glob(pattern)):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out.append((file.stat().st_mtime, data))
    return out


def _within(files: list[tuple[float, dict[str, Any]]], phase: Phase
            ) -> dict[str, Any] | None:
    """The last file written inside the phase's interval (a little after its end: the
    status that starts the next phase goes out right after the file is written)."""
    inside = [d for t, d in files if phase.start <= t <= phase.start + phase.wall_s + 0.5]
    return inside[-1] if inside else None


def profile_run(path: str | Path) -> Profile:
    """The phases of a run directory's log with the nodes' work matched to each."""
    path = Path(path)
    log = read_log(path) if (path / "log.jsonl").is_file() else []
    statuses = [e for e in log if isinstance(e.get("stamp"), (int, float))
                and e.get("event") in BOUNDARIES]
    if not statuses:
        raise ProfileError(f"{path}: no run log (log.jsonl) with stamped statuses")
    models = _files(path / "models", "model_v*.json")
    controllers = _files(path / "controllers", "controller_v*.json")
    durations = {int(e["trial"]["index"]): float(e["trial"].get("duration_s", 0.0))
                 for e in statuses if e.get("event") == "trial_done" and e.get("trial")}
    phases: list[Phase] = []
    for here, after in zip(statuses, statuses[1:]):
        starts = here.get("event") in ("phase", "resumed", "started_learning")
        label = str(here.get("phase", "")) if starts else f"after {here.get('event')}"
        phase = Phase(label=label, kind=_kind(label) if starts else "other",
                      start=float(here["stamp"]),
                      wall_s=max(0.0, float(after["stamp"]) - float(here["stamp"])))
        ended = after.get("event")
        phase.completed = ended not in ("failed", "aborted", "started_learning", "resumed")
        if phase.kind == "trial" and ended == "trial_done":
            index = int(after["trial"]["index"])
            phase.work_s["rollout"] = durations.get(index, 0.0)
        elif phase.kind == "fit" and phase.completed:
            model = _within(models, phase)
            if model is not None:
                phase.work_s["fit"] = float(model.get("fit_s", 0.0))
        elif phase.kind == "optimise" and phase.completed:
            update = _within(controllers, phase)
            if update is not None:
                for stage, seconds in (update.get("wall_s") or {}).items():
                    if stage in WORK:
                        phase.work_s[stage] = float(seconds)
        phases.append(phase)
    totals = {row: 0.0 for row in (*WORK, *AROUND)}
    for phase in phases:
        if not phase.completed and phase.kind != "other":
            totals["lost to crashes"] += phase.wall_s
            continue
        for kind, seconds in phase.work_s.items():
            totals[kind] += seconds
        row = {"trial": "trial overhead", "fit": "fit overhead",
               "optimise": "optimisation overhead"}.get(phase.kind, "other")
        totals[row] += phase.overhead_s if phase.kind != "other" else phase.wall_s
    end = next((e for e in reversed(statuses) if e.get("event") == "run_done"), None)
    return Profile(run_id=path.name, phases=phases, totals=totals,
                   wall_s=float(statuses[-1]["stamp"]) - float(statuses[0]["stamp"]),
                   trials=len(durations),
                   solved=bool(end.get("solved")) if end is not None else None)


def format_profile(profile: Profile, phases: bool = False) -> str:
    """The totals as a table (seconds and share of the run's wall time); `phases`: every
    phase too."""
    wall = profile.wall_s or 1.0
    outcome = {True: "solved", False: "not solved", None: "no end"}[profile.solved]
    lines = [f"run {profile.run_id}: {profile.trials} trials, {outcome}, {profile.wall_s:.1f} s "
             f"from the learn call to the last status", "",
             f"{'where':24s} {'s':>9s} {'share':>7s}"]
    for row, seconds in profile.totals.items():
        lines.append(f"{row:24s} {seconds:9.1f} {100 * seconds / wall:6.1f}%")
    lines.append(f"{'total':24s} {sum(profile.totals.values()):9.1f}")
    if phases:
        lines += ["", f"{'phase':44s} {'wall s':>8s} {'work s':>8s} {'over s':>8s}"]
        for p in profile.phases:
            work = sum(p.work_s.values())
            mark = "" if p.completed else "  (cut off)"
            lines.append(f"{p.label[:44]:44s} {p.wall_s:8.2f} {work:8.2f} "
                         f"{p.overhead_s:8.2f}{mark}")
    return "\n".join(lines)
