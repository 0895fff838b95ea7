"""`hardware_interface`: the physical cart-pole behind the same topics as sim_plant.

A thin ROS shell over hardware.rig.Rig, which owns the serial driver, the SI conversion, the
command watchdog, the soft limits, homing and the e-stop. It is a lifecycle node:

    configure            open the port, handshake with the MCU (HELLO answered by CONFIG)
    activate             enable the amplifier; joint states flow, commands are applied
    deactivate           zero and disable; no joint states, commands ignored
    cleanup, shutdown    zero, disable, close the port

With hardware.autostart (the default) it configures and activates itself at start, retrying every
hardware.reconnect_backoff_max until it can, so `ros2 launch` and `ebmcpilco rig` need no
lifecycle manager. Joint states are published from the rig's measurement callback: one per MCU
STATE, at the MCU's rate (the MCU is the clock; velocities come from its timestamps, the stamp is
the host time the STATE arrived). Commands go to Rig.set_force as they arrive, from a thread of
their own (common.SampleListener); the rig re-sends the (watchdog-checked, soft-limited) command
with every STATE. The reset service clears the e-stop latch, enables the amplifier and homes
(the cart centred, the pole at rest, hanging); the e-stop service zeroes and disables until
the next reset. On shutdown, a signal or a failed executor, run_node calls close(): zero,
disable, close.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any, Sequence

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from ..core.cartpole import P, THETA
from ..hardware.config import HardwareConfig
from ..hardware.conversion import Measurement, applied_force, calibration_mismatches
from ..hardware.driver import DriverError, StateSample
from ..hardware.protocol import Counters, DeviceConfig, Status, reset_cause_text
from ..hardware.rig import Rig
from .qos import sensor_qos
from .health import Diagnostics
from .sampling import SampleListener, sampler_node, set_dds_receive_priority
from .process import GraphNode, run_node
from .config import NodesConfig, check_hardware
from .convert import state_message
from .hygiene import Refusals, command_fault
from .params import declare_config

NAME = "hardware_interface"
# Reset (homing blocks for up to hardware.home_timeout), e-stop, and the rest (lifecycle
# services, diagnostics, autostart) each get a thread: none waits behind another.
EXECUTOR_THREADS = 3
NANOSECONDS = 1_000_000_000
COMMAND_DEPTH = 10   # commands queued for the command thread (one per control period is usual)
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
# The MCU's COUNTERS as diagnostics keys: mcu_rx_crc_errors, ..., mcu_pole_quadrature_errors.
MCU_COUNTER_KEYS = tuple(f"mcu_{f.name}" for f in dataclasses.fields(Counters))
CALIBRATION_AGREES = "agrees with the firmware"


class HardwareInterface(LifecycleNode, GraphNode):
    """The rig as a lifecycle node; sim_plant's topics plus e-stop and /diagnostics."""

    def __init__(self) -> None:
        super().__init__(NAME)
        config, parts = declare_config(self, ["plant"], ["hardware", "nodes"])
        self.plant = config.plant
        self.hw: HardwareConfig = parts["hardware"]
        self.names: NodesConfig = parts["nodes"]
        check_hardware(self.plant, self.hw)
        self.lock = threading.Lock()
        self.rig: Rig | None = None
        self.device: DeviceConfig | None = None
        self.mismatches: list[str] = []
        self.active = False          # joint states published and commands applied only if set
        self.estopped = False        # the latch outlives a cleanup / configure
        self.last_error = ""
        self.counts = {"states": 0, "commands": 0, "rejected": 0, "ignored": 0, "resets": 0,
                       "homing_failures": 0, "estops": 0}
        # Refused commands: counted in counts["rejected"], logged at a bounded rate.
        self.refusals = Refusals(self.get_logger().warning)
        self.state_pub = self.create_publisher(JointState, self.names.state_topic, sensor_qos())
        # Commands go from DDS to the rig on a thread of their own (SCHED_FIFO with
        # hardware.realtime_priority), never behind the executor's other callbacks.
        self.sampler: Node = sampler_node(self)
        self.commands = SampleListener(self, self.sampler, Float64MultiArray,
                                       self.resolve_topic_name(self.names.command_topic),
                                       COMMAND_DEPTH, self._on_command,
                                       self.hw.realtime_priority, "command")
        self.create_service(Trigger, self.names.reset_service, self._on_reset,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(Trigger, self.names.estop_service, self._on_estop,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.diagnostics = Diagnostics(self, self.names, self._report)
        set_dds_receive_priority(self, self.hw.realtime_priority)
        self.autostart_timer = None
        if self.hw.autostart:
            self._autostart()
            if self.lifecycle_state() != "active":
                self.autostart_timer = self.create_timer(self.hw.reconnect_backoff_max,
                                                         self._autostart)

    # -- lifecycle ------------------------------------------------------------------------------
    def lifecycle_state(self) -> str:
        """unconfigured, inactive, active, finalized (or a transition state)."""
        return str(self._state_machine.current_state[1])

    def _autostart(self) -> None:
        if self.lifecycle_state() == "unconfigured":
            self.trigger_configure()
        if self.lifecycle_state() == "inactive":
            self.trigger_activate()
        if self.lifecycle_state() == "active" and self.autostart_timer is not None:
            self.autostart_timer.cancel()
            self.destroy_timer(self.autostart_timer)
            self.autostart_timer = None

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        rig = Rig(self.hw, on_measurement=self._on_measurement, on_session=self._on_session)
        try:
            device = rig.open()
        except DriverError as exc:
            self.last_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            return FAILURE
        if self.estopped:
            rig.estop()
        with self.lock:
            self.rig, self.last_error = rig, ""
        self.get_logger().info(f"connected to {self.hw.port}: firmware {device.firmware}, "
                               f"{device.state_rate_hz} Hz, watchdog {device.watchdog_ms} ms, "
                               f"MCU reset cause {reset_cause_text(device.reset_cause)}")
        return SUCCESS

    def _on_session(self, device: DeviceConfig) -> None:
        """Every new serial session (configure and each reconnection, on the driver's I/O
        thread): check the calibration against this CONFIG and log what changed."""
        mismatches = calibration_mismatches(self.hw, device)
        with self.lock:
            first = self.device is None
            before, self.mismatches, self.device = self.mismatches, mismatches, device
        log = self.get_logger()
        if not first and device.reset_cause:
            log.info(f"new session: MCU reset cause {reset_cause_text(device.reset_cause)}")
        if mismatches == before and not first:
            return
        for problem in mismatches:
            if problem not in before or first:
                log.warning(f"calibration: {problem}")
        if before and not mismatches:
            log.info(f"calibration: now {CALIBRATION_AGREES}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        rig = self.rig
        if rig is None or not rig.enable():
            why = ("the e-stop is latched: call " + self.names.reset_service if self.estopped
                   else (rig.refusal() if rig is not None else None)
                   or f"the MCU on {self.hw.port} is not connected")
            self.last_error = f"cannot enable the amplifier: {why}"
            self.get_logger().error(f"activate failed: {self.last_error}")
            return FAILURE
        self.active, self.last_error = True, ""
        self.get_logger().info("active: amplifier enabled")
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        if self.rig is not None:
            self.rig.disable()
        return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_rig()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_rig()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_rig()
        return SUCCESS

    def _close_rig(self) -> None:
        """Zero, disable, close the port."""
        self.active = False
        with self.lock:
            rig, self.rig = self.rig, None
        if rig is not None:
            rig.close()

    # -- the rig's side (the driver's I/O thread) -----------------------------------------------
    def _on_measurement(self, measurement: Measurement, sample: StateSample) -> None:
        if not self.active or not measurement.valid:
            return
        stamp = time.time_ns() - int((time.monotonic() - sample.received) * NANOSECONDS)
        self.state_pub.publish(state_message(measurement.x, applied_force(sample.state, self.hw),
                                             self.names.joint_names, stamp))
        self.counts["states"] += 1

    # -- interfaces -----------------------------------------------------------------------------
    def _on_command(self, msg: Float64MultiArray, _received_ns: int) -> None:
        data = msg.data
        if len(data) != 1 or not math.isfinite(data[0]):
            self.counts["rejected"] += 1
            fault, reason = command_fault(data)
            self.refusals.refuse("commands", f"a command on {self.names.command_topic}", reason,
                                 key=fault)
            return
        rig = self.rig
        if rig is None or not self.active or self.estopped:
            self.counts["ignored"] += 1
            return
        rig.set_force(min(max(float(data[0]), -self.plant.u_max), self.plant.u_max))
        self.counts["commands"] += 1

    def _on_estop(self, _request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        self.estopped = True
        rig = self.rig
        if rig is not None:
            rig.estop()
        self.counts["estops"] += 1
        self.get_logger().warning("e-stop: motor zero and disabled until "
                                  f"{self.names.reset_service}")
        response.success = True
        response.message = (f"e-stop latched: motor zero and disabled until "
                            f"{self.names.reset_service}")
        return response

    def _on_reset(self, _request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        """Clear the e-stop latch, enable, home; answers once homed (or why not)."""
        self.counts["resets"] += 1
        self.estopped = False
        rig = self.rig
        if rig is not None:
            rig.reset_estop()
        response.success, response.message = self._reset(rig)
        if not response.success:
            self.get_logger().warning(f"reset: {response.message}")
        return response

    def _reset(self, rig: Rig | None) -> tuple[bool, str]:
        state = self.lifecycle_state()
        if rig is None:
            return False, (f"e-stop latch cleared, but {NAME} is {state}: configure and activate "
                           f"it" + (f" (last error: {self.last_error})" if self.last_error else ""))
        if not self.active:
            return False, (f"e-stop latch cleared, but {NAME} is {state}: activate it to enable "
                           f"the amplifier")
        if not rig.enable():
            why = rig.refusal() or f"the MCU on {self.hw.port} is not connected"
            return False, f"cannot enable the amplifier: {why}"
        if not self.hw.home_on_reset:
            return True, "reset: e-stop cleared, amplifier enabled"
        outcome = rig.home()
        if not outcome.homed:
            self.counts["homing_failures"] += 1
            return False, f"reset: {outcome.reason}"
        x = outcome.x
        return True, (f"reset: homed, amplifier enabled (p = {x[P]:.4f} m, theta = {x[THETA]:.3f} "
                      f"rad)" if x is not None else "reset: homed, amplifier enabled")

    # -- diagnostics and shutdown ---------------------------------------------------------------
    def _report(self) -> tuple[str, str, dict[str, Any]]:
        state = self.lifecycle_state()
        rig = self.rig
        values: dict[str, Any] = {"lifecycle": state, "port": self.hw.port,
                                  "estop_latched": self.estopped, **self.counts}
        if rig is None:
            message = f"{state}: not connected" + (f" ({self.last_error})"
                                                   if self.last_error else "")
            return ("error" if self.estopped else "warn"), message, values
        status, stats = rig.status(), rig.driver.stats()
        decoder = stats.decoder
        with self.lock:
            device, mismatches = self.device, self.mismatches
        values.update({
            "connected": status.connected, "enabled": status.enabled, "homing": status.homing,
            "watchdog_expired": status.watchdog_expired, "soft_limit": status.limit or "none",
            "mcu_status": f"0x{status.mcu_status:04x}",
            "requested_force_N": round(status.requested_force, 4),
            "commanded_force_N": round(status.commanded_force, 4), "session": status.session,
            "fault_disables": status.fault_disables,
            "firmware": device.firmware if device else "unknown",
            "mcu_reset_cause": (reset_cause_text(device.reset_cause) if device
                                else "not reported"),
            "calibration": "; ".join(mismatches) or CALIBRATION_AGREES,
            "frames": decoder.frames, "crc_errors": decoder.crc_errors,
            "malformed": decoder.malformed, "oversized": decoder.oversized,
            "resyncs": decoder.resyncs, "drops": decoder.drops,
            "sequence_resets": decoder.sequence_resets, "timeouts": stats.timeouts,
            "link_losses": stats.link_losses, "reconnects": stats.reconnects,
            "mcu_restarts": stats.mcu_restarts,
            "commands_sent": stats.commands_sent, "write_errors": stats.write_errors,
            "callback_errors": stats.callback_errors,
            "heartbeat_rtt_ms": (round(stats.heartbeat_rtt * 1e3, 3)
                                 if stats.heartbeat_rtt is not None else "none"),
        })
        counters = stats.mcu_counters
        values.update(zip(MCU_COUNTER_KEYS, dataclasses.astuple(counters) if counters is not None
                          else ["none"] * len(MCU_COUNTER_KEYS)))
        fault = status.mcu_status & (Status.AMP_FAULT | Status.FAULT_LATCHED)
        if self.estopped or fault or not status.connected:
            level = "error"
            message = ("e-stop latched" if self.estopped
                       else "amplifier fault" if status.mcu_status & Status.AMP_FAULT
                       else "amplifier fault latched" if fault
                       else "link to the MCU lost: reconnecting")
        elif state != "active" or not status.enabled:
            level, message = "warn", f"{state}, amplifier {'on' if status.enabled else 'off'}"
        elif status.limit is not None:
            level, message = "warn", f"soft limit acting ({status.limit})"
        elif status.watchdog_expired:
            level, message = "ok", "active, idle: no recent command, force zero"
        else:
            level, message = "ok", f"active, commanding {status.commanded_force:.3f} N"
        return level, message, values

    def close(self) -> None:
        if self.autostart_timer is not None:
            self.autostart_timer.cancel()
        self.commands.close()
        self._close_rig()
        self.sampler.destroy_node()


def main(args: Sequence[str] | None = None) -> int:
    return run_node(HardwareInterface, args, name=NAME,
                    make_executor=lambda: MultiThreadedExecutor(num_threads=EXECUTOR_THREADS))


if __name__ == "__main__":
    raise SystemExit(main())
