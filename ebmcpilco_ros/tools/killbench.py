"""`ebmcpilco bench resume`: SIGKILL the learning at random moments, resume each time.

The node graph runs one learning run (the simulated plant). In a loop, a seeded generator draws
the moment of the next kill among the events the nodes send (`trial`: a random time into a trial
after the execution node's `started`; `fit`: just after model_learning accepted a fit; `optim`:
the k-th optimisation event, accepted or a progress event of a stage; `write`: right as a trial
record arrives, which the trial manager is writing to the run directory) and the victim cycles
through the five nodes and the whole graph. What was killed is restarted, and the run is resumed
through /ebmcpilco/resume as a lab would (docs/NODES.md, Resume): always after a trial manager
or the whole graph died; after another node, once the trial manager has ended the run (a node
it waits on is gone) -- a run that carries on by itself (the restarted node came back before
it was asked for anything) is left running.

After each kill, before and after its resume, the run directory is checked: every trial
completed before the kill (the checkpoint's `trials_completed`) still there byte for byte and
never fewer completed, every JSON file parsing, every log.jsonl line parsing, no temporary file
left (right after a kill, one whose writer it killed is the write it cut short, which the resume
removes), and the run's status saying what happened (`died` after a trial manager or graph kill, a
`resumed` event with `previous` as it was). Kills stop after `kills`; then the run finishes and
the final checks run (run_done, solved, one trial file per completed trial). Each segment of the
run (from one trial boundary to the next) gets at most `per_trial` kills, and a kill whose moment
has not come `max_loss` seconds into a segment happens then, so the work redone is bounded.

Figures are printed and written as JSON; the command exits 0 only when every check passed and
the run finished solved.
"""
from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

from ..nodes.bringup import SIM_NODES, Graph, GraphClient, flatten, start_learning, validate
from ..nodes.rundir import run_root

TARGETS = (*SIM_NODES, "graph")  # cycled through, one per kill
MOMENTS = ("trial", "fit", "optim", "write")
END_EVENTS = ("run_done", "failed", "aborted")


class Events:
    """What the graph says, as it arrives: status messages and the nodes' events and records
    (monotonic arrival time, source, message)."""

    SOURCES = {"execution": "EXECUTION_EVENTS_TOPIC", "model_learning": "MODEL_EVENTS_TOPIC",
               "policy_optimization": "OPTIMIZATION_EVENTS_TOPIC",
               "record": "TRIAL_RECORDS_TOPIC"}
    ROLES = ("policy_execution", "model_learning", "policy_optimization")

    def __init__(self, client: GraphClient, status_depth: int) -> None:
        from std_msgs.msg import String

        from ..nodes import names, qos
        self.cond = threading.Condition()
        self.items: list[tuple[float, str, dict[str, Any]]] = []
        for source, topic in self.SOURCES.items():
            client.node.create_subscription(String, getattr(names, topic), self._on(source),
                                            qos.reliable_qos(50))
        client.node.create_subscription(String, names.STATUS_TOPIC, self._on("status"),
                                        qos.latched_qos(status_depth))
        for role in self.ROLES:
            client.node.create_subscription(String, names.heartbeat_topic(role),
                                            self._on("heartbeat"), qos.latched_qos())

    def _on(self, source: str) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            try:
                data = json.loads(msg.data)
            except ValueError:
                return
            if source == "record":  # only what identifies it: records are large
                meta = data.get("meta") or {}
                data = {"index": data.get("index"), "request_id": meta.get("request_id"),
                        "run_id": meta.get("run_id"), "failed": data.get("failed")}
            with self.cond:
                self.items.append((time.monotonic(), source, data))
                self.cond.notify_all()
        return callback

    def wait(self, predicate: Callable[[list[tuple[float, str, dict[str, Any]]]], Any],
             timeout: float) -> Any:
        """predicate(items)'s first true value, or None after `timeout`."""
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.items), max(0.0, timeout)) or None

    def since(self, t: float) -> list[tuple[float, str, dict[str, Any]]]:
        with self.cond:
            return [item for item in self.items if item[0] > t]


