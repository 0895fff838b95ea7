"""Gaussian-process regression with a squared-exponential ARD kernel, in GPyTorch's vocabulary.

    SEKernel            the kernel and its hyperparameters: lengthscales l, signal std sigma_f
                        (GPyTorch: ScaleKernel(RBFKernel(ard_num_dims=D)), outputscale sigma_f^2)
    GaussianLikelihood  the observation noise sigma_n, apart from the kernel
    GPPosterior         the prediction strategy: alpha and one cached factor of the variance

Notation (Rasmussen & Williams; MC-PILCO eq. 14):
    k(a, b)   = sigma_f^2 exp(-1/2 sum_d (a_d - b_d)^2 / l_d^2)        (se_kernel, written once)
    K         = k(X_S, X_S) + sigma_n^2 I        over the support set S (subset of data)
    alpha     = K^-1 y_S
    mu(x*)    = k_*^T alpha                      posterior mean
    var(x*)   = sigma_f^2 - k_*^T K^-1 k_*       latent posterior variance (no sigma_n^2)
              = sigma_f^2 - |V k_*|^2            V from K's eigendecomposition (variance_factor)
    d mu/dx*  = -Lambda^-1 sum_j alpha_j k(x*, x_j) (x* - x_j),  Lambda = diag(l^2)

Hyperparameters maximise the log marginal likelihood on all data; the posterior is then built on
a greedy subset of data (SoD) so that prediction costs O(|S|) per mean and O(|S|^2) per variance.
Every variance (the exploration noise along a plan, the particle rollout) comes from the one
cached factor V, so they agree.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from .cancel import StopCheck, check
from .config import ModelConfig

# Added to a kernel matrix's diagonal before it is factorised (pretraining's fit uses it too).
JITTER = 1e-9
# A kernel matrix whose Cholesky factorisation fails (duplicated or quantised inputs with noise
# near its floor: K is singular to rounding) is retried with these jitters, relative to its mean
# diagonal: the size of float64 rounding in K, far below any noise the fit could learn.
_JITTER_LADDER = (1e-12, 1e-11, 1e-10, 1e-9)
# The loss of a line-search step whose kernel matrix stays indefinite: far above any marginal
# likelihood (per point) the fit sees, finite so that the line search's cubic interpolation
# stays finite, with zero gradient: the search backs off to a shorter step.
_REJECTED_LOSS = 1e10
# Lengthscales are capped at this multiple of their input's spread: past it the input changes the
# kernel by less than 1e-8, and the marginal likelihood of an input the outputs do not depend on
# keeps improving as its lengthscale grows, up to overflow (seen once in a graph test: inf).
MAX_LENGTHSCALE_RATIO = 1e4


class GPFitError(RuntimeError):
    """The GP could not be fitted or built; the message says why."""


class NotPositiveDefinite(GPFitError):
    """A kernel matrix stayed indefinite (or non-finite) even with the largest jitter."""


def robust_cholesky(K: Tensor) -> Tensor:
    """The lower Cholesky factor of K; where the factorisation fails, of K + jitter I with the
    smallest jitter of _JITTER_LADDER (relative to K's mean diagonal) that succeeds.

    Identical to torch.linalg.cholesky where that succeeds. NotPositiveDefinite, saying why,
    where K is not finite or no jitter helps.
    """
    if not bool(torch.isfinite(K).all()):
        raise NotPositiveDefinite(f"the {K.shape[-1]}x{K.shape[-1]} kernel matrix is not "
                                  f"finite (hyperparameters overflowed)")
    L, info = torch.linalg.cholesky_ex(K)
    if int(info) == 0:
        return L
    scale = float(torch.diagonal(K).mean().detach())
    eye = torch.eye(K.shape[-1], dtype=K.dtype)
    for relative in _JITTER_LADDER:
        L, info = torch.linalg.cholesky_ex(K + (relative * scale) * eye)
        if int(info) == 0:
            return L
    largest = _JITTER_LADDER[-1] if _JITTER_LADDER else 0.0
    raise NotPositiveDefinite(
        f"the {K.shape[-1]}x{K.shape[-1]} kernel matrix is not positive definite, even with a "
        f"jitter of {largest:g} times its mean diagonal {scale:.3g} (leading minor "
        f"{int(info)} fails)")


Array = TypeVar("Array", np.ndarray, Tensor)


def se_kernel(a: Array, b: Array, lengthscales: Any, variance: Any) -> Array:
    """k(a, b) = variance exp(-|a/l - b/l|^2 / 2) for a (..., N, D), b (..., M, D): (..., N, M),
    in numpy or in torch (the arrays' own, autograd included). The squared distance is expanded,
    |a/l|^2 + |b/l|^2 - 2 (a/l).(b/l), one matrix product, and clamped at 0 against rounding."""
    sb = b / lengthscales
    return scaled_se_kernel(a / lengthscales, sb, (sb * sb).sum(-1), variance)


def scaled_se_kernel(sa: Array, sb: Array, sb_norms: Array, variance: Any) -> Array:
    """se_kernel on inputs already divided by l, with |b/l|^2 given: a GP posterior scales its
    support once and evaluates this at every prediction."""
    d2 = ((sa * sa).sum(-1)[..., :, None] + sb_norms[..., None, :]
          - 2.0 * sa @ sb.swapaxes(-1, -2))
    if isinstance(d2, Tensor):
        return variance * torch.exp(-0.5 * d2.clamp_min(0.0))
    return variance * np.exp(-0.5 * np.maximum(d2, 0.0))  # np.clip costs more than the rest


@dataclass(frozen=True)
class SEKernel:
    """The squared-exponential ARD kernel k(a, b) = sigma_f^2 exp(-|(a - b) / l|^2 / 2)."""

    lengthscales: np.ndarray  # l (D,)
    signal_std: float         # sigma_f

    @property
    def variance(self) -> float:
        """sigma_f^2: the prior variance k(x, x) (GPyTorch's outputscale)."""
        return self.signal_std**2

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return se_kernel(a, b, self.lengthscales, self.variance)


@dataclass(frozen=True)
class GaussianLikelihood:
    """y = f(x) + eps, eps ~ N(0, sigma_n^2): the observation noise, apart from the kernel."""

    noise_std: float          # sigma_n

    @property
    def variance(self) -> float:
        return self.noise_std**2


def hyperparameters_to_dict(kernel: SEKernel, likelihood: GaussianLikelihood) -> dict:
    """The `hyperparameters` object of a model payload (docs/NODES.md)."""
    return {"lengthscales": kernel.lengthscales.tolist(), "signal_std": kernel.signal_std,
            "noise_std": likelihood.noise_std}


def hyperparameters_from_dict(data: dict) -> tuple[SEKernel, GaussianLikelihood]:
    return (SEKernel(np.asarray(data["lengthscales"], dtype=float), float(data["signal_std"])),
            GaussianLikelihood(float(data["noise_std"])))


def negative_log_marginal_likelihood(X: Tensor, y: Tensor, log_ls: Tensor, log_sf: Tensor,
                                     log_sn: Tensor) -> Tensor:
    """-log p(y | X) / N, via a Cholesky factor (constant dropped); NotPositiveDefinite where
    K stays indefinite with jitter (robust_cholesky)."""
    n = X.shape[0]
    K = se_kernel(X, X, log_ls.exp(), (2 * log_sf).exp())
    K = K + ((2 * log_sn).exp() + JITTER) * torch.eye(n, dtype=X.dtype)
    L = robust_cholesky(K)
    a = torch.cholesky_solve(y.unsqueeze(-1), L).squeeze(-1)
    return (0.5 * (y @ a) + torch.log(torch.diagonal(L)).sum()) / n


def fit_hyperparameters(X: np.ndarray, y: np.ndarray, config: ModelConfig,
                        should_stop: StopCheck = None
                        ) -> tuple[SEKernel, GaussianLikelihood]:
    """Maximise the marginal likelihood with L-BFGS from a data-scaled starting point;
    `should_stop` is asked at every evaluation (True raises core.cancel.Cancelled).

    Lengthscales start at init_lengthscale times the std of each input, so inputs in different
    units (m, rad/s, N) start on an equal footing; the paper is silent here.

    A line-search step whose kernel matrix stays indefinite even with jitter (robust_cholesky)
    gets a large loss with zero gradient, so the search backs off to a shorter step instead of
    failing the fit. GPFitError, saying why, where the starting point itself is indefinite or
    the result is not finite.
    """
    _check_finite(X, y)
    Xt = torch.as_tensor(X, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    x_std = np.maximum(X.std(axis=0), 1e-3)
    y_std = max(float(y.std()), 1e-6)
    log_ls = torch.tensor(np.log(config.init_lengthscale * x_std), requires_grad=True)
    log_sf = torch.tensor(math.log(config.init_signal_std * y_std),
                          requires_grad=config.train_signal_std)
    log_sn = torch.tensor(math.log(max(config.init_noise_std * y_std, config.min_noise_std)),
                          requires_grad=True)
    params = [p for p in (log_ls, log_sf, log_sn) if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=config.fit_iterations,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7,
                            tolerance_change=1e-10)
    min_log_sn = math.log(config.min_noise_std)
    max_log_ls = torch.as_tensor(np.log(MAX_LENGTHSCALE_RATIO * x_std), dtype=torch.float64)
    evaluations = [0]

    def closure() -> Tensor:
        check(should_stop, "during the GP hyperparameter fit")
        opt.zero_grad()
        try:
            loss = negative_log_marginal_likelihood(Xt, yt, log_ls.clamp(max=max_log_ls),
                                                    log_sf, log_sn.clamp_min(min_log_sn))
            if not bool(torch.isfinite(loss)):
                raise NotPositiveDefinite(f"the marginal likelihood is not finite ({loss})")
        except NotPositiveDefinite as exc:
            if evaluations[0] == 0:  # no accepted point to back off to
                raise GPFitError(f"{exc} at the starting hyperparameters "
                                 f"({_describe(log_ls, log_sf, log_sn, min_log_sn)}); "
                                 f"{_describe_data(X)}") from exc
            evaluations[0] += 1
            # No backward: the gradients stay None, which L-BFGS reads as zero.
            return torch.tensor(_REJECTED_LOSS, dtype=torch.float64)
        evaluations[0] += 1
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        kernel = SEKernel(lengthscales=log_ls.clamp(max=max_log_ls).exp().numpy().copy(),
                          signal_std=float(log_sf.exp()))
        likelihood = GaussianLikelihood(noise_std=float(log_sn.clamp_min(min_log_sn).exp()))
    if not (np.all(np.isfinite(kernel.lengthscales)) and np.all(kernel.lengthscales > 0)
            and math.isfinite(kernel.signal_std) and kernel.signal_std > 0
            and math.isfinite(likelihood.noise_std) and likelihood.noise_std > 0):
        raise GPFitError(f"the hyperparameter fit ended at unusable values "
                         f"({_describe(log_ls, log_sf, log_sn, min_log_sn)}); {_describe_data(X)}")
    return kernel, likelihood


def _check_finite(X: np.ndarray, y: np.ndarray) -> None:
    """Training data must be finite: ValueError naming the first bad sample."""
    for name, a in (("inputs", X), ("targets", y)):
        bad = np.argwhere(~np.isfinite(np.asarray(a, dtype=float)))
        if len(bad):
            raise ValueError(f"GP training {name} are not finite at sample {int(bad[0][0])}")


def _describe(log_ls: Tensor, log_sf: Tensor, log_sn: Tensor, min_log_sn: float) -> str:
    with torch.no_grad():
        ls = np.array2string(log_ls.exp().numpy(), precision=3)
        return (f"lengthscales {ls}, signal std {float(log_sf.exp()):.3g}, noise std "
                f"{float(log_sn.clamp_min(min_log_sn).exp()):.3g}")


def _describe_data(X: np.ndarray) -> str:
    duplicates = len(X) - len(np.unique(X, axis=0))
    return (f"{len(X)} samples, {duplicates} of them repeating an earlier input"
            f"{' (quantised or duplicated data)' if duplicates else ''}")


def select_subset(X: np.ndarray, kernel: SEKernel, likelihood: GaussianLikelihood,
                  threshold: float, max_points: int) -> np.ndarray:
    """Greedy online SoD: keep x_i if its posterior std given the kept set > threshold * sigma_n.

    Samples are visited in order; the Cholesky factor of the kept set grows one row at a time.
    """
    n = len(X)
    if n == 0:
        return np.zeros(0, dtype=int)
    sf2, sn2 = kernel.variance, likelihood.variance
    limit = (threshold * likelihood.noise_std) ** 2
    keep = [0]
    L = np.array([[math.sqrt(sf2 + sn2)]])
    for i in range(1, n):
        if len(keep) >= max_points:
            break
        k = kernel(X[keep], X[i:i + 1])[:, 0]
        v = _solve_lower(L, k)
        var = sf2 - v @ v
        if var > limit:
            d = math.sqrt(max(sf2 + sn2 - v @ v, JITTER))
            m = len(keep)
            L_new = np.zeros((m + 1, m + 1))
            L_new[:m, :m] = L
            L_new[m, :m] = v
            L_new[m, m] = d
            L = L_new
            keep.append(i)
    return np.asarray(keep, dtype=int)


def _solve_lower(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    return solve_triangular(L, b, lower=True, check_finite=False)


@dataclass(frozen=True)
class GPPosterior:
    """The posterior on the support set: what prediction and Jacobians need (GPyTorch's
    prediction strategy). alpha is computed at build; the variance factor V on first use and
    kept (`variance_factor`)."""

    support: np.ndarray   # X_S (N, D)
    targets: np.ndarray   # y_S (N,)
    kernel: SEKernel
    likelihood: GaussianLikelihood
    alpha: np.ndarray     # (K_SS + sigma_n^2 I)^-1 y_S, (N,)

    @classmethod
    def build(cls, support: np.ndarray, targets: np.ndarray, kernel: SEKernel,
              likelihood: GaussianLikelihood) -> "GPPosterior":
        X = torch.as_tensor(support, dtype=torch.float64)
        K = se_kernel(X, X, torch.as_tensor(kernel.lengthscales), kernel.variance)
        K = K + (likelihood.variance + JITTER) * torch.eye(len(support), dtype=torch.float64)
        try:
            L = robust_cholesky(K)
        except NotPositiveDefinite as exc:
            raise GPFitError(f"cannot build the GP posterior on {len(support)} support points "
                             f"(noise std {likelihood.noise_std:.3g}, signal std "
                             f"{kernel.signal_std:.3g}): {exc}") from exc
        alpha = torch.cholesky_solve(torch.as_tensor(targets).reshape(-1, 1), L).reshape(-1)
        return cls(np.asarray(support, dtype=float), np.asarray(targets, dtype=float), kernel,
                   likelihood, alpha.numpy())

    @property
    def size(self) -> int:
        return len(self.support)

    def kernel_vector(self, x: np.ndarray) -> np.ndarray:
        """k(x, X_S) for x (M, D): (M, N). X_S / l and its norms are computed once per posterior
        (iLQR evaluates the mean one state at a time, thousands of times per plan)."""
        scaled, norms = self._scaled_support
        return scaled_se_kernel(x / self.kernel.lengthscales, scaled, norms,
                                self.kernel.variance)

    @functools.cached_property
    def _scaled_support(self) -> tuple[np.ndarray, np.ndarray]:
        """(X_S / l (N, D), |X_S / l|^2 (N,))."""
        scaled = self.support / self.kernel.lengthscales
        return scaled, (scaled * scaled).sum(-1)

    def mean(self, x: np.ndarray) -> np.ndarray:
        return self.kernel_vector(np.atleast_2d(x)) @ self.alpha

    def mean_at(self, x: np.ndarray) -> float:
        """mu at one input x (D,), as a float (the model's single-state step)."""
        return float(self.kernel_vector(x[None, :])[0] @ self.alpha)

    def mean_and_variance(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """mu and the latent variance sigma_f^2 - |V k|^2 (>= 0) at x (M, D)."""
        k = self.kernel_vector(np.atleast_2d(x))
        v = k @ self._variance_root[0].T
        return k @ self.alpha, np.maximum(self.kernel.variance - (v * v).sum(-1), 0.0)

    @functools.cached_property
    def _variance_root(self) -> tuple[np.ndarray, np.ndarray]:
        """(V, l): V (N, N) = diag(l + sigma_n^2)^-1/2 U^T from K_SS = U diag(l) U^T, rows by
        decreasing eigenvalue l (>= 0), so that k^T (K_SS + sigma_n^2 I)^-1 k = |V k|^2."""
        X = torch.as_tensor(self.support, dtype=torch.float64)
        K = se_kernel(X, X, torch.as_tensor(self.kernel.lengthscales), self.kernel.variance)
        lam, U = torch.linalg.eigh(K)
        lam, U = lam.numpy()[::-1].clip(min=0.0), U.numpy()[:, ::-1]
        return (U / np.sqrt(lam + self.likelihood.variance + JITTER)).T, lam

    def variance_factor(self, rank_tol: float = 0.0) -> np.ndarray:
        """V (r, N) with k^T K^-1 k ~= |V k|^2: the rows of the cached factor whose eigenvalue
        l > rank_tol sigma_n^2 (all at rank_tol 0).

        Why: in float32, sigma_f^2 - k^T K^-1 k cancels catastrophically (K^-1 has entries
        ~ 1/sigma_n^2), while |V k|^2 is a sum of squares over an orthogonal basis and stays
        accurate. Dropping directions with l <= tol sigma_n^2 over-estimates the variance by at
        most sigma_f^2 tol / (1 + tol) (docs/ALGORITHM.md), and makes the rollout cheaper.
        """
        V, lam = self._variance_root
        if rank_tol <= 0:
            return V.copy()
        return V[lam > rank_tol * self.likelihood.variance].copy()

    def mean_gradient(self, x: np.ndarray) -> np.ndarray:
        """d mu / d x* for x (M, D): (M, D), analytic (eq. 21 of the derivation in docs)."""
        x = np.atleast_2d(x)
        w = self.kernel_vector(x) * self.alpha                      # (M, N): alpha_j k_j
        diff_weighted = x * w.sum(1, keepdims=True) - w @ self.support
        return -diff_weighted / self.kernel.lengthscales**2


def fit_gp(X: np.ndarray, y: np.ndarray, config: ModelConfig,
           should_stop: StopCheck = None) -> GPPosterior:
    """Hyperparameters on all data, posterior on the SoD subset (`should_stop`: see
    fit_hyperparameters)."""
    if len(X) < 2:
        raise ValueError(f"a GP needs at least 2 samples, got {len(X)}")
    _check_finite(X, y)
    kernel, likelihood = fit_hyperparameters(X, y, config, should_stop)
    check(should_stop, "before the GP subset selection")
    keep = select_subset(X, kernel, likelihood, config.sod_threshold, config.max_points)
    return GPPosterior.build(X[keep], y[keep], kernel, likelihood)
