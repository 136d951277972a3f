"""Does continuing a public checkpoint on your own data help? Issue 30's proof, with stand-ins for the public
checkpoints (which cannot be downloaded here), on data neither stand-in saw.

- Stand-in checkpoints, pretrained on the 60,000 Fashion-MNIST training images (its test images are never read),
  28 px grey, in a 7x7 grid of 4 px patches, hf_mim's mini encoder (6 blocks, width 128) and the small recipe's
  MAE (one decoder block of width 128, mask ratio 0.75, pixel targets), for `--standin-steps` steps at batch 64:
  - **transformers**: `ViTMAEForPreTraining` trained by a plain PyTorch loop (AdamW, betas 0.9/0.95, lr 2.5e-3 =
    1e-2 x 64 / 256, 5% warm-up, cosine; random flips), one grey channel, saved with `save_pretrained`. Its sin-cos
    tables are restored first: transformers 5 leaves a fresh model's at zero;
  - **hf_mim**: `hf-mim pretrain --dataset fashion-mnist --max-steps N` (3 channels, the default).
- Continued on the built-in digits' training split (1,437 images, 32 px: the 7x7 grid becomes 8x8, the sin-cos
  tables recomputed) with `hf-mim pretrain --init-from STANDIN --max-steps S`: the recipe the digits get from
  scratch at `--init-from`'s tenth of its base lr, and for hf_mim's stand-in also at the from-scratch base lr
  (1e-2); per `--seeds` (pretraining seeds: data order, masks, fresh weights).
- Compared on the digits' held-out test split (360 images) with every training label: k-NN (k 20, T 0.07) and the
  linear probe on frozen mean-pooled features (`hf-mim evaluate`), against: each stand-in unadapted; hf_mim MAE
  pretrained on the digits from scratch for the same S steps, per seed; random initialisation of the same encoder,
  per seed; raw pixels (scikit-learn: logistic regression and cosine 20-NN on the 64 pixels).
- Reported: mean +- std over seeds, and the paired difference (same seed) of each adapted model to the digits-only
  model at the same budget. Every part's figures and wall time are kept in WORKDIR/results.json: a rerun resumes.

    apt-get install dataset-fashion-mnist      # the IDX files, /usr/share/datasets/fashion-mnist
    python benchmarks/bench_adapt.py --record  # about 25 min on 2 CPU cores
    python benchmarks/bench_adapt.py --standin-steps 20 --steps 20 --seeds 0   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fashion_mnist import IDX_DIR as FASHION_MNIST  # noqa: E402
from bench_fashion_mnist import read_idx as read_idx_images  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
ROWS = ("adapted from transformers", "adapted from hf_mim", "adapted from hf_mim, from-scratch lr",
        "transformers stand-in, unadapted",
        "hf_mim stand-in, unadapted", "digits only, same steps", "random init", "raw pixels")  # fmt: skip


def fashion_training_set(work: Path) -> Path:
    """The 60,000 training images as a saved `datasets` dataset (no labels: pretraining never reads them)."""
    import datasets
    from PIL import Image

    out = work / "fashion-mnist-train"
    if (out / "dataset_info.json").exists():
        return out
    images = read_idx_images(FASHION_MNIST / "train-images-idx3-ubyte.gz")
    features = datasets.Features({"image": datasets.Image()})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a, mode="L") for a in images]}, features=features)
    ds.save_to_disk(str(out))
    return out


def mae_dims() -> dict:
    """The MAE hf_mim's small recipe trains: the mini encoder, the recipe's decoder and target."""
    from hf_mim.modeling.auto import method_spec
    from hf_mim.training.presets import ENCODER_PRESETS

    fields = {**ENCODER_PRESETS["mini"], **method_spec("mae").recipe("small").config}
    from hf_mim import MAEConfig

    config = MAEConfig(image_size=28, patch_size=4, **fields)
    names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "decoder_hidden_size",
             "decoder_num_hidden_layers", "decoder_num_attention_heads", "decoder_intermediate_size", "mask_ratio",
             "norm_pix_loss", "layer_norm_eps")  # fmt: skip
    return {k: getattr(config, k) for k in names}


def train_transformers_standin(data: Path, out: Path, steps: int, seed: int = 0) -> float:
    """transformers' ViTMAEForPreTraining on Fashion-MNIST with a plain loop; returns the wall time."""
    import datasets
    import numpy as np
    import torch
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining

    from hf_mim.modeling.backbone import sincos_2d_position_embedding

    torch.manual_seed(seed)
    config = ViTMAEConfig(image_size=28, patch_size=4, num_channels=1, **mae_dims())
    model = ViTMAEForPreTraining(config)
    with torch.no_grad():  # transformers 5 leaves a fresh model's sin-cos tables at zero
        model.vit.embeddings.position_embeddings.copy_(sincos_2d_position_embedding(config.hidden_size, (7, 7)))
        model.decoder.decoder_pos_embed.copy_(sincos_2d_position_embedding(config.decoder_hidden_size, (7, 7)))
    images = np.stack([np.asarray(im) for im in datasets.load_from_disk(str(data))["image"]])
    pixels = (torch.from_numpy(images).float() / 255.0 - 0.5) / 0.5  # mean 0.5, std 0.5, as the processor says
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 and p.requires_grad]
    lr, warmup = 1e-2 * 64 / 256, max(1, int(0.05 * steps))
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95)
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))),
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        index = torch.randint(len(pixels), (64,), generator=generator)
        batch = pixels[index][:, None]
        flip = torch.rand(64, generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-1)
        loss = model(pixel_values=batch).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    wall = time.perf_counter() - start
    model.save_pretrained(out)
    ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5]).save_pretrained(out)
    print(f"transformers stand-in: {steps} steps in {wall:.0f} s, last loss {loss.item():.4f}", flush=True)
    return wall


