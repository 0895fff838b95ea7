"""What the learning does, read from ebmcpilco/status, for a person at a terminal or for a log.

One view serves every command that follows the status topic (`ebmcpilco sim`, `rig`, `up` and
`status --follow`), so they all say the same thing the same way. Each event may give a line; the
long stages (the model fit, GP-iLQR, pretraining, MC-PILCO) are tracked from the `phase` and
`progress` events: step, cost, steps per second and, where the stage has a step limit, the time
left at most (MC-PILCO may stop before its limit: the figure says "up to"). On a terminal the
running stage is a live tqdm bar and each finished stage leaves a summary line; elsewhere (a
pipe, a log, a test) there is no bar and no control character, only plain lines.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TextIO

from .core.vocabulary import Stage as StageName, TrialKind

STAGE_NAMES = {StageName.FIT: "model fit", StageName.ILQR: "GP-iLQR",
               StageName.PRETRAIN: "pretraining", StageName.POLICY: "policy optimisation"}
# Events that end what `status --follow --until-end` follows (a manual trial ends with
# trial_done in state idle).
END_EVENTS = ("run_done", "failed", "aborted")
MANUAL_PREFIX = "manual-"  # the trial manager's run id for the trials of run_trial


def trial_line(trial: Mapping[str, Any]) -> str:
    """One trial (a TrialSummary as a mapping: a status's trial_done, or dataclasses.asdict) as
    every command prints it: `ebmcpilco demo`, `sim`, `rig`, `up`, `status --follow` and the
    learning benchmark. Only a learned policy's swing-up solves the task."""
    wall = trial.get("wall_s") or {}
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in wall.items())
    extra = (f"  ({trial.get('opt_steps', 0)} optimisation steps; {timing})" if timing else "")
    if trial.get("faulted"):   # the reason is in policy_execution's log and the trial file
        outcome = "cut short by a fault (not used for the model)"
    elif not trial["success"]:
        outcome = "not solved"
        window = trial.get("final_window") or {}
        if window:  # which tolerance a near miss missed
            outcome += (f" (final window: |p| up to {window['max_abs_p']:.2f} m, "
                        f"{window['max_angle_error']:.2f} rad from upright)")
    elif trial["kind"] == TrialKind.POLICY:
        outcome = "SWING-UP SOLVED"
    else:
        outcome = "swung up by the plan (a learned policy must do it)"
    if "controller" in trial:  # a trial of /ebmcpilco/run_trial
        extra += f"  (run_trial with {trial['controller']}" + (
            ", FAILED)" if trial.get("failed") else ")")
    return f"trial {trial['index']}: {trial['kind']:7s} cost {trial['cost']:6.2f}  {outcome}{extra}"


def run_line(status: Mapping[str, Any]) -> str:
    """A learning run's end (run_done)."""
    return report_lines(status["report"], status.get("run_id"))


def report_lines(report: Mapping[str, Any], run_id: str | None = None) -> str:
    """A finished run (LearningReport.to_dict) in two lines: its outcome, then the time from
    the learn call to the solving rollout's end and where it went."""
    line = (f"{'solved' if report['solved'] else 'NOT solved'} after {len(report['trials'])} "
            f"trials, {report['interaction_s']:.1f} s of interaction, "
            f"{report['wall_s']['total']:.0f} s total" + (f" (run {run_id})" if run_id else ""))
    times = report.get("time_to_solve_s")
    return line + ("\n" + time_to_solve_line(times, report["solved"]) if times else "")


def time_to_solve_line(times: Mapping[str, float], solved: bool) -> str:
    """LearningReport.time_to_solve as one line: the total and where it went."""
    parts = ", ".join(f"{row} {seconds:.1f}" for row, seconds in times.items()
                      if row != "learn_to_solve")
    what = "learn call to the solving rollout's end" if solved else "learn call to the run's end"
    return f"{what}: {times['learn_to_solve']:.1f} s ({parts})"


def ended(status: Mapping[str, Any]) -> bool:
    """Whether this event ends a learning run or a run_trial trial."""
    return status.get("event") in END_EVENTS or (
        status.get("event") == "trial_done" and status.get("state") == "idle")


def end_code(status: Mapping[str, Any]) -> int:
    """Exit code for a run or trial that ended with `status`: 0 solved (or the trial ran), 1
    not solved, failed or aborted."""
    event = status.get("event")
    if event == "run_done":
        return 0 if status["report"]["solved"] else 1
    if event == "trial_done":
        return 1 if (status.get("trial") or {}).get("failed") else 0
    return 1


