"""Process groups: the setups refused before they could train wrongly, the CPU (gloo) group, the check that
every process ends with the same weights, and a teardown that does not hang. Shared by `hf-mim pretrain`,
`MIMTrainer` and `hf-mim evaluate`.
"""

from __future__ import annotations

import gc
import os
import platform

import torch
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, broadcast_object_list


def end_training(accelerator) -> None:
    """Tear the process group down, once the caller has dropped its model, optimizers and loader.

    DDP's reducer must not hold the last reference to the process group: torch frees it from there with the GIL
    held, while a gloo worker thread, still releasing the last barrier's work, waits for the GIL (pytorch#56297).
    Freed here, the reducer lets go first; destroy_process_group then frees the group with the GIL released.
    Without this, about 1 in 20 two-process CPU runs hung for good after saving."""
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("true", "1", "yes")


def check_distributed_setup(spec, config=None, teacher: bool = False) -> None:
    """Refuse, in one line, the accelerate setups that would train wrongly, as `accelerate launch` announces them in
    the environment (ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED, FSDP_VERSION, ACCELERATE_DEEPSPEED_ZERO_STAGE):

    - FSDP or DeepSpeed on CPU processes: accelerate 1.x shards only on accelerators and would quietly train with
      DDP while the config said otherwise;
    - a `config` with an adversary (ADIOS's occlusion model, MAE's learned masks) under DeepSpeed: the adversary
      has its own optimizer, and a DeepSpeed engine drives exactly one, so its updates would be folded into the
      model's;
    - `teacher` (C-MAE, ADIOS-BYOL's EMA teacher) under FSDP1 or ZeRO-3: the teacher is updated from the student's
      parameters, which there are flat local shards; FSDP2's DTensors are gathered whole for it."""
    fsdp, deepspeed = _env_flag("ACCELERATE_USE_FSDP"), _env_flag("ACCELERATE_USE_DEEPSPEED")
    engine = "FSDP" if fsdp else "DeepSpeed"
    if (fsdp or deepspeed) and needs_cpu_process_group():
        raise ValueError(
            f"{engine} on processes without GPUs is refused: accelerate shards only on accelerators and would train "
            "this run with DDP instead. Launch with --multi_gpu (DDP) on CPUs, or run on GPUs"
        )
    if deepspeed and config is not None and spec.adversary_for(config) is not None:
        raise ValueError(
            f"--method {spec.name} under DeepSpeed is refused: its adversary trains with a second optimizer and a "
            "DeepSpeed engine drives one. Use DDP or FSDP (accelerate config)"
        )
    if teacher and fsdp and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ValueError(
            f"--method {spec.name} under FSDP1 is refused: its EMA teacher is updated from whole parameters, which "
            "FSDP1 keeps as flat shards. Set fsdp_version: 2 in the accelerate config"
        )
    if teacher and deepspeed and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        raise ValueError(
            f"--method {spec.name} under ZeRO stage 3 is refused: its EMA teacher is updated from whole parameters, "
            "which ZeRO-3 partitions. Use ZeRO stage 1 or 2, or FSDP2"
        )


def fresh_accelerate_state() -> None:
    """Forget the accelerate state an earlier run in this process left: accelerate keeps one per process and refuses
    an `Accelerator` with another mixed precision ("AcceleratorState has already been initialized"), so a second
    `pretrain` call in a notebook would fail. Launched processes (WORLD_SIZE > 1) run once and keep theirs."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return

    AcceleratorState._reset_state(reset_partial_state=True)


def needs_cpu_process_group() -> bool:
    """Whether to ask accelerate for a CPU (gloo) process group. accelerate forms one only when told the run is on
    CPU; launched by torchrun or `accelerate launch --multi_gpu` on a machine without GPUs, each process would
    otherwise run alone, all of them writing the same output folder."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def broadcast_from_main(accelerator, value):
    """`value` of the main process, on every process (and a barrier: every process waits for the main one)."""
    if accelerator.num_processes == 1:
        return value

    return broadcast_object_list([value])[0]


def parameters_are_sharded(accelerator) -> bool:
    """FSDP and DeepSpeed hold each parameter in shards across the processes (ZeRO-1/2 do not, but telling the
    stages apart buys nothing here: the gathered copy is right for every stage)."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _tensors_of(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state] if state.is_floating_point() else []
    if isinstance(state, dict):
        return [t for value in state.values() for t in _tensors_of(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in _tensors_of(value)]
    return []


def ranks_in_sync(accelerator, model, extra_state=()) -> bool:
    """Every process holds the same parameters and floating-point buffers (EMA codebooks, position tables): a
    float64 checksum per process, compared."""
    if accelerator.num_processes == 1 or accelerator.distributed_type.name not in ("MULTI_CPU", "MULTI_GPU"):
        return True
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    unwrapped = accelerator.unwrap_model(model)
    tensors = list(unwrapped.parameters()) + [b for b in unwrapped.buffers() if b.is_floating_point()]
    tensors += [t for obj in extra_state for t in _tensors_of(obj.state_dict())]  # an EMA teacher, for one
    for param in tensors:
        p = param.detach().to(accelerator.device).double()
        total += torch.stack([p.sum(), (p * p).sum()])
    sums = accelerator.gather(total[None]).cpu()
    return bool(torch.equal(sums, sums[:1].expand_as(sums)))


def hardware_description(accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    cpu = platform.processor() or platform.machine()
    # the kernels torch picks for the CPU (AVX2, AVX512) and the thread count decide the order of a matmul's sums:
    # a run reproduces bit for bit only where both are the same
    cpu = f"{cpu} ({torch.backends.cpu.get_cpu_capability()})"
    threads = torch.get_num_threads()
    return f"{accelerator.num_processes} process(es) on {cpu}, {os.cpu_count()} CPUs, {threads} torch threads each"
