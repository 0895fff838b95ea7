"""Resume after a crash: in-process, a run stopped at a trial boundary and resumed from its
checkpoint gives exactly the uninterrupted run (same seed); through the node graph, a trial
manager or a whole graph killed with SIGKILL resumes from its run directory, losing no
completed trial."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ebmcpilco_ros.core.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint
from ebmcpilco_ros.core.jsonio import write_json_atomic
from ebmcpilco_ros.core.config import ExperimentConfig
from ebmcpilco_ros.core.learner import LearningReport, build_in_process
from ebmcpilco_ros.core.mcpilco import torch_threads

# EB-MC-PILCO with every phase (random, two GP-iLQR rollouts, pretrained policy trials with the
# warm start's cost comparison), small enough for seconds per trial.
SMALL = ExperimentConfig().replace(
    learner={"algorithm": "eb", "max_trials": 6, "stop_on_success": False, "seed": 5},
    exploration={"iterations": 2, "match_tol": 0.0},
    pretrain={"steps": 20, "every_trial": True},
    optimizer={"particles": 20, "max_steps": 12, "max_steps_first": 12, "threads": 1},
    policy={"num_basis": 20}, model={"fit_iterations": 30}, ilqr={"max_iterations": 20})


class Crash(RuntimeError):
    """Stands in for the process dying."""


class CrashingSystem:
    """The run's system until trial `at`, where the "machine" dies before the trial runs."""

    def __init__(self, inner: Any, at: int) -> None:
        self.inner = inner
        self.at = at

    def run(self, controller: Any, kind: str, index: int) -> Any:
        if index == self.at:
            raise Crash(f"crash before trial {index}")
        return self.inner.run(controller, kind, index)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def run(config: ExperimentConfig, crash_at: int | None = None, checkpoint: Path | None = None,
        resume: dict[str, Any] | None = None) -> tuple[LearningReport, Any]:
    """A run in a fresh Learner (as a restarted process builds it); its report and policy."""
    def save(data: dict[str, Any]) -> None:
        write_json_atomic(checkpoint, data)
    learner = build_in_process(config, on_checkpoint=save if checkpoint else None)
    if crash_at is not None:
        learner.system = CrashingSystem(learner.system, crash_at)
    with torch_threads(config.optimizer.threads):
        report = learner.run(resume)
    return report, learner.optimizer.policy


def outcome(report: LearningReport) -> list[tuple[Any, ...]]:
    return [(t.index, t.kind, t.success, t.cost, t.opt_steps, t.predicted_cost, t.model_points)
            for t in report.trials]


@pytest.fixture(scope="module")
def uninterrupted():
    return run(SMALL)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("crash_at", [2, 4])
def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path, uninterrupted, crash_at):
    """Stopped before trial `crash_at` (2: while exploring with GP-iLQR; 4: after the first
    policy trial, so the persistent policy, the last plan and the warm start's draws matter),
    resumed from the checkpoint file by a new Learner: the same trials, costs, optimisation
    costs and final policy, bit for bit."""
    full, full_policy = uninterrupted
    path = tmp_path / "checkpoint.json"
    with pytest.raises(Crash):
        run(SMALL, crash_at=crash_at, checkpoint=path)
    saved = load_checkpoint(path, SMALL)
    assert saved["format"] == CHECKPOINT_FORMAT and saved["trials_completed"] == crash_at
    torch.manual_seed(12345)  # a restarted process: nothing left of the first one's state
    np.random.seed(54321)
    resumed, policy = run(SMALL, checkpoint=path, resume=saved)
    assert outcome(resumed) == outcome(full)
    assert resumed.opt_costs == full.opt_costs
    for name, value in full_policy.state_dict().items():
        assert torch.equal(policy.state_dict()[name], value), name
    assert load_checkpoint(path)["trials_completed"] == SMALL.learner.max_trials


