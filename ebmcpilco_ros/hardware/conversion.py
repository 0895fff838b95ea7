"""Raw rig quantities <-> SI, velocity estimation and soft limits: pure functions of their inputs.

Conventions (as the learner's): p [m] along the track, theta [rad] continuous (not wrapped) with
0 = hanging down, force [N] positive towards +p. Signs and scales come from HardwareConfig, so a
rig wired the other way round is fixed in YAML, not in code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import HardwareConfig
from .protocol import COMMAND_FULL_SCALE, TIMESTAMP_MODULUS, DeviceConfig, State

US_PER_S = 1e6
CALIBRATION_RTOL = 1e-3   # calibration vs the MCU's reported resolution: relative tolerance


# ---------------------------------------------------------------------------------------------
# Positions


def cart_position(counts: int, config: HardwareConfig) -> float:
    """Cart position p [m] from the cart encoder count."""
    return counts * config.metres_per_cart_count * config.cart_sign


def pole_angle(counts: int, config: HardwareConfig) -> float:
    """Pole angle theta [rad], continuous, 0 = hanging down."""
    return counts * config.radians_per_pole_count * config.pole_sign + config.pole_angle_offset


def cart_counts(p: float, config: HardwareConfig) -> int:
    """Inverse of cart_position (nearest count)."""
    return int(round(p / (config.metres_per_cart_count * config.cart_sign)))


def pole_counts(theta: float, config: HardwareConfig) -> int:
    """Inverse of pole_angle (nearest count)."""
    return int(round((theta - config.pole_angle_offset)
                     / (config.radians_per_pole_count * config.pole_sign)))


# ---------------------------------------------------------------------------------------------
# Force <-> motor command


def force_to_duty(force: float, config: HardwareConfig) -> float:
    """Normalised duty for a cart force, saturated at +-command_limit; NaN/inf give 0."""
    if not math.isfinite(force):
        return 0.0
    duty = force * config.force_to_command * config.motor_sign
    return min(config.command_limit, max(-config.command_limit, duty))


def duty_to_force(duty: float, config: HardwareConfig) -> float:
    """The cart force a normalised duty stands for (inverse of force_to_duty below saturation)."""
    return duty / (config.force_to_command * config.motor_sign)


def applied_force(state: State, config: HardwareConfig) -> float:
    """The force the MCU is actually applying, from the command it reports in STATE."""
    return duty_to_force(state.applied_command / COMMAND_FULL_SCALE, config)


def max_force(config: HardwareConfig) -> float:
    """The largest |force| the command limit allows."""
    return config.command_limit / config.force_to_command


# ---------------------------------------------------------------------------------------------
# Velocity estimation


def timestamp_delta(previous_us: int, current_us: int) -> float:
    """Seconds between two MCU timestamps, across the u32 microsecond wrap."""
    return ((current_us - previous_us) % TIMESTAMP_MODULUS) / US_PER_S


@dataclass(frozen=True)
class VelocityEstimate:
    """Filter state and output: positions at the last sample and their filtered rates."""

    positions: tuple[float, ...]
    velocities: tuple[float, ...]
    timestamp_us: int
    valid: bool = False   # False until two samples close enough in time have been seen


def estimate_velocity(previous: VelocityEstimate | None, positions: tuple[float, ...],
                      timestamp_us: int, config: HardwareConfig) -> VelocityEstimate:
    """Finite difference over MCU time, then a first-order low-pass with time constant tau.

    The MCU clock, not host arrival time, is used: serial jitter would otherwise become velocity
    noise. A gap above velocity_max_gap (a stall, a reconnection) restarts the estimator; the first
    difference after a restart initialises the filter instead of being blended with a stale value.
    """
    positions = tuple(float(v) for v in positions)
    zeros = tuple(0.0 for _ in positions)
    if previous is None or len(previous.positions) != len(positions):
        return VelocityEstimate(positions, zeros, timestamp_us)
    dt = timestamp_delta(previous.timestamp_us, timestamp_us)
    if dt == 0.0:
        return previous
    if dt > config.velocity_max_gap:
        return VelocityEstimate(positions, zeros, timestamp_us)
    raw = tuple((x - x0) / dt for x, x0 in zip(positions, previous.positions))
    if not previous.valid:
        return VelocityEstimate(positions, raw, timestamp_us, True)
    alpha = dt / (config.velocity_filter_tau + dt)
    filtered = tuple(v0 + alpha * (r - v0) for v0, r in zip(previous.velocities, raw))
    return VelocityEstimate(positions, filtered, timestamp_us, True)


@dataclass(frozen=True)
class Measurement:
    """One STATE in SI: x = [p, pdot, theta, thetadot] and the filter state for the next one."""

    x: np.ndarray
    time_s: float              # MCU time of the sample, unwrapped by the caller's previous one
    estimate: VelocityEstimate

    @property
    def valid(self) -> bool:
        return self.estimate.valid


def measure(state: State, previous: Measurement | None, config: HardwareConfig) -> Measurement:
    """A STATE as the learner's state vector, velocities estimated against the previous one."""
    p = cart_position(state.cart_counts, config)
    theta = pole_angle(state.pole_counts, config)
    before = previous.estimate if previous is not None else None
    estimate = estimate_velocity(before, (p, theta), state.timestamp_us, config)
    if previous is None:
        time_s = state.timestamp_us / US_PER_S
    else:
        time_s = previous.time_s + timestamp_delta(previous.estimate.timestamp_us,
                                                   state.timestamp_us)
    pdot, thetadot = estimate.velocities
    return Measurement(np.array([p, pdot, theta, thetadot]), time_s, estimate)


