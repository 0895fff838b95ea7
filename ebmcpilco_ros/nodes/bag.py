"""A trial record as a ROS 2 bag, so `ros2 bag play`, Foxglove and PlotJuggler open a trial.

One record (`ebmcpilco.trial/1`, core.trial.Trial.to_dict) becomes one rosbag2 directory with
MCAP storage, written by the `rosbags` library (no ROS install needed, no rclpy imported here):

    trials/trial_NNN/metadata.yaml
                     trial_NNN.mcap

with the plant's own topics and standard types (docs/NODES.md, "Trial bags"):

    <state_topic>       sensor_msgs/msg/JointState       one per recorded state (T+1)
    <true_state_topic>  sensor_msgs/msg/JointState       the same, noise-free (simulation only)
    <command_topic>     std_msgs/msg/Float64MultiArray   one per step (T): the force asked for

Stamps are the execution node's: a state's header stamp and log time are the stamp the plant
gave it (meta.state_stamps_ns), a command's log time is when it went out
(meta.command_stamps_ns). A record without them (written before they were recorded) gets the
record's `times` from zero, and says so in the bag's custom data.

The bag is written into `.<name>.<pid>.<thread>.tmp/` beside its place, fsynced, and renamed
into place, so a crash leaves no bag or a whole one, never a part; the temporary is what
rundir.RunDirectory.remove_temporaries removes.
"""
from __future__ import annotations

import functools
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cartpole import P, PDOT, THETA, THETADOT
from ..core.trial import TRIAL_FORMAT, Trial

STATE_TYPE = "sensor_msgs/msg/JointState"
COMMAND_TYPE = "std_msgs/msg/Float64MultiArray"
STORAGE = "mcap"
NANOSECONDS = 1_000_000_000


@dataclass(frozen=True)
class BagTopics:
    """The graph's names, as the trial manager resolves them (a namespace launch moves them)."""

    state: str = "/cartpole/joint_states"
    true_state: str = "/cartpole/true_joint_states"
    command: str = "/cartpole/effort_command"
    joint_names: tuple[str, ...] = ("slider_to_cart", "cart_to_pendulum")


def bag_path(json_path: str | Path) -> Path:
    """Where the bag of a trial record file goes: beside it, named as it without `.json`."""
    return Path(json_path).with_suffix("")


@functools.lru_cache(maxsize=1)
def _typestore() -> Any:
    """The Kilted message definitions (the ROS 2 wheels this package pins): loaded once, since
    it takes a few hundred milliseconds."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def preload() -> None:
    """Load the library and its message definitions now, not in the first record's callback."""
    _typestore()


def _stamps(meta: dict[str, Any], name: str, count: int) -> list[int] | None:
    """meta[name] as `count` integer nanosecond stamps; None where the record lacks it;
    ValueError where it is there but malformed (no bag is better than a wrong one)."""
    value = meta.get(name)
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != count
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in value)):
        raise ValueError(f"trial record meta.{name} must be {count} integer stamps >= 0 [ns]")
    return value


def recorded_stamps(trial: Trial) -> tuple[list[int], list[int], bool]:
    """(state stamps T+1, command stamps T, whether they are the recorded ones) [ns]: the
    record's meta.state_stamps_ns and meta.command_stamps_ns; without them the record's times
    from zero, and each command at its step's state stamp."""
    states = _stamps(trial.meta, "state_stamps_ns", trial.steps + 1)
    commands = _stamps(trial.meta, "command_stamps_ns", trial.steps)
    recorded = states is not None
    if states is None:
        if np.any(trial.times < 0):
            raise ValueError("trial record times must be >= 0 for a bag without stamps")
        states = [int(round(t * NANOSECONDS)) for t in trial.times]
    if commands is None:
        commands = states[:trial.steps]
    return states, commands, recorded


def _requested(trial: Trial) -> np.ndarray:
    """The forces the commands asked for (meta.requested_inputs; the applied ones where the
    record lacks them)."""
    requested = trial.meta.get("requested_inputs")
    if isinstance(requested, list) and len(requested) == trial.steps:
        try:
            values = np.asarray(requested, dtype=float)
        except (TypeError, ValueError):
            values = None
        if values is not None and np.all(np.isfinite(values)):
            return values
    return trial.inputs