@pytest.mark.timeout(120)
def test_the_optimisation_node_goes_on_from_the_state_a_request_carries():
    """A restarted optimisation node asked for a run's next controller starts from the state
    the request carries (the run's last controller update), never from a fresh policy in the
    middle of a run; a node that holds exactly that state goes on with its own optimiser."""
    import rclpy

    from ebmcpilco_ros.nodes.policy_optimization import PolicyOptimizationNode
    from graph_helpers import isolated_domain, ros_environment

    def after_a_controller(optimizer: Any) -> dict[str, Any]:
        """What a controller update leaves: the policy moved, the generator drawn from, the
        version counted; the state as it travels (JSON)."""
        with torch.no_grad():
            for parameter in optimizer.policy.parameters():
                parameter.add_(0.1)
        optimizer.rng.normal(size=3)
        optimizer.version += 1
        return json.loads(json.dumps(optimizer.state_dict()))

    with ros_environment(isolated_domain(62)):
        rclpy.init()
        try:
            node = PolicyOptimizationNode()
            held = node._optimizer_for("run-a/session-1", 3, None)   # the run's first request
            stale = after_a_controller(held)
            state = after_a_controller(held)
            assert node._optimizer_for("run-a/session-1", 3, state) is held
            node.destroy_node()

            restarted = PolicyOptimizationNode()
            resumed = restarted._optimizer_for("run-a/session-1", 3, state)
            assert resumed.version == held.version == 2
            assert json.dumps(resumed.state_dict()["policy"]) == json.dumps(state["policy"])
            assert resumed.rng.bit_generator.state == held.rng.bit_generator.state
            # a request carrying another state than the one held: the request's wins
            older = restarted._optimizer_for("run-a/session-1", 3, stale)
            assert older is not resumed and older.version == 1
            restarted.destroy_node()
        finally:
            rclpy.try_shutdown()


def test_a_restarted_nodes_repeated_version_never_overwrites_a_runs_file(tmp_path):
    """A node restarted within a run counts from v1 again: the earlier model stays, the later
    one gets a name of its own; the same update again goes to its own file."""
    from ebmcpilco_ros.nodes.rundir import RunDirectory
    from ebmcpilco_ros.nodes.trial_manager import versioned_name

    run_dir = RunDirectory(tmp_path, "run")
    first = versioned_name(run_dir.path, "models/model", 1, "fit-a")
    assert first == "models/model_v001.json"
    run_dir.write_json(first, {"request_id": "fit-a", "version": 1})
    assert versioned_name(run_dir.path, "models/model", 1, "fit-a") == first
    again = versioned_name(run_dir.path, "models/model", 1, "fit-b")
    assert again == "models/model_v001-fit-b.json"
    run_dir.write_json(again, {"request_id": "fit-b", "version": 1})
    assert json.loads((run_dir.path / first).read_text())["request_id"] == "fit-a"


def test_a_checkpoint_of_another_format_or_configuration_is_refused(tmp_path):
    path = tmp_path / "checkpoint.json"
    learner = build_in_process(SMALL)
    write_json_atomic(path, {**learner.checkpoint(), "format": "ebmcpilco.checkpoint/0"})
    with pytest.raises(CheckpointError, match="not of format ebmcpilco.checkpoint/1"):
        load_checkpoint(path)
    write_json_atomic(path, learner.checkpoint())
    other = SMALL.replace(learner={"seed": 6}, policy={"num_basis": 30})
    with pytest.raises(CheckpointError,
                       match=r"another configuration: learner.seed: 5 .*, 6 now"):
        load_checkpoint(path, other)
    with pytest.raises(CheckpointError, match="policy.num_basis: 20 in the checkpoint, 30"):
        build_in_process(other).restore(json.loads(path.read_text()))
    # Where and how fast it computes may change.
    load_checkpoint(path, SMALL.replace(optimizer={"threads": 2}))
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.json")


