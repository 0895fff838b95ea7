"""Ctrl-C in any phase: every node process exits 0 within the bound, the command last sent is
zero, the run directory is complete and says the run was aborted.

The graph tests drive a learning run into one phase each (idle, a trial, the model fit, GP-iLQR,
pretraining, MC-PILCO), found on the nodes' own event topics, then send SIGINT to every node at
once, as `ros2 launch` does on Ctrl-C. The core tests check that each long computation asks its
stop flag every iteration and stops at once when it is set.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from ebmcpilco_ros.nodes.bringup import STOP_GRACE, GraphClient, graph_environment
from ebmcpilco_ros.core import ilqr
from ebmcpilco_ros.core.cancel import Cancelled
from ebmcpilco_ros.core.config import (CostConfig, ExperimentConfig, ModelConfig,
                                       OptimizerConfig, PolicyConfig, PretrainConfig)
from ebmcpilco_ros.core.gp import fit_gp
from ebmcpilco_ros.core.ilqr_cost import SwingUpCost
from ebmcpilco_ros.core.learner import LocalPolicyOptimization, OptimizationRequest
from ebmcpilco_ros.core.mcpilco import optimize_policy
from ebmcpilco_ros.core.model import training_data
from ebmcpilco_ros.core.policy import SquashedRBFPolicy
from ebmcpilco_ros.core.pretrain import pretrain_bayes
from ebmcpilco_ros.nodes import STOP_BOUND_S

from graph_helpers import (REDUCED, STARTUP_TIMEOUT, Probe, describe_failure,
                           isolated_domain, ros_environment, start_graph, wait_event)
from helpers import fitted_model, random_trials

PHASE_TIMEOUT = 120.0  # from the learn call to the phase, on a busy 2-core machine


# -- the core: a stop flag asked every iteration ---------------------------------------------------
class StopAfter:
    """A stop check that says "go on" `calls` times, then "stop"; counts how often it was asked."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked > self.calls


@pytest.fixture(scope="module")
def model():
    return fitted_model(1, fit_iterations=30)


def test_ilqr_asks_every_iteration_and_stops_when_told(model):
    config = ExperimentConfig().ilqr
    never = StopAfter(10**9)
    plan = ilqr.solve(model, SwingUpCost.from_config(config), np.zeros(4), 10.0, config,
                      horizon=30, should_stop=never)
    assert never.asked >= plan.iterations > 0
    stop = StopAfter(3)
    with pytest.raises(Cancelled, match="iLQR iteration"):
        ilqr.solve(model, SwingUpCost.from_config(config), np.zeros(4), 10.0, config,
                   horizon=30, should_stop=stop)
    assert stop.asked == 4


def test_pretraining_asks_every_step_and_stops_when_told():
    rng = np.random.default_rng(0)
    states, targets = rng.normal(size=(200, 4)), rng.uniform(-5.0, 5.0, size=200)
    policy = SquashedRBFPolicy(PolicyConfig(num_basis=10), 10.0)
    stop = StopAfter(5)
    with pytest.raises(Cancelled, match="pretraining step 5"):
        pretrain_bayes(policy, states, targets, PretrainConfig(steps=1000), rng,
                       should_stop=stop)
    assert stop.asked == 6


def test_the_gp_fit_asks_every_evaluation_and_stops_when_told():
    X, Y = training_data(random_trials(1))
    never = StopAfter(10**9)
    fit_gp(X, Y[:, 0], ModelConfig(fit_iterations=20), should_stop=never)
    assert never.asked >= 20  # one per L-BFGS evaluation
    stop = StopAfter(2)
    with pytest.raises(Cancelled, match="GP"):
        fit_gp(X, Y[:, 0], ModelConfig(fit_iterations=200), should_stop=stop)
    assert stop.asked == 3


