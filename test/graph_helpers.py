"""Node-graph test support: an isolated DDS domain, the graph's processes, and a probe that
records what arrives on its topics (waits are on conditions, never on fixed sleeps)."""
from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ebmcpilco_ros.nodes.bringup import Graph, GraphClient
from ebmcpilco_ros.core.config import find_config

CONFIG = find_config("paper_cartpole")
# Settings that keep a learning run to a minute or two on 2 busy cores.
# One torch thread: two OpenMP threads on two cores shared with the plant and execution nodes
# (and other work) wait on each other at every barrier and run many times slower.
REDUCED = {"learner.algorithm": "mc",
           "optimizer.threads": 1, "optimizer.particles": 50, "optimizer.max_steps": 100,
           "optimizer.max_steps_first": 100, "policy.num_basis": 50, "learner.max_trials": 3,
           "model.fit_iterations": 100, "nodes.request_timeout": 30.0,
           # Another engineer's benchmarks share these 2 cores: allow a longer DDS stall inside
           # a trial than the rig's 50 ms before a trial counts as failed.
           "execution.state_timeout": 0.25}
STARTUP_TIMEOUT = 120.0  # five Python processes importing torch on a loaded 2-core machine


def isolated_domain(salt: int) -> int:
    """A DDS domain per salt (0-101 stay clear of Linux ephemeral ports): a per-process offset
    keeps parallel test runs apart, and distinct salts below 101 never share a domain within a
    process (a module's graph fixture and its tests' own graphs run at the same time)."""
    return 1 + (random.Random(os.getpid()).randrange(101) + salt) % 101


@contextmanager
def ros_environment(domain: int) -> Iterator[None]:
    """This process's own rclpy contexts join `domain`, discovery on this host only."""
    keys = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Probe:
    """What arrives on the graph's topics, recorded in the test process."""

    def __init__(self, client: GraphClient, joint_states: bool = False) -> None:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray, String

        from ebmcpilco_ros.nodes import names, qos
        node = client.node
        self.cond = threading.Condition()
        self.records: list[dict[str, Any]] = []
        self.models: list[dict[str, Any]] = []
        self.controllers: list[dict[str, Any]] = []
        self.commands: list[tuple[float, float]] = []
        self.efforts: list[tuple[float, float]] = []
        node.create_subscription(String, names.TRIAL_RECORDS_TOPIC,
                                 self._json(self.records), qos.reliable_qos(50))
        node.create_subscription(String, names.MODEL_TOPIC, self._json(self.models),
                                 qos.latched_qos())
        node.create_subscription(String, names.CONTROLLER_TOPIC, self._json(self.controllers),
                                 qos.latched_qos())
        node.create_subscription(Float64MultiArray, "cartpole/effort_command",
                                 self._command, qos.sensor_qos())
        if joint_states:
            node.create_subscription(JointState, "cartpole/joint_states", self._state,
                                     qos.sensor_qos())

    def _json(self, into: list[dict[str, Any]]) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            with self.cond:
                into.append(json.loads(msg.data))
                self.cond.notify_all()
        return callback

    def _command(self, msg: Any) -> None:
        with self.cond:
            self.commands.append((time.monotonic(), float(msg.data[0])))
            self.cond.notify_all()

    def _state(self, msg: Any) -> None:
        with self.cond:
            self.efforts.append((time.monotonic(), float(msg.effort[0])))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


def wait_event(client: GraphClient, kinds: tuple[str, ...], timeout: float,
               run_id: str | None = None) -> dict[str, Any] | None:
    """The next status whose event is one of `kinds` (for `run_id` if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = client.statuses.get(timeout=min(1.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - queue.Empty: keep waiting until the deadline
            continue
        if status.get("event") in kinds and (run_id is None or status.get("run_id") == run_id):
            return status
    return None


def start_graph(tmp_path: Any, parameters: dict[str, Any] | None = None,
                nodes: tuple[str, ...] | None = None) -> Graph:
    graph = Graph(CONFIG, {**REDUCED, "nodes.run_directory": str(tmp_path / "runs"),
                           **(parameters or {})}, log_dir=tmp_path / "logs",
                  **({"nodes": nodes} if nodes else {}))
    graph.start()
    return graph


def describe_failure(graph: Graph) -> str:
    """Node logs for an assertion message."""
    return "\n".join(f"--- {name} (exit {graph.processes[name].poll()}) ---\n"
                     f"{graph.log_tail(name, 30)}" for name in graph.processes)


class RigDiagnostics:
    """The hardware node's /diagnostics values, as they arrive (monotonic time, message, values)."""

    def __init__(self, client: GraphClient) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self.cond = threading.Condition()
        self.reports: list[tuple[float, str, dict[str, str]]] = []
        client.node.create_subscription(DiagnosticArray, "/diagnostics", self._on, 50)

    def _on(self, msg: Any) -> None:
        for status in msg.status:
            if status.hardware_id == "hardware_interface":
                with self.cond:
                    self.reports.append((time.monotonic(), status.message,
                                         {kv.key: kv.value for kv in status.values}))
                    self.cond.notify_all()

    def wait(self, predicate: Callable[[dict[str, str]], bool], timeout: float,
             after: float = -math.inf) -> tuple[float, dict[str, str]] | None:
        """The first report after `after` whose values satisfy `predicate`."""
        def found() -> tuple[float, dict[str, str]] | None:
            return next(((t, v) for t, _m, v in self.reports if t > after and predicate(v)),
                        None)
        with self.cond:
            self.cond.wait_for(lambda: found() is not None, timeout)
            return found()


def can_run_trial(status: dict[str, Any]) -> bool:
    """Idle, and nothing run_trial needs is missing (the learning nodes are not started)."""
    waiting = status.get("waiting_for", ["startup"])
    return (status.get("state") == "idle" and "startup" not in waiting
            and not any("state" in w or "policy_execution" in w for w in waiting))


def call_trigger(client: Any, timeout: float) -> tuple[bool, str]:
    """Call a std_srvs/Trigger service client; (success, message), asserting it answers."""
    from std_srvs.srv import Trigger

    name = client.srv_name
    assert client.wait_for_service(timeout_sec=timeout), f"no {name} service"
    done = threading.Event()
    future = client.call_async(Trigger.Request())
    future.add_done_callback(lambda _f: done.set())
    assert done.wait(timeout) and future.result() is not None, f"{name} did not answer"
    return bool(future.result().success), str(future.result().message)
