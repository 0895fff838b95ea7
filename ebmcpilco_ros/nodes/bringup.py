"""Bring the node graph up without `ros2 launch`: one process per node, from the same YAML.

`Graph` starts `python -m ebmcpilco_ros.nodes.<name> --ros-args --params-file <yaml> -p ...` for
each node (what launch/sim.launch.py does through `ros2 launch`) and always tears the processes
down (SIGINT, then SIGTERM, then SIGKILL). `GraphClient` is an rclpy node in the calling process
that calls the trial manager's services and follows ebmcpilco/status. `run_sim` is
`ebmcpilco sim`: bring up, learn, print a line per trial, exit 0 when solved. `run_rig` is
`ebmcpilco rig`: the same with hardware_interface in place of sim_plant (what rig.launch.py
starts), on a serial port, on the firmware emulator or on the firmware ELF in simavr.
"""
from __future__ import annotations

import contextlib
import enum
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import yaml

from ..core.config import ExperimentConfig, config_from_dict, read_parameters
from ..launch_support import exit_reason
from . import NODE_NAMES, RIG_NODE_NAMES, STOP_BOUND_S
from .config import NODE_SECTIONS, build_node_section
from ..progress import END_EVENTS, StatusView, end_code

SIM_NODES = NODE_NAMES  # sim_plant, policy_execution, model_learning, policy_optimization,
#                         trial_manager
RIG_NODES = RIG_NODE_NAMES  # hardware_interface in place of sim_plant
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
# A node ends within STOP_BOUND_S of SIGINT (it exits 1 itself at the bound); SIGTERM, then
# SIGKILL, follow only if it has not after this long.
STOP_GRACE = STOP_BOUND_S + 2.0
STAND_IN_STOP_TIMEOUT = 10.0  # [s] for `ebmcpilco rig`'s emulator or simulator to exit on SIGINT


def ros_value(value: Any) -> str:
    """A `-p name:=value` value as ROS parses it (YAML), strings quoted where needed."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[:-len("...")].strip() if text.endswith("...") else text


def flatten(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """{section: {key: value}} -> {"section.key": value}."""
    return {f"{section}.{key}": value for section, values in overrides.items()
            for key, value in values.items()}


def validate(config_path: str | Path, overrides: Mapping[str, Mapping[str, Any]]
             ) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The configuration every node will see, checked before anything starts (ConfigError)."""
    sections = {k: dict(v or {}) for k, v in read_parameters(config_path).items()}
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    config = config_from_dict(sections)
    parts = {name: build_node_section(name, sections.get(name)) for name in NODE_SECTIONS}
    return config, parts


def graph_environment(base: Mapping[str, str] | None = None, domain_id: int | None = None
                      ) -> dict[str, str]:
    """Environment of the node processes: local DDS discovery unless set, ament index found."""
    env = dict(os.environ if base is None else base)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env["PYTHONUNBUFFERED"] = "1"
    env["EBMCPILCO_DIE_WITH_PARENT"] = "1"  # nodes end if this process is killed outright
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    return env


