"""Particle rollout: the hand-written BPTT gradient equals autograd; float32 stays accurate."""
import numpy as np
import pytest
import torch

from ebmcpilco_ros.core.config import CostConfig, PolicyConfig
from ebmcpilco_ros.core.cost import saturating_cost
from ebmcpilco_ros.core.policy import SquashedRBFPolicy, state_features
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


def _cost_and_grad(model, policy64, dtype, seed, rank_tol=0.0):
    rng = np.random.default_rng(seed)
    policy = SquashedRBFPolicy(PolicyConfig(), 10.0, dtype=dtype)
    policy.load_snapshot(policy64.parameters_snapshot())
    noise = RolloutNoise.draw(60, 400, 200, 0.25, rng, dtype)
    x0 = torch.as_tensor(rng.normal(0, 0.01, (400, 4)), dtype=dtype)
    dyn = ParticleDynamics.from_model(model, dtype, rank_tol=rank_tol)
    return rollout_cost_and_gradient(policy, dyn, x0, noise, 60, CostConfig())


def test_float32_and_rank_truncation_errors_are_far_below_monte_carlo_noise(model):
    """The approximations of the fast path change J by much less than the Monte Carlo error of
    J itself, and leave the gradient direction unchanged."""
    policy64 = SquashedRBFPolicy(PolicyConfig(), 10.0,
                                 generator=torch.Generator().manual_seed(1))
    exact = [_cost_and_grad(model, policy64, torch.float64, seed) for seed in range(4)]
    mc_std = np.std([g.cost for g in exact])
    assert mc_std > 0
    for seed, ref in enumerate(exact):
        fast = _cost_and_grad(model, policy64, torch.float32, seed, rank_tol=1e-3)
        assert abs(fast.cost - ref.cost) < 0.5 * mc_std
        cos = torch.nn.functional.cosine_similarity(fast.grad_weights.double(),
                                                    ref.grad_weights, dim=0)
        assert cos > 0.9999


def test_variance_factor_is_exact_at_zero_tolerance_and_conservative_when_truncated(model):
    gp = model.gps[1]
    x = np.random.default_rng(0).normal(0, [0.3, 1, 3, 0.7, 0.7, 5], size=(300, 6))
    k = gp.kernel_vector(x)
    K = gp.kernel(gp.support, gp.support) + (gp.likelihood.variance + 1e-9) * np.eye(gp.size)
    exact = np.einsum("mn,nk,mk->m", k, np.linalg.inv(K), k)   # k^T K^-1 k, explicitly
    V0 = gp.variance_factor(0.0)
    np.testing.assert_allclose(((k @ V0.T) ** 2).sum(1), exact, rtol=1e-6, atol=1e-10)
    tol = 1e-3
    Vt = gp.variance_factor(tol)
    assert len(Vt) < len(V0)
    dropped = exact - ((k @ Vt.T) ** 2).sum(1)   # variance over-estimate of the truncation
    assert np.all(dropped >= -1e-9)
    assert np.all(dropped <= tol * gp.kernel.variance * (1 + 1e-6))


def test_dropout_masks_have_the_requested_rate():
    noise = RolloutNoise.draw(10, 100, 200, 0.25, np.random.default_rng(0), torch.float32)
    assert noise.keep.dtype == torch.uint8 and set(noise.keep.unique().tolist()) == {0, 1}
    assert abs(1 - float(noise.keep.float().mean()) - 0.25) < 0.01
    assert noise.keep_scale == pytest.approx(1 / 0.75)
    no_dropout = RolloutNoise.draw(10, 100, 200, 0.0, np.random.default_rng(0), torch.float32)
    assert no_dropout.keep is None


def test_exploration_noise_and_the_particle_rollout_see_the_same_variance(model):
    """Both read the posterior's one cached variance factor: the float64 particle prediction
    (exact rank) and the model's predictive variance along a plan agree to rounding."""
    rng = np.random.default_rng(3)
    X = rng.normal(0.0, [0.3, 1.0, 2.0, 3.0], size=(50, 4))
    U = rng.uniform(-10.0, 10.0, size=50)
    dyn = ParticleDynamics.from_model(model, torch.float64, rank_tol=0.0)
    features = state_features(torch.as_tensor(X))
    _, particle_var = dyn.predict(torch.cat([features, torch.as_tensor(U)[:, None]], dim=1))
    np.testing.assert_allclose(particle_var.numpy(), model.predictive_variance(X, U),
                               rtol=1e-8, atol=1e-12)
