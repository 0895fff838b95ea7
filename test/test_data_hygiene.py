"""Data hygiene at the node graph's entries (issue 11): non-finite or malformed data is refused,
counted on /diagnostics (`rejected_*`), logged at a bounded rate, never stored or fitted.

First the refusal helpers (nodes/hygiene.py) and envelope checks (nodes/payloads.py) on their
own, then real node
processes over real DDS, driven and watched from an rclpy client: what each node logs arrives on
/rosout, its counters on /diagnostics. Every wait is on a condition with a timeout."""
from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from ebmcpilco_ros.nodes.bringup import GraphClient
from ebmcpilco_ros.core.controllers import RandomController
from ebmcpilco_ros.core.model import INPUT_NAMES, MODEL_FORMAT, SpeedIntegrationModel
from ebmcpilco_ros.core.trial import Trial
from ebmcpilco_ros.nodes import names, qos, codec
from ebmcpilco_ros.nodes.hygiene import Refusals, command_fault
from ebmcpilco_ros.nodes.payloads import (ControllerUpdatePayload, Event, FitRequest, Heartbeat,
                                          ModelUpdate, OptimizationRequestPayload, TrialRequest)

from graph_helpers import (STARTUP_TIMEOUT, can_run_trial, describe_failure, isolated_domain,
                           ros_environment, start_graph, wait_event)
from helpers import random_trials

FAST_DIAGNOSTICS = {"nodes.diagnostics_period": 0.2}
WAIT = 30.0          # a node's answer, log line or diagnostics on a busy 2-core machine
FIT_WAIT = 180.0     # a fit on two trials with the test settings, on a busy machine


# -- the helpers on their own ---------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_refusals_count_every_input_and_log_each_kind_at_a_bounded_rate():
    lines: list[str] = []
    clock = FakeClock()
    refusals = Refusals(lines.append, ("records", "models"), period=5.0, clock=clock)
    assert refusals.values() == {"rejected_records": 0, "rejected_models": 0}
    for _ in range(3):
        refusals.refuse("records", "a trial record", "states[1][0] is not finite")
    refusals.refuse("models", "a model update", "field 'dt'")
    refusals.refuse("records", "a trial record on another topic", "bad", key="other")
    assert refusals.values() == {"rejected_records": 4, "rejected_models": 1}
    assert lines == ["refused a trial record: states[1][0] is not finite",
                     "refused a model update: field 'dt'",
                     "refused a trial record on another topic: bad"]
    clock.t = 5.0      # a period later: the next line says how many were held back
    refusals.refuse("records", "a trial record", "index")
    assert lines[-1] == "refused a trial record: index (2 more like it refused since the last " \
                        "report)"
    refusals.refuse("records", "a trial record", "index")
    assert len(lines) == 4


