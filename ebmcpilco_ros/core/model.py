"""Speed-integration dynamics model (MC-PILCO eq. 16): one GP per velocity, positions integrated.

State x = [p, pdot, theta, thetadot], velocities v = (pdot, thetadot), positions q = (p, theta).
GP input  x~ = [p, pdot, thetadot, sin theta, cos theta, u];
GP i predicts Delta_i = v_{t+1,i} - v_{t,i}.
    v_{t+1} = v_t + Delta_t
    q_{t+1} = q_t + Ts v_t + (Ts / 2) Delta_t
The posterior mean gives deterministic dynamics f(x, u) for iLQR with analytic A = df/dx,
B = df/du (chain rule through the sin/cos input map); the variance drives particle sampling and
exploration noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .cancel import StopCheck
from .cartpole import P, PDOT, POSITIONS, STATE_DIM, THETA, THETADOT, VELOCITIES
from .config import ModelConfig
from .dataset import TrialDataset
from .gp import GPFitError, GPPosterior, fit_gp, hyperparameters_from_dict, hyperparameters_to_dict
from .trial import Trial
from .validate import finite_array, finite_number, is_integer

MODEL_FORMAT = "ebmcpilco.model/1"
INPUT_NAMES = ("p", "pdot", "thetadot", "sin_theta", "cos_theta", "u")
TARGET_NAMES = ("delta_pdot", "delta_thetadot")


def gp_inputs(states: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """x~ = [p, pdot, thetadot, sin theta, cos theta, u] for states (..., 4), inputs (...)."""
    theta = states[..., THETA]
    return np.stack([states[..., P], states[..., PDOT], states[..., THETADOT], np.sin(theta),
                     np.cos(theta), np.asarray(inputs, dtype=float)], axis=-1)


def training_data(data: TrialDataset | Iterable[Trial]) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, 6) and velocity increments (N, 2) from every transition of the dataset's
    usable trials (TrialDataset.usable), in the order they were recorded."""
    dataset = data if isinstance(data, TrialDataset) else TrialDataset(data)
    xs, ys = [], []
    for trial in dataset.usable():
        trial.check_finite()  # non-finite data is never fitted
        s = trial.states
        xs.append(gp_inputs(s[:-1], trial.inputs))
        ys.append(s[1:, VELOCITIES] - s[:-1, VELOCITIES])
    if not xs:
        raise ValueError("no usable trials to fit the model on")
    return np.concatenate(xs), np.concatenate(ys)


