"""What every node shares: QoS profiles, JSON-in-String payloads, diagnostics, the process main.

Payload encoding: structured data (trial records, models, controllers, requests, events, status)
travels as one JSON object inside `std_msgs/String`, with a "format" field `ebmcpilco.<kind>/<n>`
that a receiver checks before reading anything else (docs/NODES.md lists every format).
"""
from __future__ import annotations

import faulthandler
import importlib
import json
import math
import os
import signal
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterable, NoReturn

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import (Executor, ExternalShutdownException, ShutdownException,
                             SingleThreadedExecutor)
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String

from ..core.config import ConfigError
from ..hardware.driver import set_thread_priority
from . import STOP_BOUND_S
from .config import NodesConfig
from .params import check_params_files
from . import payloads
from .payloads import Event

# -- topics and services (relative names: they resolve inside the node's namespace) -------------
LEARN_SERVICE = "ebmcpilco/learn"
RESUME_SERVICE = "ebmcpilco/resume"
RUN_TRIAL_SERVICE = "ebmcpilco/run_trial"
ABORT_SERVICE = "ebmcpilco/abort"
STATUS_TOPIC = "ebmcpilco/status"
TRIAL_REQUEST_TOPIC = "ebmcpilco/execution/trial_request"
EXECUTION_EVENTS_TOPIC = "ebmcpilco/execution/events"
EXECUTION_ABORT_SERVICE = "ebmcpilco/execution/abort"
TRIAL_RECORDS_TOPIC = "ebmcpilco/trial_records"
FIT_REQUEST_TOPIC = "ebmcpilco/model_learning/fit_request"
MODEL_EVENTS_TOPIC = "ebmcpilco/model_learning/events"
MODEL_TOPIC = "ebmcpilco/model"
OPTIMIZATION_REQUEST_TOPIC = "ebmcpilco/policy_optimization/request"
OPTIMIZATION_EVENTS_TOPIC = "ebmcpilco/policy_optimization/events"
OPTIMIZATION_CANCEL_SERVICE = "ebmcpilco/policy_optimization/cancel"
CONTROLLER_TOPIC = "ebmcpilco/controller"
DIAGNOSTICS_TOPIC = "/diagnostics"

# -- payload formats: one dataclass each in payloads.py ------------------------------------------
TRIAL_REQUEST_FORMAT = payloads.TRIAL_REQUEST_FORMAT
FIT_REQUEST_FORMAT = payloads.FIT_REQUEST_FORMAT
OPTIMIZATION_REQUEST_FORMAT = payloads.OPTIMIZATION_REQUEST_FORMAT
EVENT_FORMAT = payloads.EVENT_FORMAT
MODEL_UPDATE_FORMAT = payloads.MODEL_UPDATE_FORMAT
CONTROLLER_UPDATE_FORMAT = payloads.CONTROLLER_UPDATE_FORMAT
STATUS_FORMAT = payloads.STATUS_FORMAT
HEARTBEAT_FORMAT = payloads.HEARTBEAT_FORMAT
# Events that answer a request (sent once per request id; a resent request gets the same one).
ANSWER_EVENTS = payloads.ANSWER_EVENTS


def heartbeat_topic(role: str) -> str:
    """Each worker node's heartbeat: ebmcpilco/<role>/heartbeat (latched JSON)."""
    return f"ebmcpilco/{role}/heartbeat"


# -- QoS (DESIGN.md): sensor data for state and command, latched for models, controllers and
# status, reliable for trial records, requests and events ----------------------------------------
def sensor_qos() -> QoSProfile:
    return qos_profile_sensor_data


def latched_qos(depth: int = 1) -> QoSProfile:
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def reliable_qos(depth: int) -> QoSProfile:
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


# -- JSON payloads --------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """NaN/inf are not JSON: they travel as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(payload: dict[str, Any]) -> str:
    try:
        return json.dumps(payload, default=_jsonable, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(json.loads(json.dumps(payload, default=_jsonable))),
                          allow_nan=False)


def encode(payload: dict[str, Any]) -> String:
    return String(data=to_json(payload))


