"""The real `hardware_interface` node against the real firmware: the ELF built from firmware/ runs
in the simavr harness (tools.firmware_sim) with the cart-pole behind its pins, and the node, the
execution node and the trial manager run as separate processes over real DDS, talking to it through
the harness's pty. What the firmware did is read from the harness's trace, in simulated CPU cycles:
the motor pins (ENABLE, DIR, PWM duty), every frame as the MCU received it, the plant at each tick.

The firmware needs the AVR toolchain and simavr: `make test` installs them (scripts/
system-packages.sh); without them these tests fail with the command to run, never skip.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable

import numpy as np
import pytest

from ebmcpilco_ros.nodes.bringup import Graph, GraphClient
from ebmcpilco_ros.core.config import find_config, load_config
from ebmcpilco_ros.hardware.config import load_hardware_config
from ebmcpilco_ros.hardware.conversion import force_to_duty
from ebmcpilco_ros.hardware.emulator import EmulatorConfig
from ebmcpilco_ros.hardware.protocol import COMMAND_FULL_SCALE, Command, Status
from ebmcpilco_ros.tools.firmware_sim import FirmwareSim, build, toolchain_missing

from graph_helpers import (STARTUP_TIMEOUT, Probe, RigDiagnostics, call_trigger, can_run_trial,
                           describe_failure, isolated_domain, ros_environment, wait_event)

RIG_CONFIG = find_config("rig_example")
PLANT = load_config(RIG_CONFIG).plant
HARDWARE = load_hardware_config(RIG_CONFIG)
EMULATOR = EmulatorConfig()          # the simulated rig; rig_example.yaml's calibration matches it
WATCHDOG_S = HARDWARE.command_watchdog_timeout
TICK_S = 1.0 / EMULATOR.state_rate_hz
PWM_STEP = 1.6 / 800                 # one PWM count (TOP + 1 = 800) and the compare's +1
RIG_NODES = ("hardware_interface", "policy_execution", "trial_manager")
# Generous wall-clock bounds: two shared cores run the harness, three nodes and the test.
SETTINGS = {"execution.state_timeout": 0.25, "execution.reset_timeout": 15.0,
            "hardware.home_timeout": 10.0, "hardware.reconnect_backoff_max": 0.2,
            "hardware.heartbeat_period": 0.1, "nodes.peer_grace": 1.0,
            "nodes.request_timeout": 30.0}
DIAGNOSTICS_PERIOD = 0.05
WAIT = 30.0
BAD_FRAME_KEYS = ("crc_errors", "malformed", "oversized", "drops")
MCU_BAD_FRAME_KEYS = ("mcu_rx_crc_errors", "mcu_rx_malformed", "mcu_rx_oversized", "mcu_rx_drops")


def duty(force: float) -> float:
    """The signed PWM duty the host asks of the firmware for a force."""
    return force_to_duty(force, HARDWARE)


class FirmwareRig:
    """The harness, the node processes, a client with probes and a stand-in policy."""

    def __init__(self, tmp: Any, salt: int, nodes: tuple[str, ...] = RIG_NODES) -> None:
        self.sim = FirmwareSim(PLANT, EMULATOR, link=tmp / "ttyFW", speed=1.0)
        self.sim.start()
        self.graph = Graph(RIG_CONFIG, {**SETTINGS, "hardware.port": str(tmp / "ttyFW"),
                                        "nodes.run_directory": str(tmp / "runs")},
                           nodes=nodes, log_dir=tmp / "logs",
                           node_parameters={"hardware_interface": {
                               "nodes.diagnostics_period": DIAGNOSTICS_PERIOD}})
        self.graph.start()
        self.client = GraphClient()
        self.probe = Probe(self.client)
        self.diagnostics = RigDiagnostics(self.client)
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        from std_srvs.srv import Trigger

        from ebmcpilco_ros.nodes.qos import sensor_qos

        node = self.client.node
        self.trigger = Trigger
        self.services = {name: node.create_client(Trigger, f"cartpole/{name}")
                         for name in ("reset", "estop")}
        self.command_pub = node.create_publisher(Float64MultiArray, "cartpole/effort_command",
                                                 sensor_qos())
        self.push_force: float | None = None
        self.alternate = False        # flip the push's sign every 0.1 s
        node.create_timer(PLANT.control_period, self._push)
        self.states: list[tuple[float, np.ndarray, float]] = []   # (arrival, x, effort)
        self.state_cond = threading.Condition()
        node.create_subscription(JointState, "cartpole/joint_states", self._on_state,
                                 sensor_qos())

    def _push(self) -> None:
        from std_msgs.msg import Float64MultiArray

        force = self.push_force
        if force is not None:
            if self.alternate and int(time.monotonic() * 10) % 2:
                force = -force
            self.command_pub.publish(Float64MultiArray(data=[force]))

    def _on_state(self, msg: Any) -> None:
        x = np.array([msg.position[0], msg.velocity[0], msg.position[1], msg.velocity[1]])
        with self.state_cond:
            self.states.append((time.monotonic(), x, float(msg.effort[0])))
            self.state_cond.notify_all()

    def wait_state(self, predicate: Callable[[np.ndarray, float], bool],
                   timeout: float = WAIT) -> tuple[np.ndarray, float] | None:
        """The first JointState from now on whose (x, effort) satisfies predicate."""
        with self.state_cond:
            start = len(self.states)
            found: list[tuple[np.ndarray, float]] = []

            def seen() -> bool:
                found[:] = [(x, e) for _t, x, e in self.states[start:] if predicate(x, e)][:1]
                return bool(found)
            self.state_cond.wait_for(seen, timeout)
            return found[0] if found else None

    def call(self, name: str, timeout: float = WAIT) -> tuple[bool, str]:
        return call_trigger(self.services[name], timeout)

    def pins(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Wait until the motor pins satisfy predicate; the harness status then."""
        status = self.sim.wait_until(lambda s: predicate(s["pins"]), WAIT)
        assert status is not None, f"pins never {what}: {self.sim.status()['pins']}\n" \
                                   f"{self.failure()}"
        return status

    def run_for(self, seconds: float) -> int:
        """Wait `seconds` of simulated time; the cycle reached."""
        end = self.sim.status()["t"] + seconds
        status = self.sim.wait_until(lambda s: s["t"] >= end, WAIT + seconds * 10)
        assert status is not None, self.failure()
        return int(status["cycle"])

    def failure(self) -> str:
        return describe_failure(self.graph) + f"\n--- harness ---\n{self.sim.log[-2000:]}"

    def close(self) -> None:
        self.client.close()
        self.graph.stop()
        self.sim.stop()


