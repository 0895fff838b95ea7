"""Swing-up costs: the saturating cost MC-PILCO optimises, on particles (torch) or trials (numpy).

    c(x) = 1 - exp( -(|theta| - pi)^2 / l_theta^2 - p^2 / l_p^2 )
theta is the unwrapped angle (0 = down), so |theta| - pi is zero at either upright, and the wide
l_theta = 3 keeps a gradient all the way from hanging down (MC-PILCO's cost shaping).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .cartpole import P, THETA
from .config import CostConfig


def saturating_cost(states: Tensor, config: CostConfig) -> Tensor:
    """c(x) for states (..., 4): (...)."""
    e_theta = (states[..., THETA].abs() - math.pi) / config.length_theta
    e_p = states[..., P] / config.length_p
    return 1.0 - torch.exp(-e_theta * e_theta - e_p * e_p)


def trajectory_cost(states: np.ndarray, config: CostConfig) -> float:
    """Sum of c(x_t) over t = 1..T of one recorded trajectory (T+1, 4)."""
    with torch.no_grad():
        return float(saturating_cost(torch.as_tensor(states[1:]), config).sum())
