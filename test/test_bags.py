"""Trial bags (nodes/bag.py): written with `rosbags`, read back with `mcap` and
`mcap-ros2-support` (an independent reader), message by message against the trial record."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ebmcpilco_ros.core.trial import Trial
from ebmcpilco_ros.nodes.bag import BagTopics, bag_path, write_trial_bag
from ebmcpilco_ros.nodes.rundir import RunDirectory

from bag_helpers import STATE, check_bag, read_bag, read_metadata
from helpers import random_trials

EPOCH_NS = 1_767_225_600_123_456_789  # 2026, with nanoseconds that a float would lose


def execution_record(index: int = 3, request_id: str = "req-3", seed: int = 0
                     ) -> dict[str, Any]:
    """A simulated trial dressed as the execution node records one: the stamps of the states
    (the plant's, a little jittered) and of the commands (just after each state), the forces
    asked for and, as applied, less (a brake), so a swapped field shows."""
    trial = random_trials(1, seed=seed)[0]
    rng = np.random.default_rng(seed)
    states_ns = [EPOCH_NS + int(round(t * 1e9)) + int(rng.integers(0, 3_000_000))
                 for t in trial.times]
    commands_ns = [s + int(rng.integers(100_000, 900_000)) for s in states_ns[:-1]]
    requested = np.round(trial.inputs, 6)
    record = Trial(states=trial.states, inputs=0.8 * requested, times=trial.times, kind="random",
                   index=index, true_states=trial.true_states, meta={
                       "system": "ros", "run_id": "run-1", "request_id": request_id,
                       "outcome": "finished", "period": 0.05,
                       "requested_inputs": requested.tolist(),
                       "state_stamps_ns": states_ns, "command_stamps_ns": commands_ns}).to_dict()
    return json.loads(json.dumps(record))  # as the run directory holds it


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_a_bag_holds_every_message_of_the_trial_with_its_type_and_recorded_stamps(tmp_path):
    record = execution_record()
    bag = write_trial_bag(record, bag_path(tmp_path / "trials" / "trial_003.json"))
    assert bag == tmp_path / "trials" / "trial_003"
    check_bag(bag, record)
    info = read_metadata(bag)
    assert info["relative_file_paths"] == ["trial_003.mcap"]
    custom = info["custom_data"]
    assert custom["ebmcpilco.stamps"] == "recorded" and custom["ebmcpilco.run_id"] == "run-1"
    assert (custom["ebmcpilco.index"], custom["ebmcpilco.failed"]) == ("3", "false")
    assert leftovers(tmp_path) == []


def test_a_record_without_stamps_or_true_states_gets_its_times_from_zero(tmp_path):
    """An older run's record (no stamps in meta), from a rig (no noise-free state)."""
    record = execution_record()
    for key in ("state_stamps_ns", "command_stamps_ns", "requested_inputs"):
        del record["meta"][key]
    del record["true_states"]
    bag = write_trial_bag(record, tmp_path / "trial_003")
    check_bag(bag, record)  # commands at their step's state stamp, asking for the inputs
    assert read_bag(bag)[STATE][0]["log_time"] == 0
    assert read_metadata(bag)["custom_data"]["ebmcpilco.stamps"].startswith("relative")


def test_namespaced_names_keep_their_namespace_and_get_a_leading_slash(tmp_path):
    bag = write_trial_bag(execution_record(), tmp_path / "trial_003", BagTopics(
        "robot1/cartpole/joint_states", "/robot1/cartpole/true_joint_states",
        "robot1/cartpole/effort_command", ("cart", "pole")))
    messages = read_bag(bag)
    assert sorted(messages) == ["/robot1/cartpole/effort_command",
                                "/robot1/cartpole/joint_states",
                                "/robot1/cartpole/true_joint_states"]
    assert list(messages["/robot1/cartpole/joint_states"][0]["msg"].name) == ["cart", "pole"]


def test_a_bag_is_replaced_whole_or_left_as_it_was(tmp_path):
    target = tmp_path / "trials" / "trial_003"
    write_trial_bag(execution_record(seed=0), target)
    second = execution_record(seed=1)
    write_trial_bag(second, target)
    check_bag(target, second)
    broken = execution_record(seed=2)
    broken["meta"]["state_stamps_ns"] = broken["meta"]["state_stamps_ns"][:-1]
    with pytest.raises(ValueError, match="state_stamps_ns"):
        write_trial_bag(broken, target)
    check_bag(target, second)
    assert leftovers(tmp_path) == [] and sorted(p.name for p in target.parent.iterdir()) == [
        "trial_003"]


@pytest.mark.timeout(120)
def test_the_trial_manager_writes_each_bag_beside_its_record_and_goes_on_without_one(
        tmp_path):
    """The real node, in-process: a record it waits on gets its bag; a record whose bag cannot
    be written (malformed stamps) is written all the same, the failure counted; a late record
    goes to trials/interrupted/ with its bag, and a resume moves a cut-off trial's bag along
    with its record and removes a bag a kill left half-written."""
    import rclpy

    from ebmcpilco_ros.nodes.trial_manager import TrialManager, keep_cut_off
    from graph_helpers import isolated_domain, ros_environment

    run_dir = RunDirectory(tmp_path, "run-1")
    trials = run_dir.path / "trials"
    good, broken, late = (execution_record(3, "req-3"), execution_record(4, "req-4"),
                          execution_record(2, "req-late"))
    broken["meta"]["command_stamps_ns"] = "soon"
    with ros_environment(isolated_domain(80)):
        rclpy.init()
        try:
            node = TrialManager()
            try:
                for record in (good, broken):
                    node.replies.expect(record["meta"]["request_id"])
                    node._write_record(run_dir, record, record["index"],
                                       record["meta"]["request_id"])
                node._write_record(run_dir, late, 2, "req-late")  # nobody waits for it
                report = node._report()[2]
            finally:
                node.destroy_node()
        finally:
            rclpy.try_shutdown()
    check_bag(trials / "trial_003", good)
    assert json.loads((trials / "trial_004.json").read_text()) == broken
    assert not (trials / "trial_004").exists() and report["bags_failed"] == 1
    check_bag(trials / "interrupted" / "trial_002-req-late", late)
    assert leftovers(tmp_path) == []

    # a resume after a crash before trial 3's checkpoint, with a bag write cut off by a kill
    cut = trials / ".trial_005.4242.1.tmp" / "trial_005"
    cut.mkdir(parents=True)
    (cut / "metadata.yaml.tmp").write_text("rosbag2_bagfile_information:")
    assert run_dir.remove_temporaries() == ["trials/.trial_005.4242.1.tmp"]
    keep_cut_off(run_dir, 3, None)
    assert sorted(p.name for p in trials.iterdir()) == ["interrupted"]
    check_bag(trials / "interrupted" / "trial_003-req-3", good)
    assert leftovers(tmp_path) == []
