"""`ebmcpilco bench realtime`: how punctual the control loop is while the optimiser works.

Starts sim_plant and policy_execution as separate processes (the node graph's real-time part),
plus a load process that runs MC-PILCO policy-gradient steps at the paper's size (400 particles,
60 steps, 200 basis functions, two GPs of 170 points) without pause. This process then sends
trial requests with a policy controller, as the trial manager would, and measures per control
step:

    lateness   tick wake-up - its scheduled time (steady clock, in the execution node)
    latency    command received (DDS reception time) by a subscriber in another process (this
               one, standing in for the plant, which takes commands the same way) - the tick
               that read the state (same clock)
    compute    tick -> command handed to DDS, in the execution node
    state_age  how old the newest state was at the tick (the sensor period bounds it)
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..nodes.bringup import Graph, flatten, graph_environment, validate

LOAD_POINTS = 170          # GP support size of the load (the paper's largest in bench step)
READY_LINE = "load: optimising"


def percentiles(values_s: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s, dtype=float) * 1e3
    if ms.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3), "max": round(float(ms.max()), 3)}


def bench(config_path: str | Path, overrides: Mapping[str, Mapping[str, Any]], trials: int = 5,
          load: bool = True, load_threads: int = 0, load_nice: int = 0,
          startup_timeout: float = 120.0
          ) -> dict[str, Any]:
    """The bench, on this process's ROS domain and DDS settings (the nodes started get them):
    `ebmcpilco bench realtime` puts the process on a private domain first."""
    from .bench import machine_info

    config, parts = validate(config_path, overrides)
    env = graph_environment()  # this process's domain: `ebmcpilco bench realtime` picks one
    load_proc = None
    graph = Graph(config_path, {**flatten(overrides), "nodes.run_directory": ""},
                  nodes=("sim_plant", "policy_execution"))
    requester = None
    try:
        if load:
            load_proc = subprocess.Popen(
                [sys.executable, "-m", "ebmcpilco_ros.tools.realtime", "--load", str(config_path),
                 str(load_threads), str(load_nice)], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, start_new_session=True)
            _wait_ready(load_proc, startup_timeout)
        graph.start()
        requester = _Requester(config, parts["nodes"], parts["sim_plant"].realtime_priority)
        requester.wait_fresh(startup_timeout, graph)
        for index in range(trials):
            requester.run_trial(index, graph)
        load_steps = None
        if load_proc is not None:
            load_proc.terminate()
            out, _ = load_proc.communicate(timeout=30)
            load_steps = [line for line in out.splitlines() if line.startswith("load: steps")]
    finally:
        if requester is not None:
            requester.close()
        graph.stop()
        if load_proc is not None and load_proc.poll() is None:
            load_proc.kill()
            load_proc.wait()
    timing = requester.timing
    result = {
        "lateness_ms": percentiles(timing["lateness"]),
        "latency_ms": percentiles(timing["latency"]),
        "compute_ms": percentiles(timing["compute"]),
        "state_age_ms": percentiles(timing["state_age"]),
        "samples": len(timing["lateness"]), "commands_matched": len(timing["latency"]),
        "settings": {"control_rate_hz": 1.0 / config.plant.control_period,
                     "plant_publish_rate_hz": parts["sim_plant"].publish_rate,
                     "plant_physics_rate_hz": parts["sim_plant"].physics_rate,
                     "trials": trials, "trial_duration_s": config.plant.trial_duration,
                     "load": (f"MC-PILCO steps, {config.optimizer.particles} particles, "
                              f"horizon {config.optimizer.horizon}, {config.policy.num_basis} "
                              f"basis, GPs of {LOAD_POINTS} points, torch threads "
                              f"{load_threads or 'default'}, nice {load_nice}") if load
                     else "none",
                     "load_progress": load_steps[-1] if load and load_steps else None,
                     "realtime_priority": parts["execution"].realtime_priority,
                     "switch_interval_s": parts["execution"].switch_interval},
        "targets": {"lateness_p99_ms": 1.0, "latency_p99_ms": 2.0},
        "machine": machine_info(),
    }
    return result


def summary_text(result: dict[str, Any]) -> str:
    lines = [f"control {result['settings']['control_rate_hz']:g} Hz, plant "
             f"{result['settings']['plant_publish_rate_hz']:g} Hz, load: "
             f"{result['settings']['load']}; {result['samples']} control steps"]
    for key, target in (("lateness_ms", "lateness_p99_ms"), ("latency_ms", "latency_p99_ms"),
                        ("compute_ms", None), ("state_age_ms", None)):
        v = result[key]
        goal = f"  (target p99 <= {result['targets'][target]} ms)" if target else ""
        lines.append(f"{key[:-3]:10s} p50 {v['p50']:7.3f} ms  p99 {v['p99']:7.3f} ms  "
                     f"max {v['max']:7.3f} ms{goal}")
    return "\n".join(lines)


def _wait_ready(proc: subprocess.Popen, timeout: float) -> None:
    """Block until the load process says it optimises (its first line after set-up)."""
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith(READY_LINE):
                ready.set()
                return
    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout):
        raise RuntimeError("the optimiser load did not start:\n" + "".join(lines[-20:]))


class _Requester:
    """Sends trial requests the way the trial manager does and times the commands."""

    def __init__(self, config: Any, names: Any, sim_priority: int) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import Float64MultiArray, String

        from ..core.policy import SquashedRBFPolicy
        from ..core.controllers import PolicyController
        from ..nodes import codec, qos, sampling
        from ..nodes.names import (EXECUTION_EVENTS_TOPIC, TRIAL_RECORDS_TOPIC,
                                   TRIAL_REQUEST_FORMAT, TRIAL_REQUEST_TOPIC)
        self.config = config
        self.codec = codec
        self.trial_request_format = TRIAL_REQUEST_FORMAT
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("realtime_bench", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.cond = threading.Condition()
        self.commands: list[tuple[float, float]] = []
        self.records: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.timing: dict[str, list[float]] = {k: [] for k in ("lateness", "latency", "compute",
                                                               "state_age")}
        self.node.create_subscription(Float64MultiArray, names.command_topic, self._on_command,
                                      qos.sensor_qos())
        self.node.create_subscription(String, TRIAL_RECORDS_TOPIC, self._on_record,
                                      qos.reliable_qos(names.record_depth))
        self.node.create_subscription(String, EXECUTION_EVENTS_TOPIC, self._on_event,
                                      qos.reliable_qos(names.record_depth))
        self.requests = self.node.create_publisher(String, TRIAL_REQUEST_TOPIC,
                                                   qos.reliable_qos(names.record_depth))
        # The receiver stands in for the plant: its DDS receive threads get the plant's priority.
        sampling.set_dds_receive_priority(self.node, sim_priority)
        policy = SquashedRBFPolicy(config.policy, config.plant.u_max)
        self.controller = PolicyController(policy.parameters_snapshot()).to_dict()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        from ..nodes.process import spin_until_shutdown

        spin_until_shutdown(self.executor)

    def _on_command(self, msg: Any, info: Any) -> None:
        """Arrival = the DDS reception time (as the plant takes it), on the monotonic clock."""
        received = int(info["received_timestamp"])
        arrival = time.monotonic() - max(0.0, (time.time_ns() - received) * 1e-9)
        with self.cond:
            self.commands.append((arrival, float(msg.data[0])))

    def _on_record(self, msg: Any) -> None:
        import json

        record = json.loads(msg.data)
        with self.cond:
            self.records[record["meta"]["request_id"]] = record
            self.cond.notify_all()

    def _on_event(self, msg: Any) -> None:
        import json

        ev = json.loads(msg.data)
        with self.cond:
            self.events.setdefault(ev["request_id"], []).append(ev)
            self.cond.notify_all()

    def wait_fresh(self, timeout: float, graph: Graph) -> None:
        """Until the execution node takes requests and reports fresh state (a refused probe
        request is answered at once, so this polls with real requests)."""
        deadline = time.monotonic() + timeout
        while self.requests.get_subscription_count() == 0:
            self._check(graph, deadline)
            time.sleep(0.05)

    def _check(self, graph: Graph, deadline: float) -> None:
        if graph.exited():
            name = next(iter(graph.exited()))
            raise RuntimeError(f"{name} exited:\n{graph.log_tail(name)}")
        if time.monotonic() > deadline:
            raise RuntimeError("the execution node did not come up in time")

    def run_trial(self, index: int, graph: Graph) -> None:
        deadline = time.monotonic() + 120.0
        while True:
            request_id = self.codec.new_id("bench")
            self.requests.publish(self.codec.encode({
                "format": self.trial_request_format, "request_id": request_id,
                "run_id": "realtime-bench", "index": index, "kind": "policy",
                "controller": self.controller}))
            with self.cond:
                self.cond.wait_for(lambda: request_id in self.events, 5.0)
                answer = (self.events.get(request_id) or [{}])[0].get("event")
            if answer == "accepted":
                break
            self._check(graph, deadline)
            time.sleep(0.2)  # not ready yet (no fresh state): ask again shortly
        with self.cond:
            if not self.cond.wait_for(lambda: request_id in self.records,
                                      self.config.plant.trial_duration + 30.0):
                raise RuntimeError(f"no trial record for {request_id}")
            record = self.records[request_id]
            commands = list(self.commands)
        self._collect(record, commands)

    def _collect(self, record: dict[str, Any], commands: list[tuple[float, float]]) -> None:
        timing = record["meta"]["timing"]
        self.timing["lateness"] += timing["lateness_s"]
        self.timing["compute"] += timing["compute_s"]
        self.timing["state_age"] += timing["state_age_s"]
        arrivals: dict[float, float] = {}
        for arrival, value in commands:
            arrivals.setdefault(value, arrival)
        for tick, u in zip(timing["tick_s"], record["inputs"]):
            if u in arrivals and arrivals[u] >= tick:
                self.timing["latency"].append(arrivals[u] - tick)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _load(config_path: str, threads: int, nice: int) -> None:
    """The optimiser load: MC-PILCO steps without end, at the paper's size."""
    if nice:
        os.nice(nice)
    from .bench import model_with_points
    from ..core.config import load_config
    from ..core.mcpilco import optimize_policy, torch_dtype
    from ..core.policy import SquashedRBFPolicy

    config = load_config(config_path)
    opt = config.optimizer.__class__(**{**config.optimizer.__dict__, "threads": threads})
    model = model_with_points(LOAD_POINTS, config)
    policy = SquashedRBFPolicy(config.policy, config.plant.u_max,
                               dtype=torch_dtype(opt.dtype))
    rng = np.random.default_rng(0)
    steps = [0]

    def count(*_args: Any) -> None:
        steps[0] += 1
    print(READY_LINE, flush=True)
    started = time.perf_counter()
    try:
        while True:
            optimize_policy(policy, model, opt, config.cost, config.plant.initial_state_std,
                            opt.max_steps, rng, count)
    finally:
        print(f"load: steps {steps[0]} in {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--load"]:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        _load(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