# -- the node graph: SIGKILL, restart, resume ------------------------------------------------------
GRAPH = {"optimizer.max_steps": 40, "optimizer.max_steps_first": 40,
         "learner.stop_on_success": False}  # 3 trials: random, policy, policy
RUN_TIMEOUT = 420.0  # startup, fits and optimisations on a busy 2-core machine


def files_of(run: Path) -> dict[str, bytes]:
    """Every file of a run (no temporary left, every JSON whole), by path (bytes: the trial
    bags are binary)."""
    from test_clean_stop import check_run_directory

    check_run_directory(run.parent)
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def resume_and_finish(client: Any, graph: Any, run_id: str, killed: float) -> dict[str, Any]:
    """Call /ebmcpilco/resume once the new trial manager (started after `killed`, a time.time())
    is ready; the run's end (run_done asserted)."""
    from ebmcpilco_ros.nodes.bringup import start_learning
    from graph_helpers import STARTUP_TIMEOUT, describe_failure, wait_event

    ready = client.wait_status(lambda s: bool(s.get("ready")) and s["stamp"] > killed,
                               STARTUP_TIMEOUT)
    assert ready is not None, describe_failure(graph)
    ok, message = start_learning(client, service="resume")
    assert ok and run_id in message, message
    end = wait_event(client, ("run_done", "failed", "aborted"), RUN_TIMEOUT, run_id)
    assert end is not None and end["event"] == "run_done", (end, describe_failure(graph))
    return end


def learn_until(client: Any, graph: Any, events: Any, moment: Any) -> str:
    """Start a run and wait for `moment` (a predicate on the node events); the run id."""
    from graph_helpers import STARTUP_TIMEOUT, describe_failure, wait_event

    ready = client.wait_status(lambda s: bool(s.get("ready")), STARTUP_TIMEOUT)
    assert ready is not None, describe_failure(graph)
    ok, message = client.call("learn")
    assert ok, message
    started = wait_event(client, ("started_learning",), 30)
    assert started is not None
    assert events.wait(moment, RUN_TIMEOUT), (events.events[-5:], describe_failure(graph))
    return started["run_id"]


def nth(node: str, kind: str, n: int) -> Any:
    """The moment `node` has sent its n-th `kind` event."""
    return lambda all_events: sum(e.get("node") == node and e.get("event") == kind
                                  for e in all_events) >= n


class AllEvents:
    """NodeEvents whose wait predicate sees the whole list (to count events)."""

    def __init__(self, client: Any) -> None:
        from test_clean_stop import NodeEvents

        self.inner = NodeEvents(client)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.inner.events

    def wait(self, predicate: Any, timeout: float) -> bool:
        with self.inner.cond:
            return self.inner.cond.wait_for(lambda: predicate(self.inner.events), timeout)


