"""Train-step throughput, FLOP utilisation and peak memory of hf_mim's methods against their transformers peers.

One command measures, at ViT-S/16 and ViT-B/16 (224 px), each method against the transformers model of identical
dimensions, in every precision/compile variant asked for, and the input pipeline alone on the same machine:

- MAE: `MAEForPreTraining` vs `ViTMAEForPreTraining` (MAE's 8x512 decoder, mask ratio 0.75, norm_pix_loss);
- SimMIM: `SimMIMForPreTraining` vs `ViTForMaskedImageModeling` (mask patches of 32 px, ratio 0.6);
- BEiT: `BEiTForPreTraining` vs `BeitForMaskedImageModeling` (block masks, 40%, vocabulary 8192, LayerScale 0.1,
  absolute position embeddings on both sides).

MAE and SimMIM pairs have identical weights (the transformers model randomly initialised and converted with
hf_mim's converter) and their fp32 losses on the same batch and mask must agree to 1e-5 before anything is timed.
BEiT's architectures differ in details (transformers' BEiT has an extra LayerNorm before its head; hf_mim's computes
its targets with its frozen tokenizer), so that pair has equal sizes, not equal weights: transformers' model is
given the labels, and hf_mim's is timed twice, given the same labels (`hf_mim`), and computing them with its
tokenizer inside the step (`hf_mim+tokenizer`).

A step is forward, backward and a fused AdamW step (transformers' Trainer default; the same settings for all).
Variants: `fp32`, `bf16` (autocast), each optionally `+compile` (`torch.compile` of the model; the same for both
sides). transformers models use SDPA attention. Within a variant, models are stepped interleaved (A B, B A, ...)
after warm-up, and medians are reported, so that drift on a noisy machine hits all alike.

FLOPs are counted once per model with `torch.utils.flop_counter` over a forward and backward (matmuls, convolutions
and attention; the optimizer and elementwise work are not counted). Achieved TFLOP/s is that over the median
step; "vs GEMM" divides it by the rate of one large matmul measured on the same device in the same precision (what
the hardware's GEMMs actually deliver); MFU divides it by the nominal peak of known GPUs (or `--peak-tflops`).

Peak memory is measured in a fresh subprocess per model and variant: on CPU, the growth of the peak resident set
size (VmHWM) over the process's size after imports, through model construction and two training steps; on CUDA,
torch.cuda.max_memory_allocated over the same.

    python benchmarks/bench_throughput.py                          # CPU: ViT-S and ViT-B, fp32 and bf16, batch 8
    python benchmarks/bench_throughput.py --sizes small --methods mae --variants fp32 fp32+compile
    python benchmarks/bench_throughput.py --device cuda            # bf16 and bf16+compile, batch 128
    python benchmarks/bench_throughput.py --record                 # also write the table into RESULTS.md
    python benchmarks/bench_throughput.py --adversaries --sizes small  # MAE's learned masks and ADIOS-s, priced

`--adversaries` prices the methods that train a second model against the first, on the same encoder: MAE with
random masks, MAE with learned masks (its mask model's forward, backward and own AdamW step included), and ADIOS-s
(SimCLR; its encoder step, then its occlusion model's step on the same batch, as `hf-mim pretrain` runs them).
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
        config = SimMIMConfig(
            **dims, position_embedding_type="learned", mask_patch_size=mask_patch_size(image_size, patch_size)
        )
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


def mask_patch_size(image_size: int, patch_size: int) -> int:
    """SimMIM's 32 px mask squares where they tile the image, else plain patches."""
    return 32 if image_size % 32 == 0 and 32 % patch_size == 0 else patch_size


