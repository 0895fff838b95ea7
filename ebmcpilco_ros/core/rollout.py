"""Monte Carlo particle rollout through the GP speed-integration model (MC-PILCO eq. 17).

For M particles and horizon H, each step t:
    x^_t      = [p, pdot, thetadot, sin theta, cos theta]     (shared by policy and GP)
    u_t       = pi(x^_t) with dropout on the RBF activations
    mu, var   = GP posterior of Delta = (Delta pdot, Delta thetadot) at [x^_t, u_t]
    Delta_t   = mu + sqrt(var) * eps_t,   eps_t ~ N(0, I)     (reparameterisation)
    x_{t+1}   = x_t F + Delta_t G                            (speed integration, linear)
J = sum_{t=1..H} mean_m c(x_t^(m)).

What makes it fast (docs/ALGORITHM.md, "Speed"): both GPs are stacked into one batched matmul
against [K^-1 | alpha], so mean and variance come from a single (2, M, N) x (2, N, N+1) product;
a custom autograd function returns d/dx~ analytically, reusing that product, so the backward
pass does no second O(M N^2) matmul; the random numbers for the whole horizon are drawn at once;
float32 by default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .config import CostConfig
from .model import SpeedIntegrationModel
from .policy import MAX_EXPONENT, SquashedRBFPolicy, state_features

_MIN_VARIANCE = 1e-10
_MIN_STD = 1.0001e-5  # sqrt(_MIN_VARIANCE) with margin: below it the clamp holds, no gradient
_QUARTER_TURN = (0.0, math.pi / 2)  # sin(theta + pi/2) = cos(theta)


class _GPMeanVariance(torch.autograd.Function):
    """Fused SE-kernel GP prediction for G stacked GPs; analytic input gradient.

    Inputs: x (M, D); inv_ls (G, 1, D); Z = X_S / l (G, N, D); z2 = |Z|^2 (G, 1, N);
    KA = [K^-1 | alpha] (G, N, N+1); sf2 (G, 1). Outputs mean (M, G), var (M, G).
    """

    @staticmethod
    def forward(ctx, x: Tensor, inv_ls: Tensor, Z: Tensor, z2: Tensor, KA: Tensor,
                sf2: Tensor) -> tuple[Tensor, Tensor]:
        xs = x.unsqueeze(0) * inv_ls                                       # (G, M, D)
        d2 = torch.baddbmm(z2 + (xs * xs).sum(-1, keepdim=True), xs, Z.mT, alpha=-2.0)
        # Clamping d2 keeps exp out of float32 underflow, where it runs ~10x slower.
        k = torch.exp(d2.clamp_(0.0, 2 * MAX_EXPONENT).mul_(-0.5)).mul_(sf2.unsqueeze(-1))
        P = torch.bmm(k, KA)                                               # (G, M, N+1)
        n = Z.shape[1]
        q = P[..., :n]
        mean = P[..., n]
        var = sf2 - (q * k).sum(-1)
        ctx.save_for_backward(xs, k, q, Z, KA, inv_ls)
        return mean.T, var.T

    @staticmethod
    def backward(ctx, g_mean: Tensor, g_var: Tensor):  # type: ignore[override]
        xs, k, q, Z, KA, inv_ls = ctx.saved_tensors
        n = Z.shape[1]
        alpha = KA[:, :, n]                                                # (G, N)
        # dL/dk_j = g_mean alpha_j - 2 g_var (K^-1 k)_j ;  dk_j/dxs = -k_j (xs - Z_j)
        G = torch.addcmul(g_mean.T.unsqueeze(-1) * alpha.unsqueeze(1),
                          g_var.T.unsqueeze(-1), q, value=-2.0)
        W = G.mul_(k)
        g_xs = torch.baddbmm(xs * W.sum(-1, keepdim=True), W, Z, alpha=-1.0).neg_()
        return (g_xs * inv_ls).sum(0), None, None, None, None, None


@dataclass(frozen=True)
class ParticleDynamics:
    """A SpeedIntegrationModel laid out as padded, stacked tensors for batched prediction.

    The two GPs may keep different numbers of support points; padding rows of K^-1 and alpha
    with zeros makes the padded points contribute exactly nothing.
    """

    inv_ls: Tensor
    Z: Tensor
    z2: Tensor
    KA: Tensor
    sf2: Tensor
    F: Tensor  # (4, 4): x_{t+1} = x_t F + Delta G
    Gm: Tensor  # (2, 4)

    @classmethod
    def from_model(cls, model: SpeedIntegrationModel, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> "ParticleDynamics":
        n = max(gp.size for gp in model.gps)
        D = model.gps[0].support.shape[1]
        G = len(model.gps)
        inv_ls = np.zeros((G, 1, D))
        Z = np.zeros((G, n, D))
        KA = np.zeros((G, n, n + 1))
        sf2 = np.zeros((G, 1))
        for i, gp in enumerate(model.gps):
            m = gp.size
            inv_ls[i, 0] = 1.0 / gp.hyp.lengthscales
            Z[i, :m] = gp.support / gp.hyp.lengthscales
            KA[i, :m, :m] = gp.k_inv
            KA[i, :m, n] = gp.alpha
            sf2[i, 0] = gp.hyp.signal_std**2
        z2 = (Z * Z).sum(-1)[:, None, :]
        dt = model.dt
        F = np.eye(4)
        F[1, 0] = dt   # p += dt * pdot   (row = source component, column = destination)
        F[3, 2] = dt   # theta += dt * thetadot
        Gm = np.array([[0.5 * dt, 1.0, 0.0, 0.0], [0.0, 0.0, 0.5 * dt, 1.0]])

        def t(a: np.ndarray) -> Tensor:
            return torch.as_tensor(a, dtype=dtype, device=device)

        return cls(t(inv_ls), t(Z), t(z2), t(KA), t(sf2), t(F), t(Gm))

    def predict(self, gp_input: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and latent variance of Delta for inputs (M, 6): (M, 2) each."""
        return _GPMeanVariance.apply(gp_input, self.inv_ls, self.Z, self.z2, self.KA, self.sf2)

    def step(self, x: Tensor, features: Tensor, u: Tensor, eps: Tensor | None) -> Tensor:
        """x_{t+1} for particles x (M, 4) given their features, inputs (M,) and noise (M, 2)."""
        mean, var = self.predict(torch.cat([features, u.unsqueeze(-1)], dim=-1))
        delta = mean if eps is None else torch.addcmul(
            mean, var.clamp_min(_MIN_VARIANCE).sqrt(), eps)
        return torch.addmm(x @ self.F, delta, self.Gm)


