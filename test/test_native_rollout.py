"""The compiled rollout kernel: same cost and gradient as autograd and the torch path, built
once per source/compiler/CPU, and a clear fallback or error where it cannot be built."""
import ctypes
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from ebmcpilco_ros.core import native_rollout
from ebmcpilco_ros.core.config import CostConfig, OptimizerConfig, PolicyConfig
from ebmcpilco_ros.core.cost import saturating_cost
from ebmcpilco_ros.core.mcpilco import optimize_policy
from ebmcpilco_ros.core.native_rollout import (NativeKernelUnavailable, native_backend,
                                               resolve_backend)
from ebmcpilco_ros.core.policy import SquashedRBFPolicy
from ebmcpilco_ros.core.rollout import (GradientOperands, ParticleDynamics, RolloutNoise,
                                        rollout, rollout_cost_and_gradient)

from helpers import fitted_model


@pytest.fixture(scope="module")
def model():
    return fitted_model(count=2, seed=0)


def _setup(model, dtype, particles, basis, horizon, dropout, seed, rank_tol=0.0, policy_seed=0):
    rng = np.random.default_rng(seed)
    policy = SquashedRBFPolicy(PolicyConfig(num_basis=basis, init_lengthscale=1.3), 10.0,
                               generator=torch.Generator().manual_seed(policy_seed),
                               dtype=torch.float64)
    policy32 = SquashedRBFPolicy(PolicyConfig(num_basis=basis), 10.0, dtype=dtype)
    policy32.load_snapshot(policy.parameters_snapshot())
    noise = RolloutNoise.draw(horizon, particles, basis, dropout, rng, torch.float64)
    x0 = torch.as_tensor(rng.normal(0, 0.3, (particles, 4)))
    dyn = ParticleDynamics.from_model(model, dtype, rank_tol=rank_tol)
    return policy, policy32, noise, x0, dyn


def _cast(noise: RolloutNoise, dtype) -> RolloutNoise:
    return RolloutNoise(noise.eps.to(dtype), noise.keep, noise.keep_scale)


# particle counts off the 16-lane and 32-particle block sizes, basis off the vector width
@pytest.mark.parametrize("particles, basis, dropout", [(64, 30, 0.0), (37, 30, 0.25),
                                                       (20, 7, 0.25)])
def test_native_gradient_matches_float64_autograd(model, particles, basis, dropout):
    """Over a short horizon (before float32 rounding is amplified by the dynamics) the kernel's
    J and dJ/dparameters equal float64 autograd to float32 accuracy (the torch float32 path
    is off by up to 1.1e-4 of the largest gradient entry here, the kernel by up to 2.8e-4)."""
    horizon = 5
    policy, policy32, noise, x0, dyn32 = _setup(model, torch.float32, particles, basis,
                                                horizon, dropout, seed=3)
    states, _ = rollout(policy, ParticleDynamics.from_model(model, torch.float64), x0, noise,
                        horizon)
    J = saturating_cost(states[1:], CostConfig()).mean(1).sum()
    J.backward()
    J = float(J.detach())
    g = rollout_cost_and_gradient(policy32, dyn32, x0.float(), _cast(noise, torch.float32),
                                  horizon, CostConfig(), backend=native_backend())
    assert g.cost == pytest.approx(J, rel=2e-5)
    for auto, native in ((policy.weights.grad, g.grad_weights),
                         (policy.centres.grad, g.grad_centres),
                         (policy.log_lengthscales.grad, g.grad_log_lengthscales)):
        assert float(auto.abs().max()) > 1e-6
        err = float((native.double() - auto).abs().max() / auto.abs().max())
        assert err < 5e-4, err


@pytest.mark.parametrize("particles, dropout", [(64, 0.0), (37, 0.25)])
def test_native_forward_pass_gives_the_reference_trajectories(model, particles, dropout):
    """The kernel's forward pass alone (what the stop on predicted success reads) returns every
    particle's trajectory, x0 first, as the float64 reference rollout has it, to float32
    accuracy over a short horizon; and its final states are the gradient call's."""
    horizon = 8
    policy, policy32, noise, x0, dyn32 = _setup(model, torch.float32, particles, 30, horizon,
                                                dropout, seed=5)
    with torch.no_grad():
        want, _ = rollout(policy, ParticleDynamics.from_model(model, torch.float64), x0, noise,
                          horizon)
        noise32 = _cast(noise, torch.float32)
        ops = GradientOperands.build(policy32, dyn32, noise32.keep_scale)
        kernel = native_rollout.native_kernel()
        got = kernel.states(ops, dyn32, x0.float(), noise32, horizon)
        final = kernel.cost_and_gradient(ops, dyn32, x0.float(), noise32, horizon,
                                         CostConfig())[1]
    assert got.shape == (horizon + 1, particles, 4) and got.dtype == torch.float32
    assert torch.equal(got[0], x0.float())
    assert float((got.double() - want).abs().max()) < 1e-3 * float(want.abs().max())
    assert torch.equal(got[-1], final)