def check_resumed_run(run: Path, before: dict[str, str], end: dict[str, Any]) -> list[Any]:
    """Nothing completed before the crash lost or changed, every file whole, the run's three
    trials and its log saying it died and was resumed; the resumed event's `interrupted`."""
    from ebmcpilco_ros.nodes.rundir import run_status

    after = files_of(run)
    for name in ("trials/trial_000.json", "trials/trial_001.json"):
        assert after[name] == before[name], name  # completed before the crash: untouched
    report = end["report"]
    assert [t["index"] for t in report["trials"]] == [0, 1, 2]
    assert [t["kind"] for t in report["trials"]] == ["random", "policy", "policy"]
    assert sorted(p for p in after if p.startswith("trials/trial_") and p.endswith(".json")) == [
        f"trials/trial_{i:03d}.json" for i in range(3)]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    resumed = [e for e in log if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["previous"] == "died", resumed
    assert resumed[0]["from_trial"] == 2
    assert json.loads(after["checkpoint.json"])["trials_completed"] == 3
    progress = json.loads(after["progress.json"])
    assert progress["state"] == "run_done" and progress["trials_completed"] == 3, progress
    assert run_status(run)["outcome"] == "run_done"
    return resumed[0]["interrupted"]


@pytest.mark.timeout(2 * 120 + 2 * RUN_TIMEOUT + 60)
def test_a_killed_trial_manager_resumes_without_losing_a_trial(tmp_path):
    """SIGKILL to the trial manager while trial 2 runs; a new trial manager resumes the run
    from its checkpoint (trial 2 again), the cut-off trial kept under trials/interrupted/,
    marked failed and interrupted, and the run ends with its three trials."""
    import signal

    from ebmcpilco_ros.nodes.bringup import GraphClient
    from ebmcpilco_ros.nodes.rundir import run_status
    from graph_helpers import describe_failure, isolated_domain, ros_environment, start_graph

    with ros_environment(isolated_domain(60)):
        g = start_graph(tmp_path, GRAPH)
        client = GraphClient()
        events = AllEvents(client)
        try:
            run_id = learn_until(client, g, events, nth("policy_execution", "started", 3))
            killed = time.time()
            g.kill("trial_manager", signal.SIGKILL)
            g.processes["trial_manager"].wait(10)
            run = tmp_path / "runs" / run_id
            before = files_of(run)
            status = run_status(run)
            assert status["outcome"] == "died" and status["trials_completed"] == 2, status
            assert status["trial"]["index"] == 2, status
            g.start(["trial_manager"])
            end = resume_and_finish(client, g, run_id, killed)
        finally:
            client.close()
            g.stop()
    interrupted = check_resumed_run(run, before, end)
    assert [k["index"] for k in interrupted] == [2], (interrupted, describe_failure(g))
    kept = list((run / "trials" / "interrupted").glob("trial_002-*.json"))
    assert kept, list(run.rglob("*"))
    for path in kept:  # the record that arrived late, or the note that none did
        data = json.loads(path.read_text())
        assert data["failed"] is True
        assert data.get("meta", {}).get("interrupted") or data.get("record") is None, data


@pytest.mark.timeout(2 * 120 + 2 * RUN_TIMEOUT + 60)
def test_a_killed_graph_resumes_with_ebmcpilco_sim_resume(tmp_path):
    """SIGKILL to every node while the policy for trial 2 is optimised; `ebmcpilco sim --resume
    RUN` brings a new graph up on the run's own settings, resumes the run (the optimiser's
    state travels in the first request) and ends it, pointing at its report."""
    import os
    import signal
    import subprocess
    import sys

    from ebmcpilco_ros.nodes.bringup import GraphClient, graph_environment
    from graph_helpers import isolated_domain, ros_environment, start_graph

    domain = isolated_domain(61)
    with ros_environment(domain):
        g = start_graph(tmp_path, GRAPH)
        client = GraphClient()
        events = AllEvents(client)
        try:
            moment = nth("policy_optimization", "accepted", 2)
            run_id = learn_until(client, g, events, moment)
            for name in g.processes:
                g.kill(name, signal.SIGKILL)
            for process in g.processes.values():
                process.wait(10)
        finally:
            client.close()
            g.stop()
    run = tmp_path / "runs" / run_id
    before = files_of(run)
    env = graph_environment(os.environ, domain_id=domain)
    env.pop("EBMCPILCO_DIE_WITH_PARENT")  # the sim process itself is no node
    sim = subprocess.run([sys.executable, "-m", "ebmcpilco_ros.cli", "sim", "--resume", str(run)],
                         env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=120 + RUN_TIMEOUT)
    output = sim.stdout + sim.stderr
    assert sim.returncode in (0, 1) and "after 3 trials" in output, output
    end = {"report": json.loads((run / "report.json").read_text())}
    assert check_resumed_run(run, before, end) == [], output
    logs = list((tmp_path / "runs" / "logs").rglob("policy_optimization*"))
    log = "".join(path.read_text(errors="replace") for path in logs)
    assert "the optimiser starts from the state the request carries" in log, (logs, output)
