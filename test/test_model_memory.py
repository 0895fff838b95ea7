"""model_learning forgets runs that ended (issue 12), so a long-lived graph does not grow without
bound, and a run it forgot still fits: its trials come again on "missing" (docs/NODES.md,
"Request protocol"). The dataset on its own, then the real node built in this process on a real
rclpy context, driven over DDS as the trial manager would drive it. Waits are on conditions."""
from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from ebmcpilco_ros.nodes.bringup import GraphClient
from ebmcpilco_ros.core.config import ExperimentConfig
from ebmcpilco_ros.core.model import SpeedIntegrationModel
from ebmcpilco_ros.core.trial import Trial
from ebmcpilco_ros.nodes import names, qos, codec, process
from ebmcpilco_ros.nodes.model_learning import ModelLearningNode, RunRecords, trial_key
from ebmcpilco_ros.nodes.payloads import FitRequest, Status
from ebmcpilco_ros.scheduling import available_cores

from graph_helpers import isolated_domain, ros_environment
from helpers import random_trials
from test_data_hygiene import Watch, _record

WAIT = 30.0       # a message through DDS and the next diagnostics, on a busy 2-core machine
FIT_WAIT = 180.0  # a fit on two short trials, model.fit_iterations 100, on a busy machine
TRIALS = random_trials(2, seed=7)


def _trial(run: str, index: int, request: str = "") -> Trial:
    return Trial.from_dict(_record(TRIALS[index % 2], run, request or f"req-{index}")
                           | {"index": index})


# -- the records on their own ---------------------------------------------------------------------
def test_a_run_reported_over_is_forgotten_and_its_late_records_not_kept():
    data = RunRecords(max_runs=2)
    assert data.add(_trial("a", 0)) == ("stored", [])
    assert data.add(_trial("a", 0)) == ("duplicate", [])
    assert data.add(_trial("a", 1)) == ("stored", [])
    assert (len(data), list(data.runs)) == (2, ["a"])
    assert data.end("a") == 2
    assert (len(data), list(data.runs), data.forgotten) == (0, [], 1)
    assert data.add(_trial("a", 2)) == ("ended", [])   # the aborted trial's record, late
    assert (len(data), data.ignored) == (0, 1)
    # Resumed (a status saying so, or its first fit request): kept again.
    dataset, missing = data.lookup("a", ["a/0/req-0"])
    assert (len(dataset), missing) == (0, ["a/0/req-0"])
    assert data.add(_trial("a", 0)) == ("stored", [])
    assert data.lookup("a", ["a/0/req-0"])[1] == []
    data.end("a")
    data.live("a")      # a `resumed` or `started_learning` status naming it
    assert data.add(_trial("a", 1)) == ("stored", [])


def test_at_most_max_runs_are_held_the_least_recently_used_goes():
    data = RunRecords(max_runs=2)
    data.add(_trial("a", 0))
    data.add(_trial("b", 0))
    data.lookup("a", ["a/0/req-0"])              # a fit of run a: a used after b
    assert data.add(_trial("c", 0)) == ("stored", [("b", 1)])
    assert list(data.runs) == ["a", "c"] and len(data) == 2
    data.live("a")
    assert data.add(_trial("d", 0)) == ("stored", [("c", 1)])
    assert list(data.runs) == ["a", "d"]


def test_the_runs_remembered_as_over_are_bounded():
    data = RunRecords(max_runs=1, remember_ended=3)
    for run in "abcde":
        data.end(run)
    assert list(data.ended) == ["c", "d", "e"]
    assert data.add(_trial("a", 0))[0] == "stored"  # forgotten as over: kept, then capped


# -- the node, in this process --------------------------------------------------------------------
@pytest.fixture
def graph() -> Iterator[tuple[ModelLearningNode, Watch]]:
    """model_learning on its own rclpy context and executor, and a client in the same isolated
    domain that publishes what the trial manager would and watches /rosout and /diagnostics."""
    overrides = {"nodes.diagnostics_period": 0.2, "nodes.model_max_runs": 2,
                 "model.fit_iterations": 100, "optimizer.threads": 1}
    with ros_environment(isolated_domain(91)):
        context = rclpy.Context()
        rclpy.init(context=context)
        node = ModelLearningNode(context=context, parameter_overrides=[
            Parameter(k, value=v) for k, v in overrides.items()])
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=process.spin_until_shutdown, args=(executor,),
                                   daemon=True)
        spinner.start()
        client = GraphClient()
        try:
            yield node, Watch(client)
        finally:
            client.close()
            node.close()
            executor.shutdown(timeout_sec=2.0)
            spinner.join(timeout=5.0)
            node.destroy_node()
            rclpy.try_shutdown(context=context)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fit_threads", [1, 64])
def test_the_node_fits_on_optimizer_fit_threads(fit_threads):
    """model_learning only fits, so its process takes optimizer.fit_threads, at most one less
    than the cores (docs/NODES.md: one stays with the plant and control nodes); torch's setting
    is put back for the tests after it."""
    import torch

    before = torch.get_num_threads()
    with ros_environment(isolated_domain(92)):
        context = rclpy.Context()
        rclpy.init(context=context)
        try:
            torch.set_num_threads(3)
            node = ModelLearningNode(context=context, parameter_overrides=[
                Parameter("optimizer.threads", value=2),
                Parameter("optimizer.fit_threads", value=fit_threads)])
            try:
                assert torch.get_num_threads() == min(fit_threads, max(1, available_cores() - 1))
                assert node.config.optimizer.fit_threads == torch.get_num_threads()
            finally:
                node.close()
                node.destroy_node()
        finally:
            rclpy.try_shutdown(context=context)
            torch.set_num_threads(before)


