"""`trial_manager`: runs the learning loop (core.learner.Learner) through the other nodes.

Services (std_srvs/Trigger, all answered at once, the work goes on in a worker thread):
    ebmcpilco/learn      start a learning run (MC-PILCO or EB-MC-PILCO per learner.algorithm);
                         refused with the reason when already busy or not ready
    ebmcpilco/run_trial  one trial with the current controller (the newest on
                         ebmcpilco/controller; random exploration before any)
    ebmcpilco/abort      stop the run or trial; the execution node zeroes the command at once
Progress goes to ebmcpilco/status (latched JSON, ebmcpilco.status/1) and /diagnostics; the run
directory (rundir.py) gets every trial, model and controller and a JSON-lines log.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ..core.config import SECTIONS
from ..core.controllers import Controller, RandomController, controller_from_dict
from ..core.cost import trajectory_cost
from ..core.learner import Learner, LearningReport, TrialSummary
from ..core.trial import TRIAL_FORMAT, Trial, swing_up_success
from .common import (ABORT_SERVICE, CONTROLLER_TOPIC, CONTROLLER_UPDATE_FORMAT,
                     EXECUTION_ABORT_SERVICE, EXECUTION_EVENTS_TOPIC, EVENT_FORMAT,
                     HEARTBEAT_FORMAT,
                     FIT_REQUEST_TOPIC, LEARN_SERVICE, MODEL_EVENTS_TOPIC, MODEL_TOPIC,
                     MODEL_UPDATE_FORMAT, OPTIMIZATION_CANCEL_SERVICE, OPTIMIZATION_EVENTS_TOPIC,
                     OPTIMIZATION_REQUEST_TOPIC, RUN_TRIAL_SERVICE, STATUS_FORMAT, STATUS_TOPIC,
                     TRIAL_RECORDS_TOPIC, TRIAL_REQUEST_TOPIC, Aborted, Diagnostics, GraphNode,
                     PeerWatch, Replies, decode, encode, heartbeat_topic, latched_qos,
                     reliable_qos, run_node)
from .hygiene import (Refusals, check_controller_update, check_event, check_heartbeat,
                      check_model_update, record_label)
from .params import declare_config
from .remote import (EXECUTION, MODEL_LEARNING, OPTIMIZATION, Link, RemoteModelLearning,
                     RemoteOptimization, RemoteSystem)
from .rundir import RunDirectory

NAME = "trial_manager"
IDLE, LEARNING, RUNNING_TRIAL = "idle", "learning", "running_trial"
KIND_OF_CONTROLLER = {"random": "random", "squashed_rbf": "policy", "feedback_plan": "ilqr"}


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
        self.worker: threading.Thread | None = None
        self.heartbeats: dict[str, dict[str, Any]] = {}
        self.heard: dict[str, float] = {}
        self.controller_update: dict[str, Any] | None = None
        self.run_dirs: dict[str, RunDirectory] = {}
        self.manual_run = time.strftime("manual-%Y%m%d-%H%M%S")
        self.manual_trials = 0
        self.waiting_for: list[str] = ["startup"]
        self.refusals = Refusals(self.get_logger().warning, (
            "events", "records", "models", "controllers", "heartbeats"))
        self.closing = False
        self.shutting_down = False  # close() has begun: the worker ends, then closing
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
        self.execution_abort = self.create_client(Trigger, EXECUTION_ABORT_SERVICE)
        self.optimization_cancel = self.create_client(Trigger, OPTIMIZATION_CANCEL_SERVICE)
        self.link = Link(self.replies, self.cancel, self.names, self.request_pubs, self.peers,
                         self._set_phase)
        self.create_timer(self.names.status_period, self._check_readiness)
        self.diagnostics = Diagnostics(self, self.names, self._report)
        self._publish_status("started")

    # -- incoming -------------------------------------------------------------------------------
    def _on_heartbeat(self, msg: String, topic: str = "") -> None:
        """A worker node is alive (the execution node also says whether its state is fresh)."""
        try:
            beat = decode(msg, HEARTBEAT_FORMAT)
            check_heartbeat(beat, self.request_pubs)
        except ValueError as exc:
            self.refusals.refuse("heartbeats", f"a heartbeat on {topic}", exc, key=topic)
            return
        role = str(beat["role"])
        self.heartbeats[role] = beat
        self.heard[role] = time.monotonic()

    def _on_event(self, msg: String, topic: str = "") -> None:
        try:
            ev = decode(msg, EVENT_FORMAT)
            check_event(ev)
        except ValueError as exc:
            self.refusals.refuse("events", f"an event on {topic}", exc, key=topic)
            return
        request_id = str(ev.get("request_id", ""))
        self.replies.post(request_id, {"type": "event", **ev})
        if ev.get("event") == "progress" and request_id:
            self._publish_status("progress", progress={k: ev[k] for k in ev if k not in (
                "format", "node", "request_id", "event", "stamp")})

    def _on_record(self, msg: String) -> None:
        try:
            record = decode(msg, TRIAL_FORMAT)
        except ValueError as exc:
            self.refusals.refuse("records", f"a trial record on {TRIAL_RECORDS_TOPIC}", exc)
            return
        meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
        try:
            Trial.from_dict(record)  # malformed or not finite: never written, never used
        except (ValueError, KeyError, TypeError) as exc:
            self.refusals.refuse("records", f"trial record {record_label(record)} on "
                                            f"{TRIAL_RECORDS_TOPIC}", exc)
            self._fail_request(meta.get("request_id"), f"invalid trial record: {exc}")
            return
        run_dir = self.run_dirs.get(str(meta.get("run_id", "")))
        if run_dir is not None:
            run_dir.write_json(f"trials/trial_{int(record.get('index', 0)):03d}.json", record)
        self.replies.post(str(meta.get("request_id", "")), {"type": "record", "record": record})

    def _on_model(self, msg: String) -> None:
        try:
            update = decode(msg, MODEL_UPDATE_FORMAT)
        except ValueError as exc:
            self.refusals.refuse("models", f"a model update on {MODEL_TOPIC}", exc)
            return
        try:
            check_model_update(update)
        except ValueError as exc:
            self.refusals.refuse("models", f"model update {update.get('version')!r} on "
                                           f"{MODEL_TOPIC}", exc)
            self._fail_request(update.get("request_id"), f"invalid model update: {exc}")
            return
        run_dir = self.run_dirs.get(str(update.get("run_id", "")))
        if run_dir is not None:
            run_dir.write_json(f"models/model_v{int(update.get('version', 0)):03d}.json", update)
        self.replies.post(str(update.get("request_id", "")), {"type": "model", **update})

    def _on_controller(self, msg: String) -> None:
        try:
            update = decode(msg, CONTROLLER_UPDATE_FORMAT)
        except ValueError as exc:
            self.refusals.refuse("controllers", f"a controller update on {CONTROLLER_TOPIC}", exc)
            return
        try:
            check_controller_update(update)
        except ValueError as exc:
            self.refusals.refuse("controllers", f"controller update {update.get('version')!r} "
                                                f"on {CONTROLLER_TOPIC}", exc)
            self._fail_request(update.get("request_id"), f"invalid controller update: {exc}")
            return
        self.controller_update = update
        run_dir = self.run_dirs.get(str(update.get("run_id", "")))
        if run_dir is not None:
            run_dir.write_json(f"controllers/controller_v{int(update.get('version', 0)):03d}.json",
                               update)
        self.replies.post(str(update.get("request_id", "")), {"type": "controller", **update})

    def _fail_request(self, request_id: Any, reason: str) -> None:
        """A refused result for a request the worker waits on ends that wait at once, with the
        reason (as the node's own "failed" event would), instead of at its timeout."""
        if isinstance(request_id, str) and request_id:
            self.replies.post(request_id, {"type": "event", "event": "failed", "node": NAME,
                                           "request_id": request_id, "reason": reason})

    # -- readiness and status -------------------------------------------------------------------
    def _readiness(self) -> list[str]:
        """What learning still waits for (empty: ready)."""
        waiting = []
        if self._heard(EXECUTION) and not self.heartbeats[EXECUTION].get("fresh"):
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
        self.phase = phase
        self._publish_status("phase")

    def _publish_status(self, kind: str, **fields: Any) -> None:
        if self.closing:  # the worker may still report while the node goes down
            return
        status = {"format": STATUS_FORMAT, "stamp": time.time(),
                  "node": self.get_fully_qualified_name(), "event": kind,
                  "state": self.activity, "ready": not self.waiting_for,
                  "waiting_for": self.waiting_for, "run_id": self.run_id, "phase": self.phase,
                  "trials": self.trials_done, **fields}
        self.status_pub.publish(encode(status))
        run_dir = self.run_dirs.get(self.run_id)
        if run_dir is not None and kind != "progress":
            run_dir.log(status)

    # -- services -------------------------------------------------------------------------------
    def _busy_reason(self) -> str | None:
        if self.shutting_down:
            return f"{NAME} is shutting down"
        if self.activity == LEARNING:
            return f"already learning (run {self.run_id}: {self.phase})"
        if self.activity == RUNNING_TRIAL:
            return f"a trial is running ({self.phase})"
        return None

    def _on_learn(self, _request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        with self.lock:
            reason = self._busy_reason()
            waiting = self._readiness()
            if reason is None and waiting:
                reason = "not ready: waiting for " + ", ".join(waiting)
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

    # -- work -----------------------------------------------------------------------------------
    def _new_run_id(self) -> str:
        learner = self.config.learner
        return (f"{time.strftime('%Y%m%d-%H%M%S')}-{learner.algorithm}-seed{learner.seed}-"
                f"{np.random.default_rng().integers(16**4):04x}")

    def _run_dir(self, run_id: str) -> RunDirectory | None:
        if not self.names.run_directory:
            return None
        if run_id not in self.run_dirs:
            self.run_dirs[run_id] = RunDirectory(Path(self.names.run_directory).expanduser(),
                                                 run_id)
        return self.run_dirs[run_id]

    def _start(self, activity: str, work: Callable[[], None], run_id: str) -> None:
        """Caller holds the lock and has checked the manager is idle."""
        self.cancel.clear()
        self.activity, self.run_id, self.phase = activity, run_id, "starting"
        run_dir = self._run_dir(run_id)
        if run_dir is not None and activity == LEARNING:
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
            self.activity, self.phase = IDLE, kind
        self._publish_status(kind, **fields)

    def _learn(self) -> None:
        config, run_id = self.config, self.run_id
        seed = config.learner.seed
        self.trials_done = 0
        system = RemoteSystem(self.link, run_id, config.plant)
        models = RemoteModelLearning(self.link, run_id, self._resend_record)
        optimizer = RemoteOptimization(self.link, run_id, seed, models)
        learner = Learner(config, system, models, optimizer, np.random.default_rng([seed, 1]),
                          on_trial=self._on_trial)
        report: LearningReport = learner.run()
        result = report.to_dict()
        result["opt_costs"] = report.opt_costs
        run_dir = self.run_dirs.get(run_id)
        if run_dir is not None:
            run_dir.write_json("report.json", result)
        self._end("run_done", solved=report.solved, report=result)

    def _on_trial(self, summary: TrialSummary, _trial: Trial) -> None:
        self.trials_done += 1
        self._publish_status("trial_done", trial=dataclasses.asdict(summary))

    def _resend_record(self, trial: Trial) -> None:
        self.records_pub.publish(encode(trial.to_dict()))

    def _current_controller(self) -> tuple[Controller, str]:
        update = self.controller_update
        if update is not None:
            try:
                return (controller_from_dict(update["controller"]),
                        f"controller v{update.get('version')} ({update.get('phase')})")
            except (ValueError, KeyError, TypeError) as exc:
                self.get_logger().warning(f"latest controller unusable: {exc}")
        seed = int(np.random.default_rng().integers(2**31))
        return RandomController(self.config.plant.u_max, seed=seed), "random exploration"

    def _manual_trial(self, controller: Controller, source: str) -> None:
        index = self.manual_trials
        self.manual_trials += 1
        kind = KIND_OF_CONTROLLER.get(getattr(controller, "kind", ""), "policy")
        trial = RemoteSystem(self.link, self.manual_run, self.config.plant).run(
            controller, kind, index)
        states = trial.true_states if trial.true_states is not None else trial.states
        summary = TrialSummary(index=index, kind=kind,
                               success=swing_up_success(trial, self.config.success),
                               cost=trajectory_cost(states, self.config.cost),
                               duration_s=trial.duration)
        self._end("trial_done", trial={**dataclasses.asdict(summary), "controller": source,
                                       "failed": trial.failed})

    # -- diagnostics and shutdown ---------------------------------------------------------------
    def _report(self) -> tuple[str, str, dict[str, Any]]:
        level = "ok" if not self.waiting_for else "warn"
        message = self.activity if not self.waiting_for else (
            "waiting for " + ", ".join(self.waiting_for))
        return level, message, {"run_id": self.run_id, "phase": self.phase,
                                "trials": self.trials_done, **self.refusals.values()}

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


def main(args: Sequence[str] | None = None) -> int:
    return run_node(TrialManager, args, name=NAME)


if __name__ == "__main__":
    raise SystemExit(main())
