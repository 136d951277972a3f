"""Heads shared across methods."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import MIMConfig, build_blocks, resize_position_embedding, sincos_2d_position_embedding


class MAEDecoder(nn.Module):
    """MAE's light transformer decoder: visible latents plus mask tokens in grid order -> pixels of every patch.

    Used by MAE and by R-MAE. Reads `decoder_hidden_size`, `decoder_num_hidden_layers`,
    `decoder_num_attention_heads` and `decoder_intermediate_size` from the config.
    """

    def __init__(self, config: MIMConfig):
        super().__init__()
        self.config = config
        dim = config.decoder_hidden_size
        self.grid_size = config.grid_size
        self.embed = nn.Linear(config.hidden_size, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed sincos like the encoder's; a buffer for the same reasons (see ViTEncoder).
        table = sincos_2d_position_embedding(dim, config.grid_size)[None].to(torch.get_default_dtype())
        self.register_buffer("pos_embed", table, persistent=True)
        self.blocks = build_blocks(
            config,
            dim,
            config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads,
            config.decoder_intermediate_size,
        )
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.pred = nn.Linear(dim, config.patch_size**2 * config.num_channels)

    def forward(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, grid_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """latent (B, 1 + K, D) with CLS first; ids_restore (B, L) -> pixel predictions (B, L, patch**2 * C)."""
        x = self.embed(latent)  # (B, 1 + K, D_dec)
        batch, num_tokens, dim = x.shape
        num_masked = ids_restore.shape[1] - (num_tokens - 1)  # L - K
        # (B, K, D_dec) visible + (B, L - K, D_dec) mask tokens, in keep-then-mask order
        patches = torch.cat([x[:, 1:], self.mask_token.expand(batch, num_masked, dim).to(x.dtype)], dim=1)
        # back to grid order: patches[b, i] = shuffled[b, ids_restore[b, i]], (B, L, D_dec)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
        pos = resize_position_embedding(self.pos_embed, self.grid_size, grid_size or self.grid_size)  # (1, 1 + L, D)
        x = torch.cat([x[:, :1], patches], dim=1) + pos  # (B, 1 + L, D_dec)
        x, _, _ = self.blocks(x)
        return self.pred(self.norm(x[:, 1:]))  # (B, L, P * P * C); the CLS token's prediction would be thrown away


class PixelShuffleHead(nn.Module):
    """SimMIM's one-layer prediction head: a 1x1 convolution to `stride**2 * num_channels` maps, then a pixel shuffle
    back to full resolution. (B, 1 + L, D) tokens with CLS first -> (B, C, rows * stride, cols * stride)."""

    def __init__(self, hidden_size: int, stride: int, num_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(hidden_size, stride**2 * num_channels, kernel_size=1)
        self.shuffle = nn.PixelShuffle(stride)

    def forward(self, hidden_states: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        patches = hidden_states[:, 1:]
        batch, length, dim = patches.shape
        maps = patches.transpose(1, 2).reshape(batch, dim, *grid_size)
        return self.shuffle(self.proj(maps))


class MLPHead(nn.Module):
    """Two linear layers with a GELU between them: C-MAE's projector and predictor (BYOL's, with GELU)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def init_head_weights(module: nn.Module, config: MIMConfig, init) -> None:
    """Initialise the parameters the heads here own directly (their Linear/LayerNorm children are MAE-initialised)."""
    if isinstance(module, MAEDecoder):
        init.normal_(module.mask_token, std=config.initializer_range)
        init.copy_(module.pos_embed, sincos_2d_position_embedding(config.decoder_hidden_size, config.grid_size)[None])
    elif isinstance(getattr(module, "mask_token", None), nn.Parameter):
        # the encoder-side mask token of SimMIM / BEiT models: trunc_normal(std 0.02) in both references
        init.trunc_normal_(module.mask_token, std=config.initializer_range)


__all__ = ["MAEDecoder", "MLPHead", "PixelShuffleHead", "init_head_weights"]
