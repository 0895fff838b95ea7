"""`trial_manager`: runs the learning loop (core.learner.Learner) through the other nodes.

Services (std_srvs/Trigger, all answered at once, the work goes on in a worker thread):
    ebmcpilco/learn      start a learning run (MC-PILCO or EB-MC-PILCO per learner.algorithm);
                         refused with the reason when already busy or not ready
    ebmcpilco/run_trial  one trial with the current controller (the newest on
                         ebmcpilco/controller; random exploration before any)
    ebmcpilco/abort      stop the run or trial; the execution node zeroes the command at once
    ebmcpilco/resume     continue a run that crashed, failed or was aborted from its run
                         directory's checkpoint (nodes.resume_run, or the latest unfinished run)
Progress goes to ebmcpilco/status (latched JSON, ebmcpilco.status/1) and /diagnostics; the run
directory (rundir.py) gets every trial, model and controller, a JSON-lines log, the checkpoint at
each trial boundary and progress.json at each phase boundary.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ..core.checkpoint import CHECKPOINT_FILE, CheckpointError, config_differences, \
    load_checkpoint
from ..core.config import SECTIONS
from ..core.controllers import Controller, RandomController, controller_from_dict
from ..core.learner import Learner, LearningReport, TrialSummary
from ..core.trial import Trial
from ..core.vocabulary import ControllerKind
from .names import (ABORT_SERVICE, CONTROLLER_TOPIC, CONTROLLER_UPDATE_FORMAT,
                    EXECUTION_ABORT_SERVICE, EXECUTION_EVENTS_TOPIC, EVENT_FORMAT, HEARTBEAT_FORMAT,
                    FIT_REQUEST_TOPIC, LEARN_SERVICE, MODEL_EVENTS_TOPIC, MODEL_TOPIC,
                    MODEL_UPDATE_FORMAT, OPTIMIZATION_CANCEL_SERVICE, OPTIMIZATION_EVENTS_TOPIC,
                    OPTIMIZATION_REQUEST_TOPIC, RESUME_SERVICE, RUN_TRIAL_SERVICE, STATUS_TOPIC,
                    TRIAL_RECORDS_TOPIC, TRIAL_REQUEST_TOPIC, heartbeat_topic)
from .qos import latched_qos, reliable_qos
from .codec import decode, encode
from .requests import Aborted, Replies
from .health import Diagnostics, PeerWatch
from .process import GraphNode, run_node
from .bag import BagTopics, bag_path, preload, write_trial_bag
from .hygiene import Refusals, received_trial
from .payloads import (ControllerUpdatePayload, Event, Heartbeat, InterruptedTrial, ModelUpdate,
                       Status)
from .params import declare_config
from .remote import (EXECUTION, MODEL_LEARNING, OPTIMIZATION, Link, RemoteModelLearning,
                     RemoteOptimization, RemoteSystem)
from .rundir import (CONFIG_FILE, PROGRESS_FILE, RUNNING, RunDirError, RunDirectory,
                     describe_run, run_root, run_status)

NAME = "trial_manager"
IDLE, LEARNING, RUNNING_TRIAL = "idle", "learning", "running_trial"


class TrialManager(GraphNode):
    """Owns the learning run, its status and its run directory."""

    def __init__(self) -> None:
        super().__init__(NAME)
        config, parts = declare_config(self, list(SECTIONS), ["execution", "nodes"])
        self.config = config
        self.exe = parts["execution"]
        self.names = parts["nodes"]
        depth = self.names.record_depth
        self.lock = threading.Lock()
        self.replies = Replies()
        self.cancel = threading.Event()
        self.activity = IDLE
        self.phase = ""
        self.run_id = ""
        self.trials_done = 0
        self.last_completed = ""  # the phase last completed (progress.json)
        self.current_trial: dict[str, Any] | None = None  # the trial request out now
        self.worker: threading.Thread | None = None
        self.heartbeats: dict[str, Heartbeat] = {}
        self.heard: dict[str, float] = {}
        self.controller_update: ControllerUpdatePayload | None = None
        self.run_dirs: dict[str, RunDirectory] = {}
        self.run_root = run_root(self.names.run_directory)  # resolved once, absolute
        self.get_logger().info(f"run directories in {self.run_root}" if self.run_root else
                               "no run directories (nodes.run_directory is '')")
        self.manual_run = time.strftime("manual-%Y%m%d-%H%M%S")
        self.manual_trials = 0
        self.waiting_for: list[str] = ["startup"]
        self.refusals = Refusals(self.get_logger().warning, (
            "events", "records", "models", "controllers", "heartbeats"))
        self.closing = False
        self.shutting_down = False  # close() has begun: the worker ends, then closing
        # Every trial also as a ROS 2 bag beside its record, on the graph's own topic names.
        self.bags_failed = 0
        self.bag_topics = BagTopics(*(self.resolve_topic_name(name) for name in (
            self.names.state_topic, self.names.true_state_topic, self.names.command_topic)),
            joint_names=tuple(self.names.joint_names))
        if self.names.record_bags and self.names.run_directory:
            try:
                preload()
            except Exception as exc:  # noqa: BLE001 - no bags is no reason not to learn
                self.get_logger().warning(f"trial bags cannot be written: "
                                          f"{type(exc).__name__}: {exc}")
        # Requests out, replies in.
        self.request_pubs = {
            EXECUTION: self.create_publisher(String, TRIAL_REQUEST_TOPIC, reliable_qos(depth)),
            MODEL_LEARNING: self.create_publisher(String, FIT_REQUEST_TOPIC, reliable_qos(depth)),
            OPTIMIZATION: self.create_publisher(String, OPTIMIZATION_REQUEST_TOPIC,
                                                reliable_qos(depth)),
        }
        self.peers = {role: PeerWatch(pub, role, self.names.peer_grace,
                                      lambda role=role: self._heard(role))
                      for role, pub in self.request_pubs.items()}
        self.records_pub = self.create_publisher(String, TRIAL_RECORDS_TOPIC, reliable_qos(depth))
        self.status_pub = self.create_publisher(String, STATUS_TOPIC,
                                                latched_qos(self.names.status_depth))
        for topic in (EXECUTION_EVENTS_TOPIC, MODEL_EVENTS_TOPIC, OPTIMIZATION_EVENTS_TOPIC):
            self.create_subscription(String, topic, functools.partial(self._on_event, topic=topic),
                                     reliable_qos(depth))
        self.create_subscription(String, TRIAL_RECORDS_TOPIC, self._on_record,
                                 reliable_qos(depth))
        self.create_subscription(String, MODEL_TOPIC, self._on_model, latched_qos())
        self.create_subscription(String, CONTROLLER_TOPIC, self._on_controller, latched_qos())
        for role in self.request_pubs:
            self.create_subscription(String, heartbeat_topic(role),
                                     functools.partial(self._on_heartbeat,
                                                       topic=heartbeat_topic(role)),
                                     latched_qos())
        self.create_service(Trigger, LEARN_SERVICE, self._on_learn)
        self.create_service(Trigger, RUN_TRIAL_SERVICE, self._on_run_trial)
        self.create_service(Trigger, ABORT_SERVICE, self._on_abort)
        self.create_service(Trigger, RESUME_SERVICE, self._on_resume)
        self.execution_abort = self.create_client(Trigger, EXECUTION_ABORT_SERVICE)
        self.optimization_cancel = self.create_client(Trigger, OPTIMIZATION_CANCEL_SERVICE)
        self.link = Link(self.replies, self.cancel, self.names, self.request_pubs, self.peers,
                         self._set_phase, self._on_trial_request, self._working_on)
        self.create_timer(self.names.status_period, self._check_readiness)
        self.diagnostics = Diagnostics(self, self.names, self._report)
        self._publish_status("started")

    # -- incoming -------------------------------------------------------------------------------
    def _on_heartbeat(self, msg: String, topic: str = "") -> None:
        """A worker node is alive (the execution node also says whether its state is fresh)."""
        try:
            beat = Heartbeat.from_dict(decode(msg, HEARTBEAT_FORMAT))
        except ValueError as exc:
            self.refusals.refuse("heartbeats", f"a heartbeat on {topic}", exc, key=topic)
            return
        self.heartbeats[beat.role] = beat
        self.heard[beat.role] = time.monotonic()

    def _working_on(self, role: str) -> str | None:
        """The request `role`'s latest heartbeat says it works on ("" idle; None: no heartbeat,
        or not one of the fitting and optimising nodes)."""
        beat = self.heartbeats.get(role)
        if beat is None or role not in (MODEL_LEARNING, OPTIMIZATION):
            return None
        return beat.busy or ""

    def _on_event(self, msg: String, topic: str = "") -> None:
        try:
            ev = Event.from_dict(decode(msg, EVENT_FORMAT))
        except ValueError as exc:
            self.refusals.refuse("events", f"an event on {topic}", exc, key=topic)
            return
        self.replies.post(ev.request_id, ev)
        # progress of a request nobody waits on (the optimiser's last steps after an abort)
        # would land after the run's end in the status and log.jsonl
        if ev.event == "progress" and self.replies.expecting(ev.request_id):
            self._publish_status("progress", progress=ev.extras())

    def _on_record(self, msg: String) -> None:
        # malformed or not finite: never written, never used; it ends the wait its meta names
        received = received_trial(self.refusals, msg, TRIAL_RECORDS_TOPIC,
                                  on_invalid=self._invalid_record)
        if received is None:
            return
        record, trial = received
        # meta's run_id and request_id: where the record comes from (a record of another
        # source, e.g. an in-process run, may lack them; then no run waits on it)
        run_dir = self.run_dirs.get(str(trial.meta.get("run_id", "")))
        request_id = str(trial.meta.get("request_id", ""))
        if run_dir is not None:
            self._write_record(run_dir, record, trial.index, request_id)
        self.replies.post(request_id, trial)

    def _invalid_record(self, record: dict[str, Any], exc: Exception) -> None:
        meta = record.get("meta")
        self._fail_request(meta.get("request_id") if isinstance(meta, dict) else None,
                           f"invalid trial record: {exc}")

    def _write_record(self, run_dir: RunDirectory, record: dict[str, Any], index: int,
                      request_id: str) -> None:
        """trials/trial_NNN.json for a trial the run waits on; a record nobody waits on (a trial
        of a session that crashed, arriving late) goes to trials/interrupted/, marked; this
        node's own resends of written records are not written again."""
        relative = f"trials/trial_{index:03d}.json"
        if self.replies.expecting(request_id):
            run_dir.write_json(relative, record)
            self._write_bag(run_dir, relative, record)
            return
        try:
            written = json.loads((run_dir.path / relative).read_text(encoding="utf-8"))
            if written.get("meta", {}).get("request_id") == request_id:
                return
        except (OSError, ValueError, AttributeError):
            pass
        kept = keep_interrupted(run_dir, record, "its record arrived after the run had stopped "
                                                 "waiting for it (a crash or an abort)")
        self._write_bag(run_dir, kept, record)

    def _write_bag(self, run_dir: RunDirectory, relative: str, record: dict[str, Any]) -> None:
        """The record's bag beside its JSON (nodes.record_bags). A bag that cannot be written is
        logged and counted (/diagnostics bags_failed); the record is written already and the
        run goes on."""
        if not self.names.record_bags:
            return
        try:
            write_trial_bag(record, bag_path(run_dir.path / relative), self.bag_topics)
        except Exception as exc:  # noqa: BLE001 - any failure: the JSON record stands
            self.bags_failed += 1
            self.get_logger().warning(f"the bag of {relative} was not written "
                                      f"({type(exc).__name__}: {exc}); the record was")

    def _read_update(self, msg: String, fmt: str, cls: Any, kind: str, topic: str,
                     what: str) -> Any:
        """A model or controller update as read, or None: refused (counted, logged) and, where
        it names a request this node waits on, that wait ended with the reason."""
        try:
            payload = decode(msg, fmt)
        except ValueError as exc:
            self.refusals.refuse(kind, f"a {what} on {topic}", exc)
            return None
        try:
            return cls.from_dict(payload)
        except ValueError as exc:
            self.refusals.refuse(kind, f"{what} {payload.get('version')!r} on {topic}", exc)
            self._fail_request(payload.get("request_id"), f"invalid {what}: {exc}")
            return None

    def _on_model(self, msg: String) -> None:
        update = self._read_update(msg, MODEL_UPDATE_FORMAT, ModelUpdate, "models", MODEL_TOPIC,
                                   "model update")
        if update is None:
            return
        run_dir = self.run_dirs.get(update.run_id)
        if run_dir is not None:
            run_dir.write_json(versioned_name(run_dir.path, "models/model", update.version,
                                              update.request_id), update.to_dict())
        self.replies.post(update.request_id, update)

    def _on_controller(self, msg: String) -> None:
        update = self._read_update(msg, CONTROLLER_UPDATE_FORMAT, ControllerUpdatePayload,
                                   "controllers", CONTROLLER_TOPIC, "controller update")
        if update is None:
            return
        self.controller_update = update
        run_dir = self.run_dirs.get(update.run_id)
        if run_dir is not None:
            run_dir.write_json(versioned_name(run_dir.path, "controllers/controller",
                                              update.version, update.request_id),
                               update.to_dict())
        self.replies.post(update.request_id, update)

    def _fail_request(self, request_id: Any, reason: str) -> None:
        """A refused result for a request the worker waits on ends that wait at once, with the
        reason (as the node's own "failed" event would), instead of at its timeout."""
        if isinstance(request_id, str) and request_id:
            self.replies.post(request_id, Event(node=NAME, request_id=request_id,
                                                event="failed", stamp=time.time(),
                                                reason=reason))

    # -- readiness and status -------------------------------------------------------------------
    def _readiness(self) -> list[str]:
        """What learning still waits for (empty: ready)."""
        waiting = []
        if self._heard(EXECUTION) and not self.heartbeats[EXECUTION].fresh:
            waiting.append(f"fresh state on {self.names.state_topic}")
        waiting += [f"the {role} node" for role, peer in self.peers.items()
                    if not peer.present()]
        return waiting

    def _heard(self, role: str) -> bool:
        """A heartbeat recently (a busy machine may delay one by a period or more)."""
        return time.monotonic() - self.heard.get(role, -math.inf) <= max(
            self.names.peer_grace, 2 * self.names.status_period)

    def _check_readiness(self) -> None:
        waiting = self._readiness()
        if waiting != self.waiting_for:
            self.waiting_for = waiting
            self._publish_status("ready" if not waiting else "not_ready")

    def _set_phase(self, phase: str) -> None:
        """A phase starts: the one before it completed (progress.json says both)."""
        if self.phase and self.phase != "starting":
            self.last_completed = self.phase
        self.phase = phase
        if not phase.startswith("trial "):
            self.current_trial = None
        self._write_progress(RUNNING)
        self._publish_status("phase")

    def _on_trial_request(self, trial: dict[str, Any]) -> None:
        self.current_trial = trial

    def _write_progress(self, state: str) -> None:
        run_dir = self.run_dirs.get(self.run_id)
        if run_dir is not None and self.run_id != self.manual_run:
            run_dir.write_progress(state, self.phase, self.last_completed, self.trials_done,
                                   self.current_trial)

    def _publish_status(self, kind: str, *, ends_run: bool = False, **fields: Any) -> None:
        if self.closing:  # the worker may still report while the node goes down
            return
        status = Status(stamp=time.time(), node=self.get_fully_qualified_name(), event=kind,
                        state=self.activity, ready=not self.waiting_for,
                        waiting_for=self.waiting_for, run_id=self.run_id, phase=self.phase,
                        trials=self.trials_done, **fields).to_dict()
        # The run's log.jsonl holds its statuses from its start to its end event (`ends_run`,
        # published once _end has set IDLE), not after: a peer that leaves later is not the
        # run's. Logged first: a status that has arrived anywhere is in the log already.
        run_dir = (self.run_dirs.get(self.run_id) if self.activity != IDLE or ends_run
                   else None)
        if run_dir is not None:   # progress too: every nodes.progress_period at most
            run_dir.log(status)
        self.status_pub.publish(encode(status))

    # -- services -------------------------------------------------------------------------------
    def _busy_reason(self) -> str | None:
        if self.shutting_down:
            return f"{NAME} is shutting down"
        if self.activity == LEARNING:
            return f"already learning (run {self.run_id}: {self.phase})"
        if self.activity == RUNNING_TRIAL:
            return f"a trial is running ({self.phase})"
        return None

    def _start_refusal(self) -> str | None:
        """Why a run cannot start now (busy, or a node not ready), or None; under self.lock."""
        reason = self._busy_reason()
        waiting = self._readiness()
        if reason is None and waiting:
            reason = "not ready: waiting for " + ", ".join(waiting)
        return reason

    def _on_learn(self, _request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        with self.lock:
            reason = self._start_refusal()
            if reason is None:
                self._start(LEARNING, self._learn, self._new_run_id())
        response.success = reason is None
        learner = self.config.learner
        response.message = reason or (
            f"learning: run {self.run_id} ({learner.algorithm}, seed {learner.seed}, up to "
            f"{learner.max_trials} trials)")
        return response

    def _on_run_trial(self, _request: Trigger.Request, response: Trigger.Response
                      ) -> Trigger.Response:
        with self.lock:
            reason = self._busy_reason()
            if reason is None:
                missing = [w for w in self._readiness() if "state" in w or EXECUTION in w]
                if missing:
                    reason = "cannot run a trial: waiting for " + ", ".join(missing)
            if reason is None:
                controller, source = self._current_controller()
                message = f"running trial {self.manual_trials} with {source}"
                self._start(RUNNING_TRIAL, lambda: self._manual_trial(controller, source),
                            self.manual_run)
        response.success = reason is None
        response.message = reason or message
        return response

    def _on_abort(self, _request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        running = self.activity != IDLE
        self.cancel.set()
        self.replies.interrupt()
        for client in (self.execution_abort, self.optimization_cancel):
            if client.service_is_ready():
                client.call_async(Trigger.Request())
        response.success = True
        response.message = (f"aborting {self.activity} ({self.run_id}: {self.phase})" if running
                            else "nothing running; asked the execution node to zero the command")
        return response

    def _on_resume(self, _request: Trigger.Request, response: Trigger.Response
                   ) -> Trigger.Response:
        """Continue a run from its run directory (nodes.resume_run, or the latest run there that
        did not finish); refused with the reason (not a run directory, another configuration, a
        checkpoint of another format, finished, busy, not ready)."""
        with self.lock:
            reason = self._start_refusal()
            if reason is None:
                try:
                    path, checkpoint, previous = self._resume_target()
                except (RunDirError, CheckpointError, OSError) as exc:
                    reason = f"cannot resume: {exc}"
            if reason is None:
                self.run_dirs[path.name] = RunDirectory(path.parent, path.name)
                self._start(LEARNING, lambda: self._resume(checkpoint, previous), path.name,
                            write_config=False)
                message = f"resuming: {describe_run(previous)}"
        response.success = reason is None
        response.message = reason or message
        return response

    def _resume_target(self) -> tuple[Path, dict[str, Any] | None, dict[str, Any]]:
        """The run to resume, its checkpoint (None: no trial completed yet) and its status."""
        root = self.run_root or Path.cwd()
        if self.names.resume_run:
            named = Path(self.names.resume_run).expanduser()
            path = named if named.is_absolute() or not (root / named).exists() else root / named
        else:
            runs = [p for p in (root.iterdir() if root.is_dir() else ())
                    if (p / CONFIG_FILE).is_file() and p.name != self.manual_run
                    and not p.name.startswith("manual-")
                    and run_status(p)["outcome"] not in ("run_done", RUNNING)]
            if not runs:
                raise RunDirError(f"no unfinished run in {root} (set nodes.resume_run)")
            path = max(runs, key=lambda p: ((p / PROGRESS_FILE).stat().st_mtime
                                            if (p / PROGRESS_FILE).exists() else 0.0, p.name))
        previous = run_status(path)
        if previous["outcome"] == "run_done":
            raise RunDirError(f"run {path.name} has finished (report.json); nothing to resume")
        if previous["outcome"] == RUNNING:
            raise RunDirError(f"run {path.name} is running (trial manager process "
                              f"{json.loads((path / PROGRESS_FILE).read_text())['pid']})")
        if (path / CHECKPOINT_FILE).exists():
            return path, load_checkpoint(path / CHECKPOINT_FILE, self.config), previous
        saved = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        differ = config_differences({k: saved.get(k) for k in SECTIONS}, self.config)
        if differ:
            raise CheckpointError(f"{path / CONFIG_FILE} is of another configuration: "
                                  + "; ".join(differ))
        return path, None, previous

    def _resume(self, checkpoint: dict[str, Any] | None, previous: dict[str, Any]) -> None:
        """Keep what a crash cut off (marked, never fitted), say how the run stood, wait for a
        trial of the crashed session still running on the execution node, then learn on."""
        run_dir = self.run_dirs[self.run_id]
        completed = checkpoint["trials_completed"] if checkpoint is not None else 0
        for relative in run_dir.remove_temporaries():  # a write the crash cut short
            self.get_logger().info(f"resume: removed {relative}, left by a cut-off write")
        interrupted = keep_cut_off(run_dir, completed, previous.get("trial"))
        self._publish_status("resumed", previous=previous["outcome"], from_trial=completed,
                             last_completed=previous["last_completed"],
                             cut_off_in=previous["phase"], interrupted=interrupted,
                             message=describe_run(previous))
        self._wait_peers_idle()
        self._learn(resume=checkpoint)

    def _wait_peers_idle(self) -> None:
        """Work the crashed session left running on the other nodes (a killed trial manager
        stops none of it; a new request would be refused as busy): a trial on the execution
        node is waited for; an optimisation, whose result the resumed run computes again from
        the checkpoint, is cancelled (/ebmcpilco/policy_optimization/cancel) and waited for; a
        fit is waited for. At most plant.trial_duration + nodes.trial_timeout_margin."""
        deadline = time.monotonic() + (self.config.plant.trial_duration
                                       + self.names.trial_timeout_margin)
        announced, cancelled = "", None
        while time.monotonic() < deadline:
            busy = {role: getattr(self.heartbeats.get(role), field, None)
                    for role, field in ((EXECUTION, "running"), (MODEL_LEARNING, "busy"),
                                        (OPTIMIZATION, "busy"))}
            busy = {role: request for role, request in busy.items() if request}
            if not busy:
                return
            if (busy.get(OPTIMIZATION) not in (None, cancelled)
                    and self.optimization_cancel.service_is_ready()):
                cancelled = busy[OPTIMIZATION]
                self.get_logger().info(f"resume: cancelling optimisation request {cancelled} "
                                       "of the crashed session")
                self.optimization_cancel.call_async(Trigger.Request())
            phase = ("waiting for " + " and ".join(
                f"{role} to end {'a trial' if role == EXECUTION else 'the work'}"
                for role in busy) + " of the crashed session")
            if phase != announced:
                self._set_phase(phase)
                announced = phase
            if self.cancel.wait(self.names.status_period):
                raise Aborted("aborted while waiting for the other nodes")

    # -- work -----------------------------------------------------------------------------------
    def _new_run_id(self) -> str:
        learner = self.config.learner
        return (f"{time.strftime('%Y%m%d-%H%M%S')}-{learner.algorithm}-seed{learner.seed}-"
                f"{np.random.default_rng().integers(16**4):04x}")

    def _run_dir(self, run_id: str) -> RunDirectory | None:
        if self.run_root is None:
            return None
        if run_id not in self.run_dirs:
            self.run_dirs[run_id] = RunDirectory(self.run_root, run_id)
        return self.run_dirs[run_id]

    def _start(self, activity: str, work: Callable[[], None], run_id: str,
               write_config: bool = True) -> None:
        """Caller holds the lock and has checked the manager is idle."""
        self.cancel.clear()
        self.activity, self.run_id, self.phase = activity, run_id, "starting"
        self.last_completed, self.current_trial = "", None
        run_dir = self._run_dir(run_id)
        if run_dir is not None and activity == LEARNING and write_config:
            run_dir.write_json("config.json", {
                **self.config.to_dict(),
                **{name: dataclasses.asdict(part) for name, part in
                   (("execution", self.exe), ("nodes", self.names))}})
        self.worker = threading.Thread(target=self._work, args=(work,), name=activity,
                                       daemon=True)
        self._publish_status("started_" + activity)
        self.worker.start()

    def _work(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Aborted as exc:
            self._end("aborted", reason=str(exc) + (
                f" ({NAME} shutting down)" if self.shutting_down else ""))
        except Exception as exc:  # noqa: BLE001 - any failure ends the run, with its reason
            self.get_logger().error(f"{self.activity} failed: {exc}")
            self._end("failed", reason=f"{type(exc).__name__}: {exc}")

    def _end(self, kind: str, **fields: Any) -> None:
        with self.lock:
            if self.activity == LEARNING:
                self._write_progress(kind)
            self.activity, self.phase = IDLE, kind
        self._publish_status(kind, ends_run=True, **fields)

    def _learn(self, resume: dict[str, Any] | None = None) -> None:
        """The Learner through the other nodes, from the start or from a checkpoint."""
        config, run_id = self.config, self.run_id
        seed = config.learner.seed
        self.trials_done = resume["trials_completed"] if resume is not None else 0
        system = RemoteSystem(self.link, run_id, config.plant)
        models = RemoteModelLearning(self.link, run_id, self._resend_record)
        optimizer = RemoteOptimization(self.link, run_id, seed, models)
        learner = Learner(config, system, models, optimizer, np.random.default_rng([seed, 1]),
                          on_trial=self._on_trial, on_checkpoint=self._on_checkpoint)
        report: LearningReport = learner.run(resume)
        result = report.to_dict()
        result["opt_costs"] = report.opt_costs
        run_dir = self.run_dirs.get(run_id)
        if run_dir is not None:
            run_dir.write_json("report.json", result)
        self._end("run_done", solved=report.solved, report=result)

    def _on_trial(self, summary: TrialSummary, _trial: Trial) -> None:
        self.trials_done += 1
        self._publish_status("trial_done", trial=dataclasses.asdict(summary))

    def _on_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A trial boundary: the checkpoint first, then progress.json saying so."""
        run_dir = self.run_dirs.get(self.run_id)
        if run_dir is None:
            return
        run_dir.write_json(CHECKPOINT_FILE, checkpoint)
        summary = checkpoint["learner"]["summaries"][-1]
        self.last_completed = f"trial {summary['index']} ({summary['kind']}), checkpointed"
        self.current_trial = None
        self._write_progress(RUNNING)

    def _resend_record(self, trial: Trial) -> None:
        self.records_pub.publish(encode(trial.to_dict()))

    def _current_controller(self) -> tuple[Controller, str]:
        update = self.controller_update
        if update is not None:
            try:
                return (controller_from_dict(update.controller),
                        f"controller v{update.version} ({update.phase})")
            except (ValueError, KeyError, TypeError) as exc:
                self.get_logger().warning(f"latest controller unusable: {exc}")
        seed = int(np.random.default_rng().integers(2**31))
        return RandomController(self.config.plant.u_max, seed=seed), "random exploration"

    def _manual_trial(self, controller: Controller, source: str) -> None:
        index = self.manual_trials
        self.manual_trials += 1
        kind = ControllerKind(controller.kind).trial_kind
        trial = RemoteSystem(self.link, self.manual_run, self.config.plant).run(
            controller, kind, index)
        summary = TrialSummary.of(trial, self.config)
        self._end("trial_done", trial={**dataclasses.asdict(summary), "controller": source,
                                       "failed": trial.failed})

    # -- diagnostics and shutdown ---------------------------------------------------------------
    def _report(self) -> tuple[str, str, dict[str, Any]]:
        level = "ok" if not self.waiting_for else "warn"
        message = self.activity if not self.waiting_for else (
            "waiting for " + ", ".join(self.waiting_for))
        return level, message, {"run_id": self.run_id, "phase": self.phase,
                                "trials": self.trials_done, "bags_failed": self.bags_failed,
                                **self.refusals.values()}

    def close(self) -> None:
        """Abort the run (the worker's waits end at once), ask the execution node to zero the
        command, wait for the worker so its end ("aborted") is published and logged, then stop
        publishing."""
        self.shutting_down = True
        self.cancel.set()
        self.replies.interrupt()
        if self.activity != IDLE and self.execution_abort.service_is_ready():
            self.execution_abort.call_async(Trigger.Request())
        self.join_worker(self.worker, "the learning worker")
        self.closing = True


INTERRUPTED_FORMAT = InterruptedTrial.FORMAT  # a trial cut off with no record at all


def versioned_name(run_path: Path, stem: str, version: int, request_id: str) -> str:
    """`<stem>_vNNN.json` for an update of version NNN, unless that file holds another request's
    update: a node restarted within a run counts its versions from 1 again, and the earlier
    file must stay (then `<stem>_vNNN-<request id>.json`). The same update again (a latched
    topic re-delivering it) goes to the file it is in already."""
    relative = f"{stem}_v{version:03d}.json"
    try:
        existing = json.loads((run_path / relative).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return relative
    if isinstance(existing, dict) and existing.get("request_id") == request_id:
        return relative
    return f"{stem}_v{version:03d}-{request_id}.json"


def keep_interrupted(run_dir: RunDirectory, record: dict[str, Any], why: str) -> str:
    """A record of a trial a crash cut off, kept under trials/interrupted/: marked failed (never
    fitted) and interrupted, with the reason. Returns its path in the run directory."""
    meta = dict(record.get("meta") or {})
    meta.update({"interrupted": True, "interrupted_reason": why})
    kept = {**record, "failed": True, "meta": meta}
    relative = (f"trials/interrupted/trial_{int(record.get('index', 0)):03d}-"
                f"{meta.get('request_id') or 'unknown'}.json")
    run_dir.write_json(relative, kept)
    return relative


def keep_cut_off(run_dir: RunDirectory, completed: int, running: dict[str, Any] | None
                 ) -> list[dict[str, Any]]:
    """Before a resume: every trial record past the checkpoint (written, but the run stopped
    before its trial boundary) moves to trials/interrupted/, marked; a trial that was running
    at the crash with no record at all gets a note there (what it was, that nothing arrived)."""
    kept = []
    for path in sorted((run_dir.path / "trials").glob("trial_*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            index = int(record.get("index", -1))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        if index < completed:
            continue
        relative = keep_interrupted(run_dir, record, "the run stopped before this trial's "
                                                     "checkpoint (a crash)")
        move_bag(bag_path(path), bag_path(run_dir.path / relative))
        path.unlink()
        kept.append({"index": index, "request_id": record.get("meta", {}).get("request_id"),
                     "record": True, "path": relative})
    if running and int(running.get("index", -1)) >= completed and not any(
            k["request_id"] == running.get("request_id") for k in kept):
        relative = (f"trials/interrupted/trial_{int(running['index']):03d}-"
                    f"{running.get('request_id') or 'unknown'}.json")
        if not (run_dir.path / relative).exists():
            run_dir.write_json(relative, InterruptedTrial(
                index=int(running["index"]), kind=str(running.get("kind", "")),
                request_id=str(running.get("request_id") or "unknown"), failed=True,
                record=None,
                reason="the run crashed during this trial and no record of it arrived"
            ).to_dict())
        kept.append({**running, "record": (run_dir.path / relative).exists() and json.loads(
            (run_dir.path / relative).read_text()).get("format") != INTERRUPTED_FORMAT,
            "path": relative})
    return kept


def move_bag(source: Path, target: Path) -> None:
    """A trial's bag (nodes/bag.py) to where its record went, if it has one; a bag already
    there (an earlier resume cut short after moving it) is replaced."""
    if not source.is_dir():
        return
    if target.exists():
        shutil.rmtree(target)
    os.rename(source, target)


def main(args: Sequence[str] | None = None) -> int:
    return run_node(TrialManager, args, name=NAME)


if __name__ == "__main__":
    raise SystemExit(main())