def summary_line(status: Mapping[str, Any]) -> str:
    """Where the trial manager stands, from its latest status (`ebmcpilco status`)."""
    state = status.get("state", "?")
    waiting = status.get("waiting_for") or []
    ready = "ready" if status.get("ready") else "not ready: waiting for " + ", ".join(waiting)
    what = f"{state}, {ready}"
    run_id = str(status.get("run_id") or "")
    if run_id.startswith(MANUAL_PREFIX):
        what += f"; run_trial trials ({run_id})"
    elif run_id:
        what += f"; run {run_id}, {status.get('trials', 0)} trials done"
    if status.get("phase"):
        what += f", phase: {status['phase']}"
    return f"{what} (last event: {status.get('event')} at {_clock(status)})"


def _clock(status: Mapping[str, Any]) -> str:
    stamp = status.get("stamp")
    return time.strftime("%H:%M:%S", time.localtime(stamp)) if stamp else "--:--:--"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


@dataclass
class Stage:
    """One long stage as the status topic shows it (stamps are the status messages')."""

    kind: str                       # fit, ilqr, pretrain, policy
    started: float
    updated: float
    steps: int = 0                  # steps done
    base: int = 0                   # steps done when first seen (a view that came in mid-stage)
    max_steps: int | None = None    # the stage's step limit, where it has one
    cost: float | None = None
    detail: str = ""                # what the phase says (fit: on how many trials)

    @property
    def name(self) -> str:
        return STAGE_NAMES.get(self.kind, self.kind)

    def rate(self) -> float | None:
        """Steps per second over the stage so far."""
        span = self.updated - self.started
        return (self.steps - self.base) / span if self.steps > self.base and span > 0 else None

    def left(self) -> float | None:
        """Seconds to the step limit at the rate so far (an upper bound: MC-PILCO may stop
        earlier); None without a limit or a rate."""
        rate = self.rate()
        if self.max_steps is None or rate is None:
            return None
        return max(0, self.max_steps - self.steps) / rate

    def figures(self, now: float | None = None) -> str:
        """step, cost, steps per second, time left at most, time so far."""
        parts = []
        if self.steps:
            parts.append(f"step {self.steps}" + (f"/{self.max_steps}" if self.max_steps else ""))
        if self.cost is not None:
            parts.append(f"cost {self.cost:.4g}")
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:.3g} steps/s")
        left = self.left()
        if left is not None:
            parts.append(f"up to {_seconds(left)} left")
        elapsed = (now if now is not None else self.updated) - self.started
        parts.append(f"{_seconds(max(0.0, elapsed))} so far")
        return ", ".join(parts)

    def done_line(self, end: float) -> str:
        """The stage as it ended (its last step is in the trial's line: progress comes every
        nodes.progress_period, so the last report may be a few steps short)."""
        took = max(0.0, end - self.started)
        line = f"  {self.name} done in {took:.1f} s"
        if self.base:
            line += " (followed from its middle)"
        if self.steps:
            rate = self.rate()
            line += (f" (last report: step {self.steps}"
                     + (f"/{self.max_steps}" if self.max_steps else "")
                     + (f", cost {self.cost:.4g}" if self.cost is not None else "")
                     + (f", {rate:.3g} steps/s" if rate else "") + ")")
        return line


