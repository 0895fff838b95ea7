"""The host-side safety layer over the serial driver: what the hardware node wraps in ROS.

For every STATE it converts counts to SI (with velocity estimation) and re-sends the command: the
latest requested force, zeroed if it is older than the command watchdog, overridden by the soft
limits against the newest state, and zero with the amplifier disabled while disabled or e-stopped.
Re-sending at the state rate keeps the soft limits acting between control periods and keeps the
MCU's watchdog fed only while this process is alive. A new serial session (reconnection) starts
disabled: the caller must enable again, so motion never resumes on its own. An amplifier fault
reported in a STATE (AMP_FAULT or FAULT_LATCHED) disables the host side the same way; while
disabled every re-sent COMMAND carries ENABLE = 0, which is also what acknowledges (clears) the
MCU's fault latch once the fault input is inactive.

Homing (what the hardware node's reset does) runs the PD law on the same path, at the state rate,
so it needs no fast caller and stays under the soft limits and the e-stop.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .config import HardwareConfig
from .conversion import Measurement, apply_soft_limits, force_to_duty, measure
from .driver import SerialDriver, StateSample
from .protocol import DeviceConfig, Status

log = logging.getLogger(__name__)
FAULT_BITS = int(Status.AMP_FAULT | Status.FAULT_LATCHED)   # either disables the host side


@dataclass(frozen=True)
class RigStatus:
    """What diagnostics report; `limit` is the soft limit acting on the last command, if any."""

    connected: bool
    enabled: bool
    estopped: bool
    watchdog_expired: bool   # the host-side command watchdog zeroed the force
    limit: str | None
    mcu_status: int          # STATE status bits (protocol.Status)
    requested_force: float
    commanded_force: float
    session: int
    homing: bool
    fault_disables: int = 0  # times an amplifier fault in a STATE disabled the host side


@dataclass(frozen=True)
class HomingOutcome:
    """How a homing ended: at the centre and at rest, or why not; x is the last measured state."""

    homed: bool
    reason: str
    x: np.ndarray | None


class Rig:
    """A cart-pole rig in SI units with soft limits, a command watchdog and a latching e-stop."""

    def __init__(self, config: HardwareConfig,
                 on_measurement: Callable[[Measurement, StateSample], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_session: Callable[[DeviceConfig], None] | None = None) -> None:
        """on_session(device) runs on the driver's I/O thread at every new serial session (the
        first handshake and each reconnection), with that session's CONFIG."""
        self.config = config
        self._on_measurement = on_measurement
        self._on_session = on_session
        self._clock = clock
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()   # compute-and-send is atomic: no stale frame overtakes
        self._measured = threading.Condition(self._lock)
        self._measurement: Measurement | None = None
        self._sample: StateSample | None = None
        self._count = 0
        self._requested = 0.0
        self._requested_at: float | None = None
        self._enabled = False
        self._estopped = False
        self._session = 0
        self._homing = False
        self._fault_disables = 0
        self._last = (0.0, None, False)   # commanded force, limit reason, watchdog expired
        self.driver = SerialDriver(config, on_state=self._on_state, on_link=self._on_link)

    # -- lifecycle -------------------------------------------------------------------------

    def open(self, timeout: float | None = None) -> DeviceConfig:
        return self.driver.open(timeout)

    def close(self) -> None:
        """Disable, then close the driver (which sends a final zero, enable=false)."""
        self.disable()
        self.driver.close()

    def __enter__(self) -> "Rig":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands --------------------------------------------------------------------------

    def set_force(self, force: float) -> None:
        """The force the controller wants now [N]; sent at once and re-sent with every STATE."""
        with self._lock:
            self._requested = float(force)
            self._requested_at = self._clock()
        self._send()

    def enable(self) -> bool:
        """Enable the amplifier; refused while e-stopped, not connected, or while the latest
        STATE reports an amplifier fault (AMP_FAULT or FAULT_LATCHED): see refusal()."""
        with self._lock:
            if self._refusal() is not None:
                return False
            self._enabled = True
            self._requested, self._requested_at = 0.0, None
        return self._send()

    def disable(self) -> None:
        with self._lock:
            self._enabled = False
            self._measured.notify_all()  # a homing in progress ends
        self._send()

    def estop(self) -> None:
        """Zero and disable now; latches until reset_estop()."""
        with self._lock:
            self._estopped = True
            self._enabled = False
            self._measured.notify_all()
        self._send()

    def home(self, timeout: float | None = None) -> HomingOutcome:
        """Drive the cart to p = 0 and wait until it is there and at rest (home_* settings).

        The PD force is computed for every STATE in place of the requested force (set_force is
        ignored meanwhile), soft limits still apply, and the requested force is zero afterwards.
        Ends early, not homed, on e-stop, disable, an amplifier fault or a lost link.
        """
        cfg = self.config
        limit = cfg.home_timeout if timeout is None else timeout
        with self._lock:
            if self._estopped or not self._enabled:
                return HomingOutcome(False, "e-stop latched" if self._estopped
                                     else "the amplifier is disabled", self._x())
            self._homing = True
            start = self._count   # judged on states measured from now on
        self._send()
        try:
            with self._measured:
                self._measured.wait_for(lambda: (self._count > start and self._homed())
                                        or self._estopped or not self._enabled, limit)
                homed, x = self._count > start and self._homed(), self._x()
                interrupted = ("e-stop" if self._estopped
                               else "the amplifier was disabled (or faulted) or the link lost"
                               if not self._enabled else "")
        finally:
            with self._lock:
                self._homing = False
                self._requested, self._requested_at = 0.0, None
            self._send()
        if homed:
            return HomingOutcome(True, "homed", x)
        if interrupted:
            return HomingOutcome(False, f"homing interrupted: {interrupted}", x)
        where = "no state" if x is None else f"p = {x[0]:.3f} m, pdot = {x[1]:.3f} m/s"
        return HomingOutcome(False, f"not homed within {limit:g} s ({where}; hardware."
                                    f"home_tolerance = {cfg.home_tolerance} m, "
                                    f"home_speed_tolerance = {cfg.home_speed_tolerance} m/s)", x)

    def refusal(self) -> str | None:
        """Why enable() would be refused now, None if it would not."""
        with self._lock:
            return self._refusal()

    def _refusal(self) -> str | None:
        """(lock held)"""
        if self._estopped:
            return "the e-stop is latched"
        if not self.driver.connected:
            return f"the MCU on {self.config.port} is not connected"
        if self._sample is not None and self._sample.state.status & FAULT_BITS:
            return (f"the MCU reports an amplifier fault (status "
                    f"0x{self._sample.state.status:04x}); it clears once the fault input is "
                    f"inactive")
        return None

    def reset_estop(self) -> None:
        """Clear the latch; the rig stays disabled until enable()."""
        with self._lock:
            self._estopped = False

    # -- state -----------------------------------------------------------------------------

    def latest(self) -> tuple[Measurement, StateSample] | None:
        with self._lock:
            if self._measurement is None or self._sample is None:
                return None
            return self._measurement, self._sample

    def wait_measurement(self, after: int = 0,
                         timeout: float = 1.0) -> tuple[int, Measurement] | None:
        """The first measurement numbered above `after` (and its number); None on timeout."""
        with self._measured:
            # A new session clears the measurement without a new count: wait for the next one.
            if not self._measured.wait_for(lambda: self._count > after
                                           and self._measurement is not None, timeout):
                return None
            return self._count, self._measurement

    def status(self) -> RigStatus:
        with self._lock:
            force, limit, expired = self._last
            bits = self._sample.state.status if self._sample is not None else 0
            connected = self.driver.connected
            # The driver drops `connected` just before it tells us the session ended: never
            # report a host-side enable without a link.
            return RigStatus(connected, self._enabled and connected, self._estopped, expired, limit,
                             bits, self._requested, force, self._session, self._homing,
                             self._fault_disables)

    # -- internals -------------------------------------------------------------------------

    def _on_link(self, connected: bool) -> None:
        with self._lock:
            self._enabled = False  # a new or lost session never carries the enable over
            self._measurement = None
            self._last = (0.0, None, False)
            if connected:
                self._session += 1
                self._sample = None   # a fault seen in the old session is the new CONFIG's to tell
            self._measured.notify_all()
        device = self.driver.device
        if connected and self._on_session is not None and device is not None:
            self._on_session(device)

    def _x(self) -> np.ndarray | None:
        """The last measured state (lock held)."""
        return None if self._measurement is None else self._measurement.x.copy()

    def _homed(self) -> bool:
        """At the centre and at rest (lock held)."""
        m = self._measurement
        return (m is not None and m.valid and abs(float(m.x[0])) <= self.config.home_tolerance
                and abs(float(m.x[1])) <= self.config.home_speed_tolerance)

    def _homing_force(self) -> float:
        """The PD force towards p = 0 (lock held); zero until velocities are estimated."""
        m = self._measurement
        if m is None or not m.valid:
            return 0.0
        cfg = self.config
        force = -cfg.home_gain * float(m.x[0]) - cfg.home_damping * float(m.x[1])
        return math.copysign(min(abs(force), cfg.home_force_limit), force)

    def _on_state(self, sample: StateSample) -> None:
        with self._lock:
            self._measurement = measure(sample.state, self._measurement, self.config)
            self._sample = sample
            self._count += 1
            if sample.state.status & FAULT_BITS and self._enabled:
                # Like a lost session: disabled until the caller enables again (a reset).
                self._enabled = False
                self._fault_disables += 1
                log.warning("rig: amplifier fault reported (status 0x%04x): disabled until the "
                            "next enable", sample.state.status)
            measurement = self._measurement
            self._measured.notify_all()
        self._send()
        if self._on_measurement is not None:
            self._on_measurement(measurement, sample)

    def _command(self) -> tuple[float, bool]:
        """Force and enable flag to send now (lock held)."""
        active = self._enabled and not self._estopped
        if self._homing:
            force, expired = self._homing_force(), False
        else:
            expired = (self._requested_at is None or self._clock() - self._requested_at
                       > self.config.command_watchdog_timeout)
            force = 0.0 if expired else self._requested
        limit = None
        if self._measurement is not None:
            x = self._measurement.x
            limited = apply_soft_limits(force, float(x[0]), float(x[1]), self.config)
            force, limit = limited.force, limited.reason
        if self._sample is not None and self._sample.state.status & FAULT_BITS:
            active = False
        if not active:
            force = 0.0
        self._last = (force, limit, expired and active)
        return force, active

    def _send(self) -> bool:
        with self._send_lock:
            with self._lock:
                force, enable = self._command()
            return self.driver.send_command(force_to_duty(force, self.config), enable)
