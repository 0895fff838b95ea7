"""Reading a trial's bag back with a reader that shares nothing with the writer (`mcap` and
`mcap-ros2-support`, not `rosbags`), and checking it against the trial record it came from; each
message's bytes also decode with the ROS 2 message packages themselves (rclpy)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

STATE = "/cartpole/joint_states"
TRUE_STATE = "/cartpole/true_joint_states"
COMMAND = "/cartpole/effort_command"
JOINTS = ["slider_to_cart", "cart_to_pendulum"]
TYPES = {STATE: "sensor_msgs/msg/JointState", TRUE_STATE: "sensor_msgs/msg/JointState",
         COMMAND: "std_msgs/msg/Float64MultiArray"}
ROS_TYPES = {STATE: JointState, TRUE_STATE: JointState, COMMAND: Float64MultiArray}


def read_metadata(bag: Path) -> dict[str, Any]:
    """metadata.yaml's bag information, as `ros2 bag info` reads it."""
    return yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]


def read_bag(bag: Path) -> dict[str, list[dict[str, Any]]]:
    """Every message of the bag's MCAP file(s), decoded, per topic in log-time order."""
    info = read_metadata(bag)
    messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name in info["relative_file_paths"]:
        with open(bag / name, "rb") as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            assert reader.get_header().profile == "ros2"
            for schema, channel, message, decoded in reader.iter_decoded_messages(
                    log_time_order=True):
                messages[channel.topic].append({
                    "type": schema.name, "schema_encoding": schema.encoding,
                    "encoding": channel.message_encoding, "log_time": message.log_time,
                    "publish_time": message.publish_time, "msg": decoded,
                    "data": message.data})
    return dict(messages)


def expected_stamps(record: dict[str, Any]) -> tuple[list[int], list[int]]:
    """The stamps the record carries (the execution node's), else its times from zero."""
    meta = record["meta"]
    states = meta.get("state_stamps_ns") or [int(round(t * 1e9)) for t in record["times"]]
    return states, meta.get("command_stamps_ns") or states[:-1]


def check_bag(bag: Path, record: dict[str, Any]) -> None:
    """Every message of the trial is in the bag, with its standard type, its stamps as recorded
    and its values; metadata.yaml names the same topics and counts."""
    states = np.array(record["states"])
    inputs = np.array(record["inputs"])
    requested = record["meta"].get("requested_inputs", record["inputs"])
    state_stamps, command_stamps = expected_stamps(record)
    steps = len(inputs)
    assert len(state_stamps) == steps + 1 and len(command_stamps) == steps

    topics = {STATE: states, COMMAND: None}
    if record.get("true_states") is not None:
        topics[TRUE_STATE] = np.array(record["true_states"])
    messages = read_bag(bag)
    assert sorted(messages) == sorted(topics)
    for topic, entries in messages.items():
        assert {(e["type"], e["schema_encoding"], e["encoding"]) for e in entries} == {
            (TYPES[topic], "ros2msg", "cdr")}, topic
        assert all(e["log_time"] == e["publish_time"] for e in entries), topic
        for entry in entries:  # the same message through the ROS 2 type support
            ros = deserialize_message(entry["data"], ROS_TYPES[topic])
            if topic == COMMAND:
                assert list(ros.data) == list(entry["msg"].data)
            else:
                assert (ros.header.stamp.sec, ros.header.stamp.nanosec, list(ros.name),
                        list(ros.position), list(ros.velocity), list(ros.effort)) == (
                    entry["msg"].header.stamp.sec, entry["msg"].header.stamp.nanosec,
                    list(entry["msg"].name), list(entry["msg"].position),
                    list(entry["msg"].velocity), list(entry["msg"].effort))

    for topic in (STATE, TRUE_STATE):
        if topic not in topics:
            continue
        entries, x = messages[topic], topics[topic]
        assert len(entries) == steps + 1, topic
        for k, entry in enumerate(entries):
            msg = entry["msg"]
            assert entry["log_time"] == state_stamps[k], (topic, k)
            assert msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec == \
                state_stamps[k], (topic, k)
            assert list(msg.name) == JOINTS
            assert list(msg.position) == [x[k, 0], x[k, 2]], (topic, k)
            assert list(msg.velocity) == [x[k, 1], x[k, 3]], (topic, k)
            # the force applied at the sample: input k - 1; none before the first command
            assert list(msg.effort) == ([] if k == 0 else [inputs[k - 1], 0.0]), (topic, k)

    entries = messages[COMMAND]
    assert len(entries) == steps
    assert [e["log_time"] for e in entries] == list(command_stamps)
    assert [list(e["msg"].data) for e in entries] == [[float(u)] for u in requested]

    info = read_metadata(bag)
    assert info["storage_identifier"] == "mcap"
    assert info["message_count"] == sum(len(e) for e in messages.values())
    counted = {t["topic_metadata"]["name"]: (t["topic_metadata"]["type"], t["message_count"])
               for t in info["topics_with_message_count"]}
    assert counted == {topic: (TYPES[topic], len(messages[topic])) for topic in topics}
    every = state_stamps + list(command_stamps)
    assert info["starting_time"]["nanoseconds_since_epoch"] == min(every)
    assert info["duration"]["nanoseconds"] == max(every) - min(every)
    files = ["metadata.yaml", *info["relative_file_paths"]]
    assert sorted(p.name for p in bag.iterdir()) == sorted(files)
