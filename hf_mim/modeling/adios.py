"""ADIOS: Shi et al., "Adversarial Masking for Self-Supervised Learning" (ICML 2022), https://arxiv.org/abs/2201.13100;
reference code YugeTen/adios.

An occlusion model (a U-Net with a softmax over N output channels, so its N masks partition every pixel) looks at the
second view b of an image. For each mask m_k, the encoder sees `b * (1 - m_k)` (pixels zeroed, every patch kept) and
the objective (SimCLR, BYOL or SimSiam) compares it with the unmasked first view a. Training alternates every step:
the encoder and its heads minimise the sum over masks with the masks detached; then the occlusion model, with its own
optimizer, maximises the same sum minus a sparsity penalty that keeps every mask away from empty and from full.

`forward(..., phase="encoder" | "occlusion")` gives each side's loss; `hf-mim pretrain --method adios` runs them with
two optimizers. With `phase=None` (what `transformers.Trainer` calls) the masks pass through a gradient reversal and
one optimizer trains both sides at once: an approximation of the alternating update (same learning rate, no second
forward with the updated encoder).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init

from .augment import TwoViewsMixin, validate_color_jitter_fields
from .backbone import MIMConfig, ViTEncoder, config_error, pool, to_2tuple
from .base import MIMModel, MIMPreTrainedModel
from .classification import MIMForImageClassification
from .ema import EMATeacher, build_teacher, validate_ema_fields
from .heads import MLPHead
from .losses import byol_loss, gather_across_ranks, nt_xent, simsiam_loss, sparsity_penalty
from .outputs import ADIOSForPreTrainingOutput

ADIOS_OBJECTIVES = ("simclr", "byol", "simsiam")
OCCLUSION_NORMS = ("group", "instance", "none")
ADIOS_PHASES = ("encoder", "occlusion")
_GROUPS = 8  # GroupNorm groups of the occlusion U-Net's blocks


class ADIOSConfig(MIMConfig):
    r"""
    Configuration of an ADIOS model: the encoder fields of [`MIMConfig`] (defaults: ViT-B/16 at 224 px; the
    representation is the pooled encoder output, `pooling`), and:

    Args:
        objective (`str`, *optional*, defaults to `"simclr"`):
            `"simclr"`: NT-Xent between the projections of the two views, negatives from the whole (gathered)
            batch. `"byol"`: an online predictor against an EMA target (encoder and projector), 2 - 2 cos, both
            directions. `"simsiam"`: a predictor against the stopped projection of the other view, both directions.
        num_masks (`int`, *optional*, defaults to 6):
            N, the occlusion model's output masks; they partition every pixel.
        single_mask (`bool`, *optional*, defaults to `False`):
            ADIOS-s: each image uses one of its N masks, drawn at random, so a step costs one masked forward rather
            than N. The sparsity penalty still covers all N masks.
        occlusion_base_channels (`int`, *optional*, defaults to 32):
            Width of the U-Net's first block; deeper blocks use twice that. A multiple of 8 with group norm.
        occlusion_num_blocks (`int`, *optional*):
            Depth of the U-Net (each block halves the resolution on the way down). Defaults to
            `log2(min(height, width)) - 1`, as in the reference (4 at 32 px, 6 at 224 px).
        occlusion_norm (`str`, *optional*, defaults to `"group"`):
            Normalisation in the U-Net's blocks: `"group"` (8 groups), `"instance"` or `"none"`.
        occlusion_learning_rate (`float`, *optional*, defaults to 1e-3):
            AdamW learning rate of the occlusion model under `hf-mim pretrain` (not scaled with the batch size).
        sparsity_weight (`float`, *optional*, defaults to 1.0):
            alpha, the weight of the sparsity penalty `sum_k mean_b 1 / (sin(pi * area_bk) + eps)`.
        sparsity_eps (`float`, *optional*, defaults to 1e-10):
            eps of the penalty (its value for an empty or full mask is 1 / eps).
        gradient_reversal_scale (`float`, *optional*, defaults to 1.0):
            With `phase=None` only: the occlusion model receives minus this times the similarity gradient.
        projection_hidden_size (`int`, *optional*, defaults to 2048):
            Hidden width of the projector (and of the predictor's input side).
        projection_size (`int`, *optional*, defaults to 128):
            Output width of the projector: the space the objective compares views in.
        prediction_hidden_size (`int`, *optional*, defaults to 512):
            Hidden width of the predictor (BYOL and SimSiam only).
        contrastive_temperature (`float`, *optional*, defaults to 0.1):
            SimCLR's temperature (not `temperature`, which transformers reserves for generation).
        ema_momentum (`float`, *optional*, defaults to 0.99):
            BYOL's target momentum, in [0, 1].
        ema_momentum_schedule (`str`, *optional*, defaults to `"cosine"`):
            `"constant"`, or `"cosine"`: raised from `ema_momentum` to `ema_momentum_end` over training (BYOL).
        ema_momentum_end (`float`, *optional*, defaults to 1.0):
            Final momentum of the cosine schedule.
        color_jitter_strength (`list[float]`, *optional*, defaults to `[0.4, 0.4, 0.2, 0.1]`):
            Brightness, contrast, saturation and hue ranges of each view's colour jitter (SimCLR's values).
        color_jitter_prob (`float`, *optional*, defaults to 0.8):
            Probability that a view is jittered at all.
    """

    model_type = "hf_mim_adios"

    def __init__(
        self,
        objective: str = "simclr",
        num_masks: int = 6,
        single_mask: bool = False,
        occlusion_base_channels: int = 32,
        occlusion_num_blocks: int | None = None,
        occlusion_norm: str = "group",
        occlusion_learning_rate: float = 1e-3,
        sparsity_weight: float = 1.0,
        sparsity_eps: float = 1e-10,
        gradient_reversal_scale: float = 1.0,
        projection_hidden_size: int = 2048,
        projection_size: int = 128,
        prediction_hidden_size: int = 512,
        contrastive_temperature: float = 0.1,
        ema_momentum: float = 0.99,
        ema_momentum_schedule: str = "cosine",
        ema_momentum_end: float = 1.0,
        color_jitter_strength: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
        color_jitter_prob: float = 0.8,
        **kwargs,
    ):
        self.objective = objective
        self.num_masks = num_masks
        self.single_mask = single_mask
        self.occlusion_base_channels = occlusion_base_channels
        self.occlusion_num_blocks = occlusion_num_blocks
        self.occlusion_norm = occlusion_norm
        self.occlusion_learning_rate = occlusion_learning_rate
        self.sparsity_weight = sparsity_weight
        self.sparsity_eps = sparsity_eps
        self.gradient_reversal_scale = gradient_reversal_scale
        self.projection_hidden_size = projection_hidden_size
        self.projection_size = projection_size
        self.prediction_hidden_size = prediction_hidden_size
        self.contrastive_temperature = contrastive_temperature
        self.ema_momentum = ema_momentum
        self.ema_momentum_schedule = ema_momentum_schedule
        self.ema_momentum_end = ema_momentum_end
        self.color_jitter_strength = [float(v) for v in color_jitter_strength]
        self.color_jitter_prob = color_jitter_prob
        super().__init__(**kwargs)
        self._require_positive_ints(
            "num_masks",
            "occlusion_base_channels",
            "projection_hidden_size",
            "projection_size",
            "prediction_hidden_size",
        )
        if self.objective not in ADIOS_OBJECTIVES:
            raise config_error("objective", self.objective, f"one of {ADIOS_OBJECTIVES}")
        if self.num_masks < 2:
            raise config_error("num_masks", self.num_masks, "an int of at least 2 (the masks partition each pixel)")
        if self.occlusion_norm not in OCCLUSION_NORMS:
            raise config_error("occlusion_norm", self.occlusion_norm, f"one of {OCCLUSION_NORMS}")
        if self.occlusion_norm == "group" and self.occlusion_base_channels % _GROUPS:
            raise config_error(
                "occlusion_base_channels", self.occlusion_base_channels, f"a multiple of {_GROUPS} with group norm"
            )
        smallest = min(to_2tuple(self.image_size))
        deepest = int(math.log2(smallest)) - 1
        if self.occlusion_num_blocks is not None and not (
            isinstance(self.occlusion_num_blocks, int) and 2 <= self.occlusion_num_blocks <= deepest
        ):
            raise config_error(
                "occlusion_num_blocks", self.occlusion_num_blocks, f"None or an int in [2, {deepest}] at this size"
            )
        if deepest < 2:
            raise config_error("image_size", self.image_size, "at least 8 px a side for the occlusion U-Net")
        for field in ("occlusion_learning_rate", "sparsity_eps", "contrastive_temperature"):
            if not getattr(self, field) > 0:
                raise config_error(field, getattr(self, field), "a positive float")
        for field in ("sparsity_weight", "gradient_reversal_scale"):
            if not getattr(self, field) >= 0:
                raise config_error(field, getattr(self, field), "a non-negative float")
        validate_ema_fields(self)
        validate_color_jitter_fields(self)

    @property
    def unet_num_blocks(self) -> int:
        return self.occlusion_num_blocks or int(math.log2(min(to_2tuple(self.image_size)))) - 1


# -- the occlusion model ----------------------------------------------------------------------------------------------


def _conv_block(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none")]
    if norm == "group":
        layers.append(nn.GroupNorm(_GROUPS, out_channels))
    elif norm == "instance":
        layers.append(nn.InstanceNorm2d(out_channels, affine=True))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class OcclusionModel(nn.Module):
    """The reference's U-Net (from Genesis): 3x3 conv blocks, nearest-neighbour down- and upsampling by 2, an MLP
    bottleneck (-> 128 -> 128 ->), skip connections; then a 1x1 convolution to N channels and a softmax over them.
    (B, C, H, W) normalised images -> (B, N, H, W) masks summing to 1 at every pixel."""

    def __init__(self, config: ADIOSConfig):
        super().__init__()
        c, blocks, norm = config.occlusion_base_channels, config.unet_num_blocks, config.occlusion_norm
        # the reference's widths for 4, 5 and 6 blocks, for any depth: c in the first blocks, 2c in the last three
        enc_out = [c if i < blocks - 3 else 2 * c for i in range(blocks)]
        enc_in = [config.num_channels] + enc_out[:-1]
        dec_out = [enc_out[-2 - i] for i in range(blocks - 1)] + [c]
        dec_in = [2 * c + enc_out[-1]] + [dec_out[i] + enc_out[-2 - i] for i in range(blocks - 1)]
        self.down = nn.ModuleList(_conv_block(i, o, norm) for i, o in zip(enc_in, enc_out, strict=True))
        self.up = nn.ModuleList(_conv_block(i, o, norm) for i, o in zip(dec_in, dec_out, strict=True))
        height, width = to_2tuple(config.image_size)
        self.sizes = [(height, width)]
        for _ in range(blocks - 1):
            self.sizes.append((self.sizes[-1][0] // 2, self.sizes[-1][1] // 2))
        self.bottleneck_shape = (2 * c, *self.sizes[-1])
        flat = math.prod(self.bottleneck_shape)
        self.mlp = nn.Sequential(
            nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, flat), nn.ReLU()
        )
        self.head = nn.Conv2d(c, config.num_masks, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if tuple(pixel_values.shape[-2:]) != self.sizes[0]:
            raise ValueError(
                f"the occlusion model takes images of the configured size {self.sizes[0]}, got "
                f"{tuple(pixel_values.shape[-2:])}; its bottleneck is sized for it"
            )
        x, skips = pixel_values, []
        for i, block in enumerate(self.down):
            x = block(x)
            skips.append(x)
            if i < len(self.down) - 1:
                x = F.interpolate(x, size=self.sizes[i + 1], mode="nearest")
        x = self.mlp(x.flatten(1)).view(-1, *self.bottleneck_shape)
        for i, block in enumerate(self.up):
            x = block(torch.cat([x, skips[-1 - i]], dim=1))
            if i < len(self.up) - 1:
                x = F.interpolate(x, size=self.sizes[-2 - i], mode="nearest")
        # the softmax in float32: under fp16 autocast the masks must still sum to 1
        return torch.softmax(self.head(x).float(), dim=1)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


# -- the models -------------------------------------------------------------------------------------------------------


class ADIOSPreTrainedModel(MIMPreTrainedModel):
    config_class = ADIOSConfig

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # the U-Net's convolutions: xavier, like every Conv2d here
        if isinstance(module, (nn.GroupNorm, nn.InstanceNorm2d)) and module.weight is not None:
            init.ones_(module.weight)
            init.zeros_(module.bias)


class ADIOSModel(MIMModel):
    """The ADIOS encoder without the occlusion model (what `AutoModel` returns); see [`MIMModel`]."""

    config_class = ADIOSConfig


class ADIOSForImageClassification(MIMForImageClassification):
    """ADIOS encoder plus a linear head; see [`MIMForImageClassification`]."""

    config_class = ADIOSConfig


class ADIOSForPreTraining(TwoViewsMixin, ADIOSPreTrainedModel):
    """ADIOS for pretraining: `vit` (the shared encoder), `occlusion` (the U-Net), `projector`, and `predictor` for
    BYOL and SimSiam. BYOL's target is an [`EMATeacher`] (encoder and projector) outside the module tree, updated by
    `update_teacher()` once per optimizer step (`hf-mim pretrain`, or `EMATeacherCallback` under Trainer)."""

    def __init__(self, config: ADIOSConfig):
        super().__init__(config)
        self.vit = ViTEncoder(config)
        self.occlusion = OcclusionModel(config)
        self.projector = MLPHead(config.hidden_size, config.projection_hidden_size, config.projection_size)
        self.predictor = (
            MLPHead(config.projection_size, config.prediction_hidden_size, config.projection_size)
            if config.objective != "simclr"
            else None
        )
        self._teacher: EMATeacher | None = None
        self.post_init()

    @property
    def teacher(self) -> EMATeacher:
        if self.config.objective != "byol":
            raise AttributeError(f"only objective='byol' has a teacher, not {self.config.objective!r}")
        if self._teacher is None:
            self._teacher = build_teacher(self, ("vit", "projector"))
        return self._teacher

    def update_teacher(self) -> None:
        """One EMA step of BYOL's target; call once per optimizer step, after it. Nothing for SimCLR / SimSiam."""
        if self.config.objective == "byol":
            self.teacher.update(self)

    def occlusion_parameters(self) -> list[nn.Parameter]:
        """What the occlusion optimizer trains (everything else is the encoder side's)."""
        return list(self.occlusion.parameters())

    def _embed(self, pixel_values, interpolate_pos_encoding, output_hidden_states=False):
        hidden, hidden_states = self.vit(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, output_hidden_states=output_hidden_states
        )
        return self.projector(pool(hidden, self.config.pooling)), hidden_states

    def _target(self, pixel_values, interpolate_pos_encoding):
        teacher = self.teacher
        if teacher.device != pixel_values.device:
            teacher.to(pixel_values.device)
        with torch.no_grad():
            hidden, _ = teacher.module.vit(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
            return teacher.module.projector(pool(hidden.float(), self.config.pooling))

    def _similarity(self, z_a, z_m, view_a, masked, interpolate_pos_encoding) -> torch.Tensor:
        """The objective between the first view (B rows) and masked second views (K * B rows, mask-major), summed
        over the K masks."""
        masks = len(z_m) // len(z_a)
        objective = self.config.objective
        if objective == "simclr":
            a = gather_across_ranks(z_a)
            return sum(
                nt_xent(a, gather_across_ranks(part), self.config.contrastive_temperature) for part in z_m.chunk(masks)
            )
        p_a, p_m = self.predictor(z_a), self.predictor(z_m)
        if objective == "simsiam":
            z_a_rep = z_a.repeat(masks, 1)
            per_mask = (simsiam_loss(p_a.repeat(masks, 1), z_m) + simsiam_loss(p_m, z_a_rep)) / 2
            return per_mask * masks  # the mean over K * B rows, times K: a sum over masks of batch means
        t_a, t_m = self._target(view_a, interpolate_pos_encoding), self._target(masked, interpolate_pos_encoding)
        return (byol_loss(p_a.repeat(masks, 1), t_m) + byol_loss(p_m, t_a.repeat(masks, 1))) * masks

    def draw_inputs(self, batch: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 2, 4) jitter factors and, for ADIOS-s, (B,) mask choices, from the global RNG (the data pipeline passes
        its own)."""
        jitter = self.draw_view_jitter(batch, device)
        choice = torch.randint(self.config.num_masks, (batch,)) if self.config.single_mask else None
        return jitter, None if choice is None else choice.to(device)

    def forward(
        self,
        pixel_values: torch.Tensor,
        color_jitter: torch.Tensor | None = None,
        mask_choice: torch.Tensor | None = None,
        phase: str | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ADIOSForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images; both views are made from them.
            color_jitter (`torch.FloatTensor` of shape `(batch_size, 2, 4)`, *optional*):
                Each view's brightness, contrast and saturation factors and hue shift. Drawn when not given.
            mask_choice (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                ADIOS-s (`single_mask=True`): the mask each image uses. Drawn when not given.
            phase (`str`, *optional*):
                `"encoder"`: the loss of the encoder side (masks detached). `"occlusion"`: the loss of the occlusion
                side (`mask_penalty - similarity_loss`). `None`: both at once through a gradient reversal on the
                masks, for a single optimizer (`transformers.Trainer`).
            interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
                Accepted for the encoder; the occlusion model only takes the configured size.
            output_hidden_states (`bool`, *optional*):
                Also return the encoder's hidden states for the first view.
            return_dict (`bool`, *optional*):
                Return an [`ADIOSForPreTrainingOutput`] rather than a tuple.
        """
        if phase is not None and phase not in ADIOS_PHASES:
            raise ValueError(f"phase={phase!r} is invalid: None or one of {ADIOS_PHASES}")
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        self.vit.input_grid(pixel_values, interpolate_pos_encoding)
        batch = pixel_values.shape[0]
        if color_jitter is None or (self.config.single_mask and mask_choice is None):
            jitter, choice = self.draw_inputs(batch, pixel_values.device)
            color_jitter = jitter if color_jitter is None else color_jitter
            mask_choice = choice if mask_choice is None else mask_choice
        if tuple(color_jitter.shape) != (batch, 2, 4):
            raise ValueError(
                f"color_jitter must have shape (batch, 2 views, 4) = {(batch, 2, 4)}, got {tuple(color_jitter.shape)}"
            )
        view_a, view_b = self.make_views(pixel_values, color_jitter)

        if phase == "encoder":
            with torch.no_grad():
                masks = self.occlusion(view_b)
            occluding = masks
        else:
            masks = self.occlusion(view_b)
            occluding = (
                masks if phase == "occlusion" else _ReverseGradient.apply(masks, self.config.gradient_reversal_scale)
            )

        if self.config.single_mask:
            if mask_choice is None or tuple(mask_choice.shape) != (batch,):
                raise ValueError(f"mask_choice must have shape (batch,) = {(batch,)} with single_mask=True")
            chosen = occluding[torch.arange(batch, device=masks.device), mask_choice.long()].unsqueeze(1)
            masked = view_b * (1 - chosen.to(view_b.dtype))
        else:
            # (K * B, C, H, W), mask-major: one encoder pass for all masks
            keep = (1 - occluding.to(view_b.dtype)).transpose(0, 1).unsqueeze(2)
            masked = (view_b.unsqueeze(0) * keep).flatten(0, 1)
        z_a, hidden_states = self._embed(view_a, interpolate_pos_encoding, output_hidden_states)
        z_m, _ = self._embed(masked, interpolate_pos_encoding)
        similarity = self._similarity(z_a, z_m, view_a, masked, interpolate_pos_encoding)
        penalty = self.config.sparsity_weight * sparsity_penalty(masks, self.config.sparsity_eps)

        if phase == "encoder":
            # The occlusion model takes no part in this loss. A zero-valued term keeps its parameters in the graph so
            # that DDP, which expects every parameter to receive a gradient, needs no find_unused_parameters.
            loss = similarity + sum(p.sum() for p in self.occlusion.parameters()) * 0.0
        elif phase == "occlusion":
            loss = penalty - similarity
        else:
            loss = similarity + penalty
        if not return_dict:
            return tuple(v for v in (loss, similarity, penalty, masks, color_jitter, hidden_states) if v is not None)
        return ADIOSForPreTrainingOutput(
            loss=loss,
            similarity_loss=similarity.detach(),
            mask_penalty=penalty.detach(),
            masks=masks,
            color_jitter=color_jitter,
            hidden_states=hidden_states,
        )


#: The Auto class each class of this method loads with. auto.py registers them; `save_pretrained` writes them into
#: config.json's `auto_map`, so the uploaded copy of this file loads with `trust_remote_code=True`.
AUTO_CLASSES = {
    "AutoConfig": ADIOSConfig,
    "AutoModel": ADIOSModel,
    "AutoModelForPreTraining": ADIOSForPreTraining,
    "AutoModelForImageClassification": ADIOSForImageClassification,
}

__all__ = [
    "AUTO_CLASSES",
    "ADIOSConfig",
    "ADIOSPreTrainedModel",
    "ADIOSModel",
    "ADIOSForPreTraining",
    "ADIOSForImageClassification",
    "OcclusionModel",
]
