"""GP regression: fits a known function and its hyperparameters; analytic mean Jacobian; SoD."""
import numpy as np
import pytest
import torch

from ebmcpilco_ros.core import gp as gp_module
from ebmcpilco_ros.core.config import ModelConfig
from ebmcpilco_ros.core.gp import (GaussianLikelihood, GPFitError, GPPosterior,
                                   NotPositiveDefinite, SEKernel, fit_gp, fit_hyperparameters,
                                   negative_log_marginal_likelihood, robust_cholesky, se_kernel,
                                   select_subset)


def _data(n=150, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, size=(n, 2))
    f = np.sin(X[:, 0])           # depends on x0 only: x1 is irrelevant
    return X, f + noise * rng.normal(size=n), f


def test_gp_fits_known_function_and_recovers_hyperparameters():
    X, y, _ = _data()
    kernel, likelihood = fit_hyperparameters(X, y, ModelConfig())
    assert 0.03 < likelihood.noise_std < 0.08                  # true noise 0.05
    assert kernel.lengthscales[1] > 5 * kernel.lengthscales[0]  # irrelevant input switched off
    gp = GPPosterior.build(X, y, kernel, likelihood)
    Xt = np.random.default_rng(5).uniform(-2.5, 2.5, size=(200, 2))
    mean, var = gp.mean_and_variance(Xt)
    assert np.sqrt(np.mean((mean - np.sin(Xt[:, 0])) ** 2)) < 0.03
    assert np.all(var >= 0) and np.all(var < kernel.variance)
    # far from data the variance returns to the prior
    _, far = gp.mean_and_variance(np.array([[30.0, 0.0]]))
    assert far[0] == pytest.approx(kernel.variance, rel=1e-6)


def test_fit_lowers_the_negative_log_marginal_likelihood():
    X, y, _ = _data()
    cfg = ModelConfig()
    kernel, likelihood = fit_hyperparameters(X, y, cfg)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)

    def nlml(ls, sf, sn):
        return float(negative_log_marginal_likelihood(
            Xt, yt, torch.log(torch.as_tensor(ls)), torch.log(torch.tensor(sf)),
            torch.log(torch.tensor(sn))))
    start = nlml(X.std(0) * cfg.init_lengthscale, y.std() * cfg.init_signal_std,
                 y.std() * cfg.init_noise_std)
    assert nlml(kernel.lengthscales, kernel.signal_std, likelihood.noise_std) < start - 0.1


def test_mean_jacobian_matches_autograd_and_finite_differences():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 6))
    gp = GPPosterior.build(X, rng.normal(size=40),
                           SEKernel(rng.uniform(0.5, 2, 6), 0.8), GaussianLikelihood(0.1))
    x = rng.normal(size=(7, 6))
    analytic = gp.mean_gradient(x)
    xt = torch.tensor(x, requires_grad=True)
    S = torch.as_tensor(gp.support)
    d = (xt[:, None, :] - S[None]) / torch.as_tensor(gp.kernel.lengthscales)
    k = gp.kernel.signal_std**2 * torch.exp(-0.5 * (d * d).sum(-1))
    (k @ torch.as_tensor(gp.alpha)).sum().backward()
    np.testing.assert_allclose(analytic, xt.grad.numpy(), atol=1e-8, rtol=0)
    h = 1e-6
    fd = np.stack([(gp.mean(x + h * e) - gp.mean(x - h * e)) / (2 * h) for e in np.eye(6)], 1)
    np.testing.assert_allclose(analytic, fd, atol=1e-6)


