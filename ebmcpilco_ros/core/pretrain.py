"""Policy pretraining on an iLQR plan: EB-MC-PILCO's warm start of the squashed RBF policy.

Training pairs come from the plan's feedback law around its nominal:
    x = X_t + d,  d ~ N(0, diag(perturbation^2))   (d = 0 for the nominal itself)
    u = clip(U_t + K_t d, +-u_max)
so the policy learns the funnel of the feedback plan, not just one trajectory.

Two fits (`pretrain.method`):
  mse    Adam on mean (pi(x) - u)^2 over weights, centres and lengthscales, centres started on
         the data, with MC-PILCO's dropout on the activations.
  bayes  Bayesian linear regression of z = u_max atanh(u / u_max) on the RBF features with a
         Gaussian prior on the weights; centres, widths and the prior/noise scales maximise the
         marginal likelihood, the weights are the posterior mean (see pretrain_bayes).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .cancel import StopCheck, check
from .cartpole import STATE_DIM
from .config import PolicyConfig, PretrainConfig
from .gp import JITTER
from .ilqr import ILQRPlan
from .policy import SquashedRBFPolicy, state_features

_MIN_SPREAD = 1e-2  # floor on initial lengthscales [feature units]


@dataclass
class PretrainResult:
    method: str
    rms_error: float      # RMS of pi(x) - u on the training pairs [N]
    nominal_error: float  # RMS on the plan's nominal states [N]
    samples: int
    wall_s: float


def plan_training_pairs(plan: ILQRPlan, config: PretrainConfig,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """States (S, 4) and targets (S,): the nominal pairs first, then perturbed ones."""
    X, U, K = plan.X[:-1], plan.U[:, 0], plan.K[:, 0, :]
    T = len(U)
    n = config.samples_per_step
    d = rng.normal(size=(T, n, STATE_DIM)) * np.asarray(config.perturbation)
    xs = np.concatenate([X, (X[:, None, :] + d).reshape(-1, STATE_DIM)])
    us = np.concatenate([U, (U[:, None] + np.einsum("tk,tnk->tn", K, d)).reshape(-1)])
    return xs, np.clip(us, -plan.u_max, plan.u_max)


def _features(states: np.ndarray) -> np.ndarray:
    return state_features(torch.as_tensor(states, dtype=torch.float64)).numpy()


def _init_on_data(policy: SquashedRBFPolicy, feats: torch.Tensor,
                  rng: np.random.Generator) -> None:
    """Centres on a random subset of the data, lengthscales at the data's spread."""
    with torch.no_grad():
        idx = rng.choice(len(feats), size=min(policy.num_basis, len(feats)), replace=False)
        policy.centres[: len(idx)] = feats[torch.as_tensor(idx)]
        policy.log_lengthscales.copy_(torch.log(feats.std(0).clamp_min(_MIN_SPREAD)))
        policy.weights.zero_()


