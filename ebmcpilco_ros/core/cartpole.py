"""Cart-pole dynamics (the PILCO / MC-PILCO benchmark plant) and its zero-order-hold integrator.

State x = [p, pdot, theta, thetadot]: cart position [m], its velocity, pole angle [rad] with
theta = 0 hanging down and theta = +-pi upright, and its rate. Input u: horizontal force on the
cart [N]. The pole is a uniform rod of mass m2 and length l; b is viscous cart friction.

    den    = 4 (m1 + m2) - 3 m2 cos^2 theta
    pddot  = (2 m2 l thetadot^2 sin theta + 3 m2 g sin theta cos theta + 4 u - 4 b pdot) / den
    thddot = (-3 m2 l thetadot^2 sin theta cos theta - 6 (m1 + m2) g sin theta
              - 6 (u - b pdot) cos theta) / (l den)

Functions work on arrays of shape (..., 4) so that many rollouts integrate at once. The state
layout is named here once (P, PDOT, THETA, THETADOT), and so is the angle wrap: every module that
indexes a state or compares angles uses these.
"""
from __future__ import annotations

import math
from typing import Callable, TypeVar

import numpy as np

from . import ilqr
from .config import ILQRConfig, PlantConfig

# The state layout x = [p, pdot, theta, thetadot] and the input u = [force].
STATE_NAMES = ("p", "pdot", "theta", "thetadot")
STATE_DIM = len(STATE_NAMES)
P, PDOT, THETA, THETADOT = range(STATE_DIM)
POSITIONS = (P, THETA)        # q = (p, theta), what the speed-integration model integrates
VELOCITIES = (PDOT, THETADOT)  # v = (pdot, thetadot), what its GPs predict the change of
INPUT_DIM = 1
Numeric = TypeVar("Numeric", np.ndarray, float)


def wrap_angle(theta: np.ndarray | float) -> np.ndarray:
    """theta wrapped to [-pi, pi): theta and theta + 2 pi are the same pole position."""
    return np.mod(theta + math.pi, 2.0 * math.pi) - math.pi


def state_difference(x: np.ndarray, X: np.ndarray) -> np.ndarray:
    """dx = x - X with the angle difference wrapped to [-pi, pi): the dynamics and every cost
    are 2 pi periodic in theta (the iLQR solver's `difference` for this plant)."""
    dx = np.asarray(x, dtype=float) - np.asarray(X, dtype=float)
    dx[..., THETA] = wrap_angle(dx[..., THETA])
    return dx


def hanging_turns(theta: float) -> float:
    """The multiple of 2 pi nearest theta: the hanging position a pole at theta is closest to.

    theta is continuous, and a rig's pole encoder accumulates whole turns across trials (a swing
    over the top, a spin while homing); subtracting this at a trial's start makes the trial's
    angles relative to the hanging position it starts from, as a simulated reset's are."""
    return 2.0 * np.pi * round(float(theta) / (2.0 * np.pi))


def _accelerations(pdot: Numeric, theta: Numeric, thdot: Numeric, u: Numeric, plant: PlantConfig,
                   sin: Callable[[Numeric], Numeric], cos: Callable[[Numeric], Numeric]
                   ) -> tuple[Numeric, Numeric]:
    """(pddot, thddot): the formula above, once, for arrays (np.sin) or floats (math.sin)."""
    m1, m2, l, b, g = (plant.cart_mass, plant.pole_mass, plant.pole_length, plant.friction,
                       plant.gravity)
    s, c = sin(theta), cos(theta)
    den = 4.0 * (m1 + m2) - 3.0 * m2 * c * c
    pddot = (2.0 * m2 * l * (thdot * thdot) * s + 3.0 * m2 * g * s * c + 4.0 * u
             - 4.0 * b * pdot) / den
    thddot = (-3.0 * m2 * l * (thdot * thdot) * s * c - 6.0 * (m1 + m2) * g * s
              - 6.0 * (u - b * pdot) * c) / (l * den)
    return pddot, thddot