def trial_messages(trial: Trial, topics: BagTopics) -> list[tuple[int, str, str, Any]]:
    """Every message of the trial as (log time ns, topic, type, rosbags message), in time
    order. A state's effort is the plant's convention, the force applied at that sample: state
    k >= 1 carries input k - 1 (the mean effort after command k - 1, up to state k); state 0,
    before the trial's first command, carries none (an empty effort)."""
    state_stamps, command_stamps, _recorded = recorded_stamps(trial)
    store = _typestore()
    joint_state = store.types[STATE_TYPE]
    header = store.types["std_msgs/msg/Header"]
    time_msg = store.types["builtin_interfaces/msg/Time"]
    command = store.types[COMMAND_TYPE]
    layout = store.types["std_msgs/msg/MultiArrayLayout"]
    names = list(topics.joint_names)

    def state(x: np.ndarray, k: int) -> Any:
        sec, nanosec = divmod(state_stamps[k], NANOSECONDS)
        effort = [] if k == 0 else [float(trial.inputs[k - 1]), 0.0]
        return joint_state(header=header(stamp=time_msg(sec=sec, nanosec=nanosec), frame_id=""),
                           name=names, position=np.array([x[P], x[THETA]], dtype=np.float64),
                           velocity=np.array([x[PDOT], x[THETADOT]], dtype=np.float64),
                           effort=np.array(effort, dtype=np.float64))

    messages = [(state_stamps[k], topics.state, STATE_TYPE, state(x, k))
                for k, x in enumerate(trial.states)]
    if trial.true_states is not None:
        messages += [(state_stamps[k], topics.true_state, STATE_TYPE, state(x, k))
                     for k, x in enumerate(trial.true_states)]
    messages += [(command_stamps[k], topics.command, COMMAND_TYPE,
                  command(layout=layout(dim=[], data_offset=0),
                          data=np.array([u], dtype=np.float64)))
                 for k, u in enumerate(_requested(trial))]
    messages.sort(key=lambda m: m[0])  # stable: a state before its true state at one stamp
    return messages


def _absolute(topic: str) -> str:
    return topic if topic.startswith("/") else "/" + topic


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # a directory on a file system that cannot: nothing more to do
        pass
    finally:
        os.close(fd)


def write_trial_bag(record: dict[str, Any], target: str | Path,
                    topics: BagTopics = BagTopics()) -> Path:
    """Write the record's bag at `target` (a directory; one already there is replaced), whole
    or not at all. ValueError for a record that is not a trial record or has malformed stamps;
    the library's errors and OSError as they come."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    target = Path(target)
    topics = BagTopics(_absolute(topics.state), _absolute(topics.true_state),
                       _absolute(topics.command), tuple(topics.joint_names))
    trial = Trial.from_dict(record)
    messages = trial_messages(trial, topics)
    recorded = recorded_stamps(trial)[2]
    store = _typestore()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        fresh = work / target.name
        # the context closes the bag (index, summary, metadata.yaml), or aborts it on an error
        with Writer(fresh, version=Writer.VERSION_LATEST,
                    storage_plugin=StoragePlugin.MCAP) as writer:
            for key, value in (("ebmcpilco.format", TRIAL_FORMAT),
                               ("ebmcpilco.run_id", trial.meta.get("run_id", "")),
                               ("ebmcpilco.request_id", trial.meta.get("request_id", "")),
                               ("ebmcpilco.index", trial.index),
                               ("ebmcpilco.kind", trial.kind),
                               ("ebmcpilco.failed", trial.failed),
                               ("ebmcpilco.stamps", "recorded" if recorded else
                                "relative to the trial start (the record has no stamps)")):
                writer.set_custom_data(key, str(value).lower() if isinstance(value, bool)
                                       else str(value))
            connections = {}
            for _stamp, topic, msgtype, _msg in messages:
                if topic not in connections:
                    connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            for stamp, topic, msgtype, msg in messages:
                writer.write(connections[topic], stamp, store.serialize_cdr(msg, msgtype))
        for path in fresh.iterdir():
            _fsync(path)
        _fsync(fresh)
        if target.exists():  # replaced: moved into the temporary, removed with it
            os.rename(target, work / "replaced")
        os.rename(fresh, target)
        _fsync(target.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
