"""The optimizer and learning-rate schedule of `hf-mim pretrain`, the cosine schedule shared with the linear probe."""

from __future__ import annotations

import math

import torch


def param_groups(model, weight_decay: float, only=None, exclude=()) -> list[dict]:
    """Weight decay on matrices only (nanoGPT / MAE): no decay on biases, norms, tokens and position tables.
    `only` / `exclude`: parameters to keep to / to leave out (a second optimizer's)."""
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    only = None if only is None else {id(p) for p in only}
    exclude = {id(p) for p in exclude}
    decay, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in exclude and (only is None or id(param) in only):
            (rest if name in no_decay or param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def method_param_groups(model, spec, config, weight_decay: float) -> tuple[list[dict], list[dict], float | None]:
    """(the model's groups, its method's adversary's groups, the adversary's learning rate): `param_groups` with the
    adversary's parameters (ADIOS's occlusion model, MAE's learned masks) apart from the rest. An adversary's groups
    are empty, and its rate None, for a method or config without one. `hf-mim pretrain` gives the adversary an
    optimizer of its own; `MIMTrainer` puts its groups into Trainer's optimizer at its rate."""
    adversary = spec.adversary_for(config) if spec is not None else None
    if adversary is None:
        return param_groups(model, weight_decay), [], None
    theirs = adversary.parameters(model)
    groups = param_groups(model, weight_decay, exclude=theirs)
    return groups, param_groups(model, weight_decay, only=theirs), adversary.learning_rate(config)


def adamw(groups: list[dict], **kwargs) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (one kernel over all tensors instead of a loop of elementwise ops per tensor),
    the default of transformers' Trainer too. The parameters are still on the CPU here, where torch also has the
    fused kernel; it falls back to the per-tensor loop for dtypes or devices the kernel lacks."""
    params = [p for group in groups for p in group["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, fused=fused or None, **kwargs)


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up over `warmup_steps` (from 1 / warmup_steps of the peak), then a cosine decay to zero at
    `total_steps`; stepped once per optimizer step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


__all__ = ["adamw", "cosine_with_warmup", "method_param_groups", "param_groups"]
