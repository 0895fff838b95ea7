"""The rig's settings: serial link, calibration, watchdog, soft limits, velocity estimation.

The `hardware` section of the same YAML file the learning core reads (the core lists it among
FOREIGN_SECTIONS and skips it; it is validated here). Fields use the core's `setting` metadata, so
the hardware node turns the same ranges into ROS parameter descriptors.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..core.config import ConfigError, Section, read_parameters, section_from_mapping, setting

SECTION = "hardware"
MAX_BAUD = 12_000_000
MIN_BAUD = 9600


@dataclass(frozen=True)
class HardwareConfig(Section):
    """Serial link to the motor-driver MCU and the host-side safety layer around it."""

    _section = SECTION
    # Link.
    port: str = setting("/dev/ttyACM0", doc="serial device of the MCU (a pty for the emulator)")
    baud: int = setting(1_000_000, MIN_BAUD, MAX_BAUD,
                        doc="baud rate: 1000000 is exact on a 16 MHz AVR (ignored by USB CDC and "
                            "ptys)")
    read_timeout: float = setting(0.01, 0.0, 1.0, lo_open=True,
                                  doc="longest blocking serial read [s]; bounds close() latency")
    write_timeout: float = setting(0.01, 0.0, 1.0, lo_open=True,
                                   doc="longest blocking serial write [s]; a late frame is dropped")
    handshake_timeout: float = setting(1.0, 0.0, 60.0, lo_open=True,
                                       doc="HELLO -> CONFIG answer must arrive within this [s]")
    handshake_retry: float = setting(0.1, 0.0, 10.0, lo_open=True,
                                     doc="HELLO is resent at this period until answered [s]")
    state_timeout: float = setting(0.05, 0.0, 10.0, lo_open=True,
                                   doc="a STATE gap longer than this counts as one timeout [s]")
    link_timeout: float = setting(0.5, 0.0, 60.0, lo_open=True,
                                  doc="no valid frame for this long: link lost, reconnect [s]")
    heartbeat_period: float = setting(0.5, 0.0, 60.0,
                                      doc="HEARTBEAT round-trip probe period [s]; 0 = off")
    reconnect_backoff_initial: float = setting(0.05, 0.0, 60.0, lo_open=True,
                                               doc="first wait before reopening a lost port [s]")
    reconnect_backoff_max: float = setting(2.0, 0.0, 600.0, lo_open=True,
                                           doc="the wait doubles per failure up to this [s]")
    realtime_priority: int = setting(0, 0, 99,
                                     doc="SCHED_FIFO priority of the serial I/O thread (and of "
                                         "the hardware node's command thread and DDS receive "
                                         "threads); 0 = normal scheduling (needs CAP_SYS_NICE "
                                         "or an rtprio limit)")
    # Calibration: counts -> SI, force -> motor command.
    metres_per_cart_count: float = setting(5e-5, 0.0, None, lo_open=True,
                                           doc="cart travel per encoder count [m]")
    cart_sign: int = setting(1, -1, 1, doc="+1 or -1: makes positive p point along the track's +x")
    radians_per_pole_count: float = setting(2 * math.pi / 4096, 0.0, None, lo_open=True,
                                            doc="pole rotation per encoder count [rad]")
    pole_sign: int = setting(1, -1, 1, doc="+1 or -1: makes theta follow the model's convention")
    pole_angle_offset: float = setting(0.0, -2 * math.pi, 2 * math.pi,
                                       doc="added to the signed angle: 0 = hanging down [rad]")
    force_to_command: float = setting(0.1, 0.0, None, lo_open=True,
                                      doc="normalised motor duty per newton of cart force [1/N]")
    motor_sign: int = setting(1, -1, 1, doc="+1 or -1: positive force must push the cart to +p")
    command_limit: float = setting(1.0, 0.0, 1.0, lo_open=True,
                                   doc="largest |normalised duty| ever sent")
    # Safety.
    command_watchdog_timeout: float = setting(0.1, 0.001, 10.0,
                                              doc="no new command for this long -> zero; also "
                                                  "asked of the MCU's own watchdog [s]")
    cart_position_limit: float = setting(0.3, 0.0, None, lo_open=True,
                                         doc="soft limit |p| [m], inside the hard end stops")
    cart_velocity_limit: float = setting(1.5, 0.0, None, lo_open=True,
                                         doc="soft limit |pdot| [m/s]: no force speeding it up")
    soft_limit_margin: float = setting(0.12, 0.0, None,
                                       doc="zone before the position limit where outward force "
                                           "is refused and outward motion braked [m]")
    soft_limit_brake_force: float = setting(10.0, 0.0, None,
                                            doc="force opposing outward motion near a limit [N]")
    soft_limit_brake_deadband: float = setting(0.02, 0.0, None,
                                               doc="outward speed above which the brake acts "
                                                   "[m/s]; slower, outward force is only "
                                                   "refused: a cart at rest is never pushed")
    # Velocity estimation.
    velocity_filter_tau: float = setting(0.01, 0.0, 1.0,
                                         doc="first-order low-pass time constant on the finite "
                                             "difference [s]; 0 = raw difference")
    velocity_max_gap: float = setting(0.2, 0.0, 10.0, lo_open=True,
                                      doc="samples further apart restart the estimator [s]")
    # Homing: the reset re-centres the cart and brings the pole to rest, hanging (a PD law on
    # the cart plus active pole damping, run at the state rate: rig.homing_force), and waits for
    # both (rig.at_home).
    home_on_reset: bool = setting(True, doc="the reset service drives the cart back to p = 0 "
                                            "and the pole to rest, hanging")
    home_gain: float = setting(5.0, 0.0, None, lo_open=True,
                               doc="homing stiffness: force per metre off centre [N/m]")
    home_damping: float = setting(3.5, 0.0, None, doc="homing damping [N s/m]")
    home_pole_damping: float = setting(0.5, 0.0, None,
                                       doc="active pole damping: force per rad/s of pole rate, "
                                           "times cos theta [N s/rad]; 0 = off: the cart alone "
                                           "is driven, the pole must settle by itself")
    home_force_limit: float = setting(4.0, 0.0, None, lo_open=True,
                                      doc="largest |force| while homing [N]")
    home_tolerance: float = setting(0.01, 0.0, None, lo_open=True,
                                    doc="homed once |p| is within this [m] ...")
    home_speed_tolerance: float = setting(0.05, 0.0, None, lo_open=True,
                                          doc="... and |pdot| below this [m/s] ...")
    home_pole_tolerance: float = setting(0.01, 0.0, math.pi, lo_open=True,
                                         doc="... and the pole within this of hanging: |theta "
                                             "wrapped to [-pi, pi]| [rad] (theta is unwrapped: "
                                             "every whole turn hangs) ...")
    home_pole_speed_tolerance: float = setting(0.05, 0.0, None, lo_open=True,
                                               doc="... and |thetadot| below this [rad/s] (all "
                                                   "judged on the estimate: at 500 Hz a 4096-"
                                                   "count pole rate is resolved to ~0.06 rad/s)")
    home_timeout: float = setting(8.0, 0.0, 600.0, lo_open=True,
                                  doc="a reset that has not homed by then fails [s] (a pole "
                                      "fallen from upright takes ~4 s to bring down on the "
                                      "paper cart-pole); keep it below execution.reset_timeout")
    # The hardware_interface node.
    autostart: bool = setting(True,
                              doc="the node configures (opens the port) and activates (enables "
                                  "the amplifier) by itself, retrying until it can; false: it "
                                  "waits for lifecycle change_state requests")

    def check(self) -> None:
        for name in ("cart_sign", "pole_sign", "motor_sign"):
            if getattr(self, name) not in (-1, 1):
                self.fail(name, "must be +1 or -1")
        if not self.port:
            self.fail("port", "must name a serial device")
        if self.soft_limit_margin >= self.cart_position_limit:
            self.fail("soft_limit_margin", f"must be < cart_position_limit = "
                                           f"{self.cart_position_limit}")
        if self.soft_limit_brake_deadband >= self.cart_velocity_limit:
            self.fail("soft_limit_brake_deadband", f"must be < cart_velocity_limit = "
                                                   f"{self.cart_velocity_limit}")
        if self.reconnect_backoff_max < self.reconnect_backoff_initial:
            self.fail("reconnect_backoff_max", "must be >= reconnect_backoff_initial")

    @property
    def watchdog_ms(self) -> int:
        """The command watchdog as the HELLO message carries it."""
        return int(round(self.command_watchdog_timeout * 1000.0))

    def replace(self, **changes: Any) -> "HardwareConfig":
        return hardware_config_from_dict({**dataclasses.asdict(self), **changes})


def hardware_config_from_dict(values: Mapping[str, Any] | None) -> HardwareConfig:
    """The section from its mapping of parameters (YAML ints accepted for floats)."""
    return section_from_mapping(HardwareConfig, values)


def load_hardware_config(path: str | Path, **overrides: Any) -> HardwareConfig:
    """The `hardware` section of a YAML file (ROS parameter-file layout or a plain mapping)."""
    section = read_parameters(path).get(SECTION) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{SECTION}: must be a mapping of parameters")
    return hardware_config_from_dict({**section, **overrides})