def driving(target: float) -> Callable[[dict[str, Any]], bool]:
    """Pins predicate: enabled and driven at the signed duty `target`."""
    return lambda p: p["enable"] == 1 and abs(p["drive"] - target) <= PWM_STEP


def stopped(p: dict[str, Any]) -> bool:
    return p["enable"] == 0 and p["drive"] == 0.0


def allowed_drive(drive: float, duties: set[float]) -> bool:
    return any(abs(drive - d) <= PWM_STEP for d in duties)


def assert_firmware_watchdog_stopped(trace: Any, after: int) -> None:
    """ENABLE fell after `after` within watchdog_ms and a tick of the last COMMAND that reached
    the firmware, and not before the watchdog time: the firmware's watchdog, in simulated time."""
    fell = trace.enable_fell(after)
    assert fell is not None
    last = [c for c, _f in trace.commands() if c < fell.cycle][-1]
    waited = trace.seconds(fell.cycle - last)
    assert WATCHDOG_S <= waited <= WATCHDOG_S + 2 * TICK_S, waited


def bad_frames(values: dict[str, str], keys: tuple[str, ...]) -> int:
    return sum(int(values[k]) for k in keys)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    missing = toolchain_missing()
    if missing:
        pytest.fail(f"{missing} (make system installs the firmware toolchain)")
    build()
    tmp = tmp_path_factory.mktemp("fwrig")
    with ros_environment(isolated_domain(41)):
        r = FirmwareRig(tmp, 41)
        try:
            assert r.client.wait_status(can_run_trial, STARTUP_TIMEOUT), r.failure()
            yield r
        finally:
            r.close()


# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_handshake_si_states_and_commands_reach_the_pwm(rig):
    first = rig.diagnostics.wait(lambda v: v.get("connected") == "True"
                                 and v.get("mcu_reset_cause", "none") != "none", WAIT)
    assert first is not None, rig.failure()
    values = first[1]
    assert values["firmware"] == "1.0.0" and values["mcu_reset_cause"] == "power-on"
    assert values["calibration"] == "agrees with the firmware", values["calibration"]
    ok, message = rig.call("reset")                 # enables and homes the cart
    assert ok and "homed" in message, message
    rig.pins(lambda p: p["enable"] == 1, "enabled by the reset")

    # States in SI: the cart placed at rest off centre, the pole hanging.
    p0 = 0.1234
    rig.sim.set_state([p0, 0.0, 0.0, 0.0])
    state = rig.wait_state(lambda x, _e: abs(x[0] - p0) <= HARDWARE.metres_per_cart_count
                           and abs(x[2]) <= HARDWARE.radians_per_pole_count
                           and abs(x[1]) < 1e-3 and abs(x[3]) < 1e-3)
    assert state is not None, (rig.states[-1] if rig.states else None, rig.failure())

    # Commands: the duty and the direction on the pins, the applied force in the JointState.
    for force in (2.0, -3.0):
        rig.push_force = force
        rig.pins(driving(duty(force)), f"driving {duty(force):+.3f}")
        assert rig.wait_state(lambda _x, e, f=force: abs(e - f) <= 0.02) is not None
    rig.push_force = None
    status = rig.pins(lambda p: p["drive"] == 0.0, "idle after the commands stop")
    # The host's own watchdog zeroed the force (the MCU's is fed by the re-sent zeros).
    assert status["pins"]["enable"] == 1


@pytest.mark.timeout(240)
def test_a_trial_through_run_trial_drives_the_pins_with_what_the_policy_asked(rig):
    assert rig.client.wait_status(can_run_trial, STARTUP_TIMEOUT), rig.failure()
    while not rig.client.statuses.empty():
        rig.client.statuses.get_nowait()
    records = len(rig.probe.records)
    # The pole hangs after two whole turns (its encoder kept counting): the trial's angles are
    # taken from the hanging position it starts at, as a simulated reset's are.
    rig.sim.set_state([0.0, 0.0, 4 * np.pi, 0.0])
    since = int(rig.sim.status()["cycle"])
    ok, message = rig.client.call("run_trial")
    assert ok, message
    assert rig.probe.wait_for(lambda: len(rig.probe.records) > records, 90), rig.failure()
    record = rig.probe.records[-1]
    assert not record["failed"] and record["meta"]["outcome"] == "finished", record["meta"]
    states, inputs, times = (np.array(record[k]) for k in ("states", "inputs", "times"))
    assert states.shape == (PLANT.steps + 1, 4) and inputs.shape == (PLANT.steps,)
    assert abs(np.diff(times).mean() - PLANT.control_period) < 1e-3
    assert abs(states[0, 0]) <= HARDWARE.home_tolerance + 0.005 and np.ptp(states[:, 0]) > 0.01
    assert abs(states[0, 2]) <= HARDWARE.home_pole_tolerance + 0.01, states[0]
    done = wait_event(rig.client, ("trial_done", "failed"), 30)
    assert done is not None and done["event"] == "trial_done", done
    # Every drive the firmware put on the pins during the trial is one the host asked for: a
    # recorded input, the homing law's (bounded by home_force_limit), or the soft limits' brake.
    trace = rig.sim.trace()
    applied = trace.applied(since)
    assert applied, "the firmware never drove the motor during the trial"
    requested = record["meta"]["requested_inputs"]   # inputs: what the firmware applied
    asked = {duty(u) for u in requested} | {duty(s * HARDWARE.soft_limit_brake_force)
                                            for s in (-1.0, 1.0)}
    home = HARDWARE.home_force_limit * HARDWARE.force_to_command
    stray = [o for o in applied if not allowed_drive(o.drive, asked) and abs(o.drive) > home
             + PWM_STEP]
    assert not stray, stray[:5]
    recorded = [o for o in applied if allowed_drive(o.drive, {duty(u) for u in requested})]
    assert len({round(o.drive, 3) for o in recorded}) >= 5    # the random policy's many values
    # The states the node recorded are the plant's: the last one is within the encoders'
    # quantisation and a few ticks' motion of the harness's plant at some tick of the trial.
    samples = [s for s in trace.samples if s.cycle >= since]
    p_true = np.array([s.x[0] for s in samples])
    assert np.min(np.abs(p_true - states[-1, 0])) <= 0.005


