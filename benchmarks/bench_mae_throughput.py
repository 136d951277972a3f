"""Train-step throughput and peak memory: hf_mim MAEForPreTraining vs transformers ViTMAEForPreTraining.

Both models have identical dimensions (ViT-S/16 encoder, MAE's 8x512 decoder, 224 px, mask ratio 0.75,
norm_pix_loss) and identical weights: the transformers model is randomly initialised and converted with
hf_mim's converter, and their losses on the same batch and noise must agree to 1e-5 before anything is timed.
A step is forward, backward and an AdamW step (same optimizer settings for both). Steps are interleaved
(A B, B A, A B, ...) after warm-up, and medians are reported, so that drift on a noisy machine hits both alike.

Peak memory is measured in a fresh subprocess per model: on CPU, the growth of the peak resident set size
(VmHWM) over the process's size after imports, through model construction and three training steps; on CUDA,
torch.cuda.max_memory_allocated.

    python benchmarks/bench_mae_throughput.py                # CPU, ViT-S/16, batch 8
    python benchmarks/bench_mae_throughput.py --device cuda --batch-size 128 --dtype bf16
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


def build_pair(size: str, image_size: int, patch_size: int):
    """(hf_mim model, transformers model) with the same weights."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    import hf_mim  # noqa: F401
    from hf_mim.convert import _load, _transformers_to_hf_mim
    from hf_mim.modeling.backbone import sincos_2d_position_embedding
    from hf_mim.modeling.mae import MAEConfig

    dims = dict(
        image_size=image_size, patch_size=patch_size, **SIZES[size], **DECODER, mask_ratio=0.75, norm_pix_loss=True
    )
    torch.manual_seed(0)
    theirs = ViTMAEForPreTraining(ViTMAEConfig(**dims, layer_norm_eps=1e-6, attn_implementation="sdpa"))
    grid = (image_size // patch_size,) * 2
    with torch.no_grad():  # transformers 5 leaves fresh position tables at zero; give both the real ones
        theirs.vit.embeddings.position_embeddings.copy_(sincos_2d_position_embedding(dims["hidden_size"], grid)[None])
        theirs.decoder.decoder_pos_embed.copy_(sincos_2d_position_embedding(512, grid)[None])
    config = MAEConfig(**dims, layer_norm_eps=1e-6)
    ours = _load(config, _transformers_to_hf_mim(theirs.state_dict(), config), encoder_only=False)
    return ours, theirs


def build_one(which: str, size: str, image_size: int, patch_size: int):
    dims = dict(
        image_size=image_size, patch_size=patch_size, **SIZES[size], **DECODER, mask_ratio=0.75, norm_pix_loss=True
    )
    if which == "hf_mim":
        from hf_mim.modeling.mae import MAEConfig, MAEForPreTraining

        return MAEForPreTraining(MAEConfig(**dims, layer_norm_eps=1e-6))
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    return ViTMAEForPreTraining(ViTMAEConfig(**dims, layer_norm_eps=1e-6, attn_implementation="sdpa"))


def make_step(model, device, dtype, compile_model):
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    forward = torch.compile(model) if compile_model else model
    autocast = (
        torch.autocast(device.type, dtype=dtype)
        if dtype != torch.float32
        else torch.autocast(device.type, enabled=False)
    )

    def step(pixel_values, noise):
        with autocast:
            loss = forward(pixel_values=pixel_values, noise=noise).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, batch, device) -> float:
    sync(device)
    start = time.perf_counter()
    step(*batch)
    sync(device)
    return time.perf_counter() - start


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB. VmHWM (peak RSS) belongs to the address space and so starts afresh at
    exec; ru_maxrss would not do here, as Linux carries it over from the parent across fork and exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(args) -> None:
    """Runs in a subprocess: peak memory of one model's training steps."""
    device, dtype = (
        torch.device(args.device),
        getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[args.dtype]),
    )
    torch.set_num_threads(args.threads)
    base_rss = _status_kib("VmRSS")
    model = build_one(args.memory_of, args.size, args.image_size, args.patch_size)  # weights do not matter here
    batch = batch_for(args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = make_step(model, device, dtype, args.compile)
    for _ in range(3):
        step(*batch)
    sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (_status_kib("VmHWM") - base_rss) * 1024
    print(json.dumps({"peak_bytes": peak}))


def batch_for(args, device):
    g = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(device)
    noise = torch.rand(args.batch_size, (args.image_size // args.patch_size) ** 2, generator=g).to(device)
    return pixel_values, noise


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10, help="measured steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-of", choices=["hf_mim", "transformers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        return memory_child(args)

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.set_num_threads(args.threads)
    ours, theirs = build_pair(args.size, args.image_size, args.patch_size)
    batch = batch_for(args, device)

    with torch.no_grad():  # equal numerics first, or the timing means nothing
        a = ours.to(device).eval()(pixel_values=batch[0], noise=batch[1]).loss
        b = theirs.to(device).eval()(pixel_values=batch[0], noise=batch[1]).loss
    if not torch.allclose(a, b, rtol=0, atol=1e-5):
        raise SystemExit(f"losses differ: hf_mim {a.item()} vs transformers {b.item()}")

    steps = {
        "hf_mim": make_step(ours, device, dtype, args.compile),
        "transformers": make_step(theirs, device, dtype, args.compile),
    }
    for step in steps.values():
        for _ in range(args.warmup):
            step(*batch)
    times = {name: [] for name in steps}
    order = list(steps)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(steps[name], batch, device))

    memory = {} if args.skip_memory else {name: measure_memory(args, name) for name in steps}
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"machine: {machine()}")
    print(
        f"MAE ViT-{args.size[0].upper()}/{args.patch_size} {args.image_size}px, batch {args.batch_size}, "
        f"{args.device} {args.dtype}{' compiled' if args.compile else ''}, {args.rounds} interleaved steps each "
        f"after {args.warmup} warm-up; initial loss hf_mim {a.item():.6f} transformers {b.item():.6f}"
    )
    print("| model | median step (s) | images/s | peak memory (MiB) |")
    print("| --- | ---: | ---: | ---: |")
    for name in steps:
        mem = f"{memory[name]:.0f}" if name in memory else "-"
        print(f"| {name} | {median[name]:.3f} | {args.batch_size / median[name]:.2f} | {mem} |")
    print(f"speed-up hf_mim / transformers: {median['transformers'] / median['hf_mim']:.2f}x")


if __name__ == "__main__":
    main()
