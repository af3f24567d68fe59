"""The networks: two conditional generators, the expression decoder and (for X_fm) a feature decoder."""

from __future__ import annotations

import math

import torch
from torch import nn

from .params import CosmicParams
from .preprocess import Preprocessor


def _mlp(d_in: int, hidden: int, n_layers: int, dropout: float) -> nn.Sequential:
    layers, d = [], d_in
    for _ in range(n_layers):
        layers += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)]
        d = hidden
    return nn.Sequential(*layers)


class ConditionalGenerator(nn.Module):
    """p(x | c): a mean head plus a residual conditional VAE with heteroscedastic Gaussian output."""

    def __init__(self, cond_dim: int, out_dim: int, hidden: int, latent: int, n_layers: int, dropout: float):
        super().__init__()
        self.latent = latent
        self.cond = _mlp(cond_dim, hidden, n_layers, dropout)
        self.mean_head = nn.Linear(hidden, out_dim)
        if latent > 0:
            self.encoder = nn.Sequential(_mlp(out_dim + hidden, hidden, 1, dropout), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(_mlp(latent + hidden, hidden, 1, dropout), nn.Linear(hidden, 2 * out_dim))
        nn.init.zeros_(self.decoder[-1].weight)
        nn.init.zeros_(self.decoder[-1].bias)
        # per-output spread of samples around the mean, fitted on validation cells (see calibrate_model)
        self.register_buffer("calib_scale", torch.ones(out_dim))

    def _decode(self, z, h):
        r_mu, r_logvar = self.decoder(torch.cat([z, h], 1) if self.latent else h).chunk(2, 1)
        return r_mu, r_logvar.clamp(-8, 6)

    def forward(self, c, x, sample_posterior: bool = True) -> dict:
        """Training losses (per cell, averaged over output dims) and the conditional mean."""
        h = self.cond(c)
        mu = self.mean_head(h)
        resid = x - mu.detach()
        kl = torch.zeros(len(x), device=x.device)
        if self.latent:
            q_mu, q_logvar = self.encoder(torch.cat([resid, h], 1)).chunk(2, 1)
            q_logvar = q_logvar.clamp(-8, 6)
            z = q_mu + torch.exp(0.5 * q_logvar) * torch.randn_like(q_mu) if sample_posterior else q_mu
            kl = 0.5 * (q_mu ** 2 + q_logvar.exp() - 1 - q_logvar).sum(1) / x.shape[1]
        else:
            z = None
        r_mu, r_logvar = self._decode(z, h)
        nll = 0.5 * (r_logvar + (resid - r_mu) ** 2 / r_logvar.exp() + math.log(2 * math.pi)).mean(1)
        mse = ((x - mu) ** 2).mean(1)
        return dict(mu=mu, mse=mse, nll=nll, kl=kl)

    @torch.no_grad()
    def mean(self, c):
        return self.mean_head(self.cond(c))

    @torch.no_grad()
    def sample(self, c, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n x cells x out_dim`` samples: mean head + residual drawn from the prior, the residual
        scaled per output by ``calib_scale`` (1 until calibrated on validation cells)."""
        h = self.cond(c)
        mu = self.mean_head(h)
        out = []
        for _ in range(n):
            z = torch.randn(len(c), self.latent, device=c.device, generator=generator) if self.latent else None
            r_mu, r_logvar = self._decode(z, h)
            eps = torch.randn(r_mu.shape, device=c.device, generator=generator)
            out.append(mu + self.calib_scale * (r_mu + torch.exp(0.5 * r_logvar) * eps))
        return torch.stack(out)


class LinearPlusMLP(nn.Module):
    """Decoder y = W x + b + MLP(x); the linear part can start at a known map (e.g. PCA inverse)."""

    def __init__(self, d_in: int, d_out: int, hidden: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.mlp = nn.Sequential(_mlp(d_in, hidden, 1, dropout), nn.Linear(hidden, d_out))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.logvar = nn.Parameter(torch.zeros(d_out))  # per-output residual noise (for samples)
        self.register_buffer("calib_scale", torch.ones(d_out))  # spread of decoded samples (calibrate_model)

    def forward(self, x):
        return self.linear(x) + self.mlp(x)


class CosmicModel(nn.Module):
    """Both generators, the expression decoder and (for FM) a representation -> feature decoder."""

    method = "cvae"

    def __init__(self, rep_dim: int, rna_dim: int, n_genes: int, morph_dim: int, cov_dim: int,
                 params: CosmicParams, use_fm: bool):
        super().__init__()
        p = params
        self.m2r = ConditionalGenerator(rep_dim + cov_dim, rna_dim, p.hidden_dim, p.latent_dim, p.n_layers, p.dropout)
        self.r2m = ConditionalGenerator(rna_dim + cov_dim, rep_dim, p.hidden_dim, p.latent_dim, p.n_layers, p.dropout)
        self.expr_decoder = LinearPlusMLP(rna_dim, n_genes, p.hidden_dim, p.dropout)
        self.use_fm = use_fm
        self.morph_decoder = LinearPlusMLP(rep_dim, morph_dim, p.hidden_dim, p.dropout) if use_fm else None

    def init_from_pca(self, pre: Preprocessor):
        """Start the expression decoder at the exact inverse of the training-cell PCA."""
        st = pre.state
        with torch.no_grad():
            self.expr_decoder.linear.weight.copy_(torch.from_numpy(st["components"].T * st["pc_std"][None, :]))
            self.expr_decoder.linear.bias.copy_(torch.from_numpy(st["gene_mean"]))

    def losses(self, b: dict, p: CosmicParams, sample_posterior: bool = True) -> torch.Tensor:
        cov = b["cov"]
        m2r = self.m2r(torch.cat([b["rep"], cov], 1), b["rna"], sample_posterior)
        r2m = self.r2m(torch.cat([b["rna"], cov], 1), b["rep"], sample_posterior)
        dec = self.expr_decoder
        expr_obs = dec(b["rna"])
        expr_pred = dec(m2r["mu"])
        # decoder noise model on observed embeddings (detached mean)
        resid = (b["expr"] - expr_obs.detach()) ** 2
        dec_nll = 0.5 * (dec.logvar + resid / dec.logvar.exp()).mean(1)
        loss = (m2r["mse"] + m2r["nll"] + p.beta * m2r["kl"] + r2m["mse"] + r2m["nll"] + p.beta * r2m["kl"]
                + p.expr_weight * (((b["expr"] - expr_obs) ** 2).mean(1) + ((b["expr"] - expr_pred) ** 2).mean(1))
                + 0.1 * dec_nll)
        if self.use_fm:
            md = self.morph_decoder
            f_obs = md(b["rep"])
            f_pred = md(r2m["mu"])
            resid = (b["morph"] - f_obs.detach()) ** 2
            loss = loss + ((b["morph"] - f_obs) ** 2).mean(1) + ((b["morph"] - f_pred) ** 2).mean(1) \
                + 0.1 * 0.5 * (md.logvar + resid / md.logvar.exp()).mean(1)
        return loss.mean()