@pytest.mark.timeout(240)
def test_estop_and_the_limit_switches_hold_the_motor(rig):
    ok, message = rig.call("reset")
    assert ok, message
    rig.push_force = 2.0
    try:
        rig.pins(driving(duty(2.0)), "driving before the e-stop")
        ok, message = rig.call("estop")
        assert ok and "latched" in message
        status = rig.pins(stopped, "off after the e-stop")
        cycle = int(status["cycle"])
        end = rig.run_for(0.3)                                   # the push goes on meanwhile
        trace = rig.sim.trace()
        assert not [o for o in trace.outputs if cycle <= o.cycle <= end and o.enable], \
            "the motor was enabled while the e-stop was latched"
        latched = rig.diagnostics.wait(lambda v: v.get("estop_latched") == "True", WAIT)
        assert latched is not None and latched[1]["enabled"] == "False"

        ok, message = rig.call("reset")
        assert ok and "homed" in message, message
        rig.pins(driving(duty(2.0)), "driving again after the reset")

        # The switch at the positive-motor end, pressed (at the centre: the host's soft limits do
        # not act there): the firmware refuses to drive into it, and allows driving away.
        rig.sim.limit("pos", True)
        status = rig.pins(lambda p: p["enable"] == 1 and p["drive"] == 0.0,
                          "held by the pressed switch")
        pressed = int(status["cycle"])
        end = rig.run_for(0.2)
        trace = rig.sim.trace()
        assert not [o for o in trace.outputs if pressed <= o.cycle <= end and o.drive > 0]
        reported = rig.diagnostics.wait(lambda v: int(v["mcu_status"], 16) & Status.LIMIT_RIGHT,
                                        WAIT)
        assert reported is not None, rig.failure()
        rig.push_force = -2.0
        rig.pins(driving(duty(-2.0)), "driving away from the switch")
        rig.sim.limit("pos", None)
    finally:
        rig.push_force = None
        rig.sim.limit("pos", None)
    rig.pins(lambda p: p["drive"] == 0.0, "idle")


