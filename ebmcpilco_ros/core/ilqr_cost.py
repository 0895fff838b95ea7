"""Quadratic swing-up cost for iLQR that does not favour either direction of rotation.

The cost is quadratic in an error feature of the state rather than in x - x*, because a quadratic
in theta - pi prefers +pi over -pi (the pole would always swing one way, or unwind a full turn):

    e(x)   = [p, pdot, 1 + cos theta, sin theta, thetadot]       (e = 0 at theta = +pi and -pi)
    c(x,u) = 1/2 e^T Q e + 1/2 R u^2                            (running, t = 0..T-1)
    c_f(x) = 1/2 e^T Q_f e                                       (terminal, t = T)

with Q, Q_f diagonal (5 weights each). Every term is even under the mirror x -> -x (p, pdot,
sin theta and thetadot change sign, cos theta does not), so J(x0, U) = J(-x0, -U) exactly.

A rig's track (the paper's simulated cart-pole has none) adds, to c and c_f alike,

    c_track(x) = 1/2 W max(0, |p| - p_lim)^2                    (0 inside the track)

whose Hessian W 1[|p| > p_lim] is exact and positive semidefinite; it is even in p as well.

Derivatives wrt x use the chain rule through E(x) = de/dx (5 x 4):
    l_x  = E^T Q e
    l_xx = E^T Q E                          (Gauss-Newton: always positive semidefinite)
         + sum_i (Q e)_i d^2 e_i/dx^2        (only with hessian="exact"; indefinite near hanging)
The Gauss-Newton form is the default: near the hanging state the exact curvature of
q (1 + cos theta) is -q cos theta < 0, which would leave the regulariser to repair Q_uu.

All functions broadcast over leading axes, so a whole trajectory is one numpy call.
"""
from __future__ import annotations

import numpy as np

from .cartpole import INPUT_DIM, P, PDOT, STATE_DIM, THETA, THETADOT
from .config import ERROR_DIM, HESSIANS, ILQRConfig
from .ilqr import RunningDerivatives

# The error-feature layout (the state layout is cartpole.py's).
E_P, E_PDOT, E_COS, E_SIN, E_THETADOT = range(ERROR_DIM)


