"""Particle rollout: the hand-written BPTT gradient equals autograd; float32 stays accurate."""
import numpy as np
import pytest
import torch

from ebmcpilco_ros.core.config import CostConfig, PolicyConfig
from ebmcpilco_ros.core.cost import saturating_cost
from ebmcpilco_ros.core.policy import SquashedRBFPolicy
from ebmcpilco_ros.core.rollout import (ParticleDynamics, RolloutNoise, rollout,
                                        rollout_cost_and_gradient)

from helpers import fitted_model


@pytest.fixture(scope="module")
def model():
    return fitted_model(count=2, seed=0)


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_manual_gradient_equals_autograd(model, dropout):
    dtype = torch.float64
    rng = np.random.default_rng(0)
    dyn = ParticleDynamics.from_model(model, dtype)
    policy = SquashedRBFPolicy(PolicyConfig(num_basis=30, init_lengthscale=1.3), 10.0,
                               generator=torch.Generator().manual_seed(0), dtype=dtype)
    noise = RolloutNoise.draw(20, 64, 30, dropout, rng, dtype)
    x0 = torch.as_tensor(rng.normal(0, 0.3, (64, 4)))
    states, _ = rollout(policy, dyn, x0, noise, 20)
    J = saturating_cost(states[1:], CostConfig()).mean(1).sum()
    J.backward()
    g = rollout_cost_and_gradient(policy, dyn, x0, noise, 20, CostConfig())
    assert g.cost == pytest.approx(float(J.detach()), rel=1e-9)
    for auto, manual in ((policy.weights.grad, g.grad_weights),
                         (policy.centres.grad, g.grad_centres),
                         (policy.log_lengthscales.grad, g.grad_log_lengthscales)):
        assert float(auto.abs().max()) > 1e-6
        torch.testing.assert_close(manual, auto, rtol=1e-6, atol=1e-9)


def test_float32_rollout_tracks_float64(model):
    rng = np.random.default_rng(1)
    out = {}
    policy64 = SquashedRBFPolicy(PolicyConfig(), 10.0, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float64, torch.float32):
        rng = np.random.default_rng(1)
        policy = SquashedRBFPolicy(PolicyConfig(), 10.0, dtype=dtype)
        policy.load_snapshot(policy64.parameters_snapshot())
        noise = RolloutNoise.draw(60, 400, 200, 0.25, rng, dtype)
        x0 = torch.as_tensor(rng.normal(0, 0.01, (400, 4)), dtype=dtype)
        out[dtype] = rollout_cost_and_gradient(policy, ParticleDynamics.from_model(model, dtype),
                                               x0, noise, 60, CostConfig())
    a, b = out[torch.float64], out[torch.float32]
    assert abs(a.cost - b.cost) < 1e-3 * abs(a.cost)
    cos = torch.nn.functional.cosine_similarity(a.grad_weights, b.grad_weights.double(), dim=0)
    assert cos > 0.999


def test_dropout_masks_have_the_requested_rate():
    noise = RolloutNoise.draw(10, 100, 200, 0.25, np.random.default_rng(0), torch.float32)
    assert abs(1 - float(noise.keep.mean()) - 0.25) < 0.01
    assert noise.keep_scale == pytest.approx(1 / 0.75)
    assert RolloutNoise.draw(10, 100, 200, 0.0, np.random.default_rng(0), torch.float32).keep is None