def pretrain_bayes(policy: SquashedRBFPolicy, states: np.ndarray, targets: np.ndarray,
                   config: PretrainConfig, rng: np.random.Generator,
                   dropout: float = 0.0, should_stop: StopCheck = None) -> None:
    """Bayesian RBF regression of z = u_max atanh(u / u_max) on the features Phi:
        z = Phi w + N(0, sigma^2),   w ~ N(0, Sigma_w),
        Sigma_w^-1 = I / s^2 + (p / (1 - p)) diag(Phi^T Phi) / sigma^2.
    The second prior term is what MC-PILCO's dropout p on the activations costs in expected
    squared error (dropout acts as an adaptive ridge penalty), so the posterior-mean weights are
    the ones that still work once dropout is switched on. Centres, lengthscales, s and sigma
    maximise the marginal likelihood (Woodbury form, B x B); w is the posterior mean.
    """
    dtype = torch.float64
    u_max = policy.u_max
    feats = torch.as_tensor(_features(states), dtype=dtype)
    z = torch.as_tensor(u_max * np.arctanh(np.clip(targets / u_max, -config.squash_clip,
                                                   config.squash_clip)), dtype=dtype)
    work = SquashedRBFPolicy(_policy_config(policy), u_max, dtype=dtype)
    _init_on_data(work, feats, rng)
    log_s = torch.tensor(math.log(float(z.std()) + 1e-3), dtype=dtype, requires_grad=True)
    log_sigma = torch.tensor(math.log(0.1 * float(z.std()) + 1e-3), dtype=dtype,
                             requires_grad=True)
    S = len(z)
    drop_ratio = dropout / (1.0 - dropout)

    def posterior(phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cholesky of the posterior precision (times sigma^2), the mean, the prior precision."""
        sigma2 = torch.exp(2 * log_sigma)
        gram = phi.T @ phi
        prior_prec = torch.exp(-2 * log_s) + drop_ratio * torch.diagonal(gram) / sigma2  # (B,)
        L = torch.linalg.cholesky(gram + torch.diag(sigma2 * prior_prec + JITTER))
        return L, torch.cholesky_solve((phi.T @ z).unsqueeze(1), L).squeeze(1), prior_prec

    def nlml() -> torch.Tensor:
        phi = work.activations(feats)
        L, w, prior_prec = posterior(phi)
        sigma2 = torch.exp(2 * log_sigma)
        quad = (z @ z - z @ (phi @ w)) / sigma2
        # log|Phi Sigma_w Phi^T + sigma^2 I| = log|A| - log|Sigma_w^-1| + S log sigma^2,
        # A = Phi^T Phi / sigma^2 + Sigma_w^-1 = (L L^T) / sigma^2
        logdet = (2 * torch.log(torch.diagonal(L)).sum() - L.shape[0] * 2 * log_sigma
                  - torch.log(prior_prec).sum() + S * 2 * log_sigma)
        return 0.5 * (quad + logdet) / S

    params = [work.centres, work.log_lengthscales, log_s, log_sigma]
    opt = torch.optim.Adam(params, lr=config.lr)
    for step in range(config.steps):
        check(should_stop, f"at pretraining step {step}")
        opt.zero_grad()
        loss = nlml()
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, w, _ = posterior(work.activations(feats))
        work.weights.copy_(w)
    policy.load_snapshot(work.parameters_snapshot())


def pretrain_mse(policy: SquashedRBFPolicy, states: np.ndarray, targets: np.ndarray,
                 config: PretrainConfig, rng: np.random.Generator,
                 dropout: float = 0.0, should_stop: StopCheck = None) -> None:
    """Adam on the squared control error over all policy parameters, with the same dropout on
    the activations that MC-PILCO will apply (so the fit does not rely on cancellations)."""
    dtype = policy.weights.dtype
    feats = torch.as_tensor(_features(states), dtype=dtype)
    u = torch.as_tensor(targets, dtype=dtype)
    _init_on_data(policy, feats, rng)
    opt = torch.optim.Adam(policy.parameters(), lr=config.lr)
    scale = 1.0 / (1.0 - dropout) if dropout > 0 else 1.0
    for step in range(config.steps):
        check(should_stop, f"at pretraining step {step}")
        opt.zero_grad()
        keep = (torch.rand(len(feats), policy.num_basis, dtype=dtype) >= dropout).to(dtype) \
            if dropout > 0 else None
        loss = torch.mean((policy.from_features(feats, keep, scale) - u) ** 2)
        loss.backward()
        opt.step()


def _policy_config(policy: SquashedRBFPolicy) -> PolicyConfig:
    return PolicyConfig(num_basis=policy.num_basis)


def pretrain_policy(policy: SquashedRBFPolicy, plan: ILQRPlan, config: PretrainConfig,
                    rng: np.random.Generator, dropout: float = 0.0,
                    should_stop: StopCheck = None) -> PretrainResult:
    """Fit `policy` in place to the plan's feedback law; reports the fit error.
    `should_stop` is asked at every step; True raises core.cancel.Cancelled (a node shutting
    down), leaving `policy` part-fitted."""
    started = time.perf_counter()
    states, targets = plan_training_pairs(plan, config, rng)
    if config.method == "bayes":
        pretrain_bayes(policy, states, targets, config, rng, dropout, should_stop)
    elif config.method == "mse":
        pretrain_mse(policy, states, targets, config, rng, dropout, should_stop)
    elif config.method != "none":
        raise ValueError(f"pretrain.method = {config.method!r}: must be none, mse or bayes")
    snapshot = policy.parameters_snapshot()
    pred = np.array([snapshot(x) for x in states])
    T = plan.horizon
    return PretrainResult(method=config.method,
                          rms_error=float(np.sqrt(np.mean((pred - targets) ** 2))),
                          nominal_error=float(np.sqrt(np.mean((pred[:T] - targets[:T]) ** 2))),
                          samples=len(targets), wall_s=time.perf_counter() - started)