class Ledger:
    """The run directory's checks: completed trials byte for byte, whole files, no temporaries."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self.completed: dict[int, bytes] = {}  # trial index -> trials/trial_NNN.json's bytes
        self.most_completed = 0

    def trials_completed(self) -> int:
        try:
            return int(json.loads((self.run / "checkpoint.json").read_text())
                       ["trials_completed"])
        except FileNotFoundError:
            return 0

    def update(self) -> int:
        """Remember each completed trial's file (once); the number completed."""
        done = self.trials_completed()
        for index in range(done):
            if index not in self.completed:
                self.completed[index] = (self.run / "trials" / f"trial_{index:03d}.json"
                                         ).read_bytes()
        self.most_completed = max(self.most_completed, done)
        return done

    def check(self, killed: bool = False) -> list[str]:
        """What is wrong with the run directory now (empty: nothing). Right after a kill
        (`killed`), a temporary whose writer is gone is the write the kill cut short (a trial's
        bag takes tens of milliseconds to write, the 'write' moment's window): the resume
        removes it, and every check after the kill's finds one left."""
        problems = []
        temporaries = [str(p.relative_to(self.run)) for p in self.run.rglob("*")
                       if p.name.endswith(".tmp") and not writing(p)
                       and not inside_temporary(p.relative_to(self.run))]
        if temporaries and not killed:
            problems.append(f"temporary files left: {temporaries}")
        for path in self.run.rglob("*.json"):
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, OSError) as exc:
                problems.append(f"{path.relative_to(self.run)} does not parse: {exc}")
        try:
            lines = (self.run / "log.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        for number, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except ValueError:
                problems.append(f"log.jsonl line {number} does not parse: {line[:80]!r}")
        try:
            done = self.trials_completed()
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return problems + [f"checkpoint.json unreadable: {exc}"]
        if done < self.most_completed:
            problems.append(f"completed trials lost: the checkpoint says {done}, it said "
                            f"{self.most_completed}")
        for index, data in self.completed.items():
            path = self.run / "trials" / f"trial_{index:03d}.json"
            try:
                if path.read_bytes() != data:
                    problems.append(f"completed trial {index} changed ({path.name})")
            except FileNotFoundError:
                problems.append(f"completed trial {index} lost ({path.name} is gone)")
        return problems

    def log(self) -> list[dict[str, Any]]:
        from ..nodes.rundir import read_log

        return read_log(self.run)


def writing(path: Path) -> bool:
    """A temporary (`.<name>.<pid>.<thread>.tmp`) whose writer still runs: being written now,
    not left behind."""
    try:
        os.kill(int(path.name.split(".")[-3]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return path.exists()


def inside_temporary(relative: Path) -> bool:
    """A file in a temporary directory (a bag being written, nodes/bag.py: the library's own
    `metadata.yaml.tmp`), judged with that directory, not by its own name."""
    return any(part.endswith(".tmp") for part in relative.parts[:-1])


def phase_kind(phase: str) -> str:
    """The trial manager's phase in one word: trial, fit, optim, waiting, starting, ..."""
    for prefix, kind in (("trial", "trial"), ("fitting", "fit"), ("optimising", "optim"),
                         ("waiting", "waiting"), ("starting", "starting")):
        if phase.startswith(prefix):
            return kind
    return phase or "unknown"


class KillBench:
    def __init__(self, config_path: str | Path, overrides: Mapping[str, Mapping[str, Any]],
                 kills: int, seed: int, run_directory: Path, per_trial: int, max_loss: float,
                 startup_timeout: float, run_timeout: float, log: Callable[[str], None],
                 targets: tuple[str, ...] = TARGETS) -> None:
        self.config, parts = validate(config_path, overrides)
        self.names = parts["nodes"]
        self.kills_wanted = kills
        unknown = set(targets) - set(TARGETS)
        if unknown or not targets:
            raise ValueError(f"targets must be among {TARGETS}, not {sorted(unknown)}")
        self.targets = tuple(targets)
        self.rng = random.Random(seed)
        self.per_trial = per_trial
        self.max_loss = max_loss
        self.startup_timeout = startup_timeout
        self.config_state_timeout = parts["execution"].request_state_timeout + 0.5
        self.run_timeout = run_timeout
        self.say = log
        self.root = run_directory
        self.graph = Graph(config_path, {**flatten(overrides),
                                         "nodes.run_directory": str(run_directory)},
                           log_dir=run_directory / "logs" / time.strftime("%Y%m%d-%H%M%S"))
        self.kills: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.resumes = 0
        self.seen: set[str] = set()
        self.unplanned: list[str] = []  # runs that ended with no kill just before
        self.run_id = ""
        self.segment_start = 0.0  # monotonic: the last trial boundary or (re)start of learning

    # -- the graph ------------------------------------------------------------------------------
    def wait_ready(self, after: float) -> bool:
        """The trial manager reports ready in a status stamped after `after` (a time.time())."""
        return self.client.wait_status(
            lambda s: bool(s.get("ready")) and s.get("stamp", 0) > after,
            self.startup_timeout) is not None

    def wait_back(self, target: str, killed: float) -> bool:
        """The restarted node is up: the trial manager ready again (it and the graph); another
        node's heartbeat, stamped after the kill (sim_plant: the execution node's heartbeat
        saying fresh state, from a state sampled after the kill)."""
        if target in ("trial_manager", "graph"):
            return self.wait_ready(killed)
        role, after = ((target, killed) if target in Events.ROLES
                       else ("policy_execution", killed + self.config_state_timeout))
        return self.events.wait(lambda items: any(
            s == "heartbeat" and d.get("role") == role and d.get("stamp", 0) > after
            and (target != "sim_plant" or d.get("fresh")) for _t, s, d in items),
            self.startup_timeout) is not None

    def resume(self) -> tuple[bool, str]:
        """/ebmcpilco/resume, retried while the trial manager is still ending the run."""
        deadline = time.monotonic() + 60.0
        while True:
            ok, message = start_learning(self.client, service="resume")
            if ok or time.monotonic() > deadline or "cannot resume" in message:
                return ok, message
            time.sleep(2.0)

    def end_of_run(self, since: float) -> dict[str, Any] | None:
        """The run's end event (status) that arrived after `since`, if any."""
        for _t, source, data in self.events.since(since):
            if (source == "status" and data.get("event") in END_EVENTS
                    and data.get("run_id") == self.run_id):
                return data
        return None

    # -- the moment -----------------------------------------------------------------------------
    def moment(self, kind: str, since: float) -> Callable[[list[Any]], Any]:
        """A predicate on the events: the drawn moment of `kind` after `since` has come (its
        arrival time), or the run ended ("end")."""
        k = self.rng.randint(1, 4) if kind == "optim" else 1

        def predicate(items: list[tuple[float, str, dict[str, Any]]]) -> Any:
            count = 0
            for t, source, data in items:
                if t <= since:
                    continue
                if (source == "status" and data.get("event") in END_EVENTS
                        and data.get("run_id") == self.run_id):
                    return "end"
                event = data.get("event")
                if ((kind == "trial" and source == "execution" and event == "started")
                        or (kind == "fit" and source == "model_learning"
                            and event == "accepted")
                        or (kind == "optim" and source == "policy_optimization"
                            and event in ("accepted", "progress"))
                        or (kind == "write" and source == "record"  # a new trial's, not
                            and data.get("run_id") == self.run_id    # one resent
                            and int(data.get("index") or 0) >= self.ledger.most_completed)):
                    count += 1
                    if count >= k:
                        return t
            return None
        return predicate

    def delay(self, kind: str) -> float:
        return {"trial": self.rng.uniform(0.2, 0.8 * self.config.plant.trial_duration),
                "fit": self.rng.uniform(0.0, 0.3), "optim": self.rng.uniform(0.0, 0.5),
                "write": self.rng.uniform(0.0, 0.01)}[kind]

    def segment(self) -> tuple[int, float]:
        """Trials completed now, and the start of the segment running (monotonic)."""
        last = self.segment_start
        for t, source, data in self.events.since(self.segment_start):
            if (source == "status" and data.get("run_id") == self.run_id
                    and data.get("event") in ("trial_done", "resumed", "started_learning")):
                last = t
        self.segment_start = last
        return self.ledger.update(), last

    # -- one kill -------------------------------------------------------------------------------
    def kill_once(self, number: int) -> bool:
        """Draw a moment, kill there, restart, resume, check. False: the run ended first."""
        target = self.targets[number % len(self.targets)]
        kind = self.rng.choice(MOMENTS)
        delay = self.delay(kind)
        while True:  # at most per_trial kills in one segment
            done, start = self.segment()
            if sum(k["trials_completed"] == done for k in self.kills) < self.per_trial:
                break
            got = self.events.wait(lambda items: any(
                s == "status" and d.get("run_id") == self.run_id
                and d.get("event") in ("trial_done", *END_EVENTS) and t > start
                for t, s, d in items), self.run_timeout)
            if got is None or self.end_of_run(start) is not None:
                return False
        since = time.monotonic()
        deadline = max(since, start + self.max_loss)
        came = self.events.wait(self.moment(kind, since), deadline - time.monotonic())
        if came == "end":  # a run that ended late after an earlier kill is resumed first
            end = self.end_of_run(since) or {}
            if end.get("event") == "run_done" or not self.late_end(end):
                return False
            return self.kill_once(number)
        if came is not None:
            time.sleep(max(0.0, came + delay - time.monotonic()))
        if self.end_of_run(since) is not None:
            return False
        done = self.ledger.update()
        status = self.client.latest_status or {}
        entry = {"number": number + 1, "target": target, "moment": kind if came else "deadline",
                 "phase": phase_kind(str(status.get("phase", ""))),
                 "phase_detail": status.get("phase", ""), "trials_completed": done,
                 "at_s": round(time.monotonic() - self.t0, 1)}
        names = list(SIM_NODES) if target == "graph" else [target]
        killed = time.time()
        for name in names:
            self.graph.kill(name, signal.SIGKILL)
        for name in names:
            self.graph.processes[name].wait(10)
        problems = self.ledger.check(killed=True)
        from ..nodes.rundir import run_status

        outcome = run_status(self.ledger.run)["outcome"]
        entry["outcome_after_kill"] = outcome
        if outcome == "run_done":  # it ended as the kill went out: no kill of the run
            self.say(f"kill {number + 1}: the run had finished when {target} was killed; "
                     "not counted")
            self.graph.start(names)
            self.wait_back(target, killed)
            return False
        if target in ("trial_manager", "graph") and outcome != "died":
            problems.append(f"the run directory says {outcome!r} after its trial manager was "
                            "killed (expected 'died')")
        restarted = time.monotonic()
        self.graph.start(names)
        if not self.wait_back(target, killed):
            problems.append(f"the graph was not ready within {self.startup_timeout:g} s of "
                            f"restarting {target}")
        entry["restart_s"] = round(time.monotonic() - restarted, 1)
        must_resume = target in ("trial_manager", "graph")
        finished = False
        if not must_resume:  # has the trial manager ended the run (a peer gone)?
            self.events.wait(lambda _items: self.end_of_run(restarted - 1e-3) is not None
                             or self.end_of_run(since) is not None,
                             self.names.peer_grace + 2 * self.names.status_period + 2.0)
            end = self.end_of_run(since)
            if end is not None and end["event"] == "run_done":
                end, finished = None, True  # it went on and finished meanwhile
            must_resume = end is not None
            if end is not None:
                entry["run_ended"] = f"{end['event']}: {end.get('reason', '')}"[:200]
                outcome = run_status(self.ledger.run)["outcome"]
                if outcome != end["event"]:
                    problems.append(f"the run ended {end['event']} but its directory says "
                                    f"{outcome!r}")
        entry["resumed"] = must_resume
        if must_resume:
            previous = outcome if target in ("trial_manager", "graph") else \
                run_status(self.ledger.run)["outcome"]
            ok, message = self.resume()
            if not ok:
                problems.append(f"resume refused: {message}")
            else:
                self.resumes += 1
                got = self.events.wait(lambda items: next(
                    (d for t, s, d in items if t > restarted and s == "status"
                     and d.get("event") == "resumed" and d.get("run_id") == self.run_id),
                    None), 30.0)
                if got is None:
                    problems.append("no resumed event after the resume")
                else:
                    entry["resumed_from_trial"] = got.get("from_trial")
                    entry["interrupted"] = len(got.get("interrupted") or [])
                    if got.get("previous") != previous:
                        problems.append(f"resumed event says previous {got.get('previous')!r},"
                                        f" the directory said {previous!r}")
                    if got.get("from_trial") != self.ledger.trials_completed():
                        problems.append(f"resumed from trial {got.get('from_trial')} with "
                                        f"{self.ledger.trials_completed()} completed")
        problems += self.ledger.check()
        problems = [p for p in dict.fromkeys(problems) if p not in self.seen]
        self.seen.update(problems)  # a problem is reported at the kill it first shows at
        entry["problems"] = problems
        self.problems += [f"kill {number + 1} ({target}, {entry['phase']}): {p}"
                          for p in problems]
        self.kills.append(entry)
        self.say(f"kill {number + 1:2d}: {target:19s} {entry['moment']:8s} in "
                 f"{entry['phase_detail'][:40]!r:42s} {done} trials completed, restarted in "
                 f"{entry['restart_s']:.0f} s, "
                 + ("resumed" if must_resume else "went on without a resume")
                 + (f"; PROBLEMS: {problems}" if problems else ""))
        return not finished

    def late_end(self, end: dict[str, Any]) -> bool:
        """The run failed after an earlier kill had let it go on (the trial manager found the
        node gone only later): resume it, noted on that kill. False if refused."""
        why = f"{end.get('event')}: {end.get('reason', '')}"
        if self.kills and not self.kills[-1]["resumed"]:
            self.kills[-1]["run_ended_later"] = why
        else:  # not after a kill the run went on from: the graph failed by itself
            self.unplanned.append(f"after kill {len(self.kills)}: {why}")
        ok, message = self.resume()
        self.say(f"  the run ended {end.get('event')} after kill {len(self.kills)} "
                 f"({end.get('reason', '')}); " + ("resumed" if ok else f"resume refused: "
                                                   f"{message}"))
        if not ok:
            self.problems.append(f"resume refused: {message}")
            return False
        self.resumes += 1
        return True

    # -- the whole run --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.t0 = time.monotonic()
        self.graph.start()
        self.client = GraphClient(status_depth=self.names.status_depth)
        self.events = Events(self.client, self.names.status_depth)
        end: dict[str, Any] | None = None
        try:
            if not self.wait_ready(0.0):
                raise RuntimeError(f"the node graph did not come up within "
                                   f"{self.startup_timeout:g} s")
            ok, message = start_learning(self.client)
            if not ok:
                raise RuntimeError(f"learn refused: {message}")
            started = self.client.wait_status(lambda s: s.get("state") == "learning", 30.0)
            self.run_id = str((started or {}).get("run_id", ""))
            self.say(f"{message}; killing {self.kills_wanted} times")
            self.ledger = Ledger(self.root / self.run_id)
            self.segment_start = time.monotonic()
            number = 0
            while number < self.kills_wanted and self.kill_once(number):
                number += 1
            end = self.finish()
        finally:
            self.client.close()
            codes = self.graph.stop()
        return self.result(end, codes)

    def finish(self) -> dict[str, Any] | None:
        """Let the run end; a run that fails anyway is resumed (counted) up to three times."""
        extra = 0
        while True:
            since = self.segment_start
            got = self.events.wait(lambda _items: self.end_of_run(since), self.run_timeout)
            if got is None:
                self.problems.append(f"the run did not end within {self.run_timeout:g} s")
                return None
            self.segment_start = time.monotonic()
            if got["event"] == "run_done" or extra >= 3:
                return got
            extra += 1
            self.unplanned.append(f"after the kills: {got['event']}: {got.get('reason', '')}")
            self.say(f"  the run ended {got['event']} after the kills "
                     f"({got.get('reason', '')}); resuming")
            ok, message = self.resume()
            if not ok:
                self.problems.append(f"resume refused: {message}")
                return got
            self.resumes += 1

    def result(self, end: dict[str, Any] | None, codes: dict[str, int]) -> dict[str, Any]:
        report = (end or {}).get("report") or {}
        solved = bool(end and end.get("event") == "run_done" and end.get("solved"))
        if self.run_id:
            self.ledger.update()
            final = [p for p in self.ledger.check() if p not in self.seen]
            self.problems += [f"at the end: {p}" for p in final]
            trials = sorted(p.name for p in (self.ledger.run / "trials").glob("trial_*.json"))
            completed = self.ledger.trials_completed()
            if report and len(report.get("trials", [])) != completed:
                self.problems.append(f"the report has {len(report['trials'])} trials, the "
                                     f"checkpoint {completed}")
            if end and trials != [f"trial_{i:03d}.json" for i in range(completed)]:
                self.problems.append(f"trial files {trials} for {completed} completed trials")
            resumed_events = sum(e.get("event") == "resumed" for e in self.ledger.log())
            if resumed_events != self.resumes:
                self.problems.append(f"log.jsonl holds {resumed_events} resumed events for "
                                     f"{self.resumes} resumes")
        else:
            completed = 0
        if end is None or end.get("event") != "run_done":
            self.problems.append(f"the run did not finish: {end and end.get('event')}")
        return {
            "bench": "resume", "config": str(self.graph.config_path),
            "algorithm": self.config.learner.algorithm, "seed": self.config.learner.seed,
            "kills_wanted": self.kills_wanted, "kills": len(self.kills),
            "by_node": dict(Counter(k["target"] for k in self.kills)),
            "by_phase": dict(Counter(k["phase"] for k in self.kills)),
            "by_moment": dict(Counter(k["moment"] for k in self.kills)),
            "resumes": self.resumes,
            "went_on_without_resume": sum(not k["resumed"] for k in self.kills),
            "ended_without_a_kill": self.unplanned,
            "run_id": self.run_id, "run_directory": str(self.root / self.run_id),
            "completed_trials": completed, "solved": solved,
            "trial_costs": [round(t["cost"], 2) for t in report.get("trials", [])],
            "total_s": round(time.monotonic() - self.t0, 1),
            "stop_codes": {n: c for n, c in codes.items() if c not in (0, None)},
            "problems": self.problems, "checks_passed": not self.problems,
            "ok": solved and not self.problems,
            "log": self.kills, "load_average": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def bench(config_path: str | Path, overrides: Mapping[str, Mapping[str, Any]], kills: int = 20,
          seed: int = 1, run_directory: str | Path | None = None, per_trial: int = 20,
          max_loss: float = 45.0, startup_timeout: float = 120.0, run_timeout: float = 1800.0,
          log: Callable[[str], None] = print, targets: tuple[str, ...] = TARGETS
          ) -> dict[str, Any]:
    """Kill the learning `kills` times at moments drawn with `seed`; the figures and checks."""
    import tempfile

    root = (run_root(str(run_directory)) if run_directory
            else Path(tempfile.mkdtemp(prefix="killbench-")))
    root = root.expanduser().resolve()
    overrides = {section: dict(values) for section, values in overrides.items()}
    overrides.setdefault("learner", {}).setdefault("seed", seed)
    return KillBench(config_path, overrides, kills, seed, root, per_trial, max_loss,
                     startup_timeout, run_timeout, log, tuple(targets)).run()


def summary_text(result: dict[str, Any]) -> str:
    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items()))
    lines = [
        f"{result['kills']} kills (asked {result['kills_wanted']}), {result['resumes']} resumes"
        f" ({result['went_on_without_resume']} kills the run survived without one)",
        f"  by node:   {counts(result['by_node'])}",
        f"  by phase:  {counts(result['by_phase'])}",
        f"  by moment: {counts(result['by_moment'])}",
        *(f"  the run ended with no kill before it, resumed: {u}"
          for u in result["ended_without_a_kill"]),
        f"run {result['run_id']}: {result['completed_trials']} trials completed, "
        f"{'SOLVED' if result['solved'] else 'NOT solved'}, costs {result['trial_costs']}, "
        f"{result['total_s']:.0f} s in all",
        "checks: " + ("all passed" if not result["problems"] else
                      f"{len(result['problems'])} FAILED:\n  " + "\n  ".join(result["problems"]))]
    return "\n".join(lines)
