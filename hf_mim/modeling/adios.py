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

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.utils import ModelOutput

from .augment import ColorJitterFields, TwoViewsMixin, sample_view_jitter, validate_color_jitter_fields
from .backbone import MIMConfig, config_error, pool, to_2tuple
from .base import MIMModel, MIMPreTrainedModel, ViTEncoder
from .classification import MIMForImageClassification
from .ema import EMATeacher, EMATeacherFields, build_teacher, validate_ema_fields
from .heads import MLPHead
from .losses import byol_loss, gather_across_ranks, nt_xent, reverse_gradient, simsiam_loss, sparsity_penalty
from .spec import TINY_VIT, Adversary, MethodCard, MethodSpec, Picture, Recipe, draw_inputs


@dataclass
class ADIOSForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            What the phase asked for minimises: `phase="encoder"`, the similarity loss (masks detached);
            `phase="occlusion"`, `mask_penalty - similarity_loss` (the occlusion model's side of the min-max);
            `phase=None`, `similarity_loss + mask_penalty` with the masks behind a gradient reversal (one optimizer).
        similarity_loss (`torch.FloatTensor` of shape `()`):
            The objective (SimCLR, BYOL or SimSiam) between the first view and the masked second view, summed over
            the masks (or taken for each image's chosen mask, ADIOS-s).
        mask_penalty (`torch.FloatTensor` of shape `()`):
            `sparsity_weight * sum_k mean_b 1 / (sin(pi * area_bk) + sparsity_eps)`, in float32.
        masks (`torch.FloatTensor` of shape `(batch_size, num_masks, height, width)`):
            The occlusion model's masks of the second view; they sum to 1 at every pixel.
        color_jitter (`torch.FloatTensor` of shape `(batch_size, 2, 4)`):
            Each view's colour-jitter factors.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The encoder's hidden states for the first (unmasked) view.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            The encoder's attention weights for the first view, each block's `(batch_size, num_heads, tokens,
            tokens)`, when `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    similarity_loss: torch.FloatTensor | None = None
    mask_penalty: torch.FloatTensor | None = None
    masks: torch.FloatTensor | None = None
    color_jitter: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


logger = logging.getLogger(__name__)

ADIOS_OBJECTIVES = ("simclr", "byol", "simsiam")
OCCLUSION_NORMS = ("group", "instance", "none")
ADIOS_PHASES = ("encoder", "occlusion")
_GROUPS = 8  # GroupNorm groups of the occlusion U-Net's blocks


class ADIOSConfig(EMATeacherFields, ColorJitterFields, MIMConfig):
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

    The EMA teacher's fields ([`EMATeacherFields`], BYOL only): momentum 0.99 by default, raised to 1 on a cosine.
    The colour jitter's ([`ColorJitterFields`]): SimCLR's strengths 0.4, 0.4, 0.2 and 0.1, probability 0.8.
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
        self.set_ema_fields(ema_momentum, ema_momentum_schedule, ema_momentum_end)
        self.set_color_jitter_fields(color_jitter_strength, color_jitter_prob)
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
        self.vit = ViTEncoder.part_of(config)
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

    @torch.no_grad()
    def picture_masks(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The masks picture's masks: the occlusion model's (B, num_masks, H, W) masks of the images."""
        return self.occlusion(pixel_values)

    def occlusion_parameters(self) -> list[nn.Parameter]:
        """What the occlusion optimizer trains (everything else is the encoder side's)."""
        return list(self.occlusion.parameters())

    def _embed(self, pixel_values, interpolate_pos_encoding, output_hidden_states=False, output_attentions=False):
        """Projections (B, projection_size), and the encoder's hidden states and attentions when asked for."""
        hidden, hidden_states, attentions = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return self.projector(pool(hidden, self.config.pooling)), hidden_states, attentions

    def _target(self, pixel_values, interpolate_pos_encoding):
        teacher = self.teacher
        if teacher.device != pixel_values.device:
            teacher.to(pixel_values.device)
        with torch.no_grad():
            hidden = teacher.module.vit(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)[0]
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

    def forward(
        self,
        pixel_values: torch.Tensor,
        color_jitter: torch.Tensor | None = None,
        mask_choice: torch.Tensor | None = None,
        phase: str | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
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
            output_attentions (`bool`, *optional*):
                Also return the encoder's attention weights for the first view, each block's
                `(batch_size, num_heads, tokens, tokens)`; `config.output_attentions` when not given.
        """
        if phase is not None and phase not in ADIOS_PHASES:
            raise ValueError(f"phase={phase!r} is invalid: None or one of {ADIOS_PHASES}")
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        grid = self.vit.input_grid(pixel_values, interpolate_pos_encoding)
        batch = pixel_values.shape[0]
        if color_jitter is None or (self.config.single_mask and mask_choice is None):  # drawn as the pipeline does
            drawn = draw_inputs(sample_adios_inputs, self.config, grid, batch, pixel_values.device)
            color_jitter = drawn["color_jitter"] if color_jitter is None else color_jitter
            mask_choice = drawn.get("mask_choice") if mask_choice is None else mask_choice
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
            occluding = masks if phase == "occlusion" else reverse_gradient(masks, self.config.gradient_reversal_scale)

        if self.config.single_mask:
            if mask_choice is None or tuple(mask_choice.shape) != (batch,):
                raise ValueError(f"mask_choice must have shape (batch,) = {(batch,)} with single_mask=True")
            chosen = occluding[torch.arange(batch, device=masks.device), mask_choice.long()].unsqueeze(1)
            masked = view_b * (1 - chosen.to(view_b.dtype))
        else:
            # (K * B, C, H, W), mask-major: one encoder pass for all masks
            keep = (1 - occluding.to(view_b.dtype)).transpose(0, 1).unsqueeze(2)
            masked = (view_b.unsqueeze(0) * keep).flatten(0, 1)
        z_a, hidden_states, attentions = self._embed(
            view_a, interpolate_pos_encoding, output_hidden_states, self._attention_flag(output_attentions)
        )
        z_m, _, _ = self._embed(masked, interpolate_pos_encoding)
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
        output = ADIOSForPreTrainingOutput(
            loss=loss,
            similarity_loss=similarity.detach(),
            mask_penalty=penalty.detach(),
            masks=masks,
            color_jitter=color_jitter,
            hidden_states=hidden_states,
            attentions=attentions,
        )
        return output if return_dict else output.to_tuple()


def sample_adios_inputs(config: ADIOSConfig, grid: tuple[int, int], generator: torch.Generator | None) -> dict:
    """One image's inputs: the two views' colour jitter, (2, 4), and for ADIOS-s the mask it is trained on, ()."""
    inputs = {"color_jitter": sample_view_jitter(generator, config)}
    if config.single_mask:
        inputs["mask_choice"] = torch.randint(config.num_masks, (), generator=generator)
    return inputs


def occlusion_step(accelerator, model, optimizer, micro_batches) -> dict[str, torch.Tensor]:
    """ADIOS's max step: the occlusion model's own optimizer steps on `phase="occlusion"` over the micro-batches
    ((batch, weight) pairs) the encoder side just stepped on, so it faces the updated encoder, as in the reference.

    DDP synchronises gradients on the last micro-batch only; the loss is scaled like the main one (accelerate
    divides by the accumulation steps). Every parameter takes part in these backward passes, the encoder side's too:
    their gradients are dropped afterwards rather than excluded with requires_grad, which DDP does not allow to
    change after wrapping. A non-finite loss on any rank skips the step on every rank."""
    optimizer.zero_grad(set_to_none=True)
    total, metrics = None, {}
    for i, (batch, weight) in enumerate(micro_batches):
        sync = i == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            out = model(**batch, phase="occlusion")
            accelerator.backward(out.loss * weight)
        areas = out.masks.detach().float().mean(dim=(-2, -1))  # (B, N)
        batch_metrics = {
            "occlusion_loss": out.loss.detach(),
            "mask_area_min": areas.min(dim=1).values.mean(),
            "mask_area_max": areas.max(dim=1).values.mean(),
        }
        total = out.loss.detach().float() if total is None else total + out.loss.detach().float()
        for name, value in batch_metrics.items():
            metrics[name] = metrics.get(name, 0) + value.detach().float() / len(micro_batches)
    if accelerator.reduce((~torch.isfinite(total)).float(), "sum").item() > 0:
        logger.warning("non-finite loss of the occlusion model; its update skipped")
        metrics = {}
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    accelerator.unwrap_model(model).zero_grad(set_to_none=True)  # the encoder side's gradients from these passes
    return metrics


METHOD = MethodSpec(
    name="adios",
    auto_classes={
        "AutoConfig": ADIOSConfig,
        "AutoModel": ADIOSModel,
        "AutoModelForPreTraining": ADIOSForPreTraining,
        "AutoModelForImageClassification": ADIOSForImageClassification,
    },
    card=MethodCard(
        display_name="ADIOS",
        paper_title="Adversarial Masking for Self-Supervised Learning (Shi et al., ICML 2022)",
        paper_url="https://arxiv.org/abs/2201.13100",
        paragraph=(
            "ADIOS trains an occlusion model (a U-Net) adversarially against the image encoder: the occlusion "
            "model splits each image into soft masks, the encoder minimises a SimCLR, BYOL or SimSiam objective "
            "between an image and its masked versions, and the occlusion model maximises it under a sparsity "
            "penalty that keeps every mask from being empty or full."
        ),
        bibtex="""@inproceedings{shi2022adversarial,
  title     = {Adversarial Masking for Self-Supervised Learning},
  author    = {Shi, Yuge and Siddharth, N. and Torr, Philip H. S. and Kosiorek, Adam R.},
  booktitle = {ICML},
  year      = {2022}
}""",
        target=lambda config: f"{config.objective} similarity between an image and its adversarially occluded view",
        architecture=lambda config: (
            (
                "Masking",
                f"learned: {config.num_masks} masks from an occlusion U-Net, "
                + ("one mask per image (ADIOS-s)" if config.single_mask else "all masks"),
            ),
        ),
        limitations=(
            "The checkpoint's encoder is what transfers; the occlusion model is kept in the weights for "
            "continued training and for mask pictures.",
        ),
    ),
    paper=Recipe(base_lr=1e-3),
    # Small data: ADIOS-s (one mask of the N per image and step, the paper's cheaper variant): 5x less work per step
    # than all six masks. Base lr 1e-3, as for C-MAE: in 150 steps the contrastive loss falls from 2.79 to 0.64, and
    # at 1e-2 only from 4.14 to 1.80 (RESULTS.md, issue 16).
    small=Recipe(
        base_lr=1e-3,
        config=dict(projection_hidden_size=512, projection_size=128, prediction_hidden_size=256, single_mask=True),
        epochs=50,
    ),
    betas=(0.9, 0.999),
    crop_scale=(0.08, 1.0),  # SimCLR's crop
    sample_inputs=sample_adios_inputs,
    picture=Picture(
        kind="masks",
        file="masks.png",
        alt="Occlusion masks",
        caption="Per row: the image, its partition into the occlusion model's masks (one colour per mask), then each "
        "mask over the image.",
    ),
    tiny_config=dict(
        **TINY_VIT,
        projection_hidden_size=64,
        projection_size=16,
        prediction_hidden_size=32,
        num_masks=3,
        occlusion_base_channels=8,
    ),
    adversary=Adversary(
        parameters=lambda model: model.occlusion_parameters(),
        learning_rate=lambda config: config.occlusion_learning_rate,
        step=occlusion_step,
        main_inputs={"phase": "encoder"},
    ),
)

__all__ = [
    "METHOD",
    "ADIOSForPreTrainingOutput",
    "ADIOSConfig",
    "ADIOSPreTrainedModel",
    "ADIOSModel",
    "ADIOSForPreTraining",
    "ADIOSForImageClassification",
    "OcclusionModel",
    "occlusion_step",
    "sample_adios_inputs",
]