def decode(msg: String, expected_format: str) -> dict[str, Any]:
    """The payload of a String message; ValueError unless it is JSON of the expected format."""
    try:
        payload = json.loads(msg.data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"expected format {expected_format}, got {got!r}")
    return payload


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def event(node: str, request_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    """An acknowledgement, refusal or progress note about one request (`payloads.Event`: a
    field the format does not know is a TypeError here, at the sender)."""
    return Event(node=node, request_id=request_id, event=kind, stamp=time.time(),
                 **fields).to_dict()


class Heartbeat:
    """A worker node's sign of life for the trial manager, every nodes.status_period.

    DDS keeps a killed process's readers matched for many seconds; the manager counts a node as
    present only while its heartbeat comes.
    """

    def __init__(self, node: Node, role: str, nodes: NodesConfig,
                 fields: Callable[[], dict[str, Any]] | None = None) -> None:
        self.node = node
        self.role = role
        self.fields = fields or (lambda: {})
        self.pub = node.create_publisher(String, heartbeat_topic(role), latched_qos())
        self.timer = node.create_timer(nodes.status_period, self.publish)

    def publish(self) -> None:
        self.pub.publish(encode(payloads.Heartbeat(
            role=self.role, node=self.node.get_fully_qualified_name(), stamp=time.time(),
            **self.fields()).to_dict()))


class Answers:
    """The answer each recent request got: a request sent again (its first copy may have gone to
    a reader that was not yet matched) gets the same answer instead of being run twice."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._answers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._answers.get(request_id)

    def record(self, request_id: str, answer: dict[str, Any]) -> None:
        with self._lock:
            self._answers[request_id] = answer
            while len(self._answers) > self.size:
                self._answers.pop(next(iter(self._answers)))


# -- waiting for replies from other nodes (worker threads only, never the executor) ---------------
class RemoteError(RuntimeError):
    """Another node refused, failed, vanished or did not answer in time."""


class NoAnswer(RemoteError):
    """Nothing came within the timeout."""


class Aborted(RuntimeError):
    """The operator aborted the run."""


class Replies:
    """Messages keyed by request id, posted by subscription callbacks, awaited by workers
    (the trial manager posts the payloads as read: events, trials, model and controller updates).

    Only ids someone `expect`s are kept, so progress notes and stray or duplicate messages for
    finished requests do not pile up.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: dict[str, list[Any]] = {}

    def expect(self, request_id: str) -> None:
        with self._cond:
            self._items.setdefault(request_id, [])

    def expecting(self, request_id: str) -> bool:
        """Whether a worker waits on `request_id` (else its results are late or stray)."""
        with self._cond:
            return request_id in self._items

    def post(self, request_id: str, item: Any) -> None:
        with self._cond:
            if request_id in self._items:
                self._items[request_id].append(item)
                self._cond.notify_all()

    def interrupt(self) -> None:
        """Wake every waiter (abort): they re-check their cancel flag."""
        with self._cond:
            self._cond.notify_all()

    def forget(self, request_id: str) -> None:
        with self._cond:
            self._items.pop(request_id, None)

    def wait(self, request_id: str, accept: Callable[[Any], bool], timeout: float,
             what: str, cancel: threading.Event | None = None,
             alive: Callable[[], str | None] | None = None, poll: float = 0.5) -> Any:
        """The first item for `request_id` that `accept`s; RemoteError on timeout or when
        `alive()` names a reason the peer is gone, Aborted when `cancel` is set."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self._items.get(request_id, []):
                    if accept(item):
                        self._items[request_id].remove(item)
                        return item
                if cancel is not None and cancel.is_set():
                    raise Aborted(f"aborted while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoAnswer(f"{what} did not come within {timeout:g} s")
                if alive is not None:
                    gone = alive()
                    if gone:
                        raise RemoteError(f"{gone} while waiting for {what}")
                self._cond.wait(min(left, poll))


class PeerWatch:
    """Is the node behind a request topic there? Missing for `grace` seconds means gone.

    Present = someone subscribes to the topic and, where the node sends a heartbeat, it was heard
    recently (a killed process stays matched until DDS notices, which can take many seconds).
    """

    def __init__(self, publisher: Any, role: str, grace: float,
                 heartbeat: Callable[[], bool] | None = None) -> None:
        self.publisher = publisher
        self.role = role
        self.grace = grace
        self.heartbeat = heartbeat
        self._missing_since: float | None = None

    def present(self) -> bool:
        return self.publisher.get_subscription_count() > 0 and (
            self.heartbeat is None or self.heartbeat())

    def gone(self) -> str | None:
        if self.present():
            self._missing_since = None
            return None
        now = time.monotonic()
        if self._missing_since is None:
            self._missing_since = now
        if now - self._missing_since >= self.grace:
            return (f"the {self.role} node is gone (no subscriber on "
                    f"{self.publisher.topic_name} or no heartbeat for {self.grace:g} s)")
        return None


# -- high-rate topics read on demand ------------------------------------------------------------
class SampleReader:
    """The newest samples of a high-rate topic, taken when the reader asks for them.

    Handing every 500 Hz joint state to a Python callback costs about 0.1-0.3 ms of interpreter
    time each, a sizeable share of a 2-core machine and of the interpreter lock the control loop
    needs. Here the subscription belongs to a helper node that no executor spins; `take()` drains
    its short keep-last queue with the same call an executor would make.
    """

    def __init__(self, node: Node, msg_type: type, topic: str, depth: int) -> None:
        qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.VOLATILE)
        self.sub = node.create_subscription(msg_type, topic, self._never_called, qos)
        self.lock = threading.Lock()

    @staticmethod
    def _never_called(_msg: Any) -> None:
        """The helper node is never spun."""

    def take(self) -> list[tuple[Any, int]]:
        """Every queued message, oldest first, with its reception time [ns, system clock]."""
        out = []
        with self.lock, self.sub.handle:
            while True:
                taken = self.sub.handle.take_message(self.sub.msg_type, self.sub.raw)
                if taken is None:
                    return out
                msg, info = taken
                out.append((msg, int(info["received_timestamp"]) or time.time_ns()))


LISTENER_ERROR_PAUSE = 0.1  # [s] after a SampleListener error: a persistent one is no flood


class SampleListener:
    """Each message of a topic handed to `on_message` as it arrives, on a dedicated thread.

    For a path that must not wait for an executor: a rig's commands would otherwise queue behind
    other callbacks and wait for a normal-priority executor thread, which on a busy 2-core
    machine costs milliseconds to tens of milliseconds. The thread blocks in an rcl wait set on
    the subscription of a never-spun helper node (sampler_node) and can run SCHED_FIFO.
    """

    def __init__(self, node: Node, sampler: Node, msg_type: type, topic: str, depth: int,
                 on_message: Callable[[Any, int], None], priority: int = 0,
                 name: str = "listener") -> None:
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

        self.node = node
        self.reader = SampleReader(sampler, msg_type, topic, depth)
        self.on_message = on_message
        self.priority = priority
        self.name = name
        self.stop = threading.Event()
        self.wake = sampler.create_guard_condition(lambda: None)
        self.wait_set = _rclpy.WaitSet(1, 1, 0, 0, 0, 0, sampler.context.handle)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        set_realtime_priority(self.node, self.priority, f"the {self.name} thread")
        while not self.stop.is_set():
            try:
                self.wait_set.clear_entities()
                self.wait_set.add_subscription(self.reader.sub.handle)
                self.wait_set.add_guard_condition(self.wake.handle)
                self.wait_set.wait(-1)
                for msg, received in self.reader.take():
                    self.on_message(msg, received)
            except Exception as exc:  # noqa: BLE001 - keep listening; the context going down
                if self.stop.is_set():  # or a bad message must not end the thread silently
                    return
                self.node.get_logger().error(f"{self.name}: {exc!r}")
                self.stop.wait(LISTENER_ERROR_PAUSE)

    def close(self) -> None:
        self.stop.set()
        self.wake.trigger()
        self.thread.join(timeout=1.0)


def sampler_node(node: Node) -> Node:
    """A hidden helper node for SampleReaders: same namespace, no executor, no global remaps
    (so `__node:=` from a launch file does not give it the main node's name); topics are passed
    resolved by the main node."""
    return rclpy.create_node(f"_{node.get_name()}_sampler", namespace=node.get_namespace(),
                             context=node.context, use_global_arguments=False,
                             enable_rosout=False, start_parameter_services=False)


def set_torch_threads(threads: int) -> None:
    """optimizer.threads for the whole process (fit, iLQR, pretraining, optimisation), as the
    in-process run does; 0 leaves torch's default."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def preload_lazy_imports() -> None:
    """Import at start-up what torch and scipy import on first use: the first torch optimiser
    imports torch._dynamo (about 3 s on a busy 2-core machine), the GP's subset selection
    scipy.linalg. An import cannot be cancelled, so a worker caught in one would hold up a
    shutdown (and the first fit or optimisation would be seconds late)."""
    import torch

    importlib.import_module("scipy.linalg")
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


def set_realtime_priority(node: Node, priority: int, what: str) -> bool:
    """SCHED_FIFO for the calling thread, warning through the node's logger."""
    return set_thread_priority(priority, what, node.get_logger().warning)


# Fast DDS names its receive threads dds.shm.<port> (shared memory) and dds.udp.<port>.
DDS_RECEIVE_THREADS = ("dds.shm.", "dds.udp.")


def set_dds_receive_priority(node: Node, priority: int) -> int:
    """SCHED_FIFO for this process's DDS receive threads (Linux), so a sample or command is taken
    off the wire at once even when the optimiser fills every core; returns how many were set.

    The control loop reads what these threads delivered: with normal scheduling they can wait
    tens of ms for a core, which shows up as stale states and late commands.
    """
    if priority <= 0 or not sys.platform.startswith("linux"):
        return 0
    done = 0
    for task in os.scandir("/proc/self/task"):
        try:
            with open(os.path.join(task.path, "comm"), encoding="ascii") as f:
                name = f.read().strip()
            if name.startswith(DDS_RECEIVE_THREADS):
                os.sched_setscheduler(int(task.name), os.SCHED_FIFO, os.sched_param(priority))
                done += 1
        except (OSError, ValueError) as exc:
            node.get_logger().warning(f"no SCHED_FIFO {priority} for DDS thread {task.name}: "
                                      f"{exc}")
            return done
    return done


# -- diagnostics ----------------------------------------------------------------------------------
LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN,
          "error": DiagnosticStatus.ERROR, "stale": DiagnosticStatus.STALE}


class Diagnostics:
    """One DiagnosticStatus per node on /diagnostics, refreshed by a timer."""

    def __init__(self, node: Node, nodes: NodesConfig,
                 report: Callable[[], tuple[str, str, dict[str, Any]]]) -> None:
        self.node = node
        self.report = report
        self.pub = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, nodes.status_depth)
        self.timer = node.create_timer(nodes.diagnostics_period, self.publish)

    def publish(self) -> None:
        level, message, values = self.report()
        status = DiagnosticStatus(
            level=LEVELS[level], name=f"ebmcpilco: {self.node.get_fully_qualified_name()}",
            message=message, hardware_id=self.node.get_name(),
            values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(msg)


# -- process main ---------------------------------------------------------------------------------
SHUTDOWN_TIMEOUT = 1.0  # [s] for the executor to stop before the node is destroyed
# [s] for a worker thread told to stop (its long loops check a flag every iteration) to end;
# with SHUTDOWN_TIMEOUT twice, below STOP_BOUND_S.
WORKER_STOP_TIMEOUT = 2.0
DIE_WITH_PARENT_ENV = "EBMCPILCO_DIE_WITH_PARENT"
PR_SET_PDEATHSIG = 1    # <linux/prctl.h>


class GraphNode(Node):
    """A node with a `close()` hook that runs before the ROS context goes down."""

    def close(self) -> None:
        """Stop workers and leave actuators safe; the node can still publish here."""

    def join_worker(self, thread: threading.Thread | None, what: str,
                    timeout: float = WORKER_STOP_TIMEOUT) -> bool:
        """Wait for a worker thread that was told to stop. One still running after `timeout`
        is logged with every thread's stack and remembered: run_node then exits with code 1."""
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if not thread.is_alive():
            return True
        self.get_logger().error(f"{what} did not stop within {timeout:g} s; every thread's "
                                f"stack follows on stderr")
        faulthandler.dump_traceback(all_threads=True)
        self.unstopped_workers = [*getattr(self, "unstopped_workers", []), what]
        return False


def spin_until_shutdown(executor: Executor) -> None:
    """Spin in a helper thread until the context shuts down (a normal end, not an error)."""
    try:
        executor.spin()
    except (ExternalShutdownException, ShutdownException):
        pass


def run_node(factory: Callable[[], GraphNode], args: Iterable[str] | None = None,
             executor: Executor | None = None, name: str = "node",
             make_executor: Callable[[], Executor] = SingleThreadedExecutor) -> int:
    """Process main of a node: config errors -> message and exit 2; SIGINT/SIGTERM -> close()
    (while the node can still publish, e.g. a zero command; it tells its workers to stop and
    joins them) -> exit 0.

    The executor spins in a background thread; the main thread only waits for a signal, so a
    signal is handled at once whatever the callbacks are doing. `make_executor` builds it after
    rclpy.init (a node whose services block, like the rig's homing reset, wants a
    MultiThreadedExecutor).

    Bounded (docs/NODES.md, "Stopping"): close() joins the node's workers for at most
    WORKER_STOP_TIMEOUT, the executor gets SHUTDOWN_TIMEOUT, and the process then ends with
    exit_now (no interpreter teardown); exit code 0, or 1 if close() failed or a worker or the
    executor did not stop. The first signal also arms a watchdog (faulthandler's, a C thread
    that needs no interpreter lock) that prints every thread's stack and ends the process with
    exit code 1 if it is still there STOP_BOUND_S later, whatever hangs. A signal while the
    node is being built lets the constructor finish (a rig node must not be left half-open)
    and the bound runs from then. For process mains only: it does not return once the node
    is up.
    """
    stop = threading.Event()
    up = threading.Event()  # the node is built: the bound runs from the signal

    def on_signal(signum: int, _frame: Any) -> None:
        if up.is_set():
            arm_stop_deadline()
        stop.set()

    # From here on a signal means "close and exit" (before: nodes/__init__.py exits at once).
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        check_params_files(sys.argv if args is None else list(args))
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    rclpy.init(args=list(args) if args is not None else None,
               signal_handler_options=SignalHandlerOptions.NO)
    die_with_parent()
    if stop.is_set():  # stopped before the node was built
        rclpy.try_shutdown()
        exit_now(0)
    try:
        node = factory()
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    up.set()  # a signal during factory() stops the node once built, the bound from then
    executor = executor or make_executor()
    executor.add_node(node)

    def spin() -> None:
        try:
            executor.spin()
        except (ExternalShutdownException, ShutdownException):
            pass
        except Exception as exc:  # noqa: BLE001 - a crashed executor must still stop the node
            print(f"{name}: executor failed: {exc!r}", file=sys.stderr, flush=True)
        finally:
            stop.set()

    spinner = threading.Thread(target=spin, name=f"{name}-executor", daemon=True)
    spinner.start()
    code = 0
    try:
        while not stop.wait(1.0):
            pass
    finally:
        arm_stop_deadline()
        try:
            node.close()
        except Exception as exc:  # noqa: BLE001 - shutting down regardless
            print(f"{name}: close failed: {exc!r}", file=sys.stderr, flush=True)
            code = 1
        executor.shutdown(timeout_sec=SHUTDOWN_TIMEOUT)
        spinner.join(SHUTDOWN_TIMEOUT)  # no callback may run on a destroyed node
        unstopped = list(getattr(node, "unstopped_workers", []))
        if spinner.is_alive():
            unstopped.append("the executor")
        else:
            node.destroy_node()
        rclpy.try_shutdown()
    if unstopped:
        print(f"{name}: {', '.join(unstopped)} did not stop in time", file=sys.stderr,
              flush=True)
        code = 1
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """End the process now, after the ROS shutdown: flush Python's and C's output buffers,
    destroy the ROS context (DDS tells its peers the participant is gone), then os._exit.

    Why not the interpreter's own teardown: with torch loaded it takes 1.5-3 s of CPU (five
    nodes stopping together on two busy cores: 3-5 s), and a thread still inside torch's or
    rclpy's C++ code while it runs takes the process down (SIGABRT, "terminate called without an
    active exception", or SIGSEGV: what issue 11 measured). Nothing a node needs runs at
    interpreter exit: its files are written and fsynced as it goes (rundir.py).
    """
    try:
        rclpy.get_default_context().destroy()
    except Exception:  # noqa: BLE001 - exiting regardless
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)  # C stdio: rcutils' console output
    except (OSError, AttributeError):
        pass
    os._exit(code)


_stop_deadline_armed = threading.Event()


def arm_stop_deadline(bound: float = STOP_BOUND_S) -> None:
    """From the first call on, the process has `bound` seconds: then faulthandler prints every
    thread's stack to stderr and exits with code 1 (later calls keep the first deadline)."""
    if not _stop_deadline_armed.is_set():
        _stop_deadline_armed.set()
        faulthandler.dump_traceback_later(bound, exit=True)


def die_with_parent() -> None:
    """Started by `ebmcpilco sim` or a test (EBMCPILCO_DIE_WITH_PARENT=1): end with the process
    that started us, even if it is killed outright (Linux prctl PR_SET_PDEATHSIG)."""
    if os.environ.get(DIE_WITH_PARENT_ENV) != "1" or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent is already gone
        os.kill(os.getpid(), signal.SIGTERM)
