"""A linear UV texture model learnt from incomplete, weighted UV maps: masked PPCA by EM.

Model (per sample n, texel t, channel c; weights w_nt in [0, 1] from the dataset)::

    x_ntc = mu_tc + W_tc . z_n + eps,   z_n ~ N(0, I_K),   eps ~ N(0, sigma^2 / w_nt)

A texel of weight 0 is missing; a low weight is a noisy observation. EM (Tipping & Bishop's PPCA
with missing data, weights as precisions):

* E-step, all samples at once: A_n = sum_t w_nt sum_c W_tc W_tc^T is one product of the weights
  (N, T) with the per-texel outer products (T, K*K); b_n likewise; then one batched
  ``torch.linalg.solve`` of (A_n + sigma^2 I) [z_n | S_n] = [b_n | sigma^2 I] gives the posterior
  mean z_n and covariance S_n.
* M-step, all texels at once: [W_t | mu_t] solves a (K+1) x (K+1) system per texel built from the
  weighted posterior moments (again one product each, one batched solve).

After training the basis is rotated to the principal axes and scaled so that z ~ N(0, I) holds
on the training set with components ordered by variance; the first k components of it are then a
k-component model (used to choose k by held-out error).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PPCA:
    """mean (D,), basis (K, D) with D = 3 * r * r in (3, r, r) order, noise variance sigma2."""

    mean: torch.Tensor
    basis: torch.Tensor
    sigma2: float
    res: int

    @property
    def k(self) -> int:
        return int(self.basis.shape[0])

    def truncate(self, k: int) -> "PPCA":
        return PPCA(self.mean, self.basis[:k].contiguous(), self.sigma2, self.res)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, K) -> (B, 3, r, r), not clamped."""
        return (self.mean + z @ self.basis).view(-1, 3, self.res, self.res)


def _flat(albedo: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, r, r), (N, r, r) -> x (N, T, 3), w (N, T)."""
    n = albedo.shape[0]
    return albedo.reshape(n, 3, -1).transpose(1, 2).contiguous(), weight.reshape(n, -1).contiguous()


def _tex(m: torch.Tensor) -> torch.Tensor:
    """(..., D) in (3, r, r) order -> (..., T, 3)."""
    return m.reshape(*m.shape[:-1], 3, -1).transpose(-1, -2)


def _untex(m: torch.Tensor) -> torch.Tensor:
    """(..., T, 3) -> (..., D) in (3, r, r) order."""
    return m.transpose(-1, -2).reshape(*m.shape[:-2], -1)


def posterior(model_W: torch.Tensor, mean: torch.Tensor, sigma2: float, x: torch.Tensor,
              w: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior of the latent given weighted texels (the E-step; also the held-out latent fit).

    Args:
        model_W: (T, 3, K) basis per texel and channel; mean: (T, 3).
        x: (N, T, 3) albedo; w: (N, T) weights (0 = not seen).
    Returns:
        z (N, K) posterior means (the MAP latent) and S (N, K, K) posterior covariances.
    """
    T, _, K = model_W.shape
    WW = torch.einsum("tck,tcl->tkl", model_W, model_W).reshape(T, K * K)
    Wf = model_W.reshape(T * 3, K)
    zs, Ss = [], []
    eye = torch.eye(K, dtype=torch.float64)
    for s in range(0, x.shape[0], chunk):
        xs, ws = x[s:s + chunk], w[s:s + chunk]
        A = (ws @ WW).view(-1, K, K).double()                                   # (n, K, K)
        b = ((ws[..., None] * (xs - mean)).reshape(len(xs), T * 3) @ Wf).double()  # (n, K)
        M = A + sigma2 * eye
        rhs = torch.cat([b[..., None], (sigma2 * eye).expand(len(xs), K, K)], -1)
        sol = torch.linalg.solve(M, rhs)
        zs.append(sol[..., 0].float())
        Ss.append(sol[..., 1:].float())
    return torch.cat(zs), torch.cat(Ss)