def test_mcpilco_asks_every_step_and_stops_when_told(model):
    torch.manual_seed(0)
    policy = SquashedRBFPolicy(PolicyConfig(num_basis=10), 10.0)
    config = OptimizerConfig(particles=10, horizon=10, dtype="float64", backend="torch")
    stop = StopAfter(3)
    with pytest.raises(Cancelled, match="optimisation step 3"):
        optimize_policy(policy, model, config, CostConfig(), 0.01, 100,
                        np.random.default_rng(0), should_stop=stop)
    assert stop.asked == 4


def test_the_optimiser_reports_each_stage_and_stops_in_any(model):
    config = ExperimentConfig().replace(
        optimizer={"particles": 10, "horizon": 10, "max_steps_first": 3, "backend": "torch"},
        pretrain={"steps": 3}, policy={"num_basis": 10}, ilqr={"max_iterations": 3})
    stages: list[str] = []
    optimizer = LocalPolicyOptimization(config, np.random.default_rng(0),
                                        on_stage=stages.append)
    optimizer.next_controller(model, OptimizationRequest("policy", 0, pretrain=True))
    assert stages == ["ilqr", "pretrain", "policy"]
    for stage in ("ilqr", "pretrain", "policy"):
        flag = threading.Event()

        def on_stage(name: str, stage: str = stage, flag: threading.Event = flag) -> None:
            if name == stage:
                flag.set()
        optimizer = LocalPolicyOptimization(config, np.random.default_rng(0),
                                            should_stop=flag.is_set, on_stage=on_stage)
        with pytest.raises(Cancelled):
            optimizer.next_controller(model, OptimizationRequest("policy", 0, pretrain=True))


# -- the node graph: SIGINT in each phase ----------------------------------------------------------
class NodeEvents:
    """The events the execution, model learning and optimisation nodes send, as they arrive."""

    TOPICS = ("ebmcpilco/execution/events", "ebmcpilco/model_learning/events",
              "ebmcpilco/policy_optimization/events")

    def __init__(self, client: GraphClient) -> None:
        from std_msgs.msg import String

        from ebmcpilco_ros.nodes.qos import reliable_qos

        self.cond = threading.Condition()
        self.events: list[dict[str, Any]] = []
        for topic in self.TOPICS:
            client.node.create_subscription(String, topic, self._on, reliable_qos(50))

    def _on(self, msg: Any) -> None:
        with self.cond:
            self.events.append(json.loads(msg.data))
            self.cond.notify_all()

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: any(predicate(e) for e in self.events), timeout)


def node_event(node: str, kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (e.get("node") == node and e.get("event") == kind
                      and all(k in e and (v is None or e[k] == v) for k, v in fields.items()))


# phase: (parameters, the event that says the phase runs, the node whose log must say it
# cancelled the work there because it was shutting down, and how)
PHASES: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], bool] | None,
                        tuple[str, str] | None]] = {
    "idle": ({}, None, None),
    "trial": ({}, node_event("policy_execution", "started"), None),
    # A fit on one trial converges in 0.2-2 s, sometimes before the signal lands: then the stop
    # comes right after it (the fit's own cancellation is the core test above).
    "fit": ({"model.fit_iterations": 2000},
            node_event("model_learning", "accepted"),
            ("model_learning", r"fit \S+ cancelled (during the GP hyperparameter fit|before)"
                               r".*shutting down|model v1 fitted on 1 trials")),
    "ilqr": ({"learner.algorithm": "eb", "exploration.iterations": 1,
              "ilqr.continuation_step": 1},  # many horizon stages: a long solve
             node_event("policy_optimization", "progress", stage="ilqr"),
             ("policy_optimization", r"cancelled at iLQR iteration.*shutting down")),
    "pretraining": ({"learner.algorithm": "eb", "exploration.iterations": 0,
                     "pretrain.steps": 100000},
                    node_event("policy_optimization", "progress", stage="pretrain"),
                    ("policy_optimization", r"cancelled at pretraining step.*shutting down")),
    "optimisation": ({"optimizer.max_steps_first": 100000},
                     node_event("policy_optimization", "progress", step=None),
                     ("policy_optimization", r"cancelled at optimisation step.*shutting down")),
}


