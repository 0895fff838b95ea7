"""Squashed RBF policy (MC-PILCO): pi(x) = u_max tanh( sum_i w_i phi_i(x^) / u_max ).

    x^      = [p, pdot, thetadot, sin theta, cos theta]   (the GP input without u)
    phi_i   = exp( -sum_d (x^_d - a_i,d)^2 / l_d^2 )      centres a_i, lengthscales l shared
Trainable: weights w (B,), centres A (B, 5), log-lengthscales (5,). Dropout acts on the basis
activations phi during optimisation only. `PolicyParameters` (core/policy_numpy.py, numpy alone,
re-exported here) is the plain-numpy form that the real-time controller evaluates and that
travels over ROS.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .cartpole import P, PDOT, THETA, THETADOT
from .config import PolicyConfig
from .policy_numpy import POLICY_FORMAT, POLICY_INPUTS, PolicyParameters

__all__ = ["MAX_EXPONENT", "QUARTER_TURN", "POLICY_FORMAT", "POLICY_INPUTS", "PolicyParameters",
           "SquashedRBFPolicy", "rbf_activations", "state_features"]
MAX_EXPONENT = 78.0  # exp(-78) ~ 1e-34: beyond it float32 exp enters the (slow) denormal range
QUARTER_TURN = (0.0, math.pi / 2)  # sin(theta + pi/2) = cos(theta): one sin call for both


def state_features(states: Tensor) -> Tensor:
    """x^ = [p, pdot, thetadot, sin theta, cos theta] from states (..., 4)."""
    offsets = states.new_tensor(QUARTER_TURN)
    sincos = torch.sin(states[..., THETA:THETA + 1] + offsets)
    return torch.cat([states[..., P:PDOT + 1], states[..., THETADOT:THETADOT + 1], sincos],
                     dim=-1)


def rbf_activations(features: Tensor, centres: Tensor, inv_ls: Tensor) -> Tensor:
    """phi (M, B) = exp(-|(x^ - a_b) / l|^2) for features (M, 5), centres (B, 5)."""
    x = features * inv_ls
    a = centres * inv_ls
    d2 = (a * a).sum(-1) + (x * x).sum(-1, keepdim=True) - 2.0 * x @ a.T
    # Clamped: far-away centres would otherwise push float32 exp into slow denormals.
    return torch.exp(-d2.clamp(0.0, MAX_EXPONENT))


class SquashedRBFPolicy(nn.Module):
    """The differentiable policy used inside particle rollouts."""

    def __init__(self, config: PolicyConfig, u_max: float,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.u_max = u_max
        B = config.num_basis
        r = config.centre_range

        def uniform(*shape: int, lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * torch.rand(*shape, generator=generator, dtype=dtype)

        angle = uniform(B, lo=-math.pi, hi=math.pi)
        centres = torch.cat([uniform(B, 3, lo=-r, hi=r), torch.sin(angle)[:, None],
                             torch.cos(angle)[:, None]], dim=1)
        self.centres = nn.Parameter(centres)
        self.log_lengthscales = nn.Parameter(
            torch.full((5,), math.log(config.init_lengthscale), dtype=dtype))
        self.weights = nn.Parameter(uniform(B, lo=-u_max / 2, hi=u_max / 2))

    @property
    def num_basis(self) -> int:
        return self.weights.shape[0]

    def activations(self, features: Tensor) -> Tensor:
        """phi (M, B) for state features x^ (M, 5)."""
        return rbf_activations(features, self.centres, torch.exp(-self.log_lengthscales))

    def forward(self, states: Tensor) -> Tensor:
        """u (M,) for states (M, 4), no dropout."""
        return self.from_features(state_features(states))

    def from_features(self, features: Tensor, keep: Tensor | None = None,
                      keep_scale: float = 1.0) -> Tensor:
        """u (M,) from x^ (M, 5); `keep` (M, B) 0/1 is the dropout mask, survivors scaled.

        Plain autograd: the reference the hand-written rollout gradient is tested against, and
        what pretraining differentiates.
        """
        phi = self.activations(features)
        if keep is not None:
            phi = phi * keep * keep_scale
        return self.u_max * torch.tanh((phi @ self.weights) / self.u_max)

    def parameters_snapshot(self, version: int = 0) -> PolicyParameters:
        with torch.no_grad():
            return PolicyParameters(
                weights=self.weights.detach().double().cpu().numpy().copy(),
                centres=self.centres.detach().double().cpu().numpy().copy(),
                lengthscales=self.log_lengthscales.detach().double().exp().cpu().numpy().copy(),
                u_max=self.u_max, version=version)

    def load_snapshot(self, params: PolicyParameters) -> None:
        with torch.no_grad():
            dev, dt = self.weights.device, self.weights.dtype
            self.weights.data = torch.as_tensor(params.weights, dtype=dt, device=dev).clone()
            self.centres.data = torch.as_tensor(params.centres, dtype=dt, device=dev).clone()
            self.log_lengthscales.data = torch.log(
                torch.as_tensor(params.lengthscales, dtype=dt, device=dev))
