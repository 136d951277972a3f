"""Quality of each method's features on the built-in digits, against the same ViT from random initialisation.

For every method, pretrain a tiny ViT (6 blocks, width 128; 32 px, patch 4) with the method's built-in recipe
otherwise, for the same CPU budget (seconds of
training on this machine: a short probe run measures the method's images/s, and the run gets the steps that fill
the budget), then report, in one table:

- k-NN accuracy (k = 20, T = 0.07, CLS features) with the whole training part as the bank;
- low-label fine-tuning accuracy: 20 labels per class (200 images), `transformers.Trainer`, identical settings for
  every model, random initialisation included (no layer-wise decay, which would handicap the random baseline).

Pretraining sees only the training part of digits (the 80% `hf-mim evaluate` trains on; the held-out 20% it tests
on is never seen, not even without labels): the split is written with `save_to_disk` and the built-in recipe is
passed explicitly. BEiT's tokenizer is trained first, on its own budget (`--tokenizer-budget`).

    python benchmarks/bench_quality.py                      # all methods, 120 s each (about 45 min on 2 cores)
    python benchmarks/bench_quality.py --methods mae simmim --budget 60 --finetune-epochs 10   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("mae", "simmim", "beit", "rmae", "cmae", "adios")
BATCH = 64
# A ViT smaller than the built-in recipe's ViT-Ti (12 x 192): 6 blocks of width 128. On two CPU cores it gets about
# three times the pretraining steps in the same budget, and fine-tuning seven models stays within minutes.
ENCODER = dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512)


def run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"command failed ({code}); see {log}")


def pretrain_args(method: str, data_dir: Path) -> list[str]:
    """The built-in recipe (`hf-mim pretrain` on digits), spelled out for a dataset folder."""
    from hf_mim.training.methods import TRAINING_METHODS
    from hf_mim.training.trainer import BUILTIN_DEFAULTS

    overrides = dict(TRAINING_METHODS[method].builtin_defaults)
    if TRAINING_METHODS[method].uses_encoder_presets:
        overrides.update(ENCODER)
    args = [
        "--method",
        method,
        "--dataset",
        str(data_dir),
        "--image-size",
        str(BUILTIN_DEFAULTS["image_size"]),
        "--patch-size",
        str(BUILTIN_DEFAULTS["patch_size"]),
        "--base-lr",
        str(BUILTIN_DEFAULTS["base_lr"]),
        "--batch-size",
        str(BATCH),
        "--num-workers",
        "2",
    ]
    if TRAINING_METHODS[method].uses_encoder_presets:
        args += ["--model-size", BUILTIN_DEFAULTS["model_size"]]
    if overrides:
        config = data_dir.parent / f"{method}_config.json"
        config.write_text(json.dumps(overrides))
        args += ["--config", str(config)]
    return args


def pretrain_for(
    method: str, budget: float, data_dir: Path, out: Path, log: Path, extra: list[str], reuse: bool = False
) -> dict:
    """Probe the method's images/s with a short run, then train for the steps that fill `budget` seconds. With
    `reuse`, a finished run already in `out` (and its probe) is read back instead."""
    if reuse and (out / "training_summary.json").exists():
        summary = json.loads((out / "training_summary.json").read_text())
        probe = json.loads((out.parent / f"probe-{method}" / "training_summary.json").read_text())
        return {
            "steps": summary["steps"],
            "probe_images_per_second": probe["images_per_second"],
            "train_seconds": summary["wall_time_seconds"],
            "final_loss": summary["final_loss"],
            "reused": True,
        }
    hf_mim = [sys.executable, "-m", "hf_mim", "pretrain"]
    probe = out.parent / f"probe-{method}"
    run(hf_mim + pretrain_args(method, data_dir) + extra + ["--max-steps", "12", "--output-dir", str(probe)], log)
    speed = json.loads((probe / "training_summary.json").read_text())["images_per_second"]
    steps = max(10, int(budget * speed / BATCH))
    start = time.perf_counter()
    run(hf_mim + pretrain_args(method, data_dir) + extra + ["--max-steps", str(steps), "--output-dir", str(out)], log)
    summary = json.loads((out / "training_summary.json").read_text())
    return {
        "steps": steps,
        "probe_images_per_second": speed,
        "train_seconds": summary.get("wall_time_seconds", time.perf_counter() - start),
        "final_loss": summary["final_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--budget", type=float, default=120.0, help="pretraining seconds per method")
    parser.add_argument("--tokenizer-budget", type=float, default=60.0, help="seconds for BEiT's tokenizer")
    parser.add_argument("--finetune-epochs", type=float, default=100)
    parser.add_argument("--finetune-lr", type=float, default=2.5e-3, help="base lr per 256 images")
    parser.add_argument("--workdir", default="outputs/bench_quality")
    parser.add_argument(
        "--reuse", action="store_true", help="read back pretraining runs already in --workdir instead of re-running"
    )
    parser.add_argument("--crop-scale", nargs=2, type=float, default=[0.35, 1.0], help="fine-tuning crop area range")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hf_mim.evaluation.data import load_labelled_splits

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    data_dir = work / "digits-train"
    if not data_dir.exists():
        # exactly the training part `hf-mim evaluate` uses (same stratified split, same seed)
        load_labelled_splits(None, seed=args.seed).train.save_to_disk(str(data_dir))

    runs, models = {}, []
    began = time.perf_counter()
    for method in args.methods:
        extra = []
        if method == "beit":
            tokenizer = work / "visual-tokenizer"
            runs["visual-tokenizer"] = pretrain_for(
                "visual-tokenizer", args.tokenizer_budget, data_dir, tokenizer, log, [], args.reuse
            )
            extra = ["--tokenizer", str(tokenizer)]
        out = work / method
        runs[method] = pretrain_for(method, args.budget, data_dir, out, log, extra, args.reuse)
        models.append(str(out))
        print(f"{method}: {runs[method]}", flush=True)

    evaluate = [
        sys.executable,
        "-m",
        "hf_mim",
        "evaluate",
        "--model",
        *models,
        "--random-init",
        "--seed",
        str(args.seed),
    ]
    knn_dir, ft_dir = work / "eval-knn", work / "eval-finetune"
    run(evaluate + ["--protocol", "knn", "--output-dir", str(knn_dir)], log)
    run(
        evaluate
        + [
            "--protocol",
            "finetune",
            "--labels-per-class",
            "20",
            "--finetune-epochs",
            str(args.finetune_epochs),
            "--finetune-batch-size",
            "50",
            "--finetune-lr",
            str(args.finetune_lr),
            "--drop-path",
            "0.1",
            "--crop-scale",
            *[str(v) for v in args.crop_scale],
            "--output-dir",
            str(ft_dir),
        ],
        log,
    )
    knn = {r["model"]: r["value"] for r in json.loads((knn_dir / "evaluation.json").read_text())["results"]}
    ft = {r["model"]: r["value"] for r in json.loads((ft_dir / "evaluation.json").read_text())["results"]}
    random_name = next(name for name in knn if name.startswith("random-init"))

    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {__import__('torch').__version__}; "
        f"budget {args.budget:g} s of pretraining per method; total wall {time.perf_counter() - began:.0f} s",
        "",
        "| method | pretraining steps (images/s) | final loss | k-NN acc. (%) | fine-tune acc., 20 labels/class (%) "
        "| fine-tune vs random init |",
        "|---|---|---|---|---|---|",
    ]
    for method, model in zip(args.methods, models, strict=True):
        r = runs[method]
        delta = 100 * (ft[model] - ft[random_name])
        lines.append(
            f"| {method} | {r['steps']} ({r['probe_images_per_second']:.0f}) | {r['final_loss']:.4f} "
            f"| {100 * knn[model]:.2f} | {100 * ft[model]:.2f} | {delta:+.2f} |"
        )
    lines.append(f"| random init | 0 | - | {100 * knn[random_name]:.2f} | {100 * ft[random_name]:.2f} | - |")
    table = "\n".join(lines)
    (work / "results.md").write_text(table + "\n")
    (work / "results.json").write_text(json.dumps({"runs": runs, "knn": knn, "finetune": ft}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