@pytest.mark.parametrize("threads,fit_threads", [(1, 0), (1, 1), (1, 2), (2, 0), (0, 0), (1, 64)])
def test_the_graph_leaves_a_core_to_the_rig_in_fits(threads, fit_threads):
    """Both learning nodes cap the fits' threads (fit_threads, else threads, else torch's
    default: every core) at one less than the cores, at least 1, and say so; a setting within
    it is kept as it is, without a log line."""
    config = ExperimentConfig().replace(optimizer={"threads": threads, "fit_threads": fit_threads})
    lines: list[str] = []
    capped = process.fit_threads_beside_the_rig(config, lines.append)
    cap = max(1, available_cores() - 1)
    wanted = fit_threads or threads
    if wanted and wanted <= cap:
        assert capped is config and not lines
    else:
        assert capped.optimizer.fit_threads == cap and capped.optimizer.threads == threads
        assert len(lines) == 1 and "optimizer.fit_threads" in lines[0] and f"-> {cap}" in lines[0]
        assert capped.replace(optimizer={"fit_threads": fit_threads}) == config


def _status(event: str, state: str, run: str) -> dict[str, Any]:
    return Status(event=event, state=state, ready=True, waiting_for=[], run_id=run,
                  phase=event, trials=0, stamp=time.time(), node="/trial_manager").to_dict()


@pytest.mark.timeout(2 * FIT_WAIT + 120)
def test_the_node_forgets_an_ended_run_and_a_resumed_run_still_fits(graph):
    from std_msgs.msg import String

    node, watch = graph
    topics = (names.TRIAL_RECORDS_TOPIC, names.FIT_REQUEST_TOPIC, names.STATUS_TOPIC)
    records, fits, statuses = (
        watch.publisher(String, topic, qos) for topic, qos in zip(topics, (
            qos.reliable_qos(50), qos.reliable_qos(50), qos.latched_qos(10))))
    watch.listen(names.MODEL_EVENTS_TOPIC, qos.reliable_qos(50))
    watch.listen(names.MODEL_TOPIC, qos.latched_qos())
    assert watch.wait_matched(list(topics), WAIT)

    seen = [0]  # reports before this index came before the last step: stale

    def diagnostics(**expected: int) -> dict[str, str] | None:
        """The first model_learning report since the last one matched that shows `expected`."""
        want = {k: str(v) for k, v in expected.items()}
        match: list[dict[str, str]] = []

        def found() -> bool:
            for i in range(seen[0], len(watch.diagnostics)):
                hardware_id, values = watch.diagnostics[i]
                if hardware_id == "model_learning" and all(
                        values.get(k) == v for k, v in want.items()):
                    seen[0] = i + 1
                    match.append(values)
                    return True
            return False
        watch.wait(found, WAIT)
        return match[0] if match else None

    def fit(request_id: str, run: str, keys: list[str]) -> dict[str, Any] | None:
        fits.publish(codec.encode(FitRequest(request_id=request_id, run_id=run,
                                             trials=keys).to_dict()))
        return watch.wait_payload(names.MODEL_EVENTS_TOPIC,
                                  lambda e: e["request_id"] == request_id, WAIT)

    run = "20260101-120000-mc-seed1-aaaa"
    sent = [_record(TRIALS[i], run, f"req-{i}") for i in range(2)]
    keys = [f"{run}/{i}/req-{i}" for i in range(2)]
    for record in sent:
        records.publish(codec.encode(record))
    assert diagnostics(trials=2, runs=1), watch.diagnostics[-1:]

    # The trial manager reports the run over (aborted; idle): its records go.
    statuses.publish(codec.encode(_status("aborted", "idle", run)))
    assert diagnostics(trials=0, runs=0, runs_forgotten=1), watch.diagnostics[-1:]
    assert watch.wait_log("model_learning", f"run {run} over (aborted): forgot its 2 trial "
                                            "records"), watch.logged("model_learning")
    # The record of the trial the abort cut off arrives late: not kept.
    records.publish(codec.encode(_record(TRIALS[0], run, "req-late") | {"index": 2}))
    assert diagnostics(trials=0, records_of_ended_runs=1), watch.diagnostics[-1:]
    statuses.publish(String(data="not JSON"))
    assert diagnostics(rejected_statuses=1), watch.diagnostics[-1:]

    # Resumed later, its `resumed` status missed: the fit reports the trials missing, the trial
    # manager sends them again (from its checkpoint), the next request fits.
    missing = fit("fit-1", run, keys)
    assert missing is not None and missing["event"] == "missing", missing
    assert missing["missing"] == keys
    for record in sent:
        records.publish(codec.encode(record))
    assert diagnostics(trials=2, runs=1), watch.diagnostics[-1:]
    accepted = fit("fit-2", run, keys)
    assert accepted is not None and accepted["event"] == "accepted", accepted
    update = watch.wait_payload(names.MODEL_TOPIC, lambda m: m["request_id"] == "fit-2",
                                FIT_WAIT)
    assert update is not None, watch.payloads[names.MODEL_EVENTS_TOPIC]
    model = SpeedIntegrationModel.from_dict(update["model"])
    assert model.num_data == sum(len(r["inputs"]) for r in sent)

    # Runs whose end was never heard: at most nodes.model_max_runs = 2 are held.
    others = [f"20260101-13000{i}-mc-seed1-bbbb" for i in range(2)]
    for other in others:
        records.publish(codec.encode(_record(TRIALS[0], other, "req-0")))
    assert diagnostics(trials=2, runs=2, runs_forgotten=2), watch.diagnostics[-1:]
    assert watch.wait_log("model_learning", f"forgot run {run}'s 2 trial records: more than "
                                            "nodes.model_max_runs = 2 runs held")
    with node.lock:
        assert sorted(node.records.trials) == sorted(
            trial_key(_trial(other, 0)) for other in others)
