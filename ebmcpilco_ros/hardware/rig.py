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

Homing (what the hardware node's reset does) runs its law (homing_force: the cart to the centre,
the pole to rest, hanging) on the same path, at the state rate, so it needs no fast caller and
stays under the soft limits and the e-stop; it ends once the cart and the pole are both at rest.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core.cartpole import P, PDOT, THETA, THETADOT

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


def homing_force(x: np.ndarray, config: HardwareConfig) -> float:
    """The homing force for the measured state x = [p, pdot, theta, thetadot] [N]:

        F = -home_gain p - home_damping pdot + home_pole_damping thetadot cos(theta),

    limited to +-home_force_limit (the soft limits act on it afterwards, like on any force).

    The pole term's sign: in the cart-pole equations (core/cartpole.py, theta = 0 hanging) the
    force enters thddot as -6 u cos(theta) / (l den), so u = +k thetadot cos(theta) adds
    -6 k thetadot cos^2(theta) / (l den): damping, the cart moved so as to take the swing's
    energy out. Checked with core.cartpole.step on the paper cart-pole (0.5 kg cart, 0.5 kg /
    0.5 m pole, friction 0.1), the cart free (no PD), from theta = 0.3 rad at rest, 2 s: with
    k = +1 N s/rad the swing is gone (amplitude < 0.01 rad), with k = 0 it stays (0.28 rad),
    with k = -1 it grows over the top (test_hardware_conversion.py).

    The gains act together. Linearised about hanging, with the former cart law (20 N/m,
    8 N s/m) any k > 0 slowed the pole's decay (0.77 /s at k = 0, 0.55 /s at k = 0.5, unstable
    from k ~ 3): the cart loop's and the pole's modes mix, and the pole term alone is no proof.
    With the defaults (5 N/m, 3.5 N s/m, k = 0.5 N s/rad) every mode decays at >= 1.8 /s (the
    pole's 0.99 /s without k). At the state rate (500 Hz, quantised encoders, the rig's velocity
    estimate, 4 N, the soft limits) they home the paper cart-pole from |theta| <= 0.3 rad
    swinging and |p| <= 0.15 m in 1.5-1.7 s (cart-only, k = 0: 2.4-3.1 s; the former law:
    2.9-4.2 s), never entering the soft limits' zone, and a pole fallen from upright in ~3.9 s.
    """
    cfg = config
    p, pdot, theta, thetadot = (float(v) for v in x[:4])
    force = (-cfg.home_gain * p - cfg.home_damping * pdot
             + cfg.home_pole_damping * thetadot * math.cos(theta))
    return math.copysign(min(abs(force), cfg.home_force_limit), force)


def pole_from_hanging(theta: float) -> float:
    """theta wrapped to [-pi, pi]: the pole's angle from the nearest hanging position (theta is
    unwrapped, whole turns accumulate, and every multiple of 2 pi hangs)."""
    return math.remainder(float(theta), 2.0 * math.pi)


def _home_checks(x: np.ndarray, config: HardwareConfig) -> tuple:
    """(part, quantity, value, tolerance, setting, unit) for each home_* tolerance."""
    cfg = config
    p, pdot, theta, thetadot = (float(v) for v in x[:4])
    return (
        ("cart", "|p|", abs(p), cfg.home_tolerance, "home_tolerance", "m"),
        ("cart", "|pdot|", abs(pdot), cfg.home_speed_tolerance, "home_speed_tolerance", "m/s"),
        ("pole", "|theta| from hanging", abs(pole_from_hanging(theta)), cfg.home_pole_tolerance,
         "home_pole_tolerance", "rad"),
        ("pole", "|thetadot|", abs(thetadot), cfg.home_pole_speed_tolerance,
         "home_pole_speed_tolerance", "rad/s"),
    )


def at_home(x: np.ndarray, config: HardwareConfig) -> bool:
    """The cart at the centre and at rest and the pole at rest, hanging, in the state x."""
    return all(value <= tolerance for _p, _q, value, tolerance, _s, _u in _home_checks(x, config))


def homing_shortfall(x: np.ndarray, config: HardwareConfig) -> list[str]:
    """What keeps the measured state x from counting as homed, one entry per home_* tolerance it
    misses (each names the part, the tolerance and the value reached); empty: homed."""
    return [f"{part}: {what} = {value:.3f} {unit} > hardware.{name} = {tolerance:g} {unit}"
            for part, what, value, tolerance, name, unit in _home_checks(x, config)
            if not value <= tolerance]


@dataclass(frozen=True)
class HomingOutcome:
    """How a homing ended: the cart at the centre and at rest and the pole at rest, hanging, or why
    not; x is the last measured state."""

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
        """Drive the cart to p = 0 and the pole to rest, hanging, and wait until both are there
        and at rest, all in one measured state (home_* settings; homing_force, at_home).

        The homing force is computed for every STATE in place of the requested force (set_force
        is ignored meanwhile), soft limits still apply, and the requested force is zero
        afterwards. Ends early, not homed, on e-stop, disable, an amplifier fault or a lost link.
        Not homed within the timeout: the reason names what did not settle (the cart, the pole
        or both: each tolerance missed and the value reached) in the last measured state.
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
        if x is None:
            return HomingOutcome(False, f"not homed within {limit:g} s (no state measured)", x)
        missed = homing_shortfall(x, cfg)
        parts = [part for part in ("cart", "pole") if any(m.startswith(part) for m in missed)]
        what = (f"the {' and the '.join(parts)} did not settle" if parts
                else "no new state with estimated velocities came during the homing")
        last = (f"last state p = {x[P]:.3f} m, pdot = {x[PDOT]:.3f} m/s, theta = "
                f"{x[THETA]:.3f} rad, thetadot = {x[THETADOT]:.3f} rad/s")
        return HomingOutcome(False, f"not homed within {limit:g} s: {what} "
                                    f"({'; '.join(missed + [last])})", x)

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
        """The cart at the centre and at rest, the pole at rest hanging (lock held)."""
        m = self._measurement
        return m is not None and m.valid and at_home(m.x, self.config)

    def _homing_force(self) -> float:
        """homing_force for the latest state (lock held); zero until velocities are estimated."""
        m = self._measurement
        if m is None or not m.valid:
            return 0.0
        return homing_force(m.x, self.config)

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
            limited = apply_soft_limits(force, float(x[P]), float(x[PDOT]), self.config)
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