class StatusView:
    """Turns status messages into lines and, on a terminal, a live progress bar.

    `all_events`: a line for every event, each with its time (`status --follow`, `up`), progress
    events included where there is no bar; otherwise (`sim`, `rig`) lines only for trials, the
    run's end, failures and aborts, and phases when `verbose`. `live`: a tqdm bar for the running
    stage (default: whether `stream` is a terminal); without it nothing is drawn or redrawn.
    """

    def __init__(self, stream: TextIO | None = None, all_events: bool = False,
                 verbose: bool = False, live: bool | None = None,
                 write: Callable[[str], None] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.all_events = all_events
        self.verbose = verbose
        self.live = bool(live if live is not None else _is_terminal(self.stream))
        self._write = write
        self.stage: Stage | None = None
        self._bar: Any = None

    # -- output ------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        """A line above the bar (tqdm.write keeps the bar below it), or a plain line."""
        if self.live:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        elif self._write is not None:
            self._write(text)
        else:
            print(text, file=self.stream, flush=True)

    def _event_line(self, status: Mapping[str, Any], text: str) -> None:
        for part in text.splitlines():   # a run's end says two lines, each stamped
            self.line(f"{_clock(status)} {part}" if self.all_events else part)

    # -- events ------------------------------------------------------------------------------
    def handle(self, status: Mapping[str, Any]) -> None:
        """One status message, as it arrives."""
        event = status.get("event")
        stamp = float(status.get("stamp") or time.time())
        if event == "progress":
            self._progress(status, status.get("progress") or {}, stamp)
            return
        if event in ("phase", "trial_done", *END_EVENTS, "started_learning",
                     "started_running_trial", "resumed"):
            self._end_stage(stamp)
        if event == "phase" and str(status.get("phase", "")).startswith("fitting"):
            self.stage = Stage("fit", stamp, stamp,
                               detail=str(status["phase"]).replace("fitting the model ", ""))
        text = self._text(status)
        if text is not None and (self.all_events or self._result(event)):
            self._event_line(status, text)
        self._draw()

    def _result(self, event: Any) -> bool:
        return event in ("trial_done", *END_EVENTS) or (event == "phase" and self.verbose)

    def _text(self, status: Mapping[str, Any]) -> str | None:
        event = status.get("event")
        if event == "trial_done":
            return trial_line(status["trial"])
        if event == "run_done":
            return run_line(status)
        if event in ("failed", "aborted"):
            what = ("run_trial" if str(status.get("run_id", "")).startswith(MANUAL_PREFIX)
                    else "learning")
            return f"{what} {event}: {status.get('reason', '')}"
        if event == "phase":
            return f"  {status.get('phase')}"
        if event == "started":
            return f"trial manager started ({status.get('state')})"
        if event == "ready":
            return "ready"
        if event == "not_ready":
            return "not ready: waiting for " + ", ".join(status.get("waiting_for") or [])
        if event == "started_learning":
            return f"learning: run {status.get('run_id')}"
        if event == "started_running_trial":
            return "running a trial (run_trial)"
        if event == "resumed":
            return "resumed: " + str(status.get("message") or (
                f"run {status.get('run_id')} after {status.get('from_trial')} trials"))
        return f"{event}"

    def _progress(self, status: Mapping[str, Any], progress: Mapping[str, Any],
                  stamp: float) -> None:
        kind = str(progress.get("stage", ""))
        stage = self.stage
        if "step" not in progress or stage is None or stage.kind != kind:
            self._end_stage(stamp)   # a stage starts (stage only), or we came in mid-stage
            seen = int(progress["step"]) + 1 if "step" in progress else 0
            stage = self.stage = Stage(kind, stamp, stamp, steps=seen, base=seen)
            if "step" not in progress:
                if self.all_events and not self.live:
                    limit = progress.get("max_steps")
                    self._event_line(status, f"  {stage.name} started"
                                     + (f" (at most {limit} steps)" if limit else ""))
        if progress.get("max_steps") is not None:
            stage.max_steps = int(progress["max_steps"])
        if "step" in progress:
            stage.steps = int(progress["step"]) + 1
            stage.updated = stamp
            if progress.get("cost") is not None:
                stage.cost = float(progress["cost"])
            if self.all_events and not self.live:
                extra = "".join(f", {k} {progress[k]:.3g}" for k in ("lr", "dropout")
                                if isinstance(progress.get(k), (int, float)))
                self._event_line(status, f"  {stage.name}: {stage.figures()}{extra}")
        self._draw()

    def _end_stage(self, stamp: float) -> None:
        stage, self.stage = self.stage, None
        self._close_bar()
        if stage is not None and (self.live or self.all_events):
            text = stage.done_line(stamp)
            self.line(f"{_clock({'stamp': stamp})} {text}" if self.all_events else text)

    # -- the bar -----------------------------------------------------------------------------
    def _draw(self) -> None:
        if not self.live or self.stage is None:
            return
        from tqdm import tqdm

        stage = self.stage
        # Our own figures (the same as the plain lines') around tqdm's bar; braces escaped.
        text = (f"{stage.name}" + (f" ({stage.detail})" if stage.detail else "")
                + ": {bar_part}" + stage.figures(time.time()))
        text = text.replace("{", "{{").replace("}", "}}").replace(
            "{{bar_part}}", "{percentage:3.0f}%|{bar}| " if stage.max_steps else "")
        if self._bar is None:
            self._bar = tqdm(total=stage.max_steps, file=self.stream, leave=False,
                             dynamic_ncols=True, bar_format=text, mininterval=0)
        self._bar.bar_format = text
        self._bar.n = min(stage.steps, stage.max_steps or stage.steps)
        self._bar.refresh()

    def tick(self) -> None:
        """Redraw the bar (its time so far moves on between events)."""
        self._draw()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Take the bar off the terminal (before other output, at the end)."""
        self._close_bar()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