def stop_all(graph) -> dict[str, tuple[int | None, float]]:
    """SIGINT to every node at once; each one's exit code and seconds to exit (None: still
    running after the bound and a second)."""
    sent = time.monotonic()
    for process in graph.processes.values():
        process.send_signal(signal.SIGINT)
    ended: dict[str, tuple[int | None, float]] = {}
    for name, process in graph.processes.items():
        try:
            process.wait(timeout=max(0.0, sent + STOP_BOUND_S + 1.0 - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        ended[name] = (process.poll(), time.monotonic() - sent)
    return ended


def check_run_directory(root: Path) -> list[dict[str, Any]]:
    """Every file of every run whole (JSON that parses, no temporary left); the log's entries."""
    assert not list(root.rglob("*.tmp")), list(root.rglob("*.tmp"))
    for path in root.rglob("*.json"):
        json.loads(path.read_text())
    return [json.loads(line) for log in root.rglob("log.jsonl")
            for line in log.read_text().splitlines()]


@pytest.mark.timeout(STARTUP_TIMEOUT + PHASE_TIMEOUT + 60)
@pytest.mark.parametrize("phase", list(PHASES))
def test_sigint_in_any_phase_stops_every_node_cleanly(tmp_path, phase):
    parameters, running, cancelled = PHASES[phase]
    with ros_environment(isolated_domain(20 + list(PHASES).index(phase))):
        g = start_graph(tmp_path, parameters)
        client = GraphClient()
        events = NodeEvents(client)
        probe = Probe(client)
        try:
            ready = client.wait_status(lambda s: bool(s.get("ready")), STARTUP_TIMEOUT)
            assert ready is not None, describe_failure(g)
            if running is not None:
                ok, message = client.call("learn")
                assert ok, message
                assert events.wait(running, PHASE_TIMEOUT), (events.events, describe_failure(g))
            if phase == "trial":  # the loop is commanding the plant
                sent = len(probe.commands)
                assert probe.wait_for(lambda: len(probe.commands) > sent, 10)
            ended = stop_all(g)
            # the aborted trial's record: sent as the execution node stopped, received here
            # only while the client is open, so waited for before it closes
            aborted_record = phase == "trial" and probe.wait_for(
                lambda: any(r["meta"]["outcome"] == "aborted" for r in probe.records), 5)
        finally:
            client.close()
            g.stop()
    summary = ", ".join(f"{n} {code} in {t:.2f} s" for n, (code, t) in ended.items())
    print(f"{phase}: {summary}")
    late = [name for name, (code, took) in ended.items() if code != 0 or took > STOP_BOUND_S]
    for name in late:  # the whole log first: a stack dump is longer than a message's tail
        print(f"--- {name} ---\n{g.log_path(name).read_text(errors='replace')}")
    assert not late, (phase, summary, "\n".join(g.log_tail(name, 40) for name in late))
    if probe.commands:
        assert probe.commands[-1][1] == 0.0, probe.commands[-5:]
    if cancelled is not None:  # the work was interrupted in the phase, not after it
        node, pattern = cancelled
        log = g.log_path(node).read_text(errors="replace")
        assert re.search(pattern, log), g.log_tail(node)
    log = check_run_directory(tmp_path / "runs")
    if running is not None:  # the trial manager's own signal or a peer's cancellation first
        assert log and log[-1]["event"] == "aborted", log[-3:]
        assert re.search(r"(trial_manager|model_learning|policy_optimization) shutting down",
                         log[-1]["reason"]), log[-1]
    if phase == "trial":  # the execution node sent the record of the aborted trial
        assert aborted_record, probe.records


@pytest.mark.timeout(STARTUP_TIMEOUT + PHASE_TIMEOUT + 60)
def test_a_peer_stopped_alone_aborts_the_run_with_its_reason(tmp_path):
    """SIGINT to policy_optimization alone while it optimises: its work ends cancelled, and the
    trial manager (still running) ends the run `aborted` with that node's reason, not `failed`
    (what a Ctrl-C of the whole graph looks like when the peer's cancellation arrives before
    the trial manager's own signal)."""
    with ros_environment(isolated_domain(32)):
        g = start_graph(tmp_path, {"optimizer.max_steps_first": 100000})
        client = GraphClient()
        events = NodeEvents(client)
        try:
            assert client.wait_status(lambda s: bool(s.get("ready")), STARTUP_TIMEOUT), \
                describe_failure(g)
            ok, message = client.call("learn")
            assert ok, message
            assert events.wait(node_event("policy_optimization", "progress", step=None),
                               PHASE_TIMEOUT), (events.events, describe_failure(g))
            g.processes["policy_optimization"].send_signal(signal.SIGINT)
            ended = wait_event(client, ("aborted", "failed"), 30)
            assert ended is not None, describe_failure(g)
            assert g.processes["policy_optimization"].wait(timeout=STOP_BOUND_S + 1) == 0
            assert g.processes["trial_manager"].poll() is None  # the run ended, the node did not
            # The peer's absence, reported after the run's end, is not the run's: the run's
            # log.jsonl still ends on "aborted" (it once gained a not_ready here).
            gone = client.wait_status(lambda s: s["event"] == "not_ready" and not s["ready"], 30)
            assert gone is not None and gone["run_id"] == ended["run_id"], gone
        finally:
            client.close()
            g.stop()
    assert ended["event"] == "aborted", ended
    assert re.fullmatch(r"optimisation cancelled: cancelled at optimisation step \d+ "
                        r"\(policy_optimization shutting down\)", ended["reason"]), ended
    log = check_run_directory(tmp_path / "runs")
    assert log[-1]["event"] == "aborted" and log[-1]["reason"] == ended["reason"], log[-1]


@pytest.mark.timeout(STARTUP_TIMEOUT + PHASE_TIMEOUT + 60)
def test_ctrl_c_stops_ebmcpilco_sim_and_its_nodes_while_optimising(tmp_path):
    """`ebmcpilco sim` interrupted while the policy is optimised: it aborts, stops every node
    (each exits 0: sim names any that does not) and exits 130, also when it inherited SIGINT
    ignored."""
    domain = isolated_domain(30)
    settings = {**REDUCED, "optimizer.max_steps_first": 100000,
                "nodes.run_directory": str(tmp_path / "runs")}
    command = [sys.executable, "-m", "ebmcpilco_ros.cli", "sim", "--verbose"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    env = graph_environment(os.environ, domain_id=domain)
    env.pop("EBMCPILCO_DIE_WITH_PARENT")  # the sim process itself is no node
    # started with SIGINT ignored, as a script's background job (or a CI runner's) is: sim
    # must act on it all the same
    sim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines: list[str] = []
    optimising = threading.Event()

    def read() -> None:
        for line in sim.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip())
            if line.strip().startswith("optimising (policy"):  # the verbose phase line
                optimising.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert optimising.wait(STARTUP_TIMEOUT + PHASE_TIMEOUT), "\n".join(lines)
        sent = time.monotonic()
        sim.send_signal(signal.SIGINT)
        code = sim.wait(timeout=STOP_GRACE + 10)
        took = time.monotonic() - sent
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    reader.join(5)
    output = "\n".join(lines)
    assert code == 130 and "interrupted: aborting" in output, output
    assert "exited with code" not in output, output
    # the abort (at most 2 s for its answer) and the nodes' own stop (STOP_BOUND_S)
    assert took <= STOP_BOUND_S + 4.0, (took, output)
    log = check_run_directory(tmp_path / "runs")
    assert log and log[-1]["event"] == "aborted", log[-3:]