def state_derivative(x: np.ndarray, u: np.ndarray | float, plant: PlantConfig) -> np.ndarray:
    """dx/dt for states (..., 4) and forces broadcastable to (...)."""
    pdot, theta, thdot = x[..., PDOT], x[..., THETA], x[..., THETADOT]
    pddot, thddot = _accelerations(pdot, theta, thdot, np.asarray(u, dtype=float), plant,
                                   np.sin, np.cos)
    return np.stack([pdot, pddot, thdot, thddot], axis=-1)


def step(x: np.ndarray, u: np.ndarray | float, plant: PlantConfig, dt: float | None = None,
         substeps: int | None = None) -> np.ndarray:
    """Advance by dt (default: one control period) with u held constant (zero-order hold), RK4."""
    dt = plant.control_period if dt is None else dt
    n = plant.integrator_substeps if substeps is None else substeps
    h = dt / n
    x = np.asarray(x, dtype=float)
    if x.shape == (STATE_DIM,) and np.ndim(u) == 0:
        return _step_one(x, float(u), plant, h, n)
    for _ in range(n):
        k1 = state_derivative(x, u, plant)
        k2 = state_derivative(x + 0.5 * h * k1, u, plant)
        k3 = state_derivative(x + 0.5 * h * k2, u, plant)
        k4 = state_derivative(x + h * k3, u, plant)
        x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x


def _step_one(x: np.ndarray, u: float, plant: PlantConfig, h: float, n: int) -> np.ndarray:
    """`step` for one state and one force on Python floats: the same RK4, operation for
    operation (bit-identical results), without numpy's per-call cost, which made a real-time
    plant's 2 ms sample take 0.24 ms of a core (sim_plant, the emulator)."""
    p, v, th, w = (float(value) for value in x)

    def derivative(v: float, th: float, w: float) -> tuple[float, float]:
        return _accelerations(v, th, w, u, plant, math.sin, math.cos)

    for _ in range(n):
        a1, b1 = derivative(v, th, w)
        a2, b2 = derivative(v + 0.5 * h * a1, th + 0.5 * h * w, w + 0.5 * h * b1)
        v2, w2 = v + 0.5 * h * a1, w + 0.5 * h * b1
        a3, b3 = derivative(v + 0.5 * h * a2, th + 0.5 * h * w2, w + 0.5 * h * b2)
        v3, w3 = v + 0.5 * h * a2, w + 0.5 * h * b2
        a4, b4 = derivative(v + h * a3, th + h * w3, w + h * b3)
        v4, w4 = v + h * a3, w + h * b3
        p, v, th, w = (p + (h / 6.0) * (v + 2.0 * v2 + 2.0 * v3 + v4),
                       v + (h / 6.0) * (a1 + 2.0 * a2 + 2.0 * a3 + a4),
                       th + (h / 6.0) * (w + 2.0 * w2 + 2.0 * w3 + w4),
                       w + (h / 6.0) * (b1 + 2.0 * b2 + 2.0 * b3 + b4))
    return np.array([p, v, th, w])


def energy(x: np.ndarray, plant: PlantConfig) -> np.ndarray:
    """Total mechanical energy [J], zero potential at the pivot: conserved when b = u = 0."""
    m1, m2, l, g = plant.cart_mass, plant.pole_mass, plant.pole_length, plant.gravity
    pdot, theta, thdot = x[..., PDOT], x[..., THETA], x[..., THETADOT]
    kinetic = (0.5 * (m1 + m2) * pdot**2 + 0.5 * m2 * l * pdot * thdot * np.cos(theta)
               + m2 * l**2 * thdot**2 / 6.0)
    potential = -0.5 * m2 * g * l * np.cos(theta)
    return kinetic + potential


def cartpole_dynamics(plant: PlantConfig, step_size: float | None = None
                      ) -> ilqr.FiniteDifferenceDynamics:
    """The true cart-pole (RK4, zero-order hold) as iLQR dynamics, with finite-difference
    Jacobians (step ilqr.fd_step unless given)."""

    def step_fn(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        return step(x, u[..., 0], plant)

    return ilqr.FiniteDifferenceDynamics(
        step_fn, ILQRConfig().fd_step if step_size is None else step_size, vectorized=True)