def _mstep(x: torch.Tensor, w: torch.Tensor, z: torch.Tensor, S: torch.Tensor, ridge: float,
           prior_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New (W (T, 3, K), mu (T, 3)) from the posterior moments, mean and basis solved together.

    A small ridge keeps texels that few samples see well posed: it pulls their basis to 0 and their
    mean to ``prior_mean`` (the data's weighted mean, hole-filled)."""
    N, T, _ = x.shape
    K = z.shape[1]
    zt = torch.cat([z, torch.ones(N, 1)], 1)                                  # (N, K+1)
    Ezz = zt[:, :, None] * zt[:, None, :]
    Ezz[:, :K, :K] += S
    B = (w.t() @ Ezz.reshape(N, -1)).view(T, K + 1, K + 1).double()           # (T, K+1, K+1)
    R = torch.einsum("ntc,nk->tkc", w[..., None] * x, zt).double()            # (T, K+1, 3)
    reg = torch.full((K + 1,), ridge, dtype=torch.float64)
    B = B + torch.diag(reg)
    R[:, K, :] += ridge * prior_mean.double()
    sol = torch.linalg.solve(B, R)                                            # (T, K+1, 3)
    W = sol[:, :K, :].permute(0, 2, 1).float().contiguous()                   # (T, 3, K)
    mu = sol[:, K, :].float()
    return W, mu


def _sigma2(x, w, W, mu, z, S) -> float:
    """Weighted mean squared residual plus the posterior spread (the PPCA noise update)."""
    rec = torch.einsum("tck,nk->ntc", W, z) + mu
    err = (w[..., None] * (x - rec) ** 2).sum()
    T, _, K = W.shape
    WW = torch.einsum("tck,tcl->tkl", W, W).reshape(T, K * K)
    A = (w @ WW).view(-1, K, K)
    spread = (A * S).sum()
    return float((err + spread) / (3 * w.sum()).clamp_min(1e-12))


def fill_holes(img: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Texels no sample sees take their values from their neighbours (pull-push).

    img (C, r, r), support (r, r) total training weight per texel."""
    from ..fit.uvspace import pull_push
    w = (support / 2.0).clamp(0, 1)  # two full views of a texel are enough to trust its own value
    return pull_push(img.permute(1, 2, 0)[None], w[None])[0].permute(2, 0, 1)


def fit_ppca(albedo: torch.Tensor, weight: torch.Tensor, k: int, iters: int = 40, tol: float = 5e-4,
             ridge: float = 1e-2, init: PPCA | None = None, robust: float = 0.0, log=None) -> PPCA:
    """Train masked PPCA with k components.

    Args:
        albedo: (N, 3, r, r) float32 in [0, 1]; weight: (N, r, r) in [0, 1].
        k: number of components (0 = the weighted mean only).
        init: start from this model (its first k components), else from the SVD of the
            mean-filled data (deterministic: no random initialisation).
        robust: 0 = plain; c > 0 = iteratively reweighted (Cauchy): a texel whose residual is
            r noise stds has its weight scaled by 1 / (1 + (r / c)^2), so what the dataset's skin
            weights let through (glasses, hair, highlights) pulls the model less.
    Returns:
        PPCA with basis ordered by variance and z ~ N(0, I) on the training samples.
    """
    log = log or (lambda *_: None)
    N, _, r, _ = albedo.shape
    x, w = _flat(albedo, weight)
    T = x.shape[1]
    wsum = w.sum(0)
    mean0 = (w[..., None] * x).sum(0) / wsum.clamp_min(1e-6)[:, None]
    support = wsum.view(r, r)
    mean0 = _tex(fill_holes(_untex(mean0).view(3, r, r), support).reshape(-1))
    k = int(min(k, max(0, N - 1)))
    if k == 0:
        resid = (w[..., None] * (x - mean0) ** 2).sum() / (3 * w.sum()).clamp_min(1e-12)
        return PPCA(_untex(mean0).contiguous(), torch.zeros(0, 3 * T), float(resid), r)

    if init is not None and init.k >= k:
        W = _tex(init.basis[:k]).permute(1, 2, 0).contiguous()               # (T, 3, k)
        mu = _tex(init.mean)
        sigma2 = init.sigma2
    else:
        # Start from the principal components of the data with its holes filled by the mean.
        filled = w[..., None] * x + (1 - w[..., None]) * mean0
        Xc = (filled - mean0).reshape(N, -1).double()
        evals, evecs = torch.linalg.eigh(Xc @ Xc.t())                         # (N,), ascending
        evals, evecs = evals.flip(0)[:k].clamp_min(1e-12), evecs.flip(1)[:, :k]
        V = (Xc.t() @ evecs) / evals.sqrt()                                   # (T*3, k) orthonormal
        W = (V * (evals / N).sqrt()).float().view(T, 3, k).contiguous()
        mu = mean0.clone()
        sigma2 = float(max((Xc ** 2).sum().item() / Xc.numel() - (evals / N).sum().item() / Xc.shape[1],
                           1e-6))

    prev = math.inf
    t0 = time.time()
    we = w  # effective weights (the data's, or reweighted when robust)
    for it in range(iters):
        z, S = posterior(W, mu, sigma2, x, we)
        W, mu = _mstep(x, we, z, S, ridge * max(1.0, float(wsum.mean()) * 1e-3), mean0)
        z, S = posterior(W, mu, sigma2, x, we)
        sigma2 = max(_sigma2(x, we, W, mu, z, S), 1e-8)
        if robust > 0 and it >= 2:
            # Residual per texel (channel mean) against the current model.
            e = torch.cat([((torch.einsum("tck,nk->ntc", W, z[i:i + 256]) + mu - x[i:i + 256]) ** 2).mean(-1)
                           for i in range(0, N, 256)])
            we = w / (1 + e / (robust ** 2 * sigma2))
        done = abs(prev - sigma2) <= tol * sigma2 and (robust <= 0 or it >= 4)
        if done or it % 5 == 0 or it == iters - 1:
            kept = f", weight kept {float(we.sum() / w.sum().clamp_min(1e-12)):.0%}" if robust > 0 else ""
            log(f"  k={k} EM {it + 1}/{iters}: noise std {math.sqrt(sigma2):.4f}{kept} ({time.time() - t0:.0f} s)")
        if done:
            break
        prev = sigma2
    model = _canonical(W, mu, sigma2, x, we, r)
    return _fill_model(model, support)


def _canonical(W, mu, sigma2, x, w, r) -> PPCA:
    """Rotate/scale the basis so the training posterior second moment is I, components ordered by
    variance (a whitening of the latent followed by the principal axes of the basis)."""
    z, S = posterior(W, mu, sigma2, x, w)
    zc = z.mean(0)
    mu = mu + torch.einsum("tck,k->tc", W, zc)
    z = z - zc
    C = ((z.t() @ z) + S.sum(0)).double() / len(z)                            # (K, K)
    evals, evecs = torch.linalg.eigh(C)
    Csqrt = (evecs * evals.clamp_min(1e-12).sqrt()) @ evecs.t()
    Wf = (W.reshape(-1, W.shape[-1]).double() @ Csqrt)                        # (T*3, K)
    # Principal axes of the basis: W' = U diag(s) so that W' W'^T = W W^T.
    U, s, _ = torch.linalg.svd(Wf, full_matrices=False)
    Wp = (U * s).float()                                                      # (T*3, K)
    # Sign convention (deterministic): each component's largest entry is positive.
    sign = torch.sign(Wp.gather(0, Wp.abs().argmax(0, keepdim=True))).clamp_min(0) * 2 - 1
    Wp = Wp * sign
    basis = _untex(Wp.t().reshape(-1, x.shape[1], 3))                          # (K, D)
    return PPCA(_untex(mu).contiguous(), basis.contiguous(), float(sigma2), r)


def _fill_model(m: PPCA, support: torch.Tensor) -> PPCA:
    """Mean and basis of texels that the training data never sees, from their neighbours."""
    r = m.res
    stack = torch.cat([m.mean[None], m.basis], 0).view(-1, r, r)               # ((K+1)*3, r, r)
    filled = fill_holes(stack, support).reshape(m.k + 1, -1)
    return PPCA(filled[0].contiguous(), filled[1:].contiguous(), m.sigma2, r)


def heldout_error(m: PPCA, albedo: torch.Tensor, weight: torch.Tensor, holdback: torch.Tensor,
                  ks: list[int] | None = None) -> dict[int, dict[str, float]]:
    """Masked reconstruction error of held-out samples for the first k components of ``m``.

    For each sample the latent is fitted (MAP, z ~ N(0, I)) to its visible texels outside
    ``holdback`` (N, r, r bool); the error is measured, weighted by the texel weights, on the
    visible texels inside it.

    Returns: {k: {"rmse": .., "l1": ..}} in linear albedo units.
    """
    x, w = _flat(albedo, weight)
    hb = holdback.reshape(len(x), -1).float()
    w_fit, w_test = w * (1 - hb), w * hb
    Wt = _tex(m.basis).permute(1, 2, 0).contiguous()                           # (T, 3, K)
    mu = _tex(m.mean)
    ks = sorted(set(range(m.k + 1) if ks is None else [k for k in ks if k <= m.k]))
    den = (3 * w_test.sum()).clamp_min(1e-12)
    out: dict[int, dict[str, float]] = {}
    for k in ks:
        if k == 0:
            rec = mu.expand_as(x)
        else:
            z, _ = posterior(Wt[..., :k].contiguous(), mu, m.sigma2, x, w_fit)
            rec = torch.einsum("tck,nk->ntc", Wt[..., :k], z) + mu
        d = rec.clamp(0, 1) - x
        out[k] = {"rmse": float(((w_test[..., None] * d ** 2).sum() / den).sqrt()),
                  "l1": float((w_test[..., None] * d.abs()).sum() / den)}
    return out


def reconstruct(m: PPCA, albedo: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP latent from the weighted texels and its image: z (N, K), (N, 3, r, r) in [0, 1]."""
    x, w = _flat(albedo, weight)
    Wt = _tex(m.basis).permute(1, 2, 0).contiguous()
    z, _ = posterior(Wt, _tex(m.mean), m.sigma2, x, w)
    return z, m.decode(z).clamp(0, 1)


def choose_k(errors: dict[int, dict[str, float]], rel_tol: float = 0.02) -> int:
    """The smallest k whose held-out RMSE is within ``rel_tol`` of the best."""
    best = min(e["rmse"] for e in errors.values())
    return min(k for k, e in errors.items() if e["rmse"] <= best * (1 + rel_tol))


class PPCAGenerator(torch.nn.Module):
    """The TorchScript generator of a PPCA model: (B, K) latent -> (B, 3, H, W) in [0, 1], row 0 =
    the top of the atlas. Buffers are float16 (half the file); the arithmetic is float32."""

    def __init__(self, m: PPCA, out_res: int = 0):
        super().__init__()
        self.register_buffer("mean", m.mean.half().clone())
        self.register_buffer("basis", m.basis.half().clone())
        self.res = int(m.res)
        self.out_res = int(out_res or m.res)
        self.sigma2 = float(m.sigma2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mean.float() + z.float() @ self.basis.float()
        img = x.view(z.shape[0], 3, self.res, self.res)
        if self.out_res != self.res:
            img = F.interpolate(img, size=[self.out_res, self.out_res], mode="bilinear", align_corners=False)
        return img.clamp(0.0, 1.0)


def model_from_generator(module) -> PPCA:
    """The PPCA model inside a loaded PPCA checkpoint (TorchScript module from ``load_generator``)."""
    return PPCA(module.mean.float(), module.basis.float(), float(module.sigma2), int(module.res))