class SwingUpCost:
    """c(x, u) = 1/2 e(x)^T Q e(x) + 1/2 R u^2, c_f(x) = 1/2 e(x)^T Q_f e(x); see module doc."""

    def __init__(self, q: np.ndarray | tuple[float, ...], r: float,
                 q_final: np.ndarray | tuple[float, ...], hessian: str = "gauss_newton",
                 track_limit: float = 0.0, track_weight: float = 0.0) -> None:
        if track_limit < 0 or track_weight < 0:
            raise ValueError("track_limit and track_weight must be non-negative")
        self.track_limit = float(track_limit)
        self.track_weight = float(track_weight) if track_limit > 0 else 0.0
        self.q = np.asarray(q, dtype=float).reshape(ERROR_DIM)
        self.q_final = np.asarray(q_final, dtype=float).reshape(ERROR_DIM)
        self.r = float(r)
        if hessian not in HESSIANS:
            raise ValueError(f"hessian must be one of {HESSIANS}, got {hessian!r}")
        if np.any(self.q < 0) or np.any(self.q_final < 0) or self.r < 0:
            raise ValueError("cost weights must be non-negative")
        self.hessian = hessian

    @classmethod
    def from_config(cls, config: ILQRConfig) -> "SwingUpCost":
        """The cost the weights of the ilqr section define."""
        return cls(config.q, config.r, config.q_final, hessian=config.hessian,
                   track_limit=config.track_limit, track_weight=config.track_weight)

    # -- features -------------------------------------------------------------------------
    @staticmethod
    def error(x: np.ndarray) -> np.ndarray:
        """e(x) for states (..., 4) -> (..., 5)."""
        x = np.asarray(x, dtype=float)
        th = x[..., THETA]
        return np.stack([x[..., P], x[..., PDOT], 1.0 + np.cos(th), np.sin(th), x[..., THETADOT]],
                        axis=-1)

    @staticmethod
    def error_jacobian(x: np.ndarray) -> np.ndarray:
        """E(x) = de/dx for states (..., 4) -> (..., 5, 4)."""
        x = np.asarray(x, dtype=float)
        th = x[..., THETA]
        jac = np.zeros(x.shape[:-1] + (ERROR_DIM, STATE_DIM))
        jac[..., E_P, P] = 1.0
        jac[..., E_PDOT, PDOT] = 1.0
        jac[..., E_COS, THETA] = -np.sin(th)
        jac[..., E_SIN, THETA] = np.cos(th)
        jac[..., E_THETADOT, THETADOT] = 1.0
        return jac

    def _beyond_track(self, x: np.ndarray) -> np.ndarray:
        """max(0, |p| - p_lim) for states (..., 4); zeros without a track."""
        p = np.asarray(x, dtype=float)[..., P]
        if self.track_weight == 0.0:
            return np.zeros_like(p)
        return np.maximum(0.0, np.abs(p) - self.track_limit)

    # -- values ---------------------------------------------------------------------------
    def running(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """c(x_t, u_t) for x (..., 4), u (..., 1) -> (...)."""
        e = self.error(x)
        u = np.asarray(u, dtype=float)
        return (0.5 * np.sum(self.q * e * e, axis=-1) + 0.5 * self.r * np.sum(u * u, axis=-1)
                + 0.5 * self.track_weight * self._beyond_track(x) ** 2)

    def final(self, x: np.ndarray) -> np.ndarray:
        """c_f(x_T) for x (..., 4) -> (...)."""
        e = self.error(x)
        return (0.5 * np.sum(self.q_final * e * e, axis=-1)
                + 0.5 * self.track_weight * self._beyond_track(x) ** 2)

    def total(self, X: np.ndarray, U: np.ndarray) -> float:
        """J(x0, U) = sum_{t<T} c(x_t, u_t) + c_f(x_T) for X (T+1, 4), U (T, 1)."""
        return float(np.sum(self.running(X[:-1], U)) + self.final(X[-1]))

    # -- derivatives ----------------------------------------------------------------------
    def _state_derivatives(self, x: np.ndarray, weights: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Gradient and Hessian of 1/2 e^T W e wrt x, chain rule through E(x)."""
        e = self.error(x)
        jac = self.error_jacobian(x)
        we = weights * e                                   # (..., 5) = W e
        grad = np.einsum("...ij,...i->...j", jac, we)       # E^T W e
        hess = np.einsum("...ij,i,...ik->...jk", jac, weights, jac)  # E^T W E
        if self.hessian == "exact":
            th = np.asarray(x, dtype=float)[..., THETA]
            # d^2(1 + cos)/dtheta^2 = -cos, d^2 sin/dtheta^2 = -sin.
            hess[..., THETA, THETA] += -we[..., E_COS] * np.cos(th) - we[..., E_SIN] * np.sin(th)
        if self.track_weight > 0.0:
            beyond = self._beyond_track(x)
            p = np.asarray(x, dtype=float)[..., P]
            grad[..., P] += self.track_weight * beyond * np.sign(p)
            hess[..., P, P] += self.track_weight * (beyond > 0.0)
        return grad, hess

    def running_derivatives(self, X: np.ndarray, U: np.ndarray) -> RunningDerivatives:
        """l_x, l_u, l_xx, l_uu, l_ux along X (T, 4), U (T, 1)."""
        X = np.asarray(X, dtype=float)
        U = np.asarray(U, dtype=float)
        steps = X.shape[0]
        l_x, l_xx = self._state_derivatives(X, self.q)
        l_u = self.r * U
        l_uu = np.broadcast_to(self.r * np.eye(INPUT_DIM), (steps, INPUT_DIM, INPUT_DIM)).copy()
        l_ux = np.zeros((steps, INPUT_DIM, STATE_DIM))  # the cost separates x and u
        return RunningDerivatives(l_x=l_x, l_u=l_u, l_xx=l_xx, l_uu=l_uu, l_ux=l_ux)

    def final_derivatives(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(l_x (4,), l_xx (4, 4)) of the terminal cost at x_T."""
        return self._state_derivatives(np.asarray(x, dtype=float), self.q_final)