def test_native_and_torch_float32_errors_are_below_monte_carlo_noise(model):
    """400 particles, 60 steps, 200 centres, truncated variance, against the exact float64
    rollout: both float32 implementations' cost errors are well below the Monte Carlo error of
    J (ALGORITHM.md §7: on this model +0.0014 for the kernel and -0.0003 for torch, against a
    Monte Carlo std of 0.005), and their gradients have the exact direction."""
    exact, errors = [], {"torch": [], "native": []}
    for seed in range(3):
        policy64, policy32, noise64, x0, dyn = _setup(model, torch.float32, 400, 200, 60, 0.0,
                                                      seed, rank_tol=1e-3)
        x0 = x0 * 0.03
        ref = rollout_cost_and_gradient(policy64, ParticleDynamics.from_model(model, torch.float64),
                                        x0,
                                        noise64, 60, CostConfig())
        exact.append(ref.cost)
        for backend in errors:
            g = rollout_cost_and_gradient(policy32, dyn, x0.float(), _cast(noise64, torch.float32),
                                          60, CostConfig(),
                                          backend=resolve_backend(backend, torch.float32, "cpu"))
            errors[backend].append(g.cost - ref.cost)
            for a, b in ((ref.grad_weights, g.grad_weights),
                         (ref.grad_centres.flatten(), g.grad_centres.flatten()),
                         (ref.grad_log_lengthscales, g.grad_log_lengthscales)):
                assert torch.nn.functional.cosine_similarity(a, b.double(), dim=0) > 0.9999
    mc_std = np.std(exact)
    for backend, errs in errors.items():
        assert np.all(np.abs(errs) < 0.5 * mc_std), (backend, errors, mc_std)


def test_kernel_runs_on_scipy_blas_where_torch_exports_none(model):
    """Torch builds without an exported sgemm_ (not x86 MKL) get scipy's: the same results to
    float32 rounding. The two BLAS libraries sum in different orders (MKL picks its code path by
    CPU: bit-identical to OpenBLAS on one CI machine, up to 2e-3 of the largest final state
    apart on an AVX2 EPYC after 10 steps of dynamics that amplify rounding); a wrongly wired
    sgemm gives differences of order one."""
    _, policy32, noise, x0, dyn = _setup(model, torch.float32, 48, 20, 10, 0.25, 1)
    noise, x0 = _cast(noise, torch.float32), x0.float()
    ops = GradientOperands.build(policy32, dyn, noise.keep_scale)
    mkl = native_rollout.native_kernel()
    scipy_kernel = native_rollout.NativeRolloutKernel(mkl.library,
                                                      native_rollout.scipy_sgemm_address())
    for a, b in zip(mkl.cost_and_gradient(ops, dyn, x0, noise, 10, CostConfig()),
                    scipy_kernel.cost_and_gradient(ops, dyn, x0, noise, 10, CostConfig())):
        assert float((a - b).abs().max()) <= 5e-3 * float(a.abs().max()), (a, b)


def test_optimisation_with_the_native_kernel_lowers_the_cost(model):
    policy = SquashedRBFPolicy(PolicyConfig(num_basis=50), 10.0,
                               generator=torch.Generator().manual_seed(0))
    config = OptimizerConfig(particles=100, horizon=30, backend="native", monitor_min_step=1000)
    result = optimize_policy(policy, model, config, CostConfig(), 0.01, 60,
                             np.random.default_rng(0))
    assert result.steps == 60
    assert np.mean(result.costs[-10:]) < np.mean(result.costs[:10]) - 0.5


def test_backend_resolution():
    assert resolve_backend("auto", torch.float32, "cpu").name == "native"
    assert resolve_backend("auto", torch.float64, "cpu").name == "torch"
    assert resolve_backend("auto", torch.float32, "cuda").name == "torch"
    assert resolve_backend("torch", torch.float32, "cpu").name == "torch"
    assert resolve_backend("native", torch.float32, "cpu").name == "native"
    with pytest.raises(NativeKernelUnavailable, match="float32"):
        resolve_backend("native", torch.float64, "cpu")
    with pytest.raises(ValueError, match="optimizer.backend must be one of"):
        resolve_backend("fast", torch.float32, "cpu")


