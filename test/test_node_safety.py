"""Killing any node mid-trial leaves the plant's force at zero: the learning nodes because the
execution node finishes the trial and zeroes the command, the execution node because the
plant's watchdog zeroes it. The force is read from the plant's own joint states (effort)."""
from __future__ import annotations

import signal
import time

import pytest

from ebmcpilco_ros.nodes.bringup import GraphClient
from ebmcpilco_ros.nodes.config import load_node_sections

from graph_helpers import (CONFIG, STARTUP_TIMEOUT, Probe, describe_failure, isolated_domain,
                           ros_environment, start_graph, wait_event)

TRIAL_S = 1.5                   # shorter trials: the kill happens in the first one
SETTINGS = {"plant.trial_duration": TRIAL_S, "nodes.peer_grace": 1.0,
            "nodes.request_timeout": 5.0}
WATCHDOG_S = load_node_sections(CONFIG)["sim_plant"].command_watchdog_timeout
ZERO_WINDOW_S = 0.5             # the force must stay zero over this much plant time


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    with ros_environment(isolated_domain(3)):
        g = start_graph(tmp, SETTINGS)
        client = GraphClient()
        probe = Probe(client, joint_states=True)
        try:
            assert client.wait_status(lambda s: bool(s.get("ready")), STARTUP_TIMEOUT), \
                describe_failure(g)
            yield g, client, probe
        finally:
            client.close()
            g.stop()


def start_trial(g, client, probe, service: str) -> float:
    """Ask for a trial and return once the plant applies a non-zero force."""
    assert client.wait_status(lambda s: s.get("ready") and s.get("state") == "idle",
                              STARTUP_TIMEOUT), describe_failure(g)
    since = time.monotonic()
    ok, message = client.call(service)
    assert ok, message
    assert probe.wait_for(lambda: any(t > since and f != 0.0 for t, f in probe.efforts), 30), \
        describe_failure(g)
    return since


def force_stays_zero(probe, after: float, timeout: float) -> bool:
    """The plant's force reaches zero after `after` and stays there for ZERO_WINDOW_S."""
    def zero_window() -> bool:
        samples = [(t, f) for t, f in probe.efforts if t > after]
        last_nonzero = max((t for t, f in samples if f != 0.0), default=after)
        return bool(samples) and samples[-1][0] - last_nonzero >= ZERO_WINDOW_S
    return probe.wait_for(zero_window, timeout)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("victim", ["model_learning", "policy_optimization", "trial_manager"])
def test_killing_a_learning_node_mid_trial_leaves_the_force_at_zero(graph, victim):
    g, client, probe = graph
    records = len(probe.records)
    since = start_trial(g, client, probe, "learn")
    g.kill(victim, signal.SIGKILL)
    # The execution node finishes the trial and zeroes the command: the record arrives ...
    assert probe.wait_for(lambda: len(probe.records) > records, 30), describe_failure(g)
    assert probe.records[records]["meta"]["outcome"] == "finished"
    # ... and the plant's force goes to zero and stays there.
    assert force_stays_zero(probe, since + TRIAL_S, 30), probe.efforts[-10:]
    assert probe.commands[-1][1] == 0.0
    if victim != "trial_manager":
        # The manager notices the missing node and ends the run with the reason.
        end = wait_event(client, ("failed", "run_done", "aborted"), 60)
        assert end is not None and end["event"] == "failed" and victim in end["reason"], end
    g.processes[victim].wait(timeout=10)
    g.start([victim])


@pytest.mark.timeout(240)
def test_killing_the_execution_node_mid_trial_trips_the_plant_watchdog(graph):
    g, client, probe = graph
    start_trial(g, client, probe, "run_trial")
    g.kill("policy_execution", signal.SIGKILL)
    killed = time.monotonic()
    assert force_stays_zero(probe, killed, 10), probe.efforts[-10:]
    zero_at = next(t for t, f in probe.efforts if t > killed and f == 0.0)
    assert zero_at - killed < WATCHDOG_S + 0.5  # the watchdog, plus a busy machine's delays
    end = wait_event(client, ("failed", "trial_done", "aborted"), 60)
    assert end is not None and end["event"] == "failed" and "policy_execution" in end["reason"]
    g.processes["policy_execution"].wait(timeout=10)
    g.start(["policy_execution"])
    assert client.wait_status(lambda s: s.get("ready") and s.get("state") == "idle",
                              STARTUP_TIMEOUT), describe_failure(g)
