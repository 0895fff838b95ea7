"""The node graph over real DDS: five node processes (as `ros2 launch` would start them), driven
from a separate rclpy client through /ebmcpilco/run_trial and /ebmcpilco/learn."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ebmcpilco_ros.nodes.bringup import GraphClient
from ebmcpilco_ros.core.config import load_config

from bag_helpers import check_bag
from graph_helpers import (CONFIG, REDUCED, STARTUP_TIMEOUT, Probe, describe_failure,
                           isolated_domain, ros_environment, start_graph, wait_event)

PLANT = load_config(CONFIG).plant
LEARNING_TIMEOUT = 420.0  # 3 trials, 2 fits, 2 x 100 optimisation steps on a busy 2-core box


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graph")
    with ros_environment(isolated_domain(1)):
        g = start_graph(tmp)
        client = GraphClient()
        probe = Probe(client)
        try:
            ready = client.wait_status(lambda s: bool(s.get("ready")), STARTUP_TIMEOUT)
            assert ready is not None, describe_failure(g)
            yield g, client, probe, tmp
        finally:
            client.close()
            g.stop()


@pytest.mark.timeout(180)
def test_run_trial_records_a_trial_of_the_right_length_and_period(graph):
    g, client, probe, tmp = graph
    ok, message = client.call("run_trial")
    assert ok, message
    assert probe.wait_for(lambda: any(r["meta"]["run_id"].startswith("manual")
                                      for r in probe.records), 60), describe_failure(g)
    record = next(r for r in probe.records if r["meta"]["run_id"].startswith("manual"))
    # the trial's end first: a failed assertion below must not leave the manager mid-trial
    done = wait_event(client, ("trial_done", "failed"), 30)
    assert done is not None and done["event"] == "trial_done", done
    assert done["trial"]["kind"] == "random" and not done["trial"]["failed"]
    assert record["format"] == "ebmcpilco.trial/1"
    assert not record["failed"], f'{record["meta"]["reason"]}\n{describe_failure(g)}'
    states, inputs, times = (np.array(record[k]) for k in ("states", "inputs", "times"))
    assert states.shape == (PLANT.steps + 1, 4) and inputs.shape == (PLANT.steps,)
    assert np.array(record["true_states"]).shape == states.shape
    period = np.diff(times)
    assert abs(period.mean() - PLANT.control_period) < 1e-3
    assert np.all(np.abs(period - PLANT.control_period) < 0.02)  # a tick late on a busy box
    assert np.all(np.abs(inputs) <= PLANT.u_max)
    # The simulated plant applies what it is asked (no limits): each recorded input, the mean
    # force that followed command k, lies between command k - 1 (still applied until command k
    # arrives) and command k, and mostly at command k.
    requested = np.array(record["meta"]["requested_inputs"])
    before = np.concatenate([[0.0], requested[:-1]])
    low, high = np.minimum(before, requested), np.maximum(before, requested)
    inside = (inputs >= low - 1e-6) & (inputs <= high + 1e-6)  # requested: 6 decimals
    assert np.all(inside), [(k, before[k], requested[k], inputs[k])
                            for k in np.flatnonzero(~inside)]
    share_of_previous = np.abs(inputs - requested) / np.maximum(high - low, 1e-9)
    assert np.median(share_of_previous) < 0.15, share_of_previous
    assert len(record["meta"]["timing"]["lateness_s"]) == PLANT.steps
    # The run directory has the record and, beside it, the trial as a bag: every state and
    # command, stamped as the execution node recorded them (the plant's state stamps, each
    # command after its step's state).
    stamps, sent = record["meta"]["state_stamps_ns"], record["meta"]["command_stamps_ns"]
    assert len(stamps) == PLANT.steps + 1 and len(sent) == PLANT.steps
    assert all(c >= s for s, c in zip(stamps, sent)) and sorted(stamps) == stamps
    written = tmp / "runs" / record["meta"]["run_id"] / "trials" / "trial_000.json"
    assert json.loads(written.read_text()) == record
    # its log: the manual trial's statuses, from its start to its end (docs/NODES.md)
    log = [json.loads(line) for line in (written.parent.parent / "log.jsonl").read_text()
           .splitlines()]
    assert log[0]["event"] == "started_running_trial" and log[-1] == done, log
    check_bag(written.with_suffix(""), record)


@pytest.mark.timeout(LEARNING_TIMEOUT + 60)
def test_learning_loop_through_the_graph_improves_the_cost(graph):
    g, client, probe, tmp = graph
    # whatever the test before left running (the module's graph is shared) ends first
    assert client.wait_status(lambda s: s.get("state") == "idle", 60) is not None, \
        describe_failure(g)
    ok, message = client.call("learn")
    assert ok, message
    started = wait_event(client, ("started_learning",), 30)
    assert started is not None
    run_id = started["run_id"]
    # Bad input while learning: refused at once, with the reason.
    again, why = client.call("learn")
    assert not again and "already learning" in why
    trial, why = client.call("run_trial")
    assert not trial and "already learning" in why

    end = wait_event(client, ("run_done", "failed", "aborted"), LEARNING_TIMEOUT, run_id)
    assert end is not None and end["event"] == "run_done", (end, describe_failure(g))
    report = end["report"]
    assert [t["kind"] for t in report["trials"]][0] == "random"
    assert len(report["trials"]) == REDUCED["learner.max_trials"] or report["solved"]
    # A model and a controller came over the graph for this run.
    assert probe.wait_for(lambda: any(m["run_id"] == run_id for m in probe.models), 10)
    models = [m for m in probe.models if m["run_id"] == run_id]
    controllers = [c for c in probe.controllers if c["run_id"] == run_id]
    assert models and models[-1]["model"]["format"] == "ebmcpilco.model/1"
    assert controllers and controllers[-1]["controller"]["kind"] == "squashed_rbf"
    # The optimiser lowered its predicted cost, and a learned policy beat random exploration.
    for costs in report["opt_costs"]:
        assert costs[-1] < costs[0]
    random_cost = report["trials"][0]["cost"]
    assert min(t["cost"] for t in report["trials"][1:]) < random_cost, report["cost_per_trial"]
    # The run directory holds every trial, model and controller, and the log.
    run_dir = tmp / "runs" / run_id
    assert len(list((run_dir / "trials").glob("trial_*.json"))) == len(report["trials"])
    assert len(list((run_dir / "models").glob("*.json"))) == len(report["trials"]) - 1
    assert len(list((run_dir / "controllers").glob("*.json"))) == len(report["trials"]) - 1
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "started_learning" and log[-1] == end, log[-1]
    assert sum(entry["event"] == "trial_done" for entry in log) == len(report["trials"])
    # every trial_done says whether the system cut its trial short (docs/NODES.md): none here
    assert all(entry["trial"]["faulted"] is False for entry in log
               if entry["event"] == "trial_done"), log
    # ... and the optimisation's progress, as on /ebmcpilco/status (docs/NODES.md): each stage
    # as it starts (a 100-step optimisation may end before its first timed step report)
    progress = [entry["progress"] for entry in log if entry["event"] == "progress"]
    assert sum(p.get("stage") == "policy" for p in progress) >= len(report["trials"]) - 1, \
        progress
    assert json.loads((run_dir / "report.json").read_text())["trials_to_solve"] == \
        report["trials_to_solve"]


@pytest.mark.timeout(STARTUP_TIMEOUT + LEARNING_TIMEOUT + 60)
def test_eb_explores_with_ilqr_plans_then_pretrains_through_the_graph(tmp_path):
    """EB-MC-PILCO over DDS: the GP-iLQR exploration rollout runs a feedback plan sent by the
    optimisation node, for exploration.rollout_duration and with exploration.max_deviation in
    its payload, and the policy trial starts from a pretrained policy."""
    eb = {"learner.algorithm": "eb", "exploration.iterations": 1, "pretrain.steps": 100,
          "exploration.rollout_duration": 1.5,
          "exploration.max_deviation": 100.0}   # carried in the plan, never reached (< pi)
    with ros_environment(isolated_domain(9)):
        g = start_graph(tmp_path, eb)
        client = GraphClient()
        probe = Probe(client)
        try:
            ready = client.wait_status(lambda s: bool(s.get("ready")), STARTUP_TIMEOUT)
            assert ready is not None, describe_failure(g)
            ok, message = client.call("learn")
            assert ok, message
            end = wait_event(client, ("run_done", "failed", "aborted"), LEARNING_TIMEOUT)
            assert end is not None and end["event"] == "run_done", (end, describe_failure(g))
            trials = end["report"]["trials"]
            assert [t["kind"] for t in trials] == ["random", "ilqr", "policy"]
            ilqr_trial, policy_trial = trials[1], trials[2]
            assert "tracking_error" in ilqr_trial["info"] and "ilqr" in ilqr_trial["wall_s"]
            assert ilqr_trial["opt_steps"] == 0
            assert {"ilqr", "pretrain", "policy"} <= set(policy_trial["wall_s"])
            assert policy_trial["info"]["warm_start"] == "pretrained"
            assert policy_trial["opt_steps"] > 0
            assert probe.wait_for(lambda: len(probe.controllers) >= 2, 10)
            kinds = [c["controller"]["kind"] for c in probe.controllers]
            assert kinds[-2:] == ["feedback_plan", "squashed_rbf"], kinds
            # the executed iLQR rollout stayed within the input limit
            plan_record = next(r for r in probe.records if r["kind"] == "ilqr")
            assert np.all(np.abs(plan_record["inputs"]) <= PLANT.u_max)
            # ... for 1.5 s (30 steps); the plan it followed spans the whole trial
            assert len(probe.controllers[-2]["controller"]["U"]) == 30
            assert probe.controllers[-2]["controller"]["max_deviation"] == 100.0
            assert np.array(plan_record["states"]).shape == (31, 4), plan_record["meta"]
            assert ilqr_trial["duration_s"] == pytest.approx(1.5, abs=0.05)
            assert policy_trial["duration_s"] == pytest.approx(PLANT.trial_duration, abs=0.05)
        finally:
            client.close()
            g.stop()


@pytest.mark.timeout(150)
def test_without_state_trials_and_learning_are_refused_with_the_reason(tmp_path):
    with ros_environment(isolated_domain(2)):
        g = start_graph(tmp_path, nodes=("policy_execution", "trial_manager"))
        client = GraphClient()
        try:
            status = client.wait_status(
                lambda s: any("fresh state" in w for w in s.get("waiting_for", [])),
                STARTUP_TIMEOUT)
            assert status is not None, describe_failure(g)
            ok, why = client.call("run_trial")
            assert not ok and "fresh state on cartpole/joint_states" in why
            ok, why = client.call("learn")
            assert not ok and "not ready" in why and "model_learning" in why
            ok, why = client.call("abort")
            assert ok and "nothing running" in why
        finally:
            client.close()
            g.stop()


@pytest.mark.timeout(STARTUP_TIMEOUT + 120)
def test_a_rollout_that_leaves_its_plan_by_max_deviation_ends_there_with_the_force_zeroed(
        tmp_path):
    """exploration.max_deviation on the rig end: the execution node ends a feedback plan's
    trial at the first state whose angle is further than max_deviation from the plan's, before
    that step's force. The record ends with that state, the trial counts as finished (not
    failed), and the force goes back to zero."""
    from std_msgs.msg import String
    from test_data_hygiene import Watch, _string

    from ebmcpilco_ros.nodes import names, qos

    steps, leave = PLANT.steps, 10
    X = np.zeros((steps + 1, 4))
    X[leave:, 2] = 2.0   # the plan swings the pole to 2 rad at step 10; a 1 N push does not
    plan = {"format": "ebmcpilco.controller/1", "kind": "feedback_plan", "u_max": PLANT.u_max,
            "seed": 0, "version": 0, "X": X.tolist(), "U": [1.0] * steps,
            "K": [[0.0] * 4] * steps, "sigma": [0.0] * steps, "max_deviation": 1.0}
    with ros_environment(isolated_domain(14)):
        g = start_graph(tmp_path, nodes=("sim_plant", "policy_execution"))
        client = GraphClient()
        watch = Watch(client)
        probe = Probe(client)
        try:
            watch.listen(names.EXECUTION_EVENTS_TOPIC, qos.reliable_qos(50))
            request = watch.publisher(String, names.TRIAL_REQUEST_TOPIC, qos.reliable_qos(50))
            assert watch.wait_matched([names.TRIAL_REQUEST_TOPIC], STARTUP_TIMEOUT), \
                describe_failure(g)
            # the execution node takes requests once it has a fresh state
            assert watch.wait_diagnostics("policy_execution", lambda v: v.get(
                "state_age_ms", "never") != "never", STARTUP_TIMEOUT), describe_failure(g)
            request.publish(_string({
                "format": names.TRIAL_REQUEST_FORMAT, "request_id": "leaves-plan",
                "run_id": "deviation", "index": 0, "kind": "ilqr", "controller": plan}))

            def event(kind: str) -> dict | None:
                return watch.wait_payload(names.EXECUTION_EVENTS_TOPIC, lambda e: (
                    e.get("request_id") == "leaves-plan" and e["event"] == kind), 60)
            accepted, finished = event("accepted"), event("finished")
            assert accepted is not None and accepted["steps"] == steps, (
                accepted, describe_failure(g))
            assert finished is not None and finished["steps"] == leave, (
                watch.payloads[names.EXECUTION_EVENTS_TOPIC], describe_failure(g))
            assert probe.wait_for(lambda: any(r["meta"]["request_id"] == "leaves-plan"
                                              for r in probe.records), 30)
            record = next(r for r in probe.records if r["meta"]["request_id"] == "leaves-plan")
            assert not record["failed"] and record["meta"]["outcome"] == "finished"
            states = np.array(record["states"])
            assert states.shape == (leave + 1, 4) and len(record["inputs"]) == leave
            assert np.all(np.abs(states[:leave, 2]) < 1.0)      # it followed until step 10
            assert record["times"][-1] == pytest.approx(leave * PLANT.control_period, abs=0.02)
            assert record["meta"]["requested_inputs"] == [1.0] * leave
            # the force after the trial's last push is zero
            assert probe.wait_for(lambda: any(u == 0.0 for _t, u in probe.commands[
                max(i for i, (_t, u) in enumerate(probe.commands) if u == 1.0):]), 10), \
                probe.commands
        finally:
            client.close()
            g.stop()