class Graph:
    """Node processes started like `ros2 launch` would; a context manager that always stops them."""

    def __init__(self, config_path: str | Path, parameters: Mapping[str, Any] | None = None,
                 nodes: Iterable[str] = SIM_NODES, namespace: str = "",
                 env: Mapping[str, str] | None = None, log_dir: str | Path | None = None,
                 node_parameters: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.config_path = Path(config_path)
        self.parameters = dict(parameters or {})
        self.node_parameters = {k: dict(v) for k, v in (node_parameters or {}).items()}
        self.nodes = list(nodes)
        self.namespace = namespace
        self.env = graph_environment(env)
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="ebmcpilco-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}

    def command(self, name: str) -> list[str]:
        cmd = [sys.executable, "-m", f"ebmcpilco_ros.nodes.{name}", "--ros-args",
               "--params-file", str(self.config_path)]
        if self.namespace:
            cmd += ["-r", f"__ns:=/{self.namespace.strip('/')}"]
        for key, value in {**self.parameters, **self.node_parameters.get(name, {})}.items():
            cmd += ["-p", f"{key}:={ros_value(value)}"]
        return cmd

    def start(self, names: Iterable[str] | None = None) -> None:
        for name in (list(names) if names is not None else self.nodes):
            log = open(self.log_path(name), "ab")
            try:
                self.processes[name] = subprocess.Popen(
                    self.command(name), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True)
            finally:
                log.close()

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def exited(self) -> dict[str, int]:
        """Nodes whose process has ended, with the exit code."""
        return {name: p.returncode for name, p in self.processes.items()
                if p.poll() is not None}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(sig)

    def stop(self, grace: float = STOP_GRACE) -> dict[str, int]:
        """SIGINT every node (they zero actuators on the way out), then SIGTERM, then SIGKILL."""
        for sig in STOP_SIGNALS:
            alive = [p for p in self.processes.values() if p.poll() is None]
            if not alive:
                break
            for p in alive:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            for p in alive:
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        return {name: p.returncode for name, p in self.processes.items()}

    def __enter__(self) -> "Graph":
        self.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stop()


class GraphClient:
    """An rclpy node in this process: the trial manager's services and its status topic."""

    def __init__(self, namespace: str = "", name: str = "ebmcpilco_client",
                 status_depth: int = 50, services: Mapping[str, str] | None = None) -> None:
        """`services`: more std_srvs/Trigger services to call by name (or other names for
        learn, run_trial, abort, resume)."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from .names import (ABORT_SERVICE, LEARN_SERVICE, RESUME_SERVICE, RUN_TRIAL_SERVICE,
                            STATUS_FORMAT, STATUS_TOPIC)
        from .qos import latched_qos
        from .codec import decode
        from .payloads import Status

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, namespace=namespace or None, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.statuses: queue.Queue[dict[str, Any]] = queue.Queue()
        self.latest_status: dict[str, Any] | None = None
        # A status that is not a whole ebmcpilco.status/1 is refused here (counted, the first
        # said on stderr), so a reader's s["field"] never meets a missing or mistyped field.
        self.refused_statuses = 0
        self._read_status = lambda msg: Status.from_dict(decode(msg, STATUS_FORMAT)).to_dict()
        self._status_cond = threading.Condition()
        # The service clients before the status reader: DDS announces a participant's readers
        # in the order they were made, so a trial manager whose latched status has reached us
        # knows our response readers too (Fast DDS drops an answer to a reader it does not know).
        names = {"learn": LEARN_SERVICE, "run_trial": RUN_TRIAL_SERVICE,
                 "abort": ABORT_SERVICE, "resume": RESUME_SERVICE, **(services or {})}
        self.clients = {name: self.node.create_client(Trigger, srv)
                        for name, srv in names.items()}
        self.node.create_subscription(String, STATUS_TOPIC, self._on_status,
                                      latched_qos(status_depth))
        self._trigger = Trigger
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        from .process import spin_until_shutdown

        spin_until_shutdown(self.executor)

    def _on_status(self, msg: Any) -> None:
        try:
            status = self._read_status(msg)
        except ValueError as exc:
            self.refused_statuses += 1
            if self.refused_statuses == 1:
                print(f"ebmcpilco: refused a status message (more are only counted): {exc}",
                      file=sys.stderr, flush=True)
            return
        self.statuses.put(status)
        with self._status_cond:
            self.latest_status = status
            self._status_cond.notify_all()

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout: float
                    ) -> dict[str, Any] | None:
        """The latest status once it satisfies `predicate`, or None after `timeout`."""
        with self._status_cond:
            ok = self._status_cond.wait_for(
                lambda: self.latest_status is not None and predicate(self.latest_status),
                timeout)
            return self.latest_status if ok else None

    def call(self, service: str, timeout: float = 10.0) -> tuple[bool, str]:
        """Call learn / run_trial / abort / resume: (success, message); (False, why) if
        unanswered."""
        client = self.clients[service]
        if not client.wait_for_service(timeout_sec=timeout):
            return False, f"service {client.srv_name} not available within {timeout} s"
        done = threading.Event()
        future = client.call_async(self._trigger.Request())
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout) or future.result() is None:
            return False, f"service {client.srv_name} did not answer within {timeout} s"
        return bool(future.result().success), str(future.result().message)

    def close(self) -> None:
        """Stop spinning and wait for the spin thread before destroying anything: a thread
        still inside rclpy's C++ when the interpreter exits aborts the process ("terminate
        called without an active exception")."""
        import rclpy

        self.executor.shutdown(timeout_sec=1.0)
        self.thread.join(timeout=2.0)
        if not self.thread.is_alive():
            self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


# -- ebmcpilco sim --------------------------------------------------------------------------------

def resume_overrides(run: str | Path, overrides: Mapping[str, Mapping[str, Any]]
                     ) -> dict[str, dict[str, Any]]:
    """`--resume RUN`: the run's own settings (its config.json: the learning sections and
    `execution`), then `overrides` on top (a learning setting changed there makes the trial
    manager refuse, naming it), and the trial manager pointed at RUN. RunDirError if RUN is
    not a run directory."""
    from ..core.config import SECTIONS
    from .rundir import CONFIG_FILE, RunDirError, run_status

    path = Path(run).expanduser().resolve()
    run_status(path)
    try:
        saved = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RunDirError(f"{path / CONFIG_FILE} is not JSON: {exc}") from exc
    out = {name: dict(saved[name]) for name in (*SECTIONS, "execution")
           if isinstance(saved.get(name), dict)}
    for section, values in overrides.items():
        out.setdefault(section, {}).update(values)
    out.setdefault("nodes", {}).update({"run_directory": str(path.parent),
                                        "resume_run": path.name})
    return out


def run_sim(config_path: str | Path, overrides: Mapping[str, Mapping[str, Any]],
            namespace: str = "", startup_timeout: float = 120.0,
            log: Callable[[str], None] = print, verbose: bool = False,
            nodes: Iterable[str] = SIM_NODES, plant: str = "the simulated cart-pole",
            resume: bool = False, learn: bool = True) -> int:
    """`ebmcpilco sim`: 0 when the swing-up is solved, 1 when not, 2 on a config error.
    `resume`: continue the run `nodes.resume_run` names (resume_overrides) instead of a new one.
    `learn=False` is `ebmcpilco up`: the graph stays up, learning nothing by itself, printing a
    line per status event, until SIGINT or SIGTERM (then 0, or 1 if a node did not stop
    cleanly) or until a node dies (1); the operator calls the services (`ebmcpilco call`)."""
    from .rundir import run_root

    config, parts = validate(config_path, overrides)
    nodes_cfg = parts["nodes"]
    log_dir = ((run_root(nodes_cfg.run_directory) or Path(tempfile.gettempdir())) / "logs"
               / time.strftime("%Y%m%d-%H%M%S"))
    learner = config.learner
    log(f"EB-MC-PILCO through the ROS 2 node graph: {learner.algorithm} on {plant}, "
        f"seed {learner.seed}, up to {learner.max_trials} trials of "
        f"{config.plant.trial_duration:g} s (domain {os.environ.get('ROS_DOMAIN_ID', '0')}, "
        f"node logs in {log_dir})")
    graph = Graph(config_path, flatten(overrides), nodes=nodes, namespace=namespace,
                  log_dir=log_dir)
    client: GraphClient | None = None
    view = StatusView(all_events=not learn, verbose=verbose, write=log)
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: interrupted.set())

    def session() -> int:
        nonlocal client
        graph.start()
        client = GraphClient(namespace=namespace, status_depth=nodes_cfg.status_depth)
        ready = _wait(client, graph, lambda s: bool(s.get("ready")), startup_timeout,
                      interrupted)
        if ready is None:
            waiting = (client.latest_status or {}).get("waiting_for", ["the trial manager"])
            log(f"the node graph did not come up within {startup_timeout:g} s: waiting for "
                + ", ".join(waiting))
            return 1
        if not learn:
            log(UP_HINT.format(ns=f"--namespace {namespace} " if namespace else ""))
            return _follow(client, graph, view, interrupted, until_end=False)
        ok, message = start_learning(client, service="resume" if resume else "learn")
        log(message)
        if not ok:
            return 1
        code = _follow(client, graph, view, interrupted)
        from .rundir import report_hint  # torch, through core.checkpoint: only now

        log(report_hint(nodes_cfg.run_directory, (client.latest_status or {}).get("run_id")))
        return code

    failed: dict[str, int] = {}
    try:
        code = session()
    except KeyboardInterrupt:
        view.close()
        log("interrupted: aborting" if learn else "interrupted: stopping the graph")
        with _shielded():
            if client is not None and (learn or (client.latest_status or {}).get(
                    "state", "idle") != "idle"):
                client.call("abort", timeout=2.0)
        code = 130 if learn else 0
    except _NodeDied as exc:
        view.close()
        log(str(exc))
        code = 1
    finally:
        view.close()
        with _shielded():  # another Ctrl-C must not leave the nodes running
            signal.signal(signal.SIGTERM, previous)
            if client is not None:
                client.close()
            codes = graph.stop()
            failed = {n: c for n, c in codes.items() if c not in (0, None)}
            if failed:
                log("stopping the graph: " + ", ".join(
                    f"{n} exited with code {c}" for n, c in failed.items())
                    + f" (node logs in {log_dir})")
    return 1 if failed and not learn else code


