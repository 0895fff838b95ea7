"""Is a node there and well: the worker nodes' heartbeats, the trial manager's watch on its
peers, and /diagnostics."""
from __future__ import annotations

import time
from typing import Any, Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from std_msgs.msg import String

from . import payloads
from .codec import encode
from .config import NodesConfig
from .names import DIAGNOSTICS_TOPIC, heartbeat_topic
from .qos import latched_qos


class Heartbeat:
    """A worker node's sign of life for the trial manager, every nodes.status_period.

    DDS keeps a killed process's readers matched for many seconds; the manager counts a node as
    present only while its heartbeat comes.
    """

    def __init__(self, node: Node, role: str, nodes: NodesConfig,
                 fields: Callable[[], dict[str, Any]] | None = None) -> None:
        self.node = node
        self.role = role
        self.fields = fields or (lambda: {})
        self.pub = node.create_publisher(String, heartbeat_topic(role), latched_qos())
        self.timer = node.create_timer(nodes.status_period, self.publish)

    def publish(self) -> None:
        self.pub.publish(encode(payloads.Heartbeat(
            role=self.role, node=self.node.get_fully_qualified_name(), stamp=time.time(),
            **self.fields()).to_dict()))


class PeerWatch:
    """Is the node behind a request topic there? Missing for `grace` seconds means gone.

    Present = someone subscribes to the topic and, where the node sends a heartbeat, it was heard
    recently (a killed process stays matched until DDS notices, which can take many seconds).
    """

    def __init__(self, publisher: Any, role: str, grace: float,
                 heartbeat: Callable[[], bool] | None = None) -> None:
        self.publisher = publisher
        self.role = role
        self.grace = grace
        self.heartbeat = heartbeat
        self._missing_since: float | None = None

    def present(self) -> bool:
        return self.publisher.get_subscription_count() > 0 and (
            self.heartbeat is None or self.heartbeat())

    def gone(self) -> str | None:
        if self.present():
            self._missing_since = None
            return None
        now = time.monotonic()
        if self._missing_since is None:
            self._missing_since = now
        if now - self._missing_since >= self.grace:
            return (f"the {self.role} node is gone (no subscriber on "
                    f"{self.publisher.topic_name} or no heartbeat for {self.grace:g} s)")
        return None


LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN,
          "error": DiagnosticStatus.ERROR, "stale": DiagnosticStatus.STALE}


class Diagnostics:
    """One DiagnosticStatus per node on /diagnostics, refreshed by a timer."""

    def __init__(self, node: Node, nodes: NodesConfig,
                 report: Callable[[], tuple[str, str, dict[str, Any]]]) -> None:
        self.node = node
        self.report = report
        self.pub = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, nodes.status_depth)
        self.timer = node.create_timer(nodes.diagnostics_period, self.publish)

    def publish(self) -> None:
        level, message, values = self.report()
        status = DiagnosticStatus(
            level=LEVELS[level], name=f"ebmcpilco: {self.node.get_fully_qualified_name()}",
            message=message, hardware_id=self.node.get_name(),
            values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(msg)
