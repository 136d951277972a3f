"""An exponential-moving-average teacher that training wrappers never see.

The teacher is a float32 copy of some of a model's parts (for C-MAE: the encoder, its mask token and the projector),
held in a plain attribute rather than as a submodule. So DDP, FSDP and DeepSpeed neither wrap, shard, cast nor
synchronise it, `state_dict()` and `save_pretrained` hold the student alone, and every rank updates its own copy
with the same arithmetic from the same (synchronised) student, which keeps the copies identical. `hf-mim pretrain`
builds it from the full weights before the model is prepared; under FSDP2 each update gathers the student's
sharded parameters whole.

It is updated once per optimizer step by whoever owns the loop: `hf-mim pretrain` (the method's
`after_optimizer_step`) or `EMATeacherCallback` under `transformers.Trainer`. Its state goes into checkpoints
through `state_dict` / `load_state_dict` (accelerate's `register_for_checkpointing`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from .backbone import config_error

MOMENTUM_SCHEDULES = ("constant", "cosine")


class EMATeacher:
    def __init__(
        self,
        student: nn.Module,
        names: Sequence[str],
        momentum: float = 0.996,
        momentum_end: float = 1.0,
        schedule: str = "constant",
    ):
        if schedule not in MOMENTUM_SCHEDULES:
            raise ValueError(f"schedule={schedule!r} is invalid: one of {MOMENTUM_SCHEDULES}")
        self.names = tuple(names)
        self.momentum, self.momentum_end, self.schedule = momentum, momentum_end, schedule
        self.total_steps: int | None = None
        self.num_updates = 0
        container = nn.Module()
        for name in self.names:
            part = getattr(student, name)
            setattr(
                container,
                name,
                copy.deepcopy(part) if isinstance(part, nn.Module) else nn.Parameter(part.detach().clone()),
            )
        self.module = container.float().requires_grad_(False).eval()

    def _student_tensors(self, student: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        def ours(name: str) -> bool:
            return any(name == n or name.startswith(n + ".") for n in self.names)

        params = {k: v for k, v in student.named_parameters() if ours(k)}
        buffers = {k: v for k, v in student.named_buffers() if ours(k)}
        return params, buffers

    def current_momentum(self) -> float:
        """BYOL's schedule when `cosine`: from `momentum` at step 0 to `momentum_end` at `total_steps`."""
        if self.schedule == "constant" or not self.total_steps:
            return self.momentum
        progress = min(1.0, self.num_updates / self.total_steps)
        return self.momentum_end - (self.momentum_end - self.momentum) * (math.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step towards the (unwrapped) student: teacher = m * teacher + (1 - m) * student, in float32."""
        momentum = self.current_momentum()
        params, buffers = self._student_tensors(student)
        for name, teacher_param in self.module.named_parameters():
            student = _whole(params[name].detach())
            teacher_param.lerp_(student.to(teacher_param.device, torch.float32), 1.0 - momentum)
        for name, teacher_buffer in self.module.named_buffers():
            teacher_buffer.copy_(_whole(buffers[name]))
        self.num_updates += 1

    def to(self, device) -> EMATeacher:
        self.module.to(device)  # dtype stays float32
        return self

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.total_steps = state.get("total_steps")


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of an FSDP2-sharded parameter (a DTensor: gathered from every rank, so every rank must call
    this alike, as every rank updates its teacher every step); any other tensor as it is."""
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if full_tensor is not None else tensor


class EMATeacherFields:
    r"""
    The EMA teacher's config fields, declared here once for every config whose model has a teacher; each config
    gives its own defaults in its signature and passes the values to `set_ema_fields`.

    Args:
        ema_momentum (`float`, *optional*):
            Momentum of the target branch, in [0, 1].
        ema_momentum_schedule (`str`, *optional*):
            `"constant"`, or `"cosine"`: raised from `ema_momentum` to `ema_momentum_end` over training (BYOL).
        ema_momentum_end (`float`, *optional*, defaults to 1.0):
            Final momentum of the cosine schedule.
    """

    def set_ema_fields(self, ema_momentum: float, ema_momentum_schedule: str, ema_momentum_end: float) -> None:
        self.ema_momentum = ema_momentum
        self.ema_momentum_schedule = ema_momentum_schedule
        self.ema_momentum_end = ema_momentum_end


def validate_ema_fields(config) -> None:
    """`ema_momentum` and `ema_momentum_end` (in [0, 1]) and `ema_momentum_schedule` of a config with a teacher."""
    for field in ("ema_momentum", "ema_momentum_end"):
        if not 0.0 <= getattr(config, field) <= 1.0:
            raise config_error(field, getattr(config, field), "a float in [0, 1]")
    if config.ema_momentum_schedule not in MOMENTUM_SCHEDULES:
        raise config_error("ema_momentum_schedule", config.ema_momentum_schedule, f"one of {MOMENTUM_SCHEDULES}")


def build_teacher(model: nn.Module, names: Sequence[str]) -> EMATeacher:
    """An `EMATeacher` over `names` of `model`, with the config's `ema_momentum`, `_end` and `_schedule`."""
    config = model.config
    return EMATeacher(
        model,
        names,
        momentum=config.ema_momentum,
        momentum_end=config.ema_momentum_end,
        schedule=config.ema_momentum_schedule,
    )


__all__ = ["EMATeacherFields", "EMATeacher", "MOMENTUM_SCHEDULES", "build_teacher", "validate_ema_fields"]
