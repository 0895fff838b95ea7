"""`policy_execution`: the real-time loop that runs one controller on the plant for one trial.

A trial request (JSON in std_msgs/String on ebmcpilco/execution/trial_request, from the trial
manager) carries the controller payload (core.controllers: random, squashed_rbf,
feedback_plan). The node answers at once on ebmcpilco/execution/events (accepted, or refused with
the reason: a trial is running, no fresh state, a bad payload), resets the plant, then runs a
steady-clock loop at plant.control_period in its own thread: read the latest state, evaluate the
controller, publish the force, record. The command goes to zero at the end, on abort and on any
error; the finished trial record (core.trial.Trial.to_dict) goes out on ebmcpilco/trial_records.

The record's inputs are the forces the plant applied, not the ones asked for: a rig's soft limits
brake the cart and its command limit clips, and a model fitted on the asked-for force would learn
that a push moved the cart when a brake held it. Input k is the mean JointState effort of the
samples stamped after command k went out, up to the state of step k + 1 (the asked-for force
where no sample reports an effort); the asked-for forces stay in meta.requested_inputs.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from ..core import cartpole
from ..core.controllers import Controller, controller_from_dict, trial_steps
from ..core.trial import Trial
from .names import (EXECUTION_ABORT_SERVICE, EXECUTION_EVENTS_TOPIC,
                    TRIAL_RECORDS_TOPIC, TRIAL_REQUEST_FORMAT, TRIAL_REQUEST_TOPIC)
from .qos import reliable_qos, sensor_qos
from .codec import decode, encode
from .requests import RequestServer
from .health import Diagnostics, Heartbeat
from .sampling import SampleReader, sampler_node, set_dds_receive_priority, set_realtime_priority
from .process import GraphNode, run_node
from .convert import command_message, effort_from_message, state_from_message
from .hygiene import Refusals
from .payloads import TrialRequest, request_id_of
from .params import declare_config

NAME = "policy_execution"
# Queue depth of the measured state (only the newest matters) and of the noise-free state (a few
# samples, to pair the one with the measured sample's stamp); true states kept for that pairing.
STATE_DEPTH, TRUE_STATE_DEPTH, TRUE_STATE_HISTORY = 1, 8, 64
# Every state sample's reported effort, taken after each command (not urgent): 128 ms of a 500 Hz
# sensor queued, and the last 0.5 s kept to average over each control period.
EFFORT_DEPTH, EFFORT_HISTORY = 64, 256
# How often the reset waits look for a state sampled after the reset [s] (a 500 Hz sensor period).
RESET_POLL = 0.002
# The plant publishes a sample's noise-free state just after its measured one, so at a tick the
# pair's second half can still be on its way; after the command the step waits this long for it
# [s], looking every TRUE_STATE_POLL [s]. Later, the queue of TRUE_STATE_DEPTH (16 ms at 500 Hz)
# would already have dropped it before the next tick.
TRUE_STATE_WAIT, TRUE_STATE_POLL = 0.005, 0.0005
# It waits only while noise-free states flow: the newest came at most this long before the sample.
TRUE_STATE_FLOWING_NS = 100_000_000


@dataclass
class TrialRun:
    """One accepted request and what its loop recorded."""

    request_id: str
    run_id: str
    index: int
    kind: str
    controller: Controller
    steps: int
    states: list[np.ndarray] = field(default_factory=list)
    true_states: list[np.ndarray | None] = field(default_factory=list)
    inputs: list[float] = field(default_factory=list)        # asked for
    applied: list[float] = field(default_factory=list)       # reported by the plant
    sent_ns: list[int] = field(default_factory=list)         # when each command went out
    stamps: list[int] = field(default_factory=list)          # each step's state stamp
    times: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    state_age: list[float] = field(default_factory=list)
    ticks: list[float] = field(default_factory=list)
    outcome: str = "finished"
    reason: str = ""


def _unwind(x: np.ndarray, turns: float) -> np.ndarray:
    """x with `turns` (a multiple of 2 pi) taken off the pole angle."""
    if not turns:
        return x
    x = x.copy()
    x[cartpole.THETA] -= turns
    return x


class PolicyExecution(GraphNode):
    """Runs trials on request; owns the command topic while one runs."""

    def __init__(self) -> None:
        super().__init__(NAME)
        config, parts = declare_config(self, ["plant"], ["execution", "nodes"])
        self.plant = config.plant
        self.exe = parts["execution"]
        self.names = parts["nodes"]
        sys.setswitchinterval(self.exe.switch_interval)
        self.latest: tuple[np.ndarray, int, int] | None = None  # (x, reception ns, stamp ns)
        self.true_states: deque[tuple[int, np.ndarray]] = deque(maxlen=TRUE_STATE_HISTORY)
        self.efforts: deque[tuple[int, float]] = deque(maxlen=EFFORT_HISTORY)  # (stamp, N)
        self.bad_states = 0
        self.refusals = Refusals(self.get_logger().warning, ("requests",))
        self.abort = threading.Event()
        self.lock = threading.Lock()
        self.current: TrialRun | None = None
        self.thread: threading.Thread | None = None
        self.last_timing: dict[str, float] = {}
        self.trials_run = 0
        self.realtime_allowed = self.exe.realtime_priority > 0
        self.closing = False
        depth = self.names.record_depth
        self.command_pub = self.create_publisher(Float64MultiArray, self.names.command_topic,
                                                 sensor_qos())
        self.events_pub = self.create_publisher(String, EXECUTION_EVENTS_TOPIC,
                                                reliable_qos(depth))
        self.records_pub = self.create_publisher(String, TRIAL_RECORDS_TOPIC, reliable_qos(depth))
        # answers and events only: a trial's own lifecycle (started, finished, abort) is here
        self.requests = RequestServer(NAME, self.events_pub.publish, depth,
                                      lambda busy: f"a trial is already running (request {busy})")
        self.sampler = sampler_node(self)
        self.state_reader = SampleReader(self.sampler, JointState,
                                         self.resolve_topic_name(self.names.state_topic),
                                         STATE_DEPTH)
        self.effort_reader = SampleReader(self.sampler, JointState,
                                          self.resolve_topic_name(self.names.state_topic),
                                          EFFORT_DEPTH)
        self.true_reader = SampleReader(self.sampler, JointState,
                                        self.resolve_topic_name(self.names.true_state_topic),
                                        TRUE_STATE_DEPTH)
        self.create_subscription(String, TRIAL_REQUEST_TOPIC, self._on_request,
                                 reliable_qos(depth))
        self.create_service(Trigger, EXECUTION_ABORT_SERVICE, self._on_abort)
        self.reset_client = self.create_client(Trigger, self.names.reset_service)
        self.heartbeat = Heartbeat(self, NAME, self.names, self._heartbeat)
        self.diagnostics = Diagnostics(self, self.names, self._report)
        set_dds_receive_priority(self, self.exe.realtime_priority)

    # -- state ----------------------------------------------------------------------------------
    def latest_state(self) -> tuple[np.ndarray, int, int] | None:
        """The newest measured state (x, reception ns, stamp ns), taken from the queue now."""
        taken = self.state_reader.take()
        for msg, received in reversed(taken):
            try:
                x, stamp = state_from_message(msg, self.names.joint_names)
            except ValueError:
                self.bad_states += 1
                continue
            self.latest = (x, received, stamp)
            break
        return self.latest

    def state_age(self) -> float:
        latest = self.latest_state()
        return math.inf if latest is None else (time.time_ns() - latest[1]) * 1e-9

    def _take_true_states(self) -> None:
        for msg, _received in self.true_reader.take():
            try:
                x, stamp = state_from_message(msg, self.names.joint_names)
            except ValueError:
                continue
            self.true_states.append((stamp, x))

    def _take_efforts(self) -> None:
        for msg, _received in self.effort_reader.take():
            try:
                _x, stamp = state_from_message(msg, self.names.joint_names)
            except ValueError:
                continue
            force = effort_from_message(msg, self.names.joint_names)
            if force is not None:
                self.efforts.append((stamp, force))

    def _applied_force(self, after_ns: int, until_ns: int) -> float | None:
        """Mean reported effort of the samples stamped in (after_ns, until_ns]; None if none."""
        self._take_efforts()
        forces = [f for s, f in self.efforts if after_ns < s <= until_ns]
        return sum(forces) / len(forces) if forces else None

    def _true_state(self, stamp: int) -> np.ndarray | None:
        """The noise-free state stamped `stamp`, waiting up to TRUE_STATE_WAIT for it to arrive."""
        deadline = time.monotonic() + TRUE_STATE_WAIT
        while True:
            self._take_true_states()
            for s, x in reversed(self.true_states):
                if s == stamp:
                    return x
                if s < stamp:
                    break
            newest = self.true_states[-1][0] if self.true_states else None
            if newest is None or newest > stamp or stamp - newest > TRUE_STATE_FLOWING_NS:
                return None          # none flowing (a rig), or a newer one came: this one dropped
            if time.monotonic() >= deadline or self.abort.wait(TRUE_STATE_POLL):
                return None

    def _heartbeat(self) -> dict[str, Any]:
        """For the trial manager: whether the state is fresh, whether a trial runs."""
        age = self.state_age()
        running = self.current
        return {"state_age_s": age if math.isfinite(age) else None,
                "fresh": age <= self.exe.request_state_timeout,
                "request_state_timeout": self.exe.request_state_timeout,
                "running": running.request_id if running is not None else None}

    # -- requests -------------------------------------------------------------------------------
    def _send_event(self, request_id: str, kind: str, **fields: Any) -> None:
        self.requests.send(request_id, kind, **fields)

    def _on_request(self, msg: String) -> None:
        try:
            req = decode(msg, TRIAL_REQUEST_FORMAT)
            request_id = request_id_of(req, TRIAL_REQUEST_FORMAT)  # the answer needs it
        except ValueError as exc:
            self.refusals.refuse("requests", "a trial request", exc)
            return
        if self.requests.answer_again(request_id):
            return
        reason = self._refusal()
        if reason is None:
            try:
                request = TrialRequest.from_dict(req)
                controller = controller_from_dict(request.controller)
            except (ValueError, KeyError, TypeError) as exc:
                reason = f"malformed trial request: {exc}"
                self.refusals.refuse("requests", f"trial request {request_id[:80]!r}", reason)
        if reason is not None:
            self._send_event(request_id, "refused", reason=reason)
            return
        run = TrialRun(request_id=request_id, run_id=request.run_id, index=request.index,
                       kind=request.kind, controller=controller,
                       steps=trial_steps(controller, self.plant.steps))
        with self.lock:
            self.current = run
            self.abort.clear()
            self.thread = threading.Thread(target=self._run_trial, args=(run,),
                                           name="control-loop", daemon=True)
            self.thread.start()
        self._send_event(request_id, "accepted", steps=run.steps,
                         period=self.plant.control_period)

    def _refusal(self) -> str | None:
        with self.lock:
            if self.closing:
                return "the execution node is shutting down"
            if self.current is not None:
                return f"a trial is already running (request {self.current.request_id})"
        age = self.state_age()
        if age > self.exe.request_state_timeout:
            seen = "never" if math.isinf(age) else f"{age * 1e3:.0f} ms ago"
            return (f"no fresh state on {self.names.state_topic} (last {seen}; "
                    f"execution.request_state_timeout = {self.exe.request_state_timeout} s)")
        return None

    def _on_abort(self, _request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        running = self.current
        self.abort.set()
        self.command_pub.publish(command_message(0.0))
        response.success = True
        response.message = (f"aborting trial {running.request_id}" if running is not None
                            else "no trial running; command zeroed")
        return response

    # -- the trial ------------------------------------------------------------------------------
    def _run_trial(self, run: TrialRun) -> None:
        if self.realtime_allowed:  # one warning, not one per trial, where it is refused
            self.realtime_allowed = set_realtime_priority(self, self.exe.realtime_priority,
                                                          "the control loop")
        try:
            if self.exe.reset_before_trial:
                self._reset_plant()
            self._send_event(run.request_id, "started")
            self._control_loop(run)
        except Exception as exc:  # noqa: BLE001 - any failure ends the trial with zero force
            run.outcome = "aborted" if self.abort.is_set() else "failed"
            run.reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.command_pub.publish(command_message(0.0))
        self._finish(run)

    def _wait_unless_aborted(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Poll `ready` every RESET_POLL until it holds (True) or `timeout` passes (False);
        RuntimeError on abort or shutdown, so close() never waits for a reset timeout."""
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                return False
            if self.abort.wait(RESET_POLL):
                raise RuntimeError("aborted during the plant reset")
        return True

    def _reset_plant(self) -> None:
        timeout = self.exe.reset_timeout
        if not self._wait_unless_aborted(self.reset_client.service_is_ready, timeout):
            raise RuntimeError(f"no reset service {self.reset_client.srv_name} within {timeout} s")
        done = threading.Event()
        future = self.reset_client.call_async(Trigger.Request())
        future.add_done_callback(lambda _f: done.set())
        if not self._wait_unless_aborted(done.is_set, timeout) or future.result() is None:
            raise RuntimeError(f"plant reset did not answer within {timeout} s")
        if not future.result().success:
            raise RuntimeError(f"plant reset refused: {future.result().message}")
        reset_ns = self.get_clock().now().nanoseconds
        deadline = time.monotonic() + timeout
        while True:
            latest = self.latest_state()
            if latest is not None and latest[2] >= reset_ns:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no state sampled after the reset within {timeout} s")
            if self.abort.wait(RESET_POLL):
                raise RuntimeError("aborted during the plant reset")

    def _control_loop(self, run: TrialRun) -> None:
        period, u_max = self.plant.control_period, self.plant.u_max
        run.controller.reset()
        start = time.monotonic()
        turns = 0.0   # whole pole turns at the start, taken off every angle of the trial
        last = run.steps  # the trial's last state, earlier where the controller has finished
        for k in range(run.steps + 1):
            deadline = start + k * period
            if self.abort.wait(max(0.0, deadline - time.monotonic())):
                run.outcome, run.reason = "aborted", f"aborted at step {k}"
                return
            woke = time.monotonic()
            latest = self.latest_state()
            age = math.inf if latest is None else (time.time_ns() - latest[1]) * 1e-9
            if latest is None or age > self.exe.state_timeout:
                run.outcome = "failed"
                run.reason = (f"state lost at step {k}: last state {age * 1e3:.0f} ms old "
                              f"(execution.state_timeout = {self.exe.state_timeout} s)")
                return
            x, _received, stamp = latest
            if k == 0:
                turns = cartpole.hanging_turns(x[cartpole.THETA])
            x = _unwind(x, turns)
            run.states.append(x)
            run.stamps.append(stamp)
            run.times.append(woke - start)
            if k < last and run.controller.finished(k, x):
                last = k
            if k < last:
                u = float(run.controller(k, x))
                if not math.isfinite(u):
                    raise ValueError(f"controller gave a non-finite force at step {k}")
                u = min(max(u, -u_max), u_max)
                self.command_pub.publish(command_message(u))
                sent = time.monotonic()
                run.sent_ns.append(time.time_ns())
                run.inputs.append(u)
                run.lateness.append(woke - deadline)
                run.compute.append(sent - woke)
                run.state_age.append(age)
                run.ticks.append(woke)
            if k > 0:                                        # after the command: not urgent
                applied = self._applied_force(run.sent_ns[k - 1], stamp)
                run.applied.append(run.inputs[k - 1] if applied is None else applied)
            true_state = self._true_state(stamp)
            run.true_states.append(None if true_state is None else _unwind(true_state, turns))
            if k == last:
                return

    def _finish(self, run: TrialRun) -> None:
        n = len(run.states)
        record = None
        if n > 0:
            n_in = min(len(run.inputs), n - 1)
            missing = sum(t is None for t in run.true_states)
            have_true = missing == 0
            if 0 < missing < len(run.true_states):
                self.get_logger().warning(
                    f"trial {run.request_id}: no noise-free state for {missing} of "
                    f"{len(run.true_states)} samples; recorded without true_states")
            meta: dict[str, Any] = {
                "system": "ros", "node": self.get_fully_qualified_name(),
                "run_id": run.run_id, "request_id": run.request_id,
                "controller": getattr(run.controller, "kind", "unknown"),
                "outcome": run.outcome, "reason": run.reason,
                "period": self.plant.control_period, "state_topic": self.names.state_topic,
                "requested_inputs": [round(u, 6) for u in run.inputs[:n_in]],
                # the plant's stamp of each state, and when each command went out [ns]: the
                # trial's bag carries them (nodes/bag.py)
                "state_stamps_ns": run.stamps[:n], "command_stamps_ns": run.sent_ns[:n_in],
            }
            if self.exe.record_timing:
                meta["timing"] = {name: [round(v, 7) for v in values[:n_in]] for name, values in
                                  (("lateness_s", run.lateness), ("compute_s", run.compute),
                                   ("state_age_s", run.state_age), ("tick_s", run.ticks))}
                self.last_timing = _timing_summary(run)
            trial = Trial(states=np.array(run.states), inputs=np.array(run.applied[:n_in]),
                          times=np.array(run.times), kind=run.kind, index=run.index,
                          true_states=np.array(run.true_states) if have_true else None,
                          failed=run.outcome != "finished", meta=meta)
            record = trial.to_dict()
            self.records_pub.publish(encode(record))
        self.trials_run += 1
        with self.lock:
            self.current = None
        self._send_event(run.request_id, run.outcome, reason=run.reason,
                         record=record is not None, steps=len(run.inputs))
        if run.outcome != "finished":
            self.get_logger().warning(f"trial {run.request_id} {run.outcome}: {run.reason}")

    # -- diagnostics and shutdown ---------------------------------------------------------------
    def _report(self) -> tuple[str, str, dict[str, Any]]:
        age = self.state_age()
        running = self.current
        fresh = age <= self.exe.request_state_timeout
        level = "ok" if fresh else "warn"
        message = (f"running trial {running.request_id}" if running is not None
                   else "idle" if fresh else "no fresh state")
        return level, message, {"state_age_ms": f"{age * 1e3:.1f}" if math.isfinite(age)
                                else "never", "trials": self.trials_run,
                                "bad_states": self.bad_states, **self.refusals.values(),
                                **self.last_timing}

    def close(self) -> None:
        """Abort the running trial (the loop wakes at once, zeroes the command and publishes
        the record), wait for the loop, zero the command again."""
        with self.lock:
            self.closing = True
            thread = self.thread
        self.abort.set()
        self.command_pub.publish(command_message(0.0))
        stopped = self.join_worker(thread, "the control loop")
        self.command_pub.publish(command_message(0.0))
        if stopped:  # a loop still running may read from the sampler's subscriptions
            self.sampler.destroy_node()


def _timing_summary(run: TrialRun) -> dict[str, float]:
    """Last trial's loop timing for /diagnostics [ms]."""
    if not run.lateness:
        return {}
    late = np.array(run.lateness) * 1e3
    return {"lateness_p99_ms": round(float(np.percentile(late, 99)), 3),
            "lateness_max_ms": round(float(late.max()), 3),
            "compute_max_ms": round(float(np.max(run.compute) * 1e3), 3)}


def main(args: Sequence[str] | None = None) -> int:
    return run_node(PolicyExecution, args, name=NAME)


if __name__ == "__main__":
    raise SystemExit(main())
