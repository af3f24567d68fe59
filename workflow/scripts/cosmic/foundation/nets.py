"""The networks: a ViT (:class:`Block`) or a small CNN (:class:`ConvEncoder`) encoder, the token
read-out (:func:`_pool_weights`), the image heads (:class:`ConvDecoder`, :class:`TokenDecoder`)
and :class:`FoundationModel`, which combines them with the losses of the three objectives;
:func:`build_model` makes a seeded, freshly initialised one."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CosmicInputError
from .params import FoundationParams
from .runtime import _mix


class Block(nn.Module):
    """Pre-norm transformer block (fused scaled-dot-product attention)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        B, T, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.norm2(x))


class TokenDecoder(nn.Module):
    """Light transformer mapping a token sequence (all patch positions) to patch pixels."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, n_tokens: int, patch_pixels: int):
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, patch_pixels)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, tokens):
        x = tokens + self.pos
        for b in self.blocks:
            x = b(x)
        return self.out(self.norm(x))


def _pool_weights(pool: str, grid: int) -> torch.Tensor:
    """Readout weights over the ``grid x grid`` patch tokens (sum 1).

    ``center`` and ``center_stats``: uniform over the central ``ceil(grid / 2)`` x
    ``ceil(grid / 2)`` tokens, i.e. the middle half of the crop's side. Crops are cut centred on the nucleus with room for its
    neighbours, so the mean over *all* tokens is dominated by background and neighbouring
    nuclei (a median demo nucleus covers ~15% of a 64 px crop); the central window holds the
    nucleus itself while attention still lets those tokens read the context. ``mean``: all
    tokens (models trained before ``pool`` existed)."""
    w = torch.zeros(grid, grid)
    if pool == "mean":
        w[:] = 1
    else:
        k = max(1, -(-grid // 2))
        a = (grid - k) // 2
        w[a:a + k, a:a + k] = 1
    w = w.flatten()
    return w / w.sum()


class ConvEncoder(nn.Module):
    """Small CNN encoder: 3 x 3 conv-BatchNorm-ReLU stages, each followed by a 2 x 2 max-pool,
    until one position per ``patch_size`` x ``patch_size`` block of the crop, then a conv to
    ``dim`` channels. Returns the same B x T x D token grid as the ViT, so pooling, the image
    head and the objectives are shared. Convolutions see the chromatin texture at the pixel
    scale, which an 8 px ViT patch embedding (one linear map per patch) does not."""

    def __init__(self, channels: int, dim: int, patch_size: int):
        super().__init__()
        n_pool = int(round(math.log2(patch_size)))
        widths = [max(16, dim // 4)] + [max(16, dim // 2)] * (n_pool - 1)
        layers: list[nn.Module] = []
        c = channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        layers += [nn.Conv2d(c, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten(2).transpose(1, 2)


class ConvDecoder(nn.Module):
    """Embedding -> image by convolutions: a linear map to a ``dim`` x grid x grid feature map
    (one position per ``patch_size`` block), then log2(patch_size) stages of 2x nearest
    upsampling + 3 x 3 conv-BatchNorm-ReLU (``depth`` convs per stage, width halving), and a
    3 x 3 conv to the crop channels. Unlike a per-patch linear read-out it has no seams at patch
    borders, and neighbouring pixels share features, which keeps outlines and texture smooth."""

    def __init__(self, in_dim: int, dim: int, depth: int, channels: int, grid: int, patch_size: int):
        super().__init__()
        self.dim, self.grid = dim, grid
        self.inp = nn.Linear(in_dim, dim * grid * grid)
        layers: list[nn.Module] = []
        c = dim
        for _ in range(int(round(math.log2(patch_size)))):
            w = max(16, c // 2)
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            for k in range(depth):
                layers += [nn.Conv2d(c if k == 0 else w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.Conv2d(c, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.inp(z).view(-1, self.dim, self.grid, self.grid))


def _dec_heads(dim: int) -> int:
    for h in (8, 4, 2, 1):
        if dim % h == 0 and dim // h >= 16:
            return h
    return 1


class FoundationModel(nn.Module):
    """Encoder (ViT or CNN; crop -> embedding) + image head (embedding -> crop) + objective heads.

    ``embed(x)``: B x C x S x S -> B x E, read out from the encoder's output tokens by ``pool``
    (E = ``embedding_dim``: 2 x embed_dim for ``center_stats``, embed_dim otherwise).
    ``decode(z)``: B x E -> B x C x S x S.
    ``forward(x1, x2=None, noise=None, targets=None)``: training loss (scalar) and a dict of its
    parts (``targets``: B x ``n_features`` standardised region properties, objective ``features``).
    """

    def __init__(self, params: FoundationParams, channels: int, crop_size: int, n_features: int = 1):
        super().__init__()
        p = params.patch_size
        if crop_size % p:
            raise CosmicInputError(
                f"foundation: crop size {crop_size} is not a multiple of patch_size {p}; "
                "choose a patch_size dividing the crop size (nuclei: crop_size)")
        self.params = params
        self.channels, self.crop_size = int(channels), int(crop_size)
        self.grid = crop_size // p
        self.n_patches = self.grid ** 2
        D, dd = params.embed_dim, params.decoder_dim
        # statistics pooling reads out the mean *and* the SD of the window's tokens
        self.embedding_dim = 2 * D if params.pool == "center_stats" else D
        E = self.embedding_dim
        patch_pixels = channels * p * p
        self.n_features = int(n_features)
        if params.encoder == "cnn":
            self.cnn = ConvEncoder(channels, D, p)
        else:
            self.patch_embed = nn.Linear(patch_pixels, D)
            self.pos = nn.Parameter(torch.zeros(1, self.n_patches, D))
        self.register_buffer("pool_weights", _pool_weights(params.pool, self.grid), persistent=False)
        if params.encoder == "vit":
            self.blocks = nn.ModuleList(Block(D, params.heads) for _ in range(params.depth))
            self.norm = nn.LayerNorm(D)
        # embedding -> image: convolutions from a coarse grid, or one token per patch position
        if params.decoder == "conv":
            self.image_head = ConvDecoder(E, dd, params.decoder_depth, channels, self.grid, p)
        else:
            self.image_head = TokenDecoder(E, dd, params.decoder_depth, _dec_heads(dd), self.n_patches, patch_pixels)
        if params.objective == "mae":
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
            self.mae_decoder = TokenDecoder(D, dd, params.decoder_depth, _dec_heads(dd), self.n_patches, patch_pixels)
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        elif params.objective == "vicreg":
            h = 4 * D
            self.projector = nn.Sequential(nn.Linear(E, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, h))
        else:
            if self.n_features < 1:
                raise CosmicInputError("foundation: objective 'features' needs at least one region-property column")
            self.feature_head = nn.Linear(E, self.n_features)
        if params.encoder == "vit":
            nn.init.trunc_normal_(self.pos, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # -- geometry
    def patchify(self, x):
        B, C, S, _ = x.shape
        p, g = self.params.patch_size, self.grid
        return x.reshape(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)

    def unpatchify(self, t):
        B = t.shape[0]
        p, g, C = self.params.patch_size, self.grid, self.channels
        return t.reshape(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, g * p, g * p)

    # -- encoder / decoder
    def encode_tokens(self, x, keep=None):
        if self.params.encoder == "cnn":
            return self.cnn(x)  # keep (token masking) is MAE-only, which needs the ViT
        t = self.patch_embed(self.patchify(x)) + self.pos
        if keep is not None:
            t = torch.gather(t, 1, keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        for b in self.blocks:
            t = b(t)
        return self.norm(t)

    def pool(self, tokens, keep=None):
        """Embedding from output tokens: weighted mean with ``pool_weights`` (the tokens of the
        central window for ``pool="center"``, all tokens for ``"mean"``). With ``keep`` (MAE:
        indices of the visible patches) the weights of the visible tokens are renormalised;
        crops with no visible token in the window fall back to all their tokens. ``center_stats``
        appends the weighted SD of the tokens to their mean (statistics pooling)."""
        w = self.pool_weights.to(tokens.dtype)
        if keep is None:
            wk = w.expand(tokens.shape[0], -1)
        else:
            wk = w[keep]
            den = wk.sum(dim=1, keepdim=True)
            wk = torch.where(den > 0, wk / den.clamp_min(1e-12), torch.full_like(wk, 1.0 / wk.shape[1]))
        mean = torch.einsum("btd,bt->bd", tokens, wk)
        if self.params.pool != "center_stats":
            return mean
        var = torch.einsum("btd,bt->bd", (tokens - mean[:, None]).pow(2), wk)
        return torch.cat([mean, torch.sqrt(var + 1e-6)], dim=1)

    def embed(self, x):
        return self.pool(self.encode_tokens(x))

    def decode(self, z):
        if isinstance(self.image_head, ConvDecoder):
            return self.image_head(z)
        tokens = self.image_head.inp(z).unsqueeze(1).expand(-1, self.n_patches, -1)
        return self.unpatchify(self.image_head(tokens))

    @staticmethod
    def _recon_loss(pred, target):
        return F.mse_loss(pred.float(), target.float()) / target.float().var().clamp_min(1e-6).detach()

    def forward(self, x1, x2=None, noise=None, targets=None):
        if self.params.objective == "mae":
            return self._mae(x1, noise)
        if self.params.objective == "vicreg":
            return self._vicreg(x1, x2)
        return self._features(x1, targets)

    def _features(self, x, targets):
        """Predict the nucleus's own (standardised, label-free) region properties from its
        embedding through a linear head, so that what they measure must be linearly readable
        from the embedding; the encoder is free to carry more."""
        z = self.embed(x)
        feat = F.mse_loss(self.feature_head(z).float(), targets.float())
        rec = self._recon_loss(self.decode(z), x)
        loss = feat + self.params.recon_weight * rec
        return loss, {"features": feat.detach(), "recon": rec.detach()}

    def _mae(self, x, noise):
        B, N = x.shape[0], self.n_patches
        n_keep = max(1, int(round(N * (1 - self.params.mask_ratio))))
        if noise is None:
            noise = torch.rand(B, N, device=x.device)
        order = torch.argsort(noise, dim=1)
        keep = order[:, :n_keep]
        tokens = self.encode_tokens(x, keep)
        z = self.pool(tokens, keep)
        dd = self.mask_token.shape[-1]
        dec_in = self.mae_decoder.inp(tokens)
        full = self.mask_token.expand(B, N, dd).to(dec_in.dtype).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dd), dec_in)
        pred = self.mae_decoder(full)
        target = self.patchify(x)
        masked = torch.ones(B, N, device=x.device, dtype=torch.bool)
        masked[torch.arange(B, device=x.device)[:, None], keep] = False
        if not bool(masked.any()):
            masked = ~masked
        mae = self._recon_loss(pred[masked], target[masked])
        rec = self._recon_loss(self.decode(z), x)
        loss = mae + self.params.recon_weight * rec
        return loss, {"mae": mae.detach(), "recon": rec.detach()}

    def _vicreg(self, x1, x2):
        z1, z2 = self.embed(x1), self.embed(x2)
        p1, p2 = self.projector(z1).float(), self.projector(z2).float()
        inv = F.mse_loss(p1, p2)

        def var_cov(p):
            p = p - p.mean(dim=0)
            std = torch.sqrt(p.var(dim=0) + 1e-4)
            var = F.relu(1 - std).mean()
            n, d = p.shape
            cov = (p.T @ p) / max(n - 1, 1)
            off = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
            return var, off / d

        v1, c1 = var_cov(p1)
        v2, c2 = var_cov(p2)
        # standard VICReg weights (25, 25, 1), divided by 25 so the reconstruction term is comparable
        vic = inv + (v1 + v2) / 2 + (c1 + c2) / 50
        rec = 0.5 * (self._recon_loss(self.decode(z1), x1) + self._recon_loss(self.decode(z2), x2))
        loss = vic + self.params.recon_weight * rec
        return loss, {"vicreg": vic.detach(), "recon": rec.detach()}


def build_model(params: FoundationParams, channels: int, crop_size: int, n_features: int = 1) -> FoundationModel:
    """A freshly initialised model; the initial weights depend only on ``params.seed`` (the
    encoder's also not on ``n_features``: objective heads are initialised after it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(params.seed, 1))
        return FoundationModel(params, channels, crop_size, n_features)