UP_HINT = ("the node graph is up and learns nothing by itself: from another shell on the same "
           "ROS_DOMAIN_ID, `ebmcpilco call {ns}learn` (run_trial, abort, resume, reset, estop) "
           "and `ebmcpilco status {ns}--follow`; Ctrl-C stops the graph")


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """SIGINT ignored inside (the graph's teardown is bounded: Graph.stop), when called from the
    main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class StandIn(enum.Enum):
    """What `ebmcpilco rig` can start in place of a rig's MCU, as a process of its own (as an MCU
    would be), with the config's plant: the module run, and how the rig is named in messages."""

    EMULATOR = ("ebmcpilco_ros.hardware.emulator", "the emulated rig")
    FIRMWARE_SIM = ("ebmcpilco_ros.tools.firmware_sim", "the firmware (simavr) rig")

    def __init__(self, module: str, description: str) -> None:
        self.module = module
        self.description = description


def run_rig(config_path: str | Path, overrides: Mapping[str, Mapping[str, Any]],
            port: str | None = None, stand_in: StandIn | None = None,
            startup_timeout: float = 120.0, **kwargs: Any) -> int:
    """`ebmcpilco rig`: learn on the rig at `port` (default hardware.port), or on a stand-in
    for its MCU started here: the Python firmware emulator, or the real firmware ELF on simavr
    (both take their defaults from the emulator section, which match config/rig_example.yaml's
    calibration)."""
    overrides = {section: dict(values) for section, values in overrides.items()}
    if port:
        overrides.setdefault("hardware", {})["port"] = port
    _config, parts = validate(config_path, overrides)
    mcu = None
    if stand_in is not None:
        mcu = subprocess.Popen([sys.executable, "-m", stand_in.module,
                                "--config", str(config_path)],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        device = _first_line(mcu, startup_timeout)
        if not device:
            mcu.kill()
            mcu.wait()
            raise RuntimeError(f"{stand_in.description} did not start")
        overrides.setdefault("hardware", {})["port"] = device
    port = overrides.get("hardware", {}).get("port", parts["hardware"].port)
    where = (f"{stand_in.description} on {port}" if stand_in is not None
             else f"the rig on {port}")
    try:
        return run_sim(config_path, overrides, nodes=RIG_NODES, plant=where,
                       startup_timeout=startup_timeout, **kwargs)
    finally:
        if mcu is not None:
            mcu.send_signal(signal.SIGINT)
            try:
                mcu.wait(STAND_IN_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                mcu.kill()
                mcu.wait()


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    """The first line a child prints, or '' if none within `timeout`."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()),  # type: ignore
                     daemon=True).start()
    try:
        return lines.get(timeout=timeout).strip()
    except queue.Empty:
        return ""


class _NodeDied(RuntimeError):
    pass


def start_learning(client: GraphClient, status_wait: float = 5.0, service: str = "learn"
                   ) -> tuple[bool, str]:
    """Call /ebmcpilco/learn (or /ebmcpilco/resume). Fast DDS drops a response whose reader the
    server has not yet discovered (it waits 100 ms, which a loaded machine can exceed), so an
    unanswered call counts as started when the status topic shows the run."""
    ok, message = client.call(service)
    if not ok and "did not answer" in message:
        status = client.wait_status(lambda s: s.get("state") == "learning", status_wait)
        if status is not None:
            return True, (f"learning: run {status.get('run_id')} (its answer was lost; the "
                          f"status topic shows it started)")
    return ok, message


def _wait(client: GraphClient, graph: Graph, predicate: Callable[[dict[str, Any]], bool],
          timeout: float, interrupted: threading.Event) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check(graph, interrupted)
        status = client.wait_status(predicate, timeout=min(0.5, deadline - time.monotonic()))
        if status is not None:
            return status
    return None


def _check(graph: Graph, interrupted: threading.Event) -> None:
    if interrupted.is_set():
        raise KeyboardInterrupt
    dead = graph.exited()
    if dead:
        name, code = next(iter(dead.items()))
        raise _NodeDied(f"node {exit_reason(name, code)}:\n{graph.log_tail(name)}")


def _follow(client: GraphClient, graph: Graph, view: StatusView,
            interrupted: threading.Event, until_end: bool = True) -> int:
    """Show the status topic through `view` until the run ends (its exit code: 0 solved, 1
    not), or, without `until_end`, until interrupted (KeyboardInterrupt) or a node dies."""
    run_id = (client.latest_status or {}).get("run_id")
    while True:
        _check(graph, interrupted)
        try:
            status = client.statuses.get(timeout=0.5)
        except queue.Empty:
            view.tick()
            continue
        if not until_end:
            view.handle(status)
            continue
        if status.get("run_id") != run_id and status.get("event") != "started_learning":
            continue
        run_id = status.get("run_id")
        view.handle(status)
        if status.get("event") in END_EVENTS:
            view.close()
            return end_code(status)