def _model_payload(n: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    gp = {"support": rng.normal(size=(n, len(INPUT_NAMES))).tolist(),
          "targets": rng.normal(size=n).tolist(),
          "hyperparameters": {"lengthscales": [1.0] * len(INPUT_NAMES), "signal_std": 1.0,
                              "noise_std": 0.1}}
    return {"format": MODEL_FORMAT, "version": 1, "dt": 0.05, "num_data": n,
            "inputs": list(INPUT_NAMES), "gps": [gp, json.loads(json.dumps(gp))]}


def _model_update(**changes: Any) -> dict[str, Any]:
    return {"format": names.MODEL_UPDATE_FORMAT, "request_id": "fit-1", "run_id": "r",
            "version": 1, "trials": ["r/0"], "points": [3, 3], "fit_s": 0.5,
            "model": _model_payload(), **changes}


def _controller_update(**changes: Any) -> dict[str, Any]:
    return {"format": names.CONTROLLER_UPDATE_FORMAT, "request_id": "opt-1", "run_id": "r",
            "version": 1, "model_version": 1, "phase": "policy", "opt_steps": 2,
            "wall_s": {"policy": 1.0}, "node_wall_s": 1.1, "costs": [2.0, 1.0],
            "predicted_states": None, "info": {}, "optimizer_state": {},
            "controller": RandomController(10.0, seed=1).to_dict(), **changes}


def _bad_support() -> dict[str, Any]:
    model = _model_payload()
    model["gps"][0]["support"][1][4] = None      # a NaN, as it travels
    return model


def _event(**changes: Any) -> dict[str, Any]:
    return {**codec.event("n", "r", "progress"), **changes}


def _heartbeat(**changes: Any) -> dict[str, Any]:
    return {"format": names.HEARTBEAT_FORMAT, "role": "model_learning", "node": "/n",
            "stamp": 1.0, **changes}


def _fit_request(**changes: Any) -> dict[str, Any]:
    return {"format": names.FIT_REQUEST_FORMAT, "request_id": "f", "run_id": "r",
            "trials": ["r/0"], **changes}


def _optimization_request(**changes: Any) -> dict[str, Any]:
    return {"format": names.OPTIMIZATION_REQUEST_FORMAT, "request_id": "o", "run_id": "r",
            "seed": 1, "model_version": 1, "model_request_id": "f", "session": "s",
            "request": {"phase": "policy", "iteration": 0, "pretrain": False}, **changes}


def _trial_request(**changes: Any) -> dict[str, Any]:
    return {"format": names.TRIAL_REQUEST_FORMAT, "request_id": "t", "run_id": "r",
            "index": 0, "kind": "random", "controller": RandomController(10.0, seed=1).to_dict(),
            **changes}


@pytest.mark.parametrize("payload_type, payload, message", [
    (Event, _event(request_id=""), "field 'request_id' must be a non-empty string"),
    (Event, _event(event=3), "field 'event'"),
    (Event, _event(cost=None), "field 'cost' must be a finite number"),
    (Event, _event(event="missing", missing=["a", 1]),
     "field 'missing' must be a list of strings"),
    (Event, _event(event="finished", record="yes"), "field 'record'"),
    (Heartbeat, _heartbeat(role="x"), "field 'role' must be one of policy_execution"),
    (Heartbeat, _heartbeat(stamp=None), "field 'stamp'"),
    (FitRequest, _fit_request(trials="r/0"), "field 'trials'"),
    (OptimizationRequestPayload,
     _optimization_request(request={"phase": "policy", "iteration": -1, "pretrain": False}),
     "field 'request': field 'iteration' must be an integer >= 0"),
    (OptimizationRequestPayload, _optimization_request(model_request_id=None),
     "field 'model_request_id'"),
    (TrialRequest, _trial_request(index=1.5), "field 'index'"),
    (ModelUpdate, _model_update(model=_bad_support()),
     r"field 'model': model field gps\[0\]: field 'support'\[1\]\[4\] is not finite"),
    (ModelUpdate, _model_update(version=None), "field 'version'"),
    (ModelUpdate, _model_update(fit_s=None), "field 'fit_s'"),
    (ControllerUpdatePayload, _controller_update(costs=[1.0, None]),
     r"field 'costs'\[1\] is not finite"),
    (ControllerUpdatePayload, _controller_update(predicted_states=[[0.0] * 3]),
     r"field 'predicted_states' must be \(T\+1, 4\)"),
    (ControllerUpdatePayload, _controller_update(wall_s={"policy": None}), "field 'wall_s'"),
    (ControllerUpdatePayload,
     _controller_update(controller={**RandomController(10.0, seed=1).to_dict(), "u_max": None}),
     "field 'controller': random controller: field 'u_max'"),
])
def test_envelope_checks_name_the_field(payload_type, payload, message):
    with pytest.raises(ValueError, match=message):
        payload_type.from_dict(payload)


def test_envelope_checks_pass_what_the_nodes_send():
    Event.from_dict(codec.event("model_learning", "fit-1", "accepted", trials=2))
    Event.from_dict(codec.event("policy_optimization", "o", "progress", step=3, cost=1.5,
                                lr=0.01, dropout=0.25, stage="policy"))
    Heartbeat.from_dict(_heartbeat(role="policy_execution", fresh=True, state_age_s=None))
    FitRequest.from_dict(_fit_request(trials=["r/0", "r/1"]))
    OptimizationRequestPayload.from_dict(_optimization_request(
        request={"phase": "explore", "iteration": 0, "pretrain": False}))
    TrialRequest.from_dict(_trial_request())
    ModelUpdate.from_dict(_model_update())
    ControllerUpdatePayload.from_dict(_controller_update())
    ControllerUpdatePayload.from_dict(_controller_update(predicted_states=[[0.0] * 4] * 3))


def test_command_faults():
    assert command_fault([1.5]) == ("", "")
    assert command_fault([math.nan]) == ("non-finite", "the force nan is not finite")
    assert command_fault([1.0, 2.0]) == ("length", "2 values [1, 2], expected exactly one "
                                                   "force [N]")
    assert command_fault([])[0] == "length"


# -- the nodes over DDS ---------------------------------------------------------------------------
class Watch:
    """What the graph's nodes log (/rosout) and report (/diagnostics), and the JSON payloads on
    chosen topics, recorded in the test process; publishers that wait until matched."""

    def __init__(self, client: GraphClient) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.msg import Log
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        self.node = client.node
        self.cond = threading.Condition()
        self.logs: list[tuple[str, int, str]] = []                 # (logger, level, text)
        self.diagnostics: list[tuple[str, dict[str, str]]] = []    # (hardware_id, values)
        self.payloads: dict[str, list[dict[str, Any]]] = {}
        self._matched: dict[str, int] = {}
        rosout = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(Log, "/rosout", self._on_log, rosout)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 100)

    def _on_log(self, msg: Any) -> None:
        with self.cond:
            self.logs.append((msg.name, int(msg.level), msg.msg))
            self.cond.notify_all()

    def _on_diagnostics(self, msg: Any) -> None:
        with self.cond:
            for status in msg.status:
                self.diagnostics.append((status.hardware_id,
                                         {kv.key: kv.value for kv in status.values}))
            self.cond.notify_all()

    def listen(self, topic: str, qos: Any) -> None:
        from std_msgs.msg import String

        self.payloads[topic] = []

        def on_message(msg: Any) -> None:
            with self.cond:
                self.payloads[topic].append(json.loads(msg.data))
                self.cond.notify_all()
        self.node.create_subscription(String, topic, on_message, qos)

    def publisher(self, msg_type: type, topic: str, qos: Any) -> Any:
        from rclpy.event_handler import PublisherEventCallbacks

        def matched(info: Any) -> None:
            with self.cond:
                self._matched[topic] = info.current_count
                self.cond.notify_all()
        return self.node.create_publisher(msg_type, topic, qos,
                                          event_callbacks=PublisherEventCallbacks(matched=matched))

    def wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_matched(self, topics: list[str], timeout: float, reader: str = "") -> bool:
        """Each topic's publisher has matched a reader; with `reader` (a node name), the ROS
        graph lists that node among the topic's readers and the publisher has matched every
        reader listed (all of them QoS-compatible with it, or this never holds). A publisher
        matched by this process's own subscription, or by another node's, is not yet heard by
        `reader`: a message sent then is lost on a volatile topic (a flake seen once: a
        refusal never counted)."""
        def matched() -> bool:
            for topic in topics:
                if not reader:
                    if self._matched.get(topic, 0) < 1:
                        return False
                    continue
                nodes = [i.node_name for i in self.node.get_subscriptions_info_by_topic(topic)]
                if reader not in nodes or self._matched.get(topic, 0) < len(nodes):
                    return False
            return True
        # The graph's endpoint list changes without a notification here: poll it.
        deadline = time.monotonic() + timeout
        while not self.wait(matched, min(0.1, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return False
        return True

    def wait_log(self, logger: str, *fragments: str, timeout: float = WAIT) -> str | None:
        """The first line `logger` logged that contains every fragment."""
        def found() -> str | None:
            return next((text for name, _level, text in self.logs
                         if name == logger and all(f in text for f in fragments)), None)
        self.wait(lambda: found() is not None, timeout)
        return found()

    def wait_diagnostics(self, node: str, predicate: Callable[[dict[str, str]], bool],
                         timeout: float = WAIT) -> dict[str, str] | None:
        def found() -> dict[str, str] | None:
            return next((v for hw, v in reversed(self.diagnostics)
                         if hw == node and predicate(v)), None)
        self.wait(lambda: found() is not None, timeout)
        return found()

    def wait_payload(self, topic: str, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float = WAIT) -> dict[str, Any] | None:
        def found() -> dict[str, Any] | None:
            return next((p for p in self.payloads[topic] if predicate(p)), None)
        self.wait(lambda: found() is not None, timeout)
        return found()

    def logged(self, logger: str) -> str:
        with self.cond:
            return "\n".join(text for name, _level, text in self.logs if name == logger)


def _counts(values: dict[str, str] | None, *keys: str) -> dict[str, str]:
    return {k: (values or {}).get(k, "?") for k in keys}


def _string(payload: dict[str, Any] | str) -> Any:
    from std_msgs.msg import String

    return String(data=payload if isinstance(payload, str) else codec.to_json(payload))


def _record(trial: Trial, run_id: str, request_id: str = "") -> dict[str, Any]:
    return {**trial.to_dict(), "meta": {"run_id": run_id, "request_id": request_id}}


def _with_nan(record: dict[str, Any], row: int, column: int) -> dict[str, Any]:
    states = np.array(record["states"], dtype=float)
    states[row, column] = np.nan
    return {**record, "states": states}


def _unfittable(index: int, run_id: str) -> dict[str, Any]:
    """A finite trial whose cart sits 1e5 m from the origin, within 1 mm: rounding in the
    kernel's squared distances makes the GP's kernel matrix indefinite at the fit's starting
    point (test_gp.test_a_fit_that_cannot_start_says_why)."""
    T = 40
    states = np.zeros((T + 1, 4))
    states[:, 0] = 1e5 + 1e-3 * np.random.default_rng(0).uniform(size=T + 1)
    states[:, 1] = np.sin(np.arange(T + 1))
    trial = Trial(states=states, inputs=np.zeros(T), times=0.05 * np.arange(T + 1),
                  kind="random", index=index)
    return _record(trial, run_id)


@pytest.mark.timeout(60)
def test_the_graph_client_refuses_a_status_that_is_not_whole():
    """`ebmcpilco sim`/`status` read statuses through GraphClient: one without a required field,
    with a mistyped one, or not JSON is refused and counted; a whole one arrives as it was."""
    from std_msgs.msg import String

    good = {"format": names.STATUS_FORMAT, "event": "ready", "state": "idle", "ready": True,
            "waiting_for": [], "run_id": "", "phase": "idle", "trials": 0, "stamp": 1.0,
            "node": "/trial_manager"}
    bad = [{k: v for k, v in good.items() if k != "trials"}, {**good, "ready": "yes"},
           {**good, "trials": -1}, "not JSON"]
    with ros_environment(isolated_domain(44)):
        client = GraphClient()
        sender = GraphClient(name="status_sender")
        try:
            watch = Watch(sender)
            pub = watch.publisher(String, names.STATUS_TOPIC, qos.latched_qos(50))
            assert watch.wait_matched([names.STATUS_TOPIC], 30)
            for payload in (*bad, good):
                pub.publish(_string(payload))
            got = client.wait_status(lambda s: True, 30)
            assert got == good, got
            assert client.refused_statuses == len(bad)
            assert client.statuses.get(timeout=1) == good and client.statuses.empty()
        finally:
            sender.close()
            client.close()


@pytest.mark.timeout(STARTUP_TIMEOUT + 2 * FIT_WAIT + 120)
def test_model_learning_refuses_a_nan_record_and_fits_the_good_ones(tmp_path):
    """A trial record with a NaN state is refused (counted, logged, not stored: a fit naming it
    gets "missing"); the next fit on the good trials works; a fit that fails says why in
    model_learning's own log and in its "failed" event."""
    from std_msgs.msg import String

    run = "hygiene"
    good = [_record(t, run) for t in random_trials(2, seed=5)]     # indices 0 and 1
    bad = _with_nan({**good[0], "index": 2}, 12, 1)
    with ros_environment(isolated_domain(42)):
        g = start_graph(tmp_path, FAST_DIAGNOSTICS, nodes=("model_learning",))
        client = GraphClient()
        watch = Watch(client)
        try:
            watch.listen(names.MODEL_TOPIC, qos.latched_qos())
            watch.listen(names.MODEL_EVENTS_TOPIC, qos.reliable_qos(50))
            records = watch.publisher(String, names.TRIAL_RECORDS_TOPIC, qos.reliable_qos(50))
            fits = watch.publisher(String, names.FIT_REQUEST_TOPIC, qos.reliable_qos(50))
            assert watch.wait_matched([names.TRIAL_RECORDS_TOPIC, names.FIT_REQUEST_TOPIC],
                                      STARTUP_TIMEOUT), describe_failure(g)
            for record in (bad, *good):
                records.publish(_string(record))
            records.publish(_string("not JSON"))
            stored = watch.wait_diagnostics(
                "model_learning", lambda v: v.get("trials") == "2"
                and v.get("rejected_records") == "2")
            assert stored is not None, (watch.diagnostics[-1:], describe_failure(g))
            line = watch.wait_log("model_learning", f"refused trial record {run}/2 on "
                                  f"{names.TRIAL_RECORDS_TOPIC}", "field 'states'[12][1] is "
                                  "not finite")
            assert line is not None, watch.logged("model_learning")

            # The refused trial is not in the dataset: a fit naming it reports it missing.
            fits.publish(_string({"format": names.FIT_REQUEST_FORMAT, "request_id": "fit-nan",
                                  "run_id": run, "trials": [f"{run}/0", f"{run}/2"]}))
            missing = watch.wait_payload(names.MODEL_EVENTS_TOPIC,
                                         lambda e: e["request_id"] == "fit-nan")
            assert missing is not None and missing["event"] == "missing", missing
            assert missing["missing"] == [f"{run}/2"]

            # The next fit, on the good trials, works.
            fits.publish(_string({"format": names.FIT_REQUEST_FORMAT, "request_id": "fit-good",
                                  "run_id": run, "trials": [f"{run}/0", f"{run}/1"]}))
            update = watch.wait_payload(names.MODEL_TOPIC,
                                        lambda m: m["request_id"] == "fit-good", FIT_WAIT)
            assert update is not None, (watch.payloads[names.MODEL_EVENTS_TOPIC],
                                        describe_failure(g))
            model = SpeedIntegrationModel.from_dict(update["model"])
            assert model.num_data == 2 * len(good[0]["inputs"])

            # A fit that fails (finite data the GP cannot start on) says why, in the node's log
            # and in the event the trial manager would get.
            records.publish(_string(_unfittable(3, run)))
            assert watch.wait_diagnostics("model_learning", lambda v: v.get("trials") == "3")
            fits.publish(_string({"format": names.FIT_REQUEST_FORMAT, "request_id": "fit-bad",
                                  "run_id": run, "trials": [f"{run}/3"]}))
            failed = watch.wait_payload(names.MODEL_EVENTS_TOPIC,
                                        lambda e: e["request_id"] == "fit-bad"
                                        and e["event"] == "failed", FIT_WAIT)
            assert failed is not None, watch.payloads[names.MODEL_EVENTS_TOPIC]
            assert "GPFitError" in failed["reason"] and "not positive definite" in \
                failed["reason"] and "starting hyperparameters" in failed["reason"], failed
            line = watch.wait_log("model_learning", "fit fit-bad on 1 trials failed: GPFitError",
                                  "not positive definite")
            assert line is not None, watch.logged("model_learning")
        finally:
            client.close()
            g.stop()


@pytest.mark.timeout(STARTUP_TIMEOUT + 240)
def test_trial_manager_policy_execution_and_plant_count_and_log_what_they_refuse(tmp_path):
    """Garbage on each of the trial manager's input topics, bad trial requests and bad commands:
    each counted on /diagnostics and logged, none acted on; a NaN record for the running trial
    ends it with the reason at once and is never written to the run directory."""
    from std_msgs.msg import Float64MultiArray, String

    with ros_environment(isolated_domain(43)):
        g = start_graph(tmp_path, FAST_DIAGNOSTICS,
                        nodes=("sim_plant", "policy_execution", "trial_manager"))
        client = GraphClient()
        watch = Watch(client)
        try:
            watch.listen(names.TRIAL_REQUEST_TOPIC, qos.reliable_qos(50))
            watch.listen(names.EXECUTION_EVENTS_TOPIC, qos.reliable_qos(50))
            topics = {
                "execution_events": (names.EXECUTION_EVENTS_TOPIC, qos.reliable_qos(50)),
                "model_events": (names.MODEL_EVENTS_TOPIC, qos.reliable_qos(50)),
                "optimization_events": (names.OPTIMIZATION_EVENTS_TOPIC,
                                        qos.reliable_qos(50)),
                "records": (names.TRIAL_RECORDS_TOPIC, qos.reliable_qos(50)),
                "model": (names.MODEL_TOPIC, qos.latched_qos()),
                "controller": (names.CONTROLLER_TOPIC, qos.latched_qos()),
                "heartbeat": (names.heartbeat_topic("policy_execution"), qos.latched_qos()),
                "trial_request": (names.TRIAL_REQUEST_TOPIC, qos.reliable_qos(50)),
            }
            pubs = {name: watch.publisher(String, topic, qos)
                    for name, (topic, qos) in topics.items()}
            commands = watch.publisher(Float64MultiArray, "cartpole/effort_command",
                                       qos.sensor_qos())
            to_manager = [t for name, (t, _q) in topics.items() if name != "trial_request"]
            assert watch.wait_matched(to_manager, STARTUP_TIMEOUT, reader="trial_manager") \
                and watch.wait_matched([names.TRIAL_REQUEST_TOPIC], STARTUP_TIMEOUT,
                                       reader="policy_execution") \
                and watch.wait_matched(["cartpole/effort_command"], STARTUP_TIMEOUT), \
                describe_failure(g)
            ready = client.wait_status(can_run_trial, STARTUP_TIMEOUT)
            assert ready is not None, describe_failure(g)

            # -- the plant: a NaN force, two forces, none ------------------------------------
            # Sent until counted: the command topic is best effort, and the plant's reader may
            # match the new writer a moment after the writer matched it (the first batch lost).
            plant, deadline = None, time.monotonic() + WAIT
            while plant is None and time.monotonic() < deadline:
                for data in ([math.nan], [1.0, 2.0], []):
                    commands.publish(Float64MultiArray(data=data))
                plant = watch.wait_diagnostics(
                    "sim_plant", lambda v: int(v.get("rejected", "0")) >= 3, 2.0)
            assert plant is not None, (watch.wait_diagnostics("sim_plant", lambda v: True, 1.0),
                                       watch.logged("sim_plant"))
            assert plant["force_N"] == "0.0"      # nothing refused was ever applied
            for fragment in ("the force nan is not finite",
                             "2 values [1, 2], expected exactly one force [N]"):
                assert watch.wait_log("sim_plant", "refused a command on cartpole/effort_command",
                                      fragment), watch.logged("sim_plant")

            # -- the trial manager: garbage on each input topic ------------------------------
            nan_trial = _with_nan(_record(random_trials(1, seed=6)[0], "stray"), 3, 0)
            bad_model = _model_update(model=_bad_support())
            bad_controller = _controller_update(
                controller={**RandomController(10.0, seed=1).to_dict(), "u_max": None})
            garbage = {
                "execution_events": {"format": names.EVENT_FORMAT, "node": "/x",
                                     "event": "accepted", "stamp": time.time()},
                "model_events": {"format": names.EVENT_FORMAT, "node": "/x", "request_id": "r",
                                 "event": "progress", "stamp": time.time(), "cost": math.nan},
                "optimization_events": "not JSON",
                "records": nan_trial,
                "model": bad_model,
                "controller": bad_controller,
                "heartbeat": {"format": names.HEARTBEAT_FORMAT, "role": "intruder",
                              "node": "/x", "stamp": time.time()},
            }
            for name, payload in garbage.items():
                pubs[name].publish(_string(payload))
            keys = ("rejected_events", "rejected_records", "rejected_models",
                    "rejected_controllers", "rejected_heartbeats")
            expected = dict(zip(keys, ("3", "1", "1", "1", "1")))
            manager = watch.wait_diagnostics("trial_manager",
                                             lambda v: _counts(v, *keys) == expected)
            assert manager is not None, (_counts(watch.wait_diagnostics(
                "trial_manager", lambda v: True, 1.0), *keys), describe_failure(g))
            for fragments in (
                    (f"refused an event on {names.EXECUTION_EVENTS_TOPIC}",
                     "field 'request_id'"),
                    (f"refused an event on {names.MODEL_EVENTS_TOPIC}", "field 'cost'"),
                    (f"refused an event on {names.OPTIMIZATION_EVENTS_TOPIC}", "not JSON"),
                    (f"refused trial record stray/0 on {names.TRIAL_RECORDS_TOPIC}",
                     "field 'states'[3][0] is not finite"),
                    (f"refused model update 1 on {names.MODEL_TOPIC}",
                     "field 'support'[1][4] is not finite"),
                    (f"refused controller update 1 on {names.CONTROLLER_TOPIC}",
                     "field 'u_max'"),
                    (f"refused a heartbeat on {names.heartbeat_topic('policy_execution')}",
                     "field 'role'")):
                assert watch.wait_log("trial_manager", *fragments), \
                    (fragments, watch.logged("trial_manager"))

            # -- the execution node: a trial request with a NaN in its plan ------------------
            plan = {"format": "ebmcpilco.controller/1", "kind": "feedback_plan", "u_max": 10.0,
                    "seed": 0, "X": [[0.0] * 4] * 3, "U": [0.0, None], "K": [[0.0] * 4] * 2,
                    "sigma": [0.0, 0.0]}
            pubs["trial_request"].publish(_string({
                "format": names.TRIAL_REQUEST_FORMAT, "request_id": "trial-nan",
                "run_id": "stray", "index": 0, "kind": "ilqr", "controller": plan}))
            refused = watch.wait_payload(names.EXECUTION_EVENTS_TOPIC,
                                         lambda e: e.get("request_id") == "trial-nan")
            assert refused is not None and refused["event"] == "refused", refused
            assert "field 'U'[1] is not finite" in refused["reason"], refused
            assert watch.wait_diagnostics("policy_execution",
                                          lambda v: v.get("rejected_requests") == "1")
            assert watch.wait_log("policy_execution", "refused trial request 'trial-nan'",
                                  "field 'U'[1] is not finite"), watch.logged("policy_execution")

            # -- a NaN record for the running trial: the trial ends at once, with the reason,
            # and nothing non-finite reaches the run directory --------------------------------
            assert client.wait_status(can_run_trial, WAIT), describe_failure(g)
            ok, message = client.call("run_trial")
            assert ok and "random exploration" in message, message  # not the refused controller
            request = watch.wait_payload(names.TRIAL_REQUEST_TOPIC,
                                         lambda r: r["request_id"] != "trial-nan")
            assert request is not None, describe_failure(g)
            forged = _with_nan(_record(random_trials(1, seed=7)[0], request["run_id"],
                                       request["request_id"]), 5, 2)
            forged["index"] = request["index"]
            pubs["records"].publish(_string(forged))
            end = wait_event(client, ("trial_done", "failed"), WAIT)
            assert end is not None and end["event"] == "failed", end
            assert "invalid trial record" in end["reason"] and \
                "field 'states'[5][2] is not finite" in end["reason"], end
            for path in Path(tmp_path, "runs").rglob("trials/*.json"):
                Trial.from_dict(json.loads(path.read_text()))  # only finite, complete records
        finally:
            client.close()
            g.stop()