# ---------------------------------------------------------------------------------------------
# Soft limits


@dataclass(frozen=True)
class LimitedForce:
    """A force after the soft limits, and which limit changed it (None: passed unchanged)."""

    force: float
    reason: str | None = None


def apply_soft_limits(force: float, p: float, pdot: float,
                      config: HardwareConfig) -> LimitedForce:
    """Override any force that drives the cart towards a track end or beyond the speed limit.

    Inside the margin before the position limit (and beyond it), outward force is refused, and
    outward motion faster than soft_limit_brake_deadband is braked with at least
    soft_limit_brake_force. At or below the deadband (a cart at rest, whose estimated velocity is
    quantisation noise) nothing is pushed: outward requests become 0, inward ones pass. Above the
    velocity limit, force along the motion is refused. Whatever the request, the result never
    pushes outward there.
    """
    if not math.isfinite(force):
        return LimitedForce(0.0, "invalid")
    if not (math.isfinite(p) and math.isfinite(pdot)):
        return LimitedForce(0.0, "invalid state")
    reason = None
    edge = config.cart_position_limit - config.soft_limit_margin
    if abs(p) >= edge:
        outward = math.copysign(1.0, p)
        if force * outward > 0.0:
            force, reason = 0.0, "position"
        if pdot * outward > config.soft_limit_brake_deadband:
            inward = max(config.soft_limit_brake_force, -force * outward)
            force, reason = -outward * inward, "position"
    if abs(pdot) > config.cart_velocity_limit and force * pdot > 0.0:
        force, reason = 0.0, "velocity"
    return LimitedForce(force, reason)


# ---------------------------------------------------------------------------------------------
# Calibration check


def calibration_mismatches(config: HardwareConfig, device: DeviceConfig) -> list[str]:
    """Where the YAML calibration disagrees with what the firmware reports (empty if it agrees).

    The YAML stays authoritative (the firmware's figures may be nominal); this is for diagnostics.
    """
    problems = []
    if device.cart_counts_per_m:
        expected = 1.0 / device.cart_counts_per_m
        if not math.isclose(config.metres_per_cart_count, expected, rel_tol=CALIBRATION_RTOL):
            problems.append(f"metres_per_cart_count = {config.metres_per_cart_count:g}, firmware "
                            f"reports {device.cart_counts_per_m} counts/m ({expected:g})")
    if device.pole_counts_per_rev:
        expected = 2.0 * math.pi / device.pole_counts_per_rev
        if not math.isclose(config.radians_per_pole_count, expected, rel_tol=CALIBRATION_RTOL):
            problems.append(f"radians_per_pole_count = {config.radians_per_pole_count:g}, firmware "
                            f"reports {device.pole_counts_per_rev} counts/rev ({expected:g})")
    if device.watchdog_ms != config.watchdog_ms:
        problems.append(f"command watchdog: asked for {config.watchdog_ms} ms, firmware uses "
                        f"{device.watchdog_ms} ms")
    return problems