@dataclass
class RolloutNoise:
    """All randomness of one rollout, drawn at once: sampling noise and dropout masks."""

    eps: Tensor           # (H, M, 2) standard normal
    keep: Tensor | None   # (H, M, B) 0/1 in the rollout dtype, or None without dropout
    keep_scale: float     # 1 / (1 - p)

    @classmethod
    def draw(cls, horizon: int, particles: int, num_basis: int, dropout: float,
             rng: np.random.Generator, dtype: torch.dtype,
             device: str | torch.device = "cpu") -> "RolloutNoise":
        eps = torch.as_tensor(rng.standard_normal((horizon, particles, 2)), dtype=dtype,
                              device=device)
        if dropout <= 0.0:
            return cls(eps, None, 1.0)
        # One random byte per activation, straight from the bit generator: ~5x cheaper than
        # uniform floats; p is quantised to 1/256 (0.25 and 0.125 exactly).
        threshold = int(round(dropout * 256))
        count = horizon * particles * num_basis
        raw = rng.bit_generator.random_raw((count + 7) // 8).view(np.uint8)[:count]
        keep = (raw >= threshold).astype(np.float32 if dtype == torch.float32 else np.float64)
        keep_t = torch.from_numpy(keep.reshape(horizon, particles, num_basis))
        return cls(eps, keep_t.to(device), 256.0 / (256 - threshold))


def rollout(policy: SquashedRBFPolicy, dynamics: ParticleDynamics, x0: Tensor,
            noise: RolloutNoise | None, horizon: int) -> tuple[Tensor, Tensor]:
    """Particle states (H+1, M, 4) and inputs (H, M); differentiable w.r.t. the policy."""
    states = [x0]
    inputs = []
    x = x0
    for t in range(horizon):
        features = state_features(x)
        if noise is None:
            u = policy.from_features(features)
            x = dynamics.step(x, features, u, None)
        else:
            keep = None if noise.keep is None else noise.keep[t]
            u = policy.from_features(features, keep, noise.keep_scale)
            x = dynamics.step(x, features, u, noise.eps[t])
        states.append(x)
        inputs.append(u)
    return torch.stack(states), torch.stack(inputs)


@dataclass
class RolloutGradient:
    """J and dJ/d(policy parameters) from one particle rollout, plus what the monitor logs."""

    cost: float
    grad_weights: Tensor
    grad_centres: Tensor
    grad_log_lengthscales: Tensor
    cost_per_step: Tensor  # (H,) mean over particles
    final_states: Tensor   # (M, 4)


def rollout_cost_and_gradient(policy: SquashedRBFPolicy, dyn: ParticleDynamics, x0: Tensor,
                              noise: RolloutNoise, horizon: int,
                              cost: CostConfig) -> RolloutGradient:
    """The same rollout as `rollout`, with J = sum_{t=1..H} mean_m c(x_t) and its gradient by
    hand-written backpropagation through time.

    Autograd would record ~100 small operations per time step; here the forward pass stores what
    the backward pass needs, and the backward pass is rearranged so that it never makes an
    elementwise pass over the (M, B) activations or the (G, M, N) kernel matrices: only matmuls
    read them. Skinny matmuls are laid out small-dimension-first (several times faster on CPU).
    The equations are in docs/ALGORITHM.md ("Gradient by backpropagation through time"); tests
    check them against autograd of `rollout`.
    """
    with torch.no_grad():
        M = x0.shape[0]
        umax = policy.u_max
        w = policy.weights.detach()
        il = torch.exp(-policy.log_lengthscales.detach())          # (5,)
        As = policy.centres.detach() * il                          # (B, 5) scaled centres
        # -|fs - As_b|^2 = [2 fs, -|fs|^2, 1] . [As_b, 1, -|As_b|^2]: one matmul, no extra pass
        AsT_aug = torch.cat([As.T, torch.ones_like(As[:, :1]).T,
                             -(As * As).sum(-1, keepdim=True).T], dim=0)  # (7, B)
        w_eff = w * noise.keep_scale
        wAsT = (w_eff.unsqueeze(1) * As).T.contiguous()             # (5, B)
        n = dyn.Z.shape[1]
        ZT = dyn.Z.mT.contiguous()                                  # (G, D, N)
        alpha = dyn.KA[:, :, n]                                     # (G, N)
        ZaT = (dyn.Z * alpha.unsqueeze(-1)).mT.contiguous()         # (G, D, N): (alpha_j Z_j)^T
        # log k_j = zs.Z_j - |zs|^2/2 + (log sf2 - |Z_j|^2/2): one batched matmul
        c0 = torch.log(dyn.sf2).unsqueeze(-1) - 0.5 * dyn.z2        # (G, 1, N)
        ZT_aug = torch.cat([ZT, torch.ones_like(c0), c0], dim=1)     # (G, D+2, N)
        ones_gm = x0.new_ones(dyn.Z.shape[0], M, 1)
        offsets = x0.new_tensor(_QUARTER_TURN)
        FT, GmT = dyn.F.T.contiguous(), dyn.Gm.T.contiguous()
        inv_lt, inv_lp = 1.0 / cost.length_theta, 1.0 / cost.length_p
        keep = noise.keep
        epsT = noise.eps.mT                                         # (H, G, M)

        tape = []
        x = x0
        xs_all = []
        for t in range(horizon):
            sincos = torch.sin(x[:, 2:3] + offsets)                 # (M, 2)
            f = torch.cat([x[:, 0:2], x[:, 3:4], sincos], dim=1)    # (M, 5)
            fs = f * il
            fs_aug = torch.cat([2.0 * fs, -(fs * fs).sum(1, keepdim=True),
                                ones_gm[0]], dim=1)
            phi = fs_aug @ AsT_aug
            # clamped: far-away centres would push float32 exp into its slow denormal range
            phi = phi.clamp_(min=-MAX_EXPONENT).exp_()              # (M, B)
            if keep is not None:
                phi.mul_(keep[t])
            s = torch.mv(phi, w_eff)
            tau = torch.tanh(s / umax)                              # (M,)
            z = torch.cat([f, (tau * umax).unsqueeze(1)], dim=1)    # (M, 6)
            zs = z * dyn.inv_ls                                     # (G, M, 6)
            zs_aug = torch.cat([zs, -0.5 * (zs * zs).sum(-1, keepdim=True), ones_gm], dim=-1)
            k = torch.bmm(zs_aug, ZT_aug).clamp_(min=-MAX_EXPONENT).exp_()  # (G, M, N)
            P = torch.bmm(k, dyn.KA)                                # (G, M, N+1)
            qk = P[..., :n] * k
            qk_sum = qk.sum(-1)                                     # k^T K^-1 k (G, M)
            mean = P[..., n]
            std = (dyn.sf2 - qk_sum).clamp_min_(_MIN_VARIANCE).sqrt_()
            delta = torch.addcmul(mean, std, epsT[t])               # (G, M)
            x = torch.addmm(x @ dyn.F, delta.T, dyn.Gm)
            xs_all.append(x)
            tape.append((fs, phi, s, tau, zs, k, qk, qk_sum, mean, std, sincos))

        X = torch.stack(xs_all)                                     # (H, M, 4)
        e_th = (X[..., 2].abs() - math.pi) * inv_lt
        e_p = X[..., 0] * inv_lp
        g = torch.exp(-e_th * e_th - e_p * e_p)                     # 1 - c
        cost_per_step = 1.0 - g.mean(1)
        gc = torch.zeros_like(X)                                    # dJ/dx_t from c(x_t)
        gc[..., 0] = g * e_p * (2.0 * inv_lp / M)
        gc[..., 2] = g * e_th * torch.sign(X[..., 2]) * (2.0 * inv_lt / M)

        V_sum = x0.new_zeros(6, w.shape[0])   # sum_t [g_s ; g_s * fs]^T phi
        g_log_f = torch.zeros_like(il)        # sum_t sum_m g_fs * fs
        gx = torch.zeros_like(x0)
        for t in range(horizon - 1, -1, -1):
            fs, phi, s, tau, zs, k, qk, qk_sum, mean, std, sincos = tape[t]
            gx = gx + gc[t]                                         # dJ/dx_{t+1}
            g_mean = (gx @ GmT).T                                   # dJ/dDelta (G, M)
            # var = sf2 - qk_sum, std = sqrt(var): dL/dqk_sum = -g_std / (2 std)
            c = -g_mean * epsT[t] / std * (std > _MIN_STD)          # = -2 dL/dvar
            # dL/dzs = -zs sum_j W_j + sum_j W_j Z_j, W_j = (g_mean alpha_j - 2 g_var q_j) k_j
            WZ = (torch.bmm(ZaT, k.mT) * g_mean.unsqueeze(1)
                  + torch.bmm(dyn.Z.mT, qk.mT) * c.unsqueeze(1)).mT  # (G, M, D)
            W_sum = g_mean * mean + c * qk_sum
            g_z = ((WZ - zs * W_sum.unsqueeze(-1)) * dyn.inv_ls).sum(0)  # (M, 6)
            g_s = g_z[:, 5] * (1.0 - tau * tau)                     # (M,)
            G6 = torch.cat([g_s.unsqueeze(0), (fs * g_s.unsqueeze(1)).T], dim=0)  # (6, M)
            V_sum += G6 @ phi
            U = (wAsT @ phi.T).T                                    # (M, 5): phi (w_eff As)
            g_fs = 2.0 * (U * g_s.unsqueeze(1) - fs * (g_s * s).unsqueeze(1))
            g_log_f += (g_fs * fs).sum(0)
            g_f = g_z[:, :5] + g_fs * il
            # features -> state: f = [p, pdot, thetadot, sin theta, cos theta]
            g_theta = g_f[:, 3] * sincos[:, 1] - g_f[:, 4] * sincos[:, 0]
            g_feat_x = torch.stack([g_f[:, 0], g_f[:, 1], g_theta, g_f[:, 2]], dim=1)
            gx = gx @ FT + g_feat_x                                 # dJ/dx_t
        # parameters: phi_b depends on As_b = A_b * il; dL/dAs_b = 2 (R^T fs - As c)_b with
        # R = diag(g_s) phi diag(w_eff), c_b = w_eff_b (phi^T g_s)_b
        g_As = 2.0 * w_eff.unsqueeze(1) * (V_sum[1:].T - As * V_sum[0].unsqueeze(1))
        g_w = V_sum[0] * noise.keep_scale
        g_A = g_As * il
        g_log = -(g_log_f + (g_As * As).sum(0))                     # d(x*il)/dlog l = -(x*il)
        return RolloutGradient(cost=float(cost_per_step.sum()), grad_weights=g_w,
                               grad_centres=g_A, grad_log_lengthscales=g_log,
                               cost_per_step=cost_per_step, final_states=x)
