"""Learned masks for MAE against random masks, on the quality benchmark's held-out digits (issue 21).

Arms, each pretrained once per seed (`--seeds`, at least 3) by `hf-mim pretrain --method mae --epochs E --seed S`
with the small-data recipe (`bench_quality.py`'s protocol: the 1,437 training digits only, 32 px, 4 px patches):

- **random**: MAE's random masks;
- **learned, equal steps**: `--mask-strategy learned`, its config defaults, the same epochs;
- **random, equal wall time**: random masks for the steps the learned run's wall time would have bought them:
  the learned run's steps times its seconds per step over the random run's (same seed, both measured in this
  script, one run at a time). The wall times are the runs' own: run nothing else on the machine meanwhile.

Evaluation, per seed S, of that seed's three models and random initialisation (the same seed): `bench_quality.py`'s
k-NN, linear probe (mean-pooled frozen features) and fine-tuning on 20 labels per class, on the 360 test digits no
run has seen; and the occlusion-invariance CKA (`hf-mim evaluate --protocol cka`: linear CKA between each block's
features of the full test images and of the same images with random patches dropped, at mask ratios 0.1-0.9).
Reported: mean +- standard deviation over seeds, the paired difference to random masks (same seed), the last
block's CKA per mask ratio, and the learned runs' mask metrics at the end of training.

Constraints (`--ablation-epochs`, seed 0): learned runs with the defaults, without the random share
(`mask_random_ratio=0`), without the diversity penalty (`mask_diversity_weight=0`) and without both; their final
mask metrics say whether each constraint does what it is for.

    python benchmarks/bench_learned_masks.py --record                     # 3 seeds, 50 epochs (about an hour)
    python benchmarks/bench_learned_masks.py --seeds 0 --epochs 1 --ablation-epochs 1 --finetune-epochs 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_quality import RANDOM, evaluate, fmt, hf_mim, mean_std, read_summary, record, run  # noqa: E402

ARMS = ("random", "learned, equal steps", "random, equal wall time")
LEARNED = ["--mask-strategy", "learned"]
MASK_METRICS = ("mask_entropy", "mask_imbalance", "mask_foreground_overlap", "foreground_fraction")
HELDOUT_METRICS = ("foreground_masked", "background_masked", *MASK_METRICS)
ABLATIONS = {
    "defaults": {},
    "no random share": {"mask_random_ratio": 0.0},
    "no diversity penalty": {"mask_diversity_weight": 0.0},
    "neither": {"mask_random_ratio": 0.0, "mask_diversity_weight": 0.0},
}


def pretrain(out: Path, seed: int, log: Path, flags: list[str], reuse: bool) -> dict:
    if not (reuse and (out / "training_summary.json").exists()):
        run(hf_mim("pretrain", "--method", "mae", "--seed", str(seed), "--output-dir", str(out), *flags), log)
    summary = read_summary(out)
    return {
        "folder": str(out),
        "steps": summary["steps"],
        "wall": summary["wall_time_seconds"],
        "reconstruction_loss": summary["final_metrics"].get("reconstruction_loss", summary["final_loss"]),
        "reconstruction": (summary.get("reconstruction") or {}).get("ratio"),
        "metrics": summary["final_metrics"],
    }


def pretrain_seed(seed: int, args, work: Path, log: Path) -> dict[str, dict]:
    epochs = ["--epochs", str(args.epochs)]
    runs = {
        "random": pretrain(work / f"random-{seed}", seed, log, epochs, args.reuse),
        "learned, equal steps": pretrain(work / f"learned-{seed}", seed, log, [*epochs, *LEARNED], args.reuse),
    }
    random, learned = runs["random"], runs["learned, equal steps"]
    steps = round(learned["steps"] * (learned["wall"] / learned["steps"]) / (random["wall"] / random["steps"]))
    runs["random, equal wall time"] = pretrain(
        work / f"random-wall-{seed}", seed, log, ["--max-steps", str(steps)], args.reuse
    )
    return runs


def cka_last_block(models: dict[str, str], seed: int, args, work: Path, log: Path) -> dict[str, list[float]]:
    """{arm: the last block's CKA at each mask ratio} of one seed's models, random initialisation included."""
    out = work / f"eval-cka-seed{seed}"
    if not (args.reuse and (out / "cka.json").exists()):
        flags = ["--protocol", "cka", "--pooling", "mean", "--seed", str(seed), "--no-save-to-model"]
        run(hf_mim("evaluate", "--model", *models.values(), "--random-init", *flags, "--output-dir", str(out)), log)
    tables = json.loads((out / "cka.json").read_text())["tables"]
    names = {folder: arm for arm, folder in models.items()}
    return {
        (names[name] if name in names else RANDOM): [row[-1] for row in table]  # (ratio, block): the last block
        for name, table in tables.items()
    }


def heldout_mask_metrics(folder: str, drown_scores: bool = False) -> dict[str, float]:
    """The learned masks' metrics on the 360 test digits as they are (not the training crops, in which an object's
    border is often cut and the background estimate with it): one pass over all of them, noise from seed 0.
    `drown_scores`: the same with a temperature at which the Gumbel noise decides alone (random choices)."""
    import torch
    from bench_quality import test_images
    from transformers import AutoModelForPreTraining

    from hf_mim.modeling.masking import foreground_patches

    model = AutoModelForPreTraining.from_pretrained(folder).eval()
    if drown_scores:
        model.config.mask_temperature = 1e6
    images = test_images(model.config)
    length = model.config.num_patches
    g = torch.Generator().manual_seed(0)
    noise, score_noise = torch.rand(len(images), length, generator=g), torch.rand(len(images), length, generator=g)
    with torch.no_grad():
        out = model(images, noise=noise, score_noise=score_noise)
    foreground, masked = foreground_patches(images, model.config.patch_size), out.mask.bool()
    return {
        **{name: float(getattr(out, name)) for name in MASK_METRICS},
        # all of the mask, the random share included: random masks hide 75% of both
        "foreground_masked": float((masked & foreground).sum() / foreground.sum()),
        "background_masked": float((masked & ~foreground).sum() / (~foreground).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining and evaluation seeds")
    parser.add_argument("--epochs", type=int, default=50, help="pretraining epochs of the random and learned arms")
    parser.add_argument(
        "--ablation-epochs", type=int, default=20, help="epochs of the constraint ablation runs (0: none)"
    )
    parser.add_argument("--labels-per-class", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=float, default=100)
    parser.add_argument("--finetune-lr", type=float, default=2.5e-3, help="base lr per 256 images")
    parser.add_argument("--workdir", default="outputs/bench_learned_masks")
    parser.add_argument("--reuse", action="store_true", help="read back runs already in --workdir")
    parser.add_argument("--record", action="store_true", help="write the tables into RESULTS.md")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    start = time.time()

    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    scores: dict[str, dict[str, list[float]]] = {arm: {} for arm in [*ARMS, RANDOM]}
    cka: dict[str, list[list[float]]] = {arm: [] for arm in [*ARMS, RANDOM]}
    # every pretraining run first, one at a time: the equal-wall-time arm reads the other two's wall times
    seed_runs = {seed: pretrain_seed(seed, args, work, log) for seed in args.seeds}
    for seed in args.seeds:
        models = {arm: seed_runs[seed][arm]["folder"] for arm in ARMS}
        for arm in ARMS:
            runs[arm].append(seed_runs[seed][arm])
        # bench_quality's protocols, on this seed's models (its evaluate() maps the folders back to the arms)
        for name, protocols in evaluate(models, [seed], args, work / f"seed{seed}", log).items():
            for protocol, values in protocols.items():
                scores[name].setdefault(protocol, []).extend(values)
        for arm, curve in cka_last_block(models, seed, args, work, log).items():
            cka[arm].append(curve)

    lines = [
        "| arm | steps | pretraining wall (s) | final reconstruction loss (training masks) | k-NN | linear probe "
        f"| fine-tune, {len(args.seeds)} seeds | vs random masks, fine-tune (paired) "
        "| vs random masks, k-NN (paired) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def paired(arm: str, protocol: str) -> str:
        if arm == "random":
            return "-"
        diffs = [a - b for a, b in zip(scores[arm][protocol], scores["random"][protocol], strict=True)]
        mean, std = mean_std(diffs)
        return f"{mean:+.1f} ± {std:.1f}"

    for arm in ARMS:
        steps = "/".join(str(r["steps"]) for r in runs[arm])
        wall = fmt([r["wall"] for r in runs[arm]])
        loss_mean, loss_std = mean_std([r["reconstruction_loss"] for r in runs[arm]])
        lines.append(
            f"| {arm} | {steps} | {wall} | {loss_mean:.3f} ± {loss_std:.3f} | {fmt(scores[arm].get('knn'))} "
            f"| {fmt(scores[arm].get('linear'))} | {fmt(scores[arm].get('finetune'))} | {paired(arm, 'finetune')} "
            f"| {paired(arm, 'knn')} |"
        )
    lines.append(
        f"| {RANDOM} | - | - | - | {fmt(scores[RANDOM].get('knn'))} | {fmt(scores[RANDOM].get('linear'))} "
        f"| {fmt(scores[RANDOM].get('finetune'))} | - | - |"
    )
    ratios = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    lines += [
        "",
        "Occlusion invariance: linear CKA between the last block's features of the full test images and of the same "
        "images with that share of patches dropped (mean ± std over seeds; 1 = unchanged by the occlusion):",
        "",
        "| arm | " + " | ".join(f"{r:.1f}" for r in ratios) + " |",
        "|---|" + "---|" * len(ratios),
    ]
    for arm in [*ARMS, RANDOM]:
        columns = list(zip(*cka[arm], strict=True))
        lines.append(
            f"| {arm} | "
            + " | ".join(f"{statistics.fmean(c):.3f} ± {mean_std(list(c))[1]:.3f}" for c in columns)
            + " |"
        )
    learned_folders = [r["folder"] for r in runs["learned, equal steps"]]
    heldout = [heldout_mask_metrics(folder) for folder in learned_folders]
    drowned = heldout_mask_metrics(learned_folders[0], drown_scores=True)

    def metric_row(name: str, values: list[dict]) -> str:
        cells = [f"{statistics.fmean(v[m] for v in values):.3f}" if m in values[0] else "-" for m in HELDOUT_METRICS]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines += [
        "",
        "The masks (means over seeds). Held out: the 360 test digits as they are, one pass, noise from seed 0; "
        "the foreground is the patches that differ from the border colour more than the image's average patch. "
        "Training crops: the last logged training steps, on random resized crops (where a digit's border is often "
        "cut, and the background estimate with it). 'Random in their place': the same model with its scores "
        "drowned in the Gumbel noise (temperature 1e6), i.e. uniform choices of the same number of patches:",
        "",
        "| masks | " + " | ".join(HELDOUT_METRICS) + " |",
        "|---|" + "---|" * len(HELDOUT_METRICS),
        metric_row("learned, held-out digits", heldout),
        metric_row("random in their place, held-out digits", [drowned]),
        metric_row("learned, training crops", [r["metrics"] for r in runs["learned, equal steps"]]),
    ]

    ablation_rows = []
    for name, fields in ABLATIONS.items() if args.ablation_epochs else ():
        out = work / f"ablation-{name.replace(' ', '-')}"
        config = work / f"ablation-{name.replace(' ', '-')}.json"
        config.write_text(json.dumps(fields))
        flags = ["--epochs", str(args.ablation_epochs), *LEARNED, "--config", str(config)]
        result = pretrain(out, args.seeds[0], log, flags, args.reuse)
        held = heldout_mask_metrics(result["folder"])
        ablation_rows.append(
            f"| {name} | {json.dumps(fields) if fields else '-'} | {result['reconstruction_loss']:.3f} | "
            + " | ".join(f"{held[m]:.3f}" for m in HELDOUT_METRICS)
            + " |"
        )
    if ablation_rows:
        lines += [
            "",
            f"Constraints: learned runs of {args.ablation_epochs} epochs, seed {args.seeds[0]}; the final training "
            "reconstruction loss, and the masks on the held-out digits as above:",
            "",
            "| constraints | fields | final reconstruction loss | " + " | ".join(HELDOUT_METRICS) + " |",
            "|---|---|---|" + "---|" * len(HELDOUT_METRICS),
            *ablation_rows,
        ]

    command = "python benchmarks/bench_learned_masks.py " + " ".join(a for a in sys.argv[1:] if a != "--record")
    header = (
        f"`{command.strip()}`: {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{__import__('torch').__version__}; {(time.time() - start) / 60:.0f} min in all ({time.strftime('%Y-%m-%d')})"
    )
    block = header + "\n\n" + "\n".join(lines)
    (work / "results.md").write_text(block + "\n")
    (work / "results.json").write_text(json.dumps({"runs": runs, "scores": scores, "cka": cka}, indent=2))
    print(block)
    if args.record:
        record("bench_learned_masks", block)


if __name__ == "__main__":
    main()