@pytest.mark.timeout(240)
def test_uart_corruption_applies_no_stray_command_and_every_bad_frame_is_counted(rig):
    ok, message = rig.call("reset")
    assert ok, message
    force = 1.0
    rig.alternate, rig.push_force = True, force       # +-1 N every 0.1 s
    try:
        rig.pins(lambda p: p["enable"] == 1 and p["drive"] != 0.0, "driving")
        before = rig.diagnostics.wait(lambda v: "mcu_rx_crc_errors" in v, WAIT,
                                      time.monotonic())
        assert before is not None, rig.failure()
        start = int(rig.sim.status()["cycle"])
        rig.sim.corrupt(rx=0.01, tx=0.01)
        end = rig.run_for(3.0)
        rig.sim.corrupt(rx=0.0, tx=0.0)
        rig.run_for(0.3)
    finally:
        rig.push_force, rig.alternate = None, False
    trace = rig.sim.trace()
    hit_rx = sum(1 for f in trace.rx if start <= f.cycle <= end and f.corrupted)
    hit_tx = sum(1 for f in trace.tx if start <= f.cycle <= end and f.corrupted)
    assert hit_rx > 20 and hit_tx > 20, (hit_rx, hit_tx)
    # No motor value reached the pins that the host did not send: every drive is the motor of a
    # COMMAND that reached the MCU uncorrupted (the pushes, and the soft limits' brake where the
    # cart wandered near a track end).
    sent = {frame.message.motor for frame in
            (f.decode() for f in trace.rx if f.cycle >= start - trace.cycles(1.0)
             and not f.corrupted)
            if frame is not None and isinstance(frame.message, Command) and frame.message.enable}
    stray = [o for o in trace.applied(start)
             if not allowed_drive(o.drive, {m / COMMAND_FULL_SCALE for m in sent})]
    assert not stray, stray[:5]
    assert {Command.from_duty(duty(f), True).motor for f in (force, -force)} <= sent
    # Every corrupted frame is counted, by the host (bad frames, or lost by sequence number when
    # a hit delimiter merged two into one) and by the firmware (COUNTERS, in the diagnostics).
    host0 = bad_frames(before[1], BAD_FRAME_KEYS)
    mcu0 = bad_frames(before[1], MCU_BAD_FRAME_KEYS)
    counted = rig.diagnostics.wait(
        lambda v: (bad_frames(v, BAD_FRAME_KEYS) - host0 >= hit_tx
                   and bad_frames(v, MCU_BAD_FRAME_KEYS) - mcu0 >= hit_rx), WAIT)
    last = rig.diagnostics.reports[-1][2]
    assert counted is not None, (hit_rx, hit_tx, {k: last.get(k) for k in
                                                  BAD_FRAME_KEYS + MCU_BAD_FRAME_KEYS})
    values = counted[1]
    assert int(values["crc_errors"]) > int(before[1]["crc_errors"])
    assert int(values["mcu_rx_crc_errors"]) > int(before[1]["mcu_rx_crc_errors"])
    assert values["connected"] == "True"


@pytest.mark.timeout(240)
def test_disconnect_stops_the_motor_and_the_node_reconnects_disabled(rig):
    ok, message = rig.call("reset")
    assert ok, message
    rig.push_force = 2.0
    try:
        status = rig.pins(driving(duty(2.0)), "driving")
        cut = int(status["cycle"])
        cut_wall = time.monotonic()
        rig.sim.disconnect(0.5)
        rig.pins(stopped, "off after the disconnect")
        assert_firmware_watchdog_stopped(rig.sim.trace(), cut)
        back = rig.diagnostics.wait(lambda v: v.get("connected") == "True"
                                    and int(v.get("reconnects", 0)) >= 1, WAIT, cut_wall)
        assert back is not None, rig.failure()
        assert back[1]["enabled"] == "False"                  # a new session starts disabled
        rig.pins(stopped, "still off after the reconnection")
        ok, message = rig.call("reset")
        assert ok and "homed" in message, message
        rig.pins(driving(duty(2.0)), "driving after the reset")
    finally:
        rig.push_force = None
    rig.pins(lambda p: p["drive"] == 0.0, "idle")


@pytest.mark.timeout(240)
def test_killing_the_hardware_node_lets_the_firmware_watchdog_stop_the_motor(rig):
    ok, message = rig.call("reset")
    assert ok, message
    rig.push_force = 2.0
    try:
        status = rig.pins(driving(duty(2.0)), "driving")
        rig.graph.kill("hardware_interface", signal.SIGKILL)
        rig.pins(stopped, "off after the host died")
    finally:
        rig.push_force = None
    assert_firmware_watchdog_stopped(rig.sim.trace(), int(status["cycle"]))
    # The node comes back: a new session (HELLO) on the same firmware, and a reset homes.
    rig.graph.processes["hardware_interface"].wait(timeout=10)
    since = time.monotonic()
    rig.graph.start(["hardware_interface"])
    back = rig.diagnostics.wait(lambda v: v.get("connected") == "True", STARTUP_TIMEOUT, since)
    assert back is not None, rig.failure()
    assert rig.client.wait_status(can_run_trial, STARTUP_TIMEOUT), rig.failure()
    ok, message = rig.call("reset")
    assert ok and "homed" in message, message
    rig.pins(lambda p: p["enable"] == 1 and p["drive"] == 0.0, "enabled, idle")