def test_kernel_refuses_tensors_of_another_dtype(model):
    _, policy32, noise, x0, _ = _setup(model, torch.float32, 16, 10, 3, 0.0, 0)
    dyn64 = ParticleDynamics.from_model(model, torch.float64)
    with pytest.raises(NativeKernelUnavailable, match="float32 CPU tensors, got torch.float64"):
        rollout_cost_and_gradient(policy32, dyn64, x0.float(), _cast(noise, torch.float32), 3,
                                  CostConfig(), backend=native_backend())


def test_build_is_cached_per_source_and_compiler(tmp_path, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    first = native_rollout.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native_rollout.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]   # no temporary left behind


def test_without_a_compiler_auto_falls_back_and_native_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("EBMCPILCO_CACHE_DIR", str(tmp_path / "cache"))
    native_rollout._load.cache_clear()
    native_rollout._warn_fallback.cache_clear()
    try:
        with pytest.raises(NativeKernelUnavailable, match="no C compiler"):
            native_rollout.build()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert resolve_backend("auto", torch.float32, "cpu").name == "torch"
        assert any("no C compiler" in str(w.message) for w in caught)
        with pytest.raises(NativeKernelUnavailable, match="no C compiler"):
            resolve_backend("native", torch.float32, "cpu")
    finally:
        native_rollout._load.cache_clear()


def test_a_broken_compiler_reports_its_error(tmp_path, monkeypatch):
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo fakecc 1.0 && exit 0\n"
                    "echo 'fakecc: internal error' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(NativeKernelUnavailable, match="fakecc: internal error"):
        native_rollout.build(tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())   # nothing half-built left


def test_kernel_reports_a_shape_it_is_not_written_for(model):
    """Policy features of 4 instead of 5: the kernel answers its shape-mismatch status (and
    the call says so) instead of reading past the operands."""
    _, policy32, noise, x0, dyn = _setup(model, torch.float32, 16, 10, 3, 0.0, 0)
    noise = _cast(noise, torch.float32)
    ops = GradientOperands.build(policy32, dyn, noise.keep_scale)
    short = dataclasses.replace(ops, il=ops.il[:4].contiguous())
    with pytest.raises(ValueError, match="status 1, shape mismatch.*features 4"):
        native_rollout.native_kernel().cost_and_gradient(short, dyn, x0.float(), noise, 3,
                                                         CostConfig())


def test_a_library_whose_argument_struct_differs_is_not_loaded(monkeypatch):
    """A field added on the Python side only: the sizes disagree and the kernel is refused
    before any call could misread its arguments."""
    class Wider(native_rollout.RolloutArgs):
        _fields_ = [("extra", ctypes.c_int)]

    library = native_rollout.native_kernel().library
    monkeypatch.setattr(native_rollout, "RolloutArgs", Wider)
    with pytest.raises(NativeKernelUnavailable, match="the two definitions disagree"):
        native_rollout.NativeRolloutKernel(library, native_rollout.scipy_sgemm_address())


@pytest.mark.parametrize("backend_name", ["native", "torch"])
@pytest.mark.parametrize("workers", [2, 3])
def test_particles_shared_over_threads_give_the_one_thread_gradient(model, backend_name,
                                                                    workers):
    """optimizer.particle_workers: the particles in shares, each in a thread of its own (37
    particles: shares of unequal size); J, the gradient and the final states (in particle
    order) are the one-thread ones to float32 rounding, on either backend (a short horizon:
    the dynamics amplify a rounding difference over a long one). Torch rounds a few particles
    differently by the share's size (its vectorised exp and sin take a tensor's tail apart),
    up to ~2e-4 here, so it is held to 1e-3; a share weighted wrongly is off by tens of %."""
    tol = 1e-4 if backend_name == "native" else 1e-3
    backend = native_backend() if backend_name == "native" else resolve_backend(
        "torch", torch.float32, "cpu")
    split = backend.split(workers)
    assert backend.split(1) is backend and str(split) == f"{backend_name} on {workers} threads"
    _, policy32, noise, x0, dyn32 = _setup(model, torch.float32, 37, 30, 5, 0.25, seed=5)
    args = (dyn32, x0.float(), _cast(noise, torch.float32), 5, CostConfig())
    one = rollout_cost_and_gradient(policy32, *args, backend=backend)
    shared = rollout_cost_and_gradient(policy32, *args, backend=split)
    assert shared.cost == pytest.approx(one.cost, rel=1e-5)
    for field in ("grad_weights", "grad_centres", "grad_log_lengthscales", "cost_per_step",
                  "final_states"):
        a, b = getattr(one, field), getattr(shared, field)
        scale = float(a.abs().max())
        assert float((a - b).abs().max()) <= tol * scale, (field, a, b)
