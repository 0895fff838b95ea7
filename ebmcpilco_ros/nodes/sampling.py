"""High-rate topics read on demand, and real-time scheduling for the threads that read them
(the control loop's states, the plant's commands, DDS's receive threads)."""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..scheduling import set_thread_priority


class SampleReader:
    """The newest samples of a high-rate topic, taken when the reader asks for them.

    Handing every 500 Hz joint state to a Python callback costs about 0.1-0.3 ms of interpreter
    time each, a sizeable share of a 2-core machine and of the interpreter lock the control loop
    needs. Here the subscription belongs to a helper node that no executor spins; `take()` drains
    its short keep-last queue with the same call an executor would make.
    """

    def __init__(self, node: Node, msg_type: type, topic: str, depth: int) -> None:
        qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.VOLATILE)
        self.sub = node.create_subscription(msg_type, topic, self._never_called, qos)
        self.lock = threading.Lock()

    @staticmethod
    def _never_called(_msg: Any) -> None:
        """The helper node is never spun."""

    def take(self) -> list[tuple[Any, int]]:
        """Every queued message, oldest first, with its reception time [ns, system clock]."""
        out = []
        with self.lock, self.sub.handle:
            while True:
                taken = self.sub.handle.take_message(self.sub.msg_type, self.sub.raw)
                if taken is None:
                    return out
                msg, info = taken
                out.append((msg, int(info["received_timestamp"]) or time.time_ns()))


LISTENER_ERROR_PAUSE = 0.1  # [s] after a SampleListener error: a persistent one is no flood


class SampleListener:
    """Each message of a topic handed to `on_message` as it arrives, on a dedicated thread.

    For a path that must not wait for an executor: a rig's commands would otherwise queue behind
    other callbacks and wait for a normal-priority executor thread, which on a busy 2-core
    machine costs milliseconds to tens of milliseconds. The thread blocks in an rcl wait set on
    the subscription of a never-spun helper node (sampler_node) and can run SCHED_FIFO.
    """

    def __init__(self, node: Node, sampler: Node, msg_type: type, topic: str, depth: int,
                 on_message: Callable[[Any, int], None], priority: int = 0,
                 name: str = "listener") -> None:
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

        self.node = node
        self.reader = SampleReader(sampler, msg_type, topic, depth)
        self.on_message = on_message
        self.priority = priority
        self.name = name
        self.stop = threading.Event()
        self.wake = sampler.create_guard_condition(lambda: None)
        self.wait_set = _rclpy.WaitSet(1, 1, 0, 0, 0, 0, sampler.context.handle)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        set_realtime_priority(self.node, self.priority, f"the {self.name} thread")
        while not self.stop.is_set():
            try:
                self.wait_set.clear_entities()
                self.wait_set.add_subscription(self.reader.sub.handle)
                self.wait_set.add_guard_condition(self.wake.handle)
                self.wait_set.wait(-1)
                for msg, received in self.reader.take():
                    self.on_message(msg, received)
            except Exception as exc:  # noqa: BLE001 - keep listening; the context going down
                if self.stop.is_set():  # or a bad message must not end the thread silently
                    return
                self.node.get_logger().error(f"{self.name}: {exc!r}")
                self.stop.wait(LISTENER_ERROR_PAUSE)

    def close(self) -> None:
        self.stop.set()
        self.wake.trigger()
        self.thread.join(timeout=1.0)


def sampler_node(node: Node) -> Node:
    """A hidden helper node for SampleReaders: same namespace, no executor, no global remaps
    (so `__node:=` from a launch file does not give it the main node's name); topics are passed
    resolved by the main node."""
    return rclpy.create_node(f"_{node.get_name()}_sampler", namespace=node.get_namespace(),
                             context=node.context, use_global_arguments=False,
                             enable_rosout=False, start_parameter_services=False)


def set_realtime_priority(node: Node, priority: int, what: str) -> bool:
    """SCHED_FIFO for the calling thread, warning through the node's logger."""
    return set_thread_priority(priority, what, node.get_logger().warning)


# Fast DDS names its receive threads dds.shm.<port> (shared memory) and dds.udp.<port>.
DDS_RECEIVE_THREADS = ("dds.shm.", "dds.udp.")


def set_dds_receive_priority(node: Node, priority: int) -> int:
    """SCHED_FIFO for this process's DDS receive threads (Linux), so a sample or command is taken
    off the wire at once even when the optimiser fills every core; returns how many were set.

    The control loop reads what these threads delivered: with normal scheduling they can wait
    tens of ms for a core, which shows up as stale states and late commands.
    """
    if priority <= 0 or not sys.platform.startswith("linux"):
        return 0
    done = 0
    for task in os.scandir("/proc/self/task"):
        try:
            with open(os.path.join(task.path, "comm"), encoding="ascii") as f:
                name = f.read().strip()
            if name.startswith(DDS_RECEIVE_THREADS):
                os.sched_setscheduler(int(task.name), os.SCHED_FIFO, os.sched_param(priority))
                done += 1
        except (OSError, ValueError) as exc:
            node.get_logger().warning(f"no SCHED_FIFO {priority} for DDS thread {task.name}: "
                                      f"{exc}")
            return done
    return done