def test_sod_subset_shrinks_as_threshold_grows_and_keeps_accuracy():
    X, y, f = _data(n=300, noise=0.05)
    kernel, likelihood = fit_hyperparameters(X, y, ModelConfig())
    sizes = [len(select_subset(X, kernel, likelihood, thr, 10_000))
             for thr in (0.1, 0.5, 1.0, 2.0)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert len(select_subset(X, kernel, likelihood, 0.5, 25)) == 25
    gp = fit_gp(X, y, ModelConfig(sod_threshold=0.5))
    assert gp.size < 300
    assert np.sqrt(np.mean((gp.mean(X) - f) ** 2)) < 0.05


def test_fit_rejects_too_little_data():
    with pytest.raises(ValueError, match="at least 2 samples"):
        fit_gp(np.zeros((1, 6)), np.zeros(1), ModelConfig())


def _duplicated(seed, repeats, min_noise_std):
    """A noise-free function on points repeated `repeats` times, noise floor `min_noise_std`:
    the fit drives the noise to its floor and the signal up until K is singular to rounding."""
    X = np.repeat(np.random.default_rng(seed).uniform(-2, 2, size=(20, 3)), repeats, axis=0)
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2
    return X, y, ModelConfig(min_noise_std=min_noise_std, init_noise_std=1e-6)


# (seed, repeats, noise floor): data on which the plain Cholesky fails during the fit here.
DUPLICATED = [(s, r, n) for s in range(2) for r, n in ((1, 1e-4), (5, 1e-6), (20, 1e-8))]


def _plain_cholesky_fails(case, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(gp_module, "robust_cholesky", torch.linalg.cholesky)
        try:
            fit_hyperparameters(*_duplicated(*case))
        except torch.linalg.LinAlgError:
            return True
    return False


@pytest.mark.timeout(300)
def test_fit_survives_a_line_search_step_whose_kernel_matrix_is_indefinite(monkeypatch):
    failing = [c for c in DUPLICATED if _plain_cholesky_fails(c, monkeypatch)]
    assert failing, "no data set makes the plain Cholesky fail: the test checks nothing"
    for case in failing:
        X, y, config = _duplicated(*case)
        post = fit_gp(X, y, config)     # jitter where rounding makes K indefinite
        assert np.all(np.isfinite(post.alpha))
        assert post.likelihood.noise_std >= 0.999 * config.min_noise_std
        assert np.max(np.abs(post.mean(X) - y)) < 1e-2, case
        # Without any jitter, a step with an indefinite K gets a large loss and the line search
        # backs off: the fit still ends at usable hyperparameters.
        with monkeypatch.context() as m:
            m.setattr(gp_module, "_JITTER_LADDER", ())
            kernel, likelihood = fit_hyperparameters(X, y, config)
        assert np.all(np.isfinite(kernel.lengthscales)) and np.isfinite(kernel.signal_std)
        assert np.max(np.abs(GPPosterior.build(X, y, kernel, likelihood).mean(X) - y)) < 1e-2, \
            case


def test_robust_cholesky_equals_the_plain_one_where_that_succeeds_and_says_why_otherwise():
    A = torch.as_tensor(np.random.default_rng(0).normal(size=(6, 6)))
    K = A @ A.T + torch.eye(6)
    assert torch.equal(robust_cholesky(K), torch.linalg.cholesky(K))
    ones = torch.ones(5, 5, dtype=torch.float64) - 1e-14 * torch.eye(5, dtype=torch.float64)
    L = robust_cholesky(ones)           # singular to rounding: a jitter of ~1e-12 helps
    assert torch.allclose(L @ L.T, ones, atol=1e-9)
    with pytest.raises(NotPositiveDefinite, match="not positive definite"):
        robust_cholesky(-torch.eye(3, dtype=torch.float64))
    with pytest.raises(NotPositiveDefinite, match="not finite"):
        robust_cholesky(torch.full((3, 3), float("nan"), dtype=torch.float64))


def test_a_fit_that_cannot_start_says_why():
    """Inputs far from the origin relative to their spread: rounding in the squared distances
    makes K indefinite at the starting point itself, where the fit has nothing to back off to."""
    rng = np.random.default_rng(0)
    X = 1e3 + 1e-3 * rng.uniform(size=(40, 2))
    y = np.sin(1e3 * (X[:, 0] - 1e3))
    with pytest.raises(GPFitError, match=r"not positive definite.*starting hyperparameters.*"
                                         r"40 samples"):
        fit_gp(X, y, ModelConfig(init_noise_std=1e-6, min_noise_std=1e-8))


def test_fit_refuses_non_finite_data():
    X, y, _ = _data(n=20)
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="inputs are not finite at sample 3"):
        fit_gp(X, y, ModelConfig())
    X, y, _ = _data(n=20)
    y[7] = np.inf
    with pytest.raises(ValueError, match="targets are not finite at sample 7"):
        fit_hyperparameters(X, y, ModelConfig())


def test_one_kernel_function_for_numpy_and_torch_equals_the_definition():
    """se_kernel is k(a, b) = sf2 exp(-|(a - b) / l|^2 / 2) in both libraries, batched."""
    rng = np.random.default_rng(7)
    a, b, ls = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 4, 3)), rng.uniform(0.5, 2, 3)
    d = (a[:, :, None, :] - b[:, None, :, :]) / ls
    direct = 1.7 * np.exp(-0.5 * (d * d).sum(-1))
    np.testing.assert_allclose(se_kernel(a, b, ls, 1.7), direct, rtol=1e-13)
    got = se_kernel(torch.as_tensor(a), torch.as_tensor(b), torch.as_tensor(ls), 1.7)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), direct, rtol=1e-13)
    np.testing.assert_allclose(SEKernel(ls, 1.7**0.5)(a[0], b[0]), direct[0], rtol=1e-13)


def test_an_input_the_outputs_ignore_gets_a_capped_lengthscale(monkeypatch):
    """Noise-free outputs that ignore an input: the marginal likelihood improves without end as
    that input's lengthscale grows. The fit caps it at MAX_LENGTHSCALE_RATIO times the input's
    spread instead of ending at inf (a graph test's fit once did)."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-3, 3, size=(60, 2))
    y = np.sin(X[:, 0])
    kernel, _ = fit_hyperparameters(X, y, ModelConfig())
    ratio = kernel.lengthscales / X.std(axis=0)
    assert np.all(np.isfinite(kernel.lengthscales)) and ratio[0] < 10
    assert ratio[1] == pytest.approx(gp_module.MAX_LENGTHSCALE_RATIO)
    monkeypatch.setattr(gp_module, "MAX_LENGTHSCALE_RATIO", np.inf)   # without the cap
    try:
        uncapped, _ = fit_hyperparameters(X, y, ModelConfig())
        assert uncapped.lengthscales[1] > 100 * kernel.lengthscales[1]
    except GPFitError as exc:                       # or it ends at unusable values
        assert "unusable" in str(exc)
