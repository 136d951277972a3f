"""On paper: hours for MAE ViT-B/16 pretraining, 800 epochs on ImageNet-1k, on 8 and on 64 GPUs, and what limits it.

Inputs, each named in the output as measured or assumed:
- the train FLOPs of one image (counted here, with torch's FLOP counter over hf_mim's MAE ViT-B/16 forward and
  backward at 224 px, mask ratio 0.75) and the parameter count (the gradient bytes DDP all-reduces each step);
- the GPU's images/s: `--gpu-images-per-second` (from benchmarks/gpu_check.sh) or, without it, the nominal bf16
  peak (`--peak-tflops`, 989 for an H100/H200 SXM) times an assumed MFU (`--mfu`, a range);
- the loader's images/s per core (`--loader-per-core`, from bench_input_pipeline.py) and the cores a node gives
  each GPU (`--cores-per-gpu`);
- the inter-node bandwidth per node (`--node-gbytes`, GB/s: 50 for one 400 Gb/s NIC, 400 for eight).

Model of a step: compute = batch / GPU rate; loader = batch / (cores x per-core rate); all-reduce of the fp32
gradients = 2 x bytes / bandwidth (a ring: each node sends and receives about twice the gradient once; within a
node NVLink is taken as free). DDP overlaps the all-reduce with the backward pass, so a step takes
max(compute, all-reduce, loader) at best.

    python benchmarks/on_paper.py --loader-per-core 421
"""

from __future__ import annotations

import argparse

import torch

IMAGENET_TRAIN = 1_281_167


def mae_base_costs() -> tuple[float, int]:
    """(train FLOPs per image, trainable parameters) of hf_mim's MAE ViT-B/16 at 224 px."""
    from bench_throughput import register_cpu_attention_flops  # SDPA on CPU is not counted by torch otherwise
    from torch.utils.flop_counter import FlopCounterMode

    from hf_mim.modeling.mae import MAEConfig, MAEForPreTraining
    from hf_mim.training.presets import ENCODER_PRESETS

    register_cpu_attention_flops()
    model = MAEForPreTraining(MAEConfig(image_size=224, patch_size=16, **ENCODER_PRESETS["base"])).train()
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=torch.randn(2, 3, 224, 224), noise=torch.rand(2, 196)).loss.backward()
    return counter.get_total_flops() / 2, sum(p.numel() for p in model.parameters() if p.requires_grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-images-per-second", type=float, help="measured train-step rate of one GPU")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="nominal dense bf16 peak (H100/H200 SXM)")
    parser.add_argument("--mfu", type=float, nargs="+", default=[0.30, 0.45], help="assumed MFU, without a rate")
    parser.add_argument("--loader-per-core", type=float, required=True, help="measured images/s of one core")
    parser.add_argument("--cores-per-gpu", type=float, default=14.0, help="e.g. 112 cores for 8 GPUs")
    parser.add_argument("--node-gbytes", type=float, nargs="+", default=[50.0, 400.0])
    parser.add_argument("--epochs", type=int, default=800)
    parser.add_argument("--global-batch", type=int, default=4096, help="MAE's")
    args = parser.parse_args()

    flops, params = mae_base_costs()
    grad_bytes = params * 4
    images = IMAGENET_TRAIN * args.epochs
    print(f"MAE ViT-B/16 224 px: {flops / 1e9:.1f} GFLOP per image (forward + backward, counted), {params / 1e6:.1f}M")
    print(f"parameters ({grad_bytes / 1e6:.0f} MB of fp32 gradients per all-reduce); {images / 1e9:.3f}e9 images")
    print(f"loader: {args.loader_per_core:.0f} images/s per core (measured) x {args.cores_per_gpu:g} cores per GPU")
    if args.gpu_images_per_second:
        rates = [("measured", args.gpu_images_per_second)]
    else:
        rates = [(f"MFU {m:.0%} of {args.peak_tflops:g} TFLOP/s (assumed)", m * args.peak_tflops * 1e12 / flops)
                 for m in args.mfu]  # fmt: skip
    print()
    print("| GPUs | GPU rate | node link | step: compute / all-reduce / loader (ms) | limit | hours |")
    print("| ---: | --- | ---: | --- | --- | ---: |")
    for gpus in (8, 64):
        per_gpu_batch = args.global_batch / gpus
        for label, rate in rates:
            for link in args.node_gbytes if gpus > 8 else [None]:
                compute = per_gpu_batch / rate
                allreduce = 0.0 if link is None else 2 * grad_bytes / (link * 1e9)
                loader = per_gpu_batch / (args.cores_per_gpu * args.loader_per_core)
                step = max(compute, allreduce, loader)
                limit = {compute: "GPU step", allreduce: "interconnect", loader: "loader"}[step]
                hours = images / args.global_batch * step / 3600
                where = "NVLink (one node)" if link is None else f"{link:g} GB/s"
                print(f"| {gpus} | {label}: {rate:,.0f} img/s | {where} | {compute * 1e3:.1f} / "
                      f"{allreduce * 1e3:.1f} / {loader * 1e3:.1f} | {limit} | {hours:.1f} |")  # fmt: skip
    cores = [rate / args.loader_per_core for _, rate in rates]
    print()
    print("cores one GPU needs to keep up: " + ", ".join(f"{c:.0f}" for c in cores))


if __name__ == "__main__":
    main()
