"""`sim_plant`: the simulated cart-pole, a stand-in for the rig that knows nothing of learning.

A physics thread integrates the plant (core.cartpole, RK4) at sim_plant.physics_rate in real time
and samples it at sim_plant.publish_rate: the measured state (noise plant.sensor_noise_std,
optional encoder quantisation and latency) on nodes.state_topic, the noise-free one on
nodes.true_state_topic. The force is the latest command, held from the first physics step after
it arrives (zero-order hold), clipped to +-plant.u_max, and zero once no command has come for
sim_plant.command_watchdog_timeout. `reset` puts the pole down at x0 ~ N(0, initial_state_std^2).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any, Sequence

import numpy as np
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from ..core import cartpole
from .qos import sensor_qos
from .health import Diagnostics
from .sampling import SampleReader, sampler_node, set_dds_receive_priority, set_realtime_priority
from .process import GraphNode, run_node
from .config import check_sim_plant
from .convert import state_message
from .hygiene import Refusals, command_fault
from .params import declare_config

NAME = "sim_plant"
# Commands queued between two physics wake-ups (one per control period is usual).
COMMAND_DEPTH = 10


class SimPlant(GraphNode):
    """Real-time cart-pole simulation behind the rig's topics."""

    def __init__(self) -> None:
        super().__init__(NAME)
        config, parts = declare_config(self, ["plant"], ["sim_plant", "nodes"])
        self.plant = config.plant
        self.sim = parts["sim_plant"]
        self.names = parts["nodes"]
        check_sim_plant(self.plant, self.sim)
        self.rng = np.random.default_rng(self.sim.seed)
        self.h = 1.0 / self.sim.physics_rate
        self.sample_period = 1.0 / self.sim.publish_rate
        self.lock = threading.Lock()
        self.x = self._initial_state()
        self.commands: deque[tuple[float, float]] = deque()  # (arrival, force), oldest first
        self.command = (-math.inf, 0.0)                      # in effect: (arrival, force)
        self.applied = 0.0
        self.counts = {"commands": 0, "rejected": 0, "watchdog": 0, "resets": 0, "skips": 0}
        self.watchdog_tripped = False
        # Refused commands: counted in counts["rejected"], logged at a bounded rate.
        self.refusals = Refusals(self.get_logger().warning)
        self.pending: deque[tuple[float, np.ndarray, np.ndarray, float]] = deque()
        self.state_pub = self.create_publisher(JointState, self.names.state_topic, sensor_qos())
        self.true_pub = (self.create_publisher(JointState, self.names.true_state_topic,
                                               sensor_qos())
                         if self.sim.publish_true_state else None)
        # Commands are taken by the physics thread itself, stamped with their DDS reception
        # time, so the hold starts when the command arrived, not when an executor got to it.
        self.sampler = sampler_node(self)
        self.command_reader = SampleReader(self.sampler, Float64MultiArray,
                                           self.resolve_topic_name(self.names.command_topic),
                                           COMMAND_DEPTH)
        self.create_service(Trigger, self.names.reset_service, self._on_reset)
        self.diagnostics = Diagnostics(self, self.names, self._report)
        set_dds_receive_priority(self, self.sim.realtime_priority)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._physics, name="physics", daemon=True)
        self.thread.start()

    # -- interfaces ---------------------------------------------------------------------------
    def _take_commands(self) -> None:
        """Queue the commands that arrived, at their arrival time on the monotonic clock."""
        for msg, received_ns in self.command_reader.take():
            data = msg.data
            if len(data) != 1 or not math.isfinite(data[0]):
                self.counts["rejected"] += 1
                fault, reason = command_fault(data)
                self.refusals.refuse("commands", f"a command on {self.names.command_topic}",
                                     reason, key=fault)
                continue
            arrival = time.monotonic() - max(0.0, (time.time_ns() - received_ns) * 1e-9)
            force = float(np.clip(data[0], -self.plant.u_max, self.plant.u_max))
            with self.lock:
                if self.commands and arrival < self.commands[-1][0]:
                    arrival = self.commands[-1][0]
                self.commands.append((arrival, force))
                self.counts["commands"] += 1

    def _on_reset(self, _request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        with self.lock:
            self.x = self._initial_state()
            self.commands.clear()
            self.command = (-math.inf, 0.0)
            self.pending.clear()
            self.counts["resets"] += 1
            x0 = self.x.copy()
        response.success = True
        response.message = "reset: pole down at x0 = " + np.array2string(x0, precision=4)
        return response

    def _initial_state(self) -> np.ndarray:
        return self.rng.normal(0.0, self.plant.initial_state_std, size=cartpole.STATE_DIM)

    # -- physics --------------------------------------------------------------------------------
    def _force_at(self, t: float) -> float:
        """The held command at time t (caller holds the lock); zero past the watchdog."""
        while self.commands and self.commands[0][0] <= t:
            self.command = self.commands.popleft()
        arrival, force = self.command
        if t - arrival > self.sim.command_watchdog_timeout:
            if not self.watchdog_tripped and arrival > -math.inf:
                self.counts["watchdog"] += 1
            self.watchdog_tripped = True
            return 0.0
        self.watchdog_tripped = False
        return force

    def _advance(self, sim_t: float, steps: int) -> float:
        """Integrate `steps` physics steps from sim_t; steps sharing a force go in one call."""
        with self.lock:
            forces = [self._force_at(sim_t + i * self.h) for i in range(steps)]
            x = self.x
            i = 0
            while i < steps:
                j = i + 1
                while j < steps and forces[j] == forces[i]:
                    j += 1
                x = cartpole.step(x, forces[i], self.plant, dt=(j - i) * self.h, substeps=j - i)
                i = j
            self.x = x
            if forces:
                self.applied = forces[-1]
        return sim_t + steps * self.h

    def _sample(self, t: float) -> None:
        with self.lock:
            true = self.x.copy()
            force = self.applied
        measured = true + self.rng.normal(0.0, self.plant.sensor_noise_std,
                                          size=cartpole.STATE_DIM)
        if self.sim.cart_encoder_resolution > 0:
            r = self.sim.cart_encoder_resolution
            measured[cartpole.P] = round(measured[cartpole.P] / r) * r
        if self.sim.pole_encoder_resolution > 0:
            r = self.sim.pole_encoder_resolution
            measured[cartpole.THETA] = round(measured[cartpole.THETA] / r) * r
        self.pending.append((t, measured, true, force))

    def _publish_due(self, now: float) -> None:
        while self.pending and self.pending[0][0] + self.sim.sensor_latency <= now:
            t, measured, true, force = self.pending.popleft()
            stamp = self.get_clock().now().nanoseconds - int((time.monotonic() - t) * 1e9)
            self.state_pub.publish(state_message(measured, force, self.names.joint_names, stamp))
            if self.true_pub is not None:
                self.true_pub.publish(state_message(true, force, self.names.joint_names, stamp))

    def _physics(self) -> None:
        set_realtime_priority(self, self.sim.realtime_priority, "the physics thread")
        sim_t = time.monotonic()
        next_sample = sim_t
        while not self.stop.is_set():
            self._take_commands()
            now = time.monotonic()
            if now - sim_t > self.sim.max_catch_up:
                skipped = int((now - sim_t) / self.h)
                sim_t += skipped * self.h
                next_sample = max(next_sample, sim_t)
                self.counts["skips"] += 1
            while next_sample <= now:
                steps = max(0, int(math.floor((next_sample - sim_t) / self.h + 1e-9)))
                sim_t = self._advance(sim_t, steps)
                self._sample(next_sample)
                next_sample += self.sample_period
            self._publish_due(now)
            wake = next_sample
            if self.pending:
                wake = min(wake, self.pending[0][0] + self.sim.sensor_latency)
            self.stop.wait(max(0.0, wake - time.monotonic()))

    # -- diagnostics and shutdown ---------------------------------------------------------------
    def _report(self) -> tuple[str, str, dict[str, Any]]:
        with self.lock:
            x = self.x.copy()
            arrival = self.command[0]
            counts = dict(self.counts)
            force = self.applied
        age = time.monotonic() - arrival
        level = "warn" if counts["skips"] else "ok"
        message = ("watchdog: no command, force zero" if self.watchdog_tripped
                   else f"applying {force:.3f} N")
        return level, message, {"state": np.array2string(x, precision=4), "force_N": force,
                                "command_age_s": f"{age:.3f}" if math.isfinite(age) else "never",
                                **counts}

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=1.0)
        self.sampler.destroy_node()


def main(args: Sequence[str] | None = None) -> int:
    return run_node(SimPlant, args, name=NAME)


if __name__ == "__main__":
    raise SystemExit(main())