def pretrain(out: Path, **kwargs) -> float:
    from hf_mim.training.trainer import PretrainArguments
    from hf_mim.training.trainer import pretrain as run

    summary = run(PretrainArguments(output_dir=str(out), num_workers=0, **kwargs))
    return summary["wall_time_seconds"]


def evaluate(
    model: Path, work: Path, random_init_seed: int | None = None, linear_epochs: int = 100
) -> dict[str, float]:
    """k-NN and linear-probe accuracy (%) on the digits' test split, mean-pooled features, every training label."""
    from hf_mim.evaluation.runner import EvaluateArguments, evaluate_models

    summary = evaluate_models(
        EvaluateArguments(
            model=[str(model)],
            protocol=["knn", "linear"],
            random_init=random_init_seed is not None,
            seed=random_init_seed or 0,
            pooling="mean",
            linear_epochs=linear_epochs,
            output_dir=str(work / "eval"),
            save_to_model=False,
        )
    )
    wanted = "random init" if random_init_seed is not None else None
    rows = [r for r in summary["results"] if (r["source"] is None) == (wanted is not None)]
    return {r["protocol"]: 100 * r["value"] for r in rows}


def raw_pixels() -> dict[str, float]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from hf_mim.data.sources import builtin_digits

    def arrays(split):
        ds = builtin_digits(split)
        return np.stack([np.asarray(im, dtype=np.float64).ravel() / 255 for im in ds["image"]]), np.array(ds["label"])

    (x, y), (xt, yt) = arrays("train"), arrays("test")
    logistic = LogisticRegression(max_iter=5000).fit(x, y)
    knn = KNeighborsClassifier(n_neighbors=20, metric="cosine", weights="distance").fit(x, y)
    return {"knn": 100 * knn.score(xt, yt), "linear": 100 * logistic.score(xt, yt)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--standin-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=460, help="continued / digits-only pretraining steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="outputs/bench_adapt")
    parser.add_argument("--linear-epochs", type=int, default=100, help="linear probe epochs (hf-mim evaluate's)")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        missing = FASHION_MNIST / "train-images-idx3-ubyte.gz"
        print(f"bench_adapt: error: Fashion-MNIST is not installed ({missing} is missing); "
              "install it with: apt-get install dataset-fashion-mnist", file=sys.stderr)  # fmt: skip
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    key = f"standin{args.standin_steps}-steps{args.steps}"
    part = results.setdefault(key, {"scores": {}, "wall": {}})

    def keep():
        store.write_text(json.dumps(results, indent=2))

    def once(name: str, work_fn):
        if name not in part["wall"]:
            part["wall"][name] = round(work_fn(), 1)
            keep()

    data = fashion_training_set(work)
    tf_standin, ours_standin = (
        work / f"standin-transformers-{args.standin_steps}",
        work / f"standin-hf_mim-{args.standin_steps}",
    )
    once("transformers stand-in", lambda: train_transformers_standin(data, tf_standin, args.standin_steps))
    once("hf_mim stand-in", lambda: pretrain(ours_standin, dataset=str(data), max_steps=args.standin_steps))

    def score(row: str, seed, fn):
        cell = part["scores"].setdefault(row, {})
        if str(seed) not in cell:
            start = time.perf_counter()
            cell[str(seed)] = fn()
            part["wall"][f"{row} eval {seed}"] = round(time.perf_counter() - start, 1)
            keep()

    score("raw pixels", "-", raw_pixels)
    converted = work / f"{tf_standin.name}-converted"  # hf-mim evaluate reads hf_mim checkpoints: `hf-mim convert`
    if not (converted / "config.json").exists():
        from hf_mim.convert import convert_checkpoint

        convert_checkpoint(tf_standin, converted)
    score("transformers stand-in, unadapted", "-", lambda: evaluate(converted, work, linear_epochs=args.linear_epochs))
    score("hf_mim stand-in, unadapted", "-", lambda: evaluate(ours_standin, work, linear_epochs=args.linear_epochs))
    from hf_mim.modeling.auto import method_spec

    scratch_lr = method_spec("mae").recipe("small").base_lr
    for seed in args.seeds:
        runs = {
            "adapted from transformers": (work / f"adapted-tf-{key}-{seed}", dict(init_from=str(tf_standin))),
            "adapted from hf_mim": (work / f"adapted-ours-{key}-{seed}", dict(init_from=str(ours_standin))),
            # the continued-pretraining recipe measured: --init-from's default (a tenth of the recipe's base lr)
            # against the from-scratch base lr
            "adapted from hf_mim, from-scratch lr": (
                work / f"adapted-ours-scratch-lr-{key}-{seed}",
                dict(init_from=str(ours_standin), base_lr=scratch_lr),
            ),
            "digits only, same steps": (work / f"digits-{args.steps}-{seed}", {}),
        }
        for row, (out, extra) in runs.items():
            once(f"{row} {seed}", lambda o=out, e=extra, s=seed: pretrain(o, max_steps=args.steps, seed=s, **e))
            score(row, seed, lambda out=out: evaluate(out, work, linear_epochs=args.linear_epochs))
        digits_only = runs["digits only, same steps"][0]
        score(
            "random init",
            seed,
            lambda d=digits_only, s=seed: evaluate(d, work, random_init_seed=s, linear_epochs=args.linear_epochs),
        )

    table = format_table(part, args)
    print(table)
    if args.record:
        with open(RESULTS, "a") as f:
            f.write("\n" + table + "\n")
    return 0


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def format_table(part: dict, args) -> str:
    scores, wall = part["scores"], part["wall"]
    base = scores.get("digits only, same steps", {})
    lines = [
        f"### Continued pretraining on the digits (issue #30): stand-ins {args.standin_steps} steps on Fashion-MNIST, "
        f"{args.steps} steps on the digits, seeds {' '.join(map(str, args.seeds))}",
        "",
        f"`python benchmarks/bench_adapt.py --standin-steps {args.standin_steps} --steps {args.steps} --seeds "
        f"{' '.join(map(str, args.seeds))}` on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs. "
        "Accuracy (%) on the 360 held-out test digits, every training label, mean-pooled frozen features; mean ± "
        "std over pretraining seeds; paired difference to the digits-only model of the same seed and steps.",
        "",
        "| model | k-NN | linear probe | k-NN vs digits only | linear vs digits only | pretraining wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        cells = scores.get(row, {})
        if not cells:
            continue
        seeds = [s for s in cells if s != "-"]
        knn = [cells[s]["knn"] for s in cells]
        linear = [cells[s]["linear"] for s in cells]
        diffs = ["", ""]
        if row.startswith("adapted"):
            for i, protocol in enumerate(("knn", "linear")):
                paired = [cells[s][protocol] - base[s][protocol] for s in seeds if s in base]
                diffs[i] = f"{mean_std(paired):s}" if paired else ""
        walls = [wall[f"{row} {s}"] for s in seeds if f"{row} {s}" in wall]
        if row.endswith("unadapted"):
            walls = [wall[f"{row.split(' stand-in')[0]} stand-in"]]
        wall_text = f"{statistics.mean(walls):.0f}" if walls else ""
        lines.append(f"| {row} | {mean_std(knn)} | {mean_std(linear)} | {diffs[0]} | {diffs[1]} | {wall_text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