@dataclass(frozen=True)
class SpeedIntegrationModel:
    """Two GP posteriors (Delta pdot, Delta thetadot) and the integration step Ts."""

    gps: tuple[GPPosterior, GPPosterior]
    dt: float
    version: int = 0
    num_data: int = 0

    @classmethod
    def fit(cls, data: TrialDataset | Iterable[Trial], dt: float, config: ModelConfig,
            version: int = 0, should_stop: StopCheck = None) -> "SpeedIntegrationModel":
        """Both GPs on the dataset's transitions; `should_stop` is asked at every iteration of
        the hyperparameter fits (True raises core.cancel.Cancelled: a node shutting down)."""
        X, Y = training_data(data)
        gps = []
        for i, name in enumerate(TARGET_NAMES):
            try:
                gps.append(fit_gp(X, Y[:, i], config, should_stop))
            except GPFitError as exc:
                raise GPFitError(f"the GP of {name} on {len(X)} transitions: {exc}") from exc
        gps = tuple(gps)
        return cls(gps=gps, dt=dt, version=version, num_data=len(X))  # type: ignore[arg-type]

    # -- deterministic mean dynamics (iLQR) ------------------------------------------------
    def mean_step(self, x: np.ndarray, u: np.ndarray | float) -> np.ndarray:
        """f(x, u) with Delta = GP mean, for x (4,) or (M, 4)."""
        x = np.asarray(x, dtype=float)
        xb = np.atleast_2d(x)
        ub = np.broadcast_to(np.asarray(u, dtype=float).reshape(-1), (len(xb),))
        xin = gp_inputs(xb, ub)
        delta = np.stack([gp.mean(xin) for gp in self.gps], axis=-1)
        out = self._integrate(xb, delta)
        return out.reshape(x.shape)

    def step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """iLQR dynamics protocol: x (4,), u (1,) -> x_next (4,). mean_step for one state,
        without the batch axis: iLQR calls it sequentially, ~10^4 times per plan, and numpy's
        per-call overhead on 4-vectors was most of mean_step's time there."""
        x = np.asarray(x, dtype=float)
        theta = float(x[THETA])
        xin = np.array([x[P], x[PDOT], x[THETADOT], math.sin(theta), math.cos(theta),
                        float(np.asarray(u).reshape(-1)[0])])
        return self._integrate(x, np.array([gp.mean_at(xin) for gp in self.gps]))

    def step_batch(self, X: np.ndarray, U: np.ndarray) -> np.ndarray:
        """ilqr.BatchDynamics: X (L, 4), U (L, 1) -> (L, 4), mean_step on the batch (the line
        search's step sizes side by side)."""
        return self.mean_step(np.asarray(X, dtype=float), np.asarray(U, dtype=float)[:, 0])

    def _integrate(self, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """x (..., 4) and Delta (..., 2) -> the next state (..., 4)."""
        dt = self.dt
        out = np.empty_like(x)
        for i, (q, v) in enumerate(zip(POSITIONS, VELOCITIES)):  # GP i: the change of v
            out[..., v] = x[..., v] + delta[..., i]
            out[..., q] = x[..., q] + dt * x[..., v] + 0.5 * dt * delta[..., i]
        return out

    def linearize(self, X: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A_t = df/dx (T, 4, 4), B_t = df/du (T, 4, 1) along (X, U), analytic.

        D_i = (d mu_i / d x~) G with G = d x~ / d(x, u) the input map Jacobian (docs eq. 22-23).
        """
        X = np.atleast_2d(np.asarray(X, dtype=float))
        U = np.asarray(U, dtype=float).reshape(len(X))
        xin = gp_inputs(X, U)
        T = len(X)
        theta = X[:, THETA]
        U_COL = STATE_DIM                # the input's column of d/d(x, u)
        G = np.zeros((T, len(INPUT_NAMES), STATE_DIM + 1))
        G[:, 0, P] = 1.0                 # p
        G[:, 1, PDOT] = 1.0              # pdot
        G[:, 2, THETADOT] = 1.0          # thetadot
        G[:, 3, THETA] = np.cos(theta)   # sin theta
        G[:, 4, THETA] = -np.sin(theta)  # cos theta
        G[:, 5, U_COL] = 1.0             # u
        D = [np.einsum("td,tdk->tk", gp.mean_gradient(xin), G) for gp in self.gps]  # (T, 5)
        dt = self.dt
        J = np.zeros((T, STATE_DIM, STATE_DIM + 1))
        for i, (q, v) in enumerate(zip(POSITIONS, VELOCITIES)):
            J[:, q, :] = 0.5 * dt * D[i]     # q' = q + dt v + dt/2 Delta_i
            J[:, v, :] = D[i]                # v' = v + Delta_i
            J[:, q, q] += 1.0
            J[:, q, v] += dt
            J[:, v, v] += 1.0
        return J[:, :, :STATE_DIM], J[:, :, STATE_DIM:]

    def predictive_variance(self, X: np.ndarray, U: np.ndarray) -> np.ndarray:
        """Latent variance of (Delta pdot, Delta thetadot) at (X, U): (T, 2)."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        xin = gp_inputs(X, np.asarray(U, dtype=float).reshape(len(X)))
        return np.stack([gp.mean_and_variance(xin)[1] for gp in self.gps], axis=-1)

    # -- payload -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Support sets, targets and hyperparameters: the receiver rebuilds the posterior."""
        return {"format": MODEL_FORMAT, "version": self.version, "dt": self.dt,
                "num_data": self.num_data, "inputs": list(INPUT_NAMES),
                "gps": [{"name": name, "support": gp.support.tolist(),
                         "targets": gp.targets.tolist(),
                         "hyperparameters": hyperparameters_to_dict(gp.kernel, gp.likelihood)}
                        for name, gp in zip(TARGET_NAMES, self.gps)]}

    @classmethod
    def from_dict(cls, data: dict) -> "SpeedIntegrationModel":
        """The model of a payload; ValueError naming the field where it is malformed or not
        finite (check_model_dict), GPFitError where its kernel matrix is indefinite."""
        check_model_dict(data)
        gps = tuple(GPPosterior.build(np.asarray(g["support"], dtype=float),
                                      np.asarray(g["targets"], dtype=float),
                                      *hyperparameters_from_dict(g["hyperparameters"]))
                    for g in data["gps"])
        return cls(gps=gps, dt=float(data["dt"]), version=int(data["version"]),  # type: ignore
                   num_data=int(data["num_data"]))


def check_model_dict(data: Any) -> None:
    """A model payload's shapes and values, without building it (cheap enough for a
    subscription callback): ValueError naming the field that is missing, of the wrong shape or
    type, or not finite (NaN and inf travel as null in JSON), or a hyperparameter not > 0."""
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not a model of format {MODEL_FORMAT}: {got!r}")
    finite_number(data, "dt", 0.0, low_open=True)
    for name in ("version", "num_data"):
        value = data.get(name)
        if not is_integer(value) or value < 0:
            raise ValueError(f"model field {name!r} must be an integer >= 0, got {value!r}")
    if data.get("inputs") != list(INPUT_NAMES):
        raise ValueError(f"model field 'inputs' must be {list(INPUT_NAMES)}, got "
                         f"{data.get('inputs')!r}")
    gps = data.get("gps")
    if not isinstance(gps, list) or len(gps) != len(TARGET_NAMES):
        raise ValueError(f"model field 'gps' must list {len(TARGET_NAMES)} GPs "
                         f"({', '.join(TARGET_NAMES)})")
    for i, g in enumerate(gps):
        try:
            _check_gp_dict(g)
        except ValueError as exc:
            raise ValueError(f"model field gps[{i}]: {exc}") from None


def _check_gp_dict(g: Any) -> None:
    if not isinstance(g, dict) or not isinstance(g.get("hyperparameters"), dict):
        raise ValueError("must be an object with 'support', 'targets' and 'hyperparameters'")
    support = finite_array(g, "support", ndim=2)
    if support.shape[0] < 1 or support.shape[1] != len(INPUT_NAMES):
        raise ValueError(f"field 'support' must be (N >= 1, {len(INPUT_NAMES)}), got "
                         f"{support.shape}")
    finite_array(g, "targets", shape=(support.shape[0],))
    hyp = g["hyperparameters"]
    ls = finite_array(hyp, "lengthscales", shape=(len(INPUT_NAMES),))
    if np.any(ls <= 0):
        raise ValueError("field 'lengthscales' must be > 0")
    for name in ("signal_std", "noise_std"):
        finite_number(hyp, name, 0.0, low_open=True)