def batch_for(args, device) -> dict:
    from hf_mim.modeling.masking import MaskingSpec

    g = torch.Generator().manual_seed(1)
    grid = (args.image_size // args.patch_size,) * 2
    length = grid[0] * grid[1]
    scale = mask_patch_size(args.image_size, args.patch_size) // args.patch_size
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


VARIANTS = ("fp32", "bf16", "fp32+compile", "bf16+compile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: Nominal dense bf16 tensor-core peaks (TFLOP/s), by a substring of torch.cuda.get_device_name(); first match wins.
GPU_PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))


def parse_variant(variant: str) -> tuple[torch.dtype, bool]:
    precision, _, extra = variant.partition("+")
    return DTYPES[precision], extra == "compile"


def make_step(model, device, dtype, compile_model):
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    forward = torch.compile(model) if compile_model else model
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

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


def register_cpu_attention_flops() -> None:
    """torch's FLOP counter knows the CUDA attention kernels but not the CPU flash kernel SDPA runs on a CPU, which
    it would count as 0 FLOPs; give it the same formulas."""
    from torch.utils.flop_counter import (
        flop_registry,
        register_flop_formula,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    if forward in flop_registry:
        return

    @register_flop_formula(forward, get_raw=True)
    def _forward(query, key, value, *args, out_val=None, **kwargs):
        return sdpa_flop_count(query.shape, key.shape, value.shape)

    @register_flop_formula(backward, get_raw=True)
    def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs):
        return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def count_flops(model, inputs: dict, device) -> float:
    """FLOPs of one forward and backward (matmuls, convolutions, attention), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_attention_flops()

    model.to(device).train()
    counter = FlopCounterMode(display=False)
    with counter:
        model(**inputs).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def gemm_tflops(device, dtype, size: int) -> float:
    """The rate one large square matmul reaches on this device and dtype: what its GEMMs deliver in practice."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e12


