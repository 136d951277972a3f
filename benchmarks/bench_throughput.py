"""Train-step throughput and peak memory of hf_mim's methods against their transformers peers, in one run:

- MAE: `MAEForPreTraining` vs `ViTMAEForPreTraining` (MAE's 8x512 decoder, mask ratio 0.75, norm_pix_loss);
- SimMIM: `SimMIMForPreTraining` vs `ViTForMaskedImageModeling` (mask patches of 32 px, ratio 0.6);
- BEiT: `BEiTForPreTraining` vs `BeitForMaskedImageModeling` (block masks, 40%, vocabulary 8192, LayerScale 0.1,
  absolute position embeddings on both sides).

Encoders have the same dimensions (ViT-S/16 at 224 px by default). MAE and SimMIM pairs have identical weights
(the transformers model randomly initialised and converted with hf_mim's converter) and their losses on the same
batch and mask must agree to 1e-5 before anything is timed. BEiT's architectures differ in details (transformers'
BEiT has an extra LayerNorm before its head; hf_mim's computes its targets with its frozen tokenizer), so that pair
has equal sizes, not equal weights: transformers' model is given the labels, and hf_mim's is timed twice, given the
same labels (`hf_mim`), and computing them with its tokenizer inside the step (`hf_mim+tokenizer`).

A step is forward, backward and an AdamW step (same optimizer settings for all). Steps are interleaved
(A B, B A, A B, ...) after warm-up, and medians are reported, so that drift on a noisy machine hits all alike.

Peak memory is measured in a fresh subprocess per model: on CPU, the growth of the peak resident set size
(VmHWM) over the process's size after imports, through model construction and three training steps; on CUDA,
torch.cuda.max_memory_allocated.

    python benchmarks/bench_throughput.py                       # CPU, ViT-S/16, batch 8: MAE, SimMIM, BEiT
    python benchmarks/bench_throughput.py --methods mae --rounds 16
    python benchmarks/bench_throughput.py --device cuda --batch-size 128 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

SIZES = {
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
DECODER = dict(
    decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16, decoder_intermediate_size=2048
)
METHODS = ("mae", "simmim", "beit")
VOCAB = 8192


def dims_for(method: str, size: str, image_size: int, patch_size: int) -> dict:
    dims = dict(image_size=image_size, patch_size=patch_size, **SIZES[size], layer_norm_eps=1e-6)
    if method == "mae":
        dims.update(DECODER, mask_ratio=0.75, norm_pix_loss=True)
    return dims


def build_models(method: str, size: str, image_size: int, patch_size: int) -> dict:
    """{name: model} for one method: hf_mim's (with the transformers model's weights where the layouts match) and
    transformers'."""
    import hf_mim  # noqa: F401
    from hf_mim.convert import _load, _transformers_to_hf_mim

    dims = dims_for(method, size, image_size, patch_size)
    torch.manual_seed(0)
    if method == "mae":
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        from hf_mim.modeling.backbone import sincos_2d_position_embedding
        from hf_mim.modeling.mae import MAEConfig, MAEForPreTraining

        theirs = ViTMAEForPreTraining(ViTMAEConfig(**dims, attn_implementation="sdpa"))
        grid = (image_size // patch_size,) * 2
        with torch.no_grad():  # transformers 5 leaves fresh position tables at zero; give both the real ones
            table = sincos_2d_position_embedding(dims["hidden_size"], grid)[None]
            theirs.vit.embeddings.position_embeddings.copy_(table)
            theirs.decoder.decoder_pos_embed.copy_(sincos_2d_position_embedding(512, grid)[None])
        config = MAEConfig(**dims)
        ours = _load(MAEForPreTraining, config, _transformers_to_hf_mim(theirs.state_dict(), config))
        return {"hf_mim": ours, "transformers": theirs}
    if method == "simmim":
        from transformers import ViTConfig, ViTForMaskedImageModeling

        from hf_mim.modeling.simmim import SimMIMConfig, SimMIMForPreTraining

        theirs = ViTForMaskedImageModeling(ViTConfig(**dims, encoder_stride=patch_size, attn_implementation="sdpa"))
        config = SimMIMConfig(**dims, position_embedding_type="learned", mask_patch_size=mask_patch_size(dims))
        ours = _load(SimMIMForPreTraining, config, _transformers_to_hf_mim(theirs.state_dict(), config))
        return {"hf_mim": ours, "transformers": theirs}
    from transformers import BeitConfig, BeitForMaskedImageModeling

    from hf_mim.modeling.beit import BEiTConfig, BEiTForPreTraining

    theirs = BeitForMaskedImageModeling(
        BeitConfig(
            **dims,
            vocab_size=VOCAB,
            use_mask_token=True,
            use_absolute_position_embeddings=True,
            use_relative_position_bias=False,
            use_shared_relative_position_bias=False,
            layer_scale_init_value=0.1,
            attn_implementation="sdpa",
        )
    )
    ours = BEiTForPreTraining(BEiTConfig(**dims, vocab_size=VOCAB, layer_scale_init_value=0.1))
    return {"hf_mim": ours, "hf_mim+tokenizer": ours, "transformers": theirs}


def mask_patch_size(dims: dict) -> int:
    """SimMIM's 32 px mask squares where they tile the image, else plain patches."""
    return 32 if dims["image_size"] % 32 == 0 and 32 % dims["patch_size"] == 0 else dims["patch_size"]


def batch_for(args, device) -> dict:
    from hf_mim.modeling.masking import MaskingSpec

    g = torch.Generator().manual_seed(1)
    grid = (args.image_size // args.patch_size,) * 2
    length = grid[0] * grid[1]
    scale = mask_patch_size(dims_for("simmim", args.size, args.image_size, args.patch_size)) // args.patch_size
    batch = {
        "pixel_values": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g),
        "noise": torch.rand(args.batch_size, length, generator=g),
        "labels": torch.randint(0, VOCAB, (args.batch_size, length), generator=g),
        "simmim_mask": MaskingSpec("mask_patch", 0.6, scale=scale).sample_batch(args.batch_size, grid, g),
        "beit_mask": MaskingSpec("block", 0.4).sample_batch(args.batch_size, grid, g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def inputs_for(method: str, name: str, batch: dict) -> dict:
    """The keyword arguments of one model's forward."""
    if method == "mae":
        return {"pixel_values": batch["pixel_values"], "noise": batch["noise"]}
    mask = batch[f"{method}_mask"]
    inputs = {"pixel_values": batch["pixel_values"], "bool_masked_pos": mask}
    if method == "beit" and name == "hf_mim":
        inputs["labels"] = batch["labels"]
    elif method == "beit" and name == "transformers":
        inputs["labels"] = batch["labels"][mask]  # transformers takes the masked positions' ids only
    return inputs


def make_step(model, device, dtype, compile_model):
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    forward = torch.compile(model) if compile_model else model
    enabled = dtype != torch.float32
    autocast = torch.autocast(device.type, dtype=dtype) if enabled else torch.autocast(device.type, enabled=False)

    def step(inputs):
        with autocast:
            loss = forward(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, inputs, device) -> float:
    sync(device)
    start = time.perf_counter()
    step(inputs)
    sync(device)
    return time.perf_counter() - start


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB. VmHWM (peak RSS) belongs to the address space and so starts afresh at
    exec; ru_maxrss would not do here, as Linux carries it over from the parent across fork and exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(args) -> None:
    """Runs in a subprocess: peak memory of one model's training steps."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    method, name = args.memory_of.split(":")
    base_rss = _status_kib("VmRSS")
    model = build_models(method, args.size, args.image_size, args.patch_size)[name]
    inputs = inputs_for(method, name, batch_for(args, device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = make_step(model, device, dtype, args.compile)
    for _ in range(3):
        step(inputs)
    sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (_status_kib("VmHWM") - base_rss) * 1024
    print(json.dumps({"peak_bytes": peak}))


def measure_memory(args, which: str) -> float:
    cmd = [sys.executable, __file__, "--memory-of", which] + [a for a in sys.argv[1:] if a != "--skip-memory"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["peak_bytes"] / 2**20


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers

    desc = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, transformers {transformers.__version__}"
    if torch.cuda.is_available():
        desc += f", {torch.cuda.get_device_name()}"
    return desc


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bench_method(method: str, args, device, dtype, batch: dict) -> None:
    models = build_models(method, args.size, args.image_size, args.patch_size)
    inputs = {name: inputs_for(method, name, batch) for name in models}
    with torch.no_grad():
        losses = {name: model.to(device).eval()(**inputs[name]).loss for name, model in models.items()}
    if method != "beit" and not torch.allclose(losses["hf_mim"], losses["transformers"], rtol=0, atol=1e-5):
        # equal numerics first, or the timing means nothing
        raise SystemExit(f"{method}: losses differ: { {k: v.item() for k, v in losses.items()} }")

    steps = {name: make_step(model, device, dtype, args.compile) for name, model in models.items()}
    for name, step in steps.items():
        for _ in range(args.warmup):
            step(inputs[name])
    times = {name: [] for name in steps}
    order = list(steps)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(steps[name], inputs[name], device))

    memory = {} if args.skip_memory else {name: measure_memory(args, f"{method}:{name}") for name in steps}
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"\n{method}: ViT-{args.size[0].upper()}/{args.patch_size} {args.image_size}px, batch {args.batch_size}, "
        f"{args.device} {args.dtype}{' compiled' if args.compile else ''}, {args.rounds} interleaved steps each "
        f"after {args.warmup} warm-up; initial losses "
        + ", ".join(f"{name} {loss.item():.6f}" for name, loss in losses.items())
    )
    print("| model | median step (s) | images/s | peak memory (MiB) |")
    print("| --- | ---: | ---: | ---: |")
    for name in steps:
        mem = f"{memory[name]:.0f}" if name in memory else "-"
        print(f"| {name} | {median[name]:.3f} | {args.batch_size / median[name]:.2f} | {mem} |")
    for name in steps:
        if name != "transformers":
            print(f"speed-up {name} / transformers: {median['transformers'] / median[name]:.2f}x")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10, help="measured steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="autocast dtype")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        return memory_child(args)

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    batch = batch_for(args, device)
    for method in args.methods:
        bench_method(method, args, device, dtype, batch)


if __name__ == "__main__":
    main()
