"""GP regression: fits a known function and its hyperparameters; analytic mean Jacobian; SoD."""
import numpy as np
import pytest
import torch

from ebmcpilco_ros.core.config import ModelConfig
from ebmcpilco_ros.core.gp import (GPPosterior, SEHyperparameters, fit_gp, fit_hyperparameters,
                                   negative_log_marginal_likelihood, select_subset)


def _data(n=150, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, size=(n, 2))
    f = np.sin(X[:, 0])           # depends on x0 only: x1 is irrelevant
    return X, f + noise * rng.normal(size=n), f


def test_gp_fits_known_function_and_recovers_hyperparameters():
    X, y, _ = _data()
    hyp = fit_hyperparameters(X, y, ModelConfig())
    assert 0.03 < hyp.noise_std < 0.08                   # true noise 0.05
    assert hyp.lengthscales[1] > 5 * hyp.lengthscales[0]  # irrelevant input switched off
    gp = GPPosterior.build(X, y, hyp)
    Xt = np.random.default_rng(5).uniform(-2.5, 2.5, size=(200, 2))
    mean, var = gp.mean_and_variance(Xt)
    assert np.sqrt(np.mean((mean - np.sin(Xt[:, 0])) ** 2)) < 0.03
    assert np.all(var >= 0) and np.all(var < hyp.signal_std**2)
    # far from data the variance returns to the prior
    _, far = gp.mean_and_variance(np.array([[30.0, 0.0]]))
    assert far[0] == pytest.approx(hyp.signal_std**2, rel=1e-6)


def test_fit_lowers_the_negative_log_marginal_likelihood():
    X, y, _ = _data()
    cfg = ModelConfig()
    hyp = fit_hyperparameters(X, y, cfg)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)

    def nlml(ls, sf, sn):
        return float(negative_log_marginal_likelihood(
            Xt, yt, torch.log(torch.as_tensor(ls)), torch.log(torch.tensor(sf)),
            torch.log(torch.tensor(sn))))
    start = nlml(X.std(0) * cfg.init_lengthscale, y.std() * cfg.init_signal_std,
                 y.std() * cfg.init_noise_std)
    assert nlml(hyp.lengthscales, hyp.signal_std, hyp.noise_std) < start - 0.1


def test_mean_jacobian_matches_autograd_and_finite_differences():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 6))
    gp = GPPosterior.build(X, rng.normal(size=40),
                           SEHyperparameters(rng.uniform(0.5, 2, 6), 0.8, 0.1))
    x = rng.normal(size=(7, 6))
    analytic = gp.mean_gradient(x)
    xt = torch.tensor(x, requires_grad=True)
    S = torch.as_tensor(gp.support)
    d = (xt[:, None, :] - S[None]) / torch.as_tensor(gp.hyp.lengthscales)
    k = gp.hyp.signal_std**2 * torch.exp(-0.5 * (d * d).sum(-1))
    (k @ torch.as_tensor(gp.alpha)).sum().backward()
    np.testing.assert_allclose(analytic, xt.grad.numpy(), atol=1e-8, rtol=0)
    h = 1e-6
    fd = np.stack([(gp.mean(x + h * e) - gp.mean(x - h * e)) / (2 * h) for e in np.eye(6)], 1)
    np.testing.assert_allclose(analytic, fd, atol=1e-6)


def test_sod_subset_shrinks_as_threshold_grows_and_keeps_accuracy():
    X, y, f = _data(n=300, noise=0.05)
    hyp = fit_hyperparameters(X, y, ModelConfig())
    sizes = [len(select_subset(X, hyp, thr, 10_000)) for thr in (0.1, 0.5, 1.0, 2.0)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert len(select_subset(X, hyp, 0.5, 25)) == 25
    gp = fit_gp(X, y, ModelConfig(sod_threshold=0.5))
    assert gp.size < 300
    assert np.sqrt(np.mean((gp.mean(X) - f) ** 2)) < 0.05


def test_fit_rejects_too_little_data():
    with pytest.raises(ValueError, match="at least 2 samples"):
        fit_gp(np.zeros((1, 6)), np.zeros(1), ModelConfig())