def nominal_peak(device, dtype, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_PEAK_BF16_TFLOPS if key in name), None)


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB. VmHWM (peak RSS) belongs to the address space and so starts afresh at
    exec; ru_maxrss would not do here, as Linux carries it over from the parent across fork and exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(args) -> None:
    """Runs in a subprocess: peak memory of one model's training steps in one variant."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    size, method, variant, name = args.memory_of.split(":")
    dtype, compile_model = parse_variant(variant)
    base_rss = _status_kib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_models(method, size, args.image_size, args.patch_size)[name]
    inputs = inputs_for(method, name, batch_for(args, device))
    step = make_step(model, device, dtype, compile_model)
    for _ in range(2):
        step(inputs)
    sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (_status_kib("VmHWM") - base_rss) * 1024
    print(json.dumps({"peak_bytes": peak}))


def measure_memory(args, which: str) -> float:
    cmd = [sys.executable, __file__, "--memory-of", which] + child_arguments(args)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["peak_bytes"] / 2**20


def child_arguments(args) -> list[str]:
    return [
        f"--device={args.device}",
        f"--image-size={args.image_size}",
        f"--patch-size={args.patch_size}",
        f"--batch-size={args.batch_size}",
        f"--threads={args.threads}",
    ]


def machine(device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    desc = (
        f"{cpu}, {os.cpu_count()} logical CPUs, {memory:.0f} GiB, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    if device.type == "cuda":
        desc += f", {torch.cuda.get_device_name(device)}"
    return desc


def bench_group(size: str, method: str, args, device, rows: list[dict]) -> None:
    """Every variant of one method at one size; appends one row per model and variant to `rows`."""
    batch = batch_for(args, device)
    models = build_models(method, size, args.image_size, args.patch_size)
    inputs = {name: inputs_for(method, name, batch) for name in models}
    with torch.no_grad():
        losses = {name: model.to(device).eval()(**inputs[name]).loss for name, model in models.items()}
    if method != "beit" and not torch.allclose(losses["hf_mim"], losses["transformers"], rtol=0, atol=1e-5):
        # equal numerics first, or the timing means nothing
        raise SystemExit(f"{method}: losses differ: { {k: v.item() for k, v in losses.items()} }")
    flops = {name: count_flops(model, inputs[name], device) for name, model in models.items()}
    del models
    print(
        f"\n{method} ViT-{size[0].upper()}/{args.patch_size}: initial fp32 losses "
        + ", ".join(f"{name} {loss.item():.6f}" for name, loss in losses.items()),
        flush=True,
    )
    for variant in args.variants:
        dtype, compile_model = parse_variant(variant)
        models = build_models(method, size, args.image_size, args.patch_size)  # the same initial weights again
        steps = {name: make_step(model, device, dtype, compile_model) for name, model in models.items()}
        for name, step in steps.items():
            for _ in range(args.warmup):
                step(inputs[name])
        times = {name: [] for name in steps}
        order = list(steps)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                times[name].append(timed(steps[name], inputs[name], device))
        del steps, models
        median = {name: statistics.median(t) for name, t in times.items()}
        for name in times:
            memory = None if args.skip_memory else measure_memory(args, f"{size}:{method}:{variant}:{name}")
            rows.append(
                dict(
                    size=size,
                    method=method,
                    variant=variant,
                    model=name,
                    step_s=median[name],
                    images_per_s=args.batch_size / median[name],
                    speedup=median["transformers"] / median[name],
                    gflop_per_image=flops[name] / args.batch_size / 1e9,
                    tflops=flops[name] / median[name] / 1e12,
                    peak_mib=memory,
                )
            )
            print(format_row(rows[-1], args), flush=True)


def adversary_models(size: str, image_size: int, patch_size: int) -> dict:
    """{name: (model, inputs maker)} of the `--adversaries` comparison, on one encoder size."""
    from hf_mim.modeling.adios import ADIOSConfig, ADIOSForPreTraining, sample_adios_inputs
    from hf_mim.modeling.mae import MAEConfig, MAEForPreTraining, sample_mae_inputs

    dims = dims_for("mae", size, image_size, patch_size)
    encoder = {
        k: v for k, v in dims.items() if not k.startswith("decoder") and k not in ("mask_ratio", "norm_pix_loss")
    }
    torch.manual_seed(0)
    return {
        "mae, random masks": (MAEForPreTraining(MAEConfig(**dims)), sample_mae_inputs),
        "mae, learned masks": (MAEForPreTraining(MAEConfig(**dims, mask_strategy="learned")), sample_mae_inputs),
        "adios-s (simclr)": (ADIOSForPreTraining(ADIOSConfig(**encoder, single_mask=True)), sample_adios_inputs),
    }


def adversary_step(model, device, dtype):
    """One optimizer step as `hf-mim pretrain` takes it: the main AdamW, then the adversary's (MAE's mask model on the
    main backward's gradients; ADIOS's occlusion model on a second forward and backward)."""
    from hf_mim.modeling.auto import SPECS_BY_MODEL_TYPE

    model.to(device).train()
    adversary = SPECS_BY_MODEL_TYPE[model.config.model_type].adversary_for(model.config)
    theirs = {id(p) for p in adversary.parameters(model)} if adversary else set()
    settings = dict(lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    main = torch.optim.AdamW([p for p in model.parameters() if id(p) not in theirs], **settings)
    second = torch.optim.AdamW([p for p in model.parameters() if id(p) in theirs], **settings) if theirs else None
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    phases = adversary.main_inputs if adversary else {}

    def step(inputs):
        with autocast:
            loss = model(**inputs, **phases).loss
        loss.backward()
        main.step()
        main.zero_grad(set_to_none=True)
        if second is not None and adversary.replays:  # ADIOS: the occlusion model's own pass
            with autocast:
                model(**inputs, phase="occlusion").loss.backward()
            second.step()
            model.zero_grad(set_to_none=True)
        elif second is not None:
            second.step()
            second.zero_grad(set_to_none=True)
        return loss

    return step


def bench_adversaries(size: str, args, device) -> list[str]:
    """Table lines: each model's median step, and its cost over MAE with random masks."""
    from hf_mim.modeling.spec import draw_inputs

    grid = (args.image_size // args.patch_size,) * 2
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(device)
    lines = []
    for variant in args.variants:
        dtype, _ = parse_variant(variant)
        models = adversary_models(size, args.image_size, args.patch_size)
        steps, inputs = {}, {}
        for name, (model, sample) in models.items():
            torch.manual_seed(2)
            inputs[name] = {"pixel_values": pixels, **draw_inputs(sample, model.config, grid, args.batch_size, device)}
            steps[name] = adversary_step(model, device, dtype)
            for _ in range(args.warmup):
                steps[name](inputs[name])
        times = {name: [] for name in steps}
        order = list(steps)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                times[name].append(timed(steps[name], inputs[name], device))
        base = statistics.median(times["mae, random masks"])
        for name, values in times.items():
            median = statistics.median(values)
            parameters = sum(p.numel() for p in models[name][0].parameters()) / 1e6
            lines.append(
                f"| ViT-{size[0].upper()}/{args.patch_size} | {variant} | {name} | {parameters:.1f} | "
                f"{1000 * median:.0f} | {args.batch_size / median:.2f} | {100 * (median / base - 1):+.1f}% |"
            )
            print(lines[-1], flush=True)
        del steps, models
    return lines


ADVERSARY_HEADER = (
    "| encoder | variant | model | parameters (M) | median step (ms) | images/s | step time vs MAE, random masks |\n"
    "| --- | --- | --- | ---: | ---: | ---: | ---: |"
)


def format_row(row: dict, args) -> str:
    gemm = args.gemm_rates[row["variant"].split("+")[0]]
    peak = args.peaks[row["variant"].split("+")[0]]
    mfu = f"{100 * row['tflops'] / peak:.1f}%" if peak else "-"
    memory = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "-"
    speedup = f"**{row['speedup']:.2f}x**" if row["model"] != "transformers" else ""
    return (
        f"| ViT-{row['size'][0].upper()}/{args.patch_size} | {row['method']} | {row['variant']} | {row['model']} | "
        f"{1000 * row['step_s']:.0f} | {row['images_per_s']:.2f} | {speedup} | {row['gflop_per_image']:.1f} | "
        f"{row['tflops']:.3f} | {100 * row['tflops'] / gemm:.0f}% | {mfu} | {memory} |"
    )


TABLE_HEADER = (
    "| encoder | method | variant | model | median step (ms) | images/s | vs transformers | GFLOP/image | TFLOP/s "
    "| vs GEMM | MFU | peak MiB |\n| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def loader_rate(args) -> float | None:
    """Images/s of hf_mim's pretraining input pipeline alone (bench_input_pipeline's loader), or None where the
    `datasets` library is missing."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        return None
    import tempfile
    from pathlib import Path

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_input_pipeline import loader_images_per_second, write_jpegs

    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), max(256, 4 * args.batch_size))
        return loader_images_per_second(Path(tmp), args.batch_size, args.loader_workers, epochs=2)


def record(text: str, key: str) -> None:
    """Replace (or append) this device's section of RESULTS.md, between markers the script owns."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
    begin, end = f"<!-- bench_throughput:{key} -->", f"<!-- /bench_throughput:{key} -->"
    with open(path) as f:
        content = f.read()
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in content and end in content:
        content = content[: content.index(begin)] + block + content[content.index(end) + len(end) :]
    else:
        content = content.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, help="default: fp32 bf16 on CPU, bf16 bf16+compile on CUDA"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, help="default: 8 on CPU, 128 on CUDA")
    parser.add_argument("--rounds", type=int, default=8, help="measured steps per model and variant")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first (compilation happens here)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--loader-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--peak-tflops", type=float, help="nominal peak for MFU, where the GPU is not known here")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--record", action="store_true", help="write the table into benchmarks/RESULTS.md")
    parser.add_argument("--adversaries", action="store_true", help="instead: MAE's learned masks and ADIOS-s, priced")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.batch_size is None:
        args.batch_size = 128 if device.type == "cuda" else 8
    if args.memory_of:
        return memory_child(args)
    if args.variants is None:
        args.variants = ["bf16", "bf16+compile"] if device.type == "cuda" else ["fp32", "bf16"]

    torch.set_num_threads(args.threads)
    description = machine(device)
    print(f"machine: {description}", flush=True)
    if args.adversaries:
        print(ADVERSARY_HEADER, flush=True)
        table = [line for size in args.sizes for line in bench_adversaries(size, args, device)]
        text = "\n".join(
            [
                f"Command: `python benchmarks/bench_throughput.py {' '.join(sys.argv[1:])}`".replace(" --record", ""),
                "",
                f"Machine: {description}; {time.strftime('%Y-%m-%d')}",
                "",
                f"Batch {args.batch_size}, {args.image_size} px, {args.warmup} warm-up and {args.rounds} interleaved "
                "measured steps per model and variant, medians; a step includes every optimizer the run steps.",
                "",
                ADVERSARY_HEADER,
                *table,
            ]
        )
        print("\n" + text)
        if args.record:
            record(text, f"adversaries {'cuda' if device.type == 'cuda' else 'cpu'} {' '.join(args.variants)}")
        return
    precisions = sorted({v.split("+")[0] for v in args.variants})
    gemm_size = 8192 if device.type == "cuda" else 2048
    args.gemm_rates = {p: gemm_tflops(device, DTYPES[p], gemm_size) for p in precisions}
    args.peaks = {p: nominal_peak(device, DTYPES[p], args.peak_tflops) for p in precisions}
    print("GEMM rate: " + ", ".join(f"{p} {r:.3f} TFLOP/s" for p, r in args.gemm_rates.items()), flush=True)
    print(TABLE_HEADER, flush=True)

    rows: list[dict] = []
    for size in args.sizes:
        for method in args.methods:
            bench_group(size, method, args, device, rows)

    loader = None if args.skip_loader else loader_rate(args)
    lines = [
        f"Command: `python benchmarks/bench_throughput.py {' '.join(sys.argv[1:])}`".replace(" --record", ""),
        "",
        f"Machine: {description}; {time.strftime('%Y-%m-%d')}",
        "",
        f"Batch {args.batch_size}, {args.image_size} px, {args.warmup} warm-up and {args.rounds} interleaved "
        "measured steps per model and variant, medians. GEMM rate on this device: "
        + ", ".join(f"{p} {r:.3f} TFLOP/s ({gemm_size}x{gemm_size} matmul)" for p, r in args.gemm_rates.items())
        + ".",
        "",
        TABLE_HEADER,
        *(format_row(row, args) for row in rows),
    ]
    if loader is not None:
        fastest = max(rows, key=lambda r: r["images_per_s"])
        lines += [
            "",
            f"Input pipeline alone (bench_input_pipeline's loader: JPEGs of 500x375 through `datasets`, MAE "
            f"augmentation to {args.image_size} px, batch {args.batch_size}, {args.loader_workers} workers): "
            f"**{loader:.1f} images/s**, {loader / fastest['images_per_s']:.1f}x the fastest train step above "
            f"({fastest['method']} ViT-{fastest['size'][0].upper()} {fastest['variant']} {fastest['model']}, "
            f"{fastest['images_per_s']:.2f} images/s).",
        ]
    elif not args.skip_loader:
        lines += ["", "Input pipeline not measured: the `datasets` library is not installed here."]
    text = "\n".join(lines)
    print("\n" + text)
    if args.record:
        record(text, f"{'cuda' if device.type == 'cuda' else 'cpu'} {' '.join(args.variants)}")


if __name__ == "__main__":
    main()
