"""Does pretraining help? Every method against random initialisation, and hf_mim's MAE against transformers', on
digits that pretraining never saw.

Protocol (issue 16):

- Data: the built-in digits. Pretraining reads only the "train" split (1,437 images); every accuracy is measured on
  the "test" split (360 images), which no pretraining run and no fine-tuning run sees. `hf-mim pretrain` records the
  split it read, and the script refuses a run that read anything else.
- Pretraining: `hf-mim pretrain --method M --epochs E` with the small-data recipe every method gets on this data
  (`--recipe auto`: the mini encoder, 6 blocks of width 128, at 32 px with 4 px patches); the same number of epochs
  over the same images for every method (`--epochs`), with the wall time reported. BEiT's visual tokenizer is
  trained first (`--tokenizer-epochs`) and its time counted in BEiT's.
- The peer: transformers' `ViTMAEForPreTraining` with the same dimensions, decoder, mask ratio and target as
  hf_mim's MAE, its sin-cos position tables restored (transformers 5 leaves a fresh model's at zero), trained by the
  same `hf-mim pretrain` loop with the same recipe and epochs, then converted with `hf-mim convert` so that it is
  evaluated by exactly the code that evaluates hf_mim's models. Only the implementations and their weight
  initialisations differ (transformers: normal(0.02) linear layers; hf_mim: MAE's Xavier-uniform).
- Evaluation, per fine-tuning seed (`--seeds`, at least 3; the test split does not move with them):
  k-NN (k = 20, T = 0.07) and the linear probe on frozen, mean-pooled features with every training label;
  fine-tuning (`transformers.Trainer`) on 20 labels per class drawn by the seed, identical for every model. The
  random-initialisation baseline is the same architecture, initialised from the same seed.
- Reported: mean +- standard deviation over seeds, and the paired difference to random initialisation (same seed,
  same labelled images). A method is "ahead" when that difference exceeds twice the larger of the two standard
  deviations.

    python benchmarks/bench_quality.py --record                          # every method and the peer
    python benchmarks/bench_quality.py --few-images 1 16 1437 --record    # Kong & Zhang's few-image pretraining
    python benchmarks/bench_quality.py --methods mae --epochs 1 --seeds 0 --finetune-epochs 1    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from hf_mim.modeling.auto import METHOD_SPECS  # noqa: E402

# every registered method whose product is an encoder (the visual tokenizer is BEiT's, trained inside BEiT's run)
METHODS = tuple(name for name, spec in METHOD_SPECS.items() if spec.card.encoder)
PEER = "transformers-mae"
RANDOM = "random init"
RESULTS = Path(__file__).with_name("RESULTS.md")
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "evaluate.md"  # its quality-benchmark section


def run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"command failed ({code}); see {log}")


def hf_mim(*args: str) -> list[str]:
    return [sys.executable, "-m", "hf_mim", *args]


def read_summary(folder: Path) -> dict:
    summary = json.loads((folder / "training_summary.json").read_text())
    # the held-out guarantee: every pretraining run read the built-in training split and nothing else
    if not summary["dataset"].endswith("'train' split") or "digits" not in summary["dataset"]:
        raise SystemExit(f"{folder} was pretrained on {summary['dataset']!r}, not the digits' training split")
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Pretraining
# ----------------------------------------------------------------------------------------------------------------


def pretrain(method: str, work: Path, epochs: int, log: Path, extra: list[str] = (), reuse: bool = False) -> dict:
    out = work / method
    if not (reuse and (out / "training_summary.json").exists()):
        if method == PEER:
            run([sys.executable, __file__, "--train-peer", str(out), "--epochs", str(epochs)], log)
        else:
            run(hf_mim("pretrain", "--method", method, "--epochs", str(epochs), "--output-dir", str(out), *extra), log)
    summary = read_summary(out)
    recon = summary.get("reconstruction") or {}
    return {
        "folder": str(out if method != PEER else out / "converted"),
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "wall": summary["wall_time_seconds"],
        "final_loss": summary["final_loss"],
        "reconstruction": recon.get("ratio"),
    }


def train_peer(out: Path, epochs: int) -> None:
    """transformers' ViTMAEForPreTraining through `hf-mim pretrain`'s loop, then converted to hf_mim's format."""
    import torch
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from hf_mim.convert import convert_checkpoint
    from hf_mim.model_cards.pictures import reconstruction_error
    from hf_mim.modeling.auto import METHOD_SPECS
    from hf_mim.modeling.backbone import sincos_2d_position_embedding
    from hf_mim.training import arguments, trainer

    # Every ViTMAEConfig field that hf_mim's MAEConfig also has, from the config hf_mim's MAE would train.
    shared = [
        *("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads"),
        *("intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob"),
        *("initializer_range", "layer_norm_eps", "qkv_bias", "decoder_hidden_size", "decoder_num_hidden_layers"),
        *("decoder_num_attention_heads", "decoder_intermediate_size", "mask_ratio", "norm_pix_loss"),
    ]

    class PeerMAE(ViTMAEForPreTraining):
        def __init__(self, config):
            super().__init__(config)
            grid = (config.image_size // config.patch_size,) * 2
            with torch.no_grad():  # transformers 5 leaves a fresh model's sin-cos tables at zero
                self.vit.embeddings.position_embeddings.copy_(sincos_2d_position_embedding(config.hidden_size, grid))
                self.decoder.decoder_pos_embed.copy_(sincos_2d_position_embedding(config.decoder_hidden_size, grid))

    mae_build_config = arguments.build_config

    def build_config(args, spec, checkpoint_fields=None):
        if spec.name != PEER:
            return mae_build_config(args, spec, checkpoint_fields)
        ours = mae_build_config(args, METHOD_SPECS["mae"], checkpoint_fields)
        # image_mean / image_std ride along as extra attributes: the data pipeline normalises with them
        return ViTMAEConfig(
            **{k: getattr(ours, k) for k in shared}, image_mean=ours.image_mean, image_std=ours.image_std
        )

    # MAE's recipe, masks (transformers' noise) and loop; transformers' model. Not registered with the Auto classes:
    # only `hf-mim pretrain --method PEER` in this process sees it.
    METHOD_SPECS[PEER] = replace(
        METHOD_SPECS["mae"],
        name=PEER,
        auto_classes={"AutoConfig": ViTMAEConfig, "AutoModelForPreTraining": PeerMAE},
        sample_inputs=lambda config, grid, generator: {"noise": torch.rand(grid[0] * grid[1], generator=generator)},
        picture=None,
    )
    arguments.build_config = build_config  # what hf-mim pretrain's plan_run builds the model config with
    summary = trainer.pretrain(trainer.PretrainArguments(method=PEER, epochs=epochs, output_dir=str(out)))
    converted = convert_checkpoint(out, out / "converted")
    # hf-mim pretrain measures the reconstruction error of hf_mim's own models only; the converted copy computes
    # the transformers model's exactly (the conversion is tested to 1e-5), on the same test images
    summary["reconstruction"] = {
        "split": "test",
        **reconstruction_error(converted.eval(), test_images(converted.config)),
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2))


def test_images(config):
    import torch

    from hf_mim.data.images import ImageAugmentation
    from hf_mim.data.sources import builtin_digits

    transform = ImageAugmentation.from_config(config)
    return torch.stack([transform(image, None) for image in builtin_digits("test")["image"]])


# ----------------------------------------------------------------------------------------------------------------
# The raw-pixel baseline
# ----------------------------------------------------------------------------------------------------------------

PIXELS = "raw pixels"
PIXEL_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: above this many labelled images one held-out fifth picks C reliably, and 5-fold CV would cost 5x the fits
PIXEL_CV_MAX_LABELS = 10_000
#: what a stored raw-pixel result depends on besides its labelled subset (bench_fashion_mnist's part stamp)
PIXEL_SELECTION = (
    f"C from {PIXEL_C_GRID} by stratified 5-fold cross-validation (fewer folds where a class has fewer labels; a "
    f"held-out fifth above {PIXEL_CV_MAX_LABELS} labels), refit on every label"
)


def pixel_logistic(train_x, train_y, test_x, test_y, seed: int) -> dict:
    """Logistic regression on standardised raw pixels (scikit-learn): the first row of every self-supervised table.

    Its inverse regularisation C is picked from PIXEL_C_GRID by stratified 5-fold cross-validation on the labelled
    images (scaler and classifier fitted inside each fold), then refit on all of them. A single held-out fifth of 60
    labels per class (12 per class) picked C anywhere from 0.001 to 1.0 on Fashion-MNIST's three draws and cost the
    baseline up to 3.7 points: a baseline weakened by its own tuning flatters every model beside it. Above
    PIXEL_CV_MAX_LABELS images one stratified held-out fifth is used (thousands of validation images)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, StratifiedShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    smallest_class = int(np.unique(train_y, return_counts=True)[1].min()) if len(train_y) else 0
    if smallest_class < 2:
        # too few labels to hold any out: scikit-learn's default C
        model, best, selection = pipeline.set_params(logisticregression__C=1.0), 1.0, "default C (too few labels)"
        model.fit(train_x, train_y)
    else:
        if len(train_y) > PIXEL_CV_MAX_LABELS:
            splits = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=seed)
            selection = "held-out fifth"
        else:
            folds = min(5, smallest_class)
            splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            selection = f"{folds}-fold cross-validation"
        # ties go to the first (the smallest C, the most regularised): GridSearchCV ranks them so
        model = GridSearchCV(pipeline, {"logisticregression__C": list(PIXEL_C_GRID)}, cv=splits, refit=True)
        model.fit(train_x, train_y)
        best = model.best_params_["logisticregression__C"]
    return {"accuracy": 100 * model.score(test_x, test_y), "C": best, "selection": selection}


def pixel_scores(seeds, labels_per_class: int) -> dict[str, list[float]]:
    """The digits' raw pixels (64 values) in the table's columns: k-NN (the same DINO k-NN as the models') and
    logistic regression with every training label, and logistic regression on the fine-tuning column's labelled
    images (`labels_per_class` per class, drawn by each seed exactly as `hf-mim evaluate` draws them)."""
    import numpy as np
    import torch

    from hf_mim.data.labelled import labels_per_class_subset
    from hf_mim.data.sources import builtin_digits
    from hf_mim.evaluation.protocols import KNN_K, KNN_TEMPERATURE, knn_scores

    train, test = builtin_digits("train"), builtin_digits("test")
    train_x = np.stack([np.asarray(im, dtype=np.float64).ravel() for im in train["image"]]) / 255.0
    test_x = np.stack([np.asarray(im, dtype=np.float64).ravel() for im in test["image"]]) / 255.0
    train_y, test_y = np.array(train["label"]), np.array(test["label"])
    votes = knn_scores(torch.tensor(train_x), torch.tensor(train_y), torch.tensor(test_x), 10, KNN_K, KNN_TEMPERATURE)
    knn = 100 * float((votes.argmax(-1).numpy() == test_y).mean())
    linear = pixel_logistic(train_x, train_y, test_x, test_y, seed=0)["accuracy"]
    few = []
    indexed = train.add_column("row", list(range(len(train))))
    for seed in seeds:
        index = np.array(labels_per_class_subset(indexed, "label", labels_per_class, seed)["row"])
        few.append(pixel_logistic(train_x[index], train_y[index], test_x, test_y, seed)["accuracy"])
    # the pixels do not move with the seed; only the labelled subset of the few-label column does
    return {"knn": [knn] * len(seeds), "linear": [linear] * len(seeds), "finetune": few}


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def evaluate(models: dict[str, str], seeds, args, work: Path, log: Path) -> dict[str, dict[str, list[float]]]:
    """{model: {protocol: [accuracy per seed]}}, random initialisation included."""
    names = {folder: name for name, folder in models.items()}
    scores: dict[str, dict[str, list[float]]] = {name: {} for name in [*models, RANDOM]}
    common = ["--model", *models.values(), "--random-init", "--no-save-to-model"]
    for seed in seeds:
        runs = {
            "frozen": ["--protocol", "knn", "linear", "--pooling", "mean"],
            "finetune": [
                *("--protocol", "finetune", "--labels-per-class", str(args.labels_per_class)),
                *("--finetune-epochs", str(args.finetune_epochs), "--finetune-batch-size", "50"),
                *("--finetune-lr", str(args.finetune_lr), "--drop-path", "0.1", "--crop-scale", "0.35", "1"),
            ],
        }
        for kind, flags in runs.items():
            out = work / f"eval-{kind}-seed{seed}"
            if not (args.reuse and (out / "evaluation.json").exists()):
                run(hf_mim("evaluate", *common, *flags, "--seed", str(seed), "--output-dir", str(out)), log)
            for row in json.loads((out / "evaluation.json").read_text())["results"]:
                name = RANDOM if row["model"].startswith("random-init") else names[row["model"]]
                scores[name].setdefault(row["protocol"], []).append(100 * row["value"])
    return scores


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float] | None) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.1f} ± {std:.1f}"


def comparison(scores, name: str, baseline: str = RANDOM) -> tuple[str, bool]:
    """The paired difference to `baseline` on the few-label column, and whether it exceeds twice the larger of
    the two seeds' standard deviations."""
    if baseline not in scores:
        return "-", False
    ours, base = scores[name]["finetune"], scores[baseline]["finetune"]
    diffs = [a - b for a, b in zip(ours, base, strict=True)]
    mean, std = mean_std(diffs)
    bar = 2 * max(mean_std(ours)[1], mean_std(base)[1])
    return f"{mean:+.1f} ± {std:.1f}", mean > bar


def table(runs: dict, scores: dict, seeds) -> str:
    lines = [
        "| model | epochs (steps) | pretraining wall (s) | final loss | reconstruction error | k-NN | linear probe "
        f"| fine-tune, {len(seeds)} seeds | vs random init (paired) | ahead by > 2σ | vs raw pixels (paired) "
        "| ahead by > 2σ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run_info in runs.items():
        diff, ahead = comparison(scores, name)
        pixel_diff, beats_pixels = comparison(scores, name, PIXELS)
        recon = run_info.get("reconstruction")
        lines.append(
            f"| {name} | {run_info['epochs']} ({run_info['steps']}) | {run_info['wall']:.0f} "
            f"| {run_info['final_loss']:.4f} | {'-' if recon is None else f'{recon:.3f}'} "
            f"| {fmt(scores[name].get('knn'))} | {fmt(scores[name].get('linear'))} "
            f"| {fmt(scores[name]['finetune'])} | {diff} | {'yes' if ahead else 'no'} "
            f"| {pixel_diff} | {'yes' if beats_pixels else 'no'} |"
        )
    lines.append(
        f"| {RANDOM} | - | - | - | - | {fmt(scores[RANDOM].get('knn'))} | {fmt(scores[RANDOM].get('linear'))} "
        f"| {fmt(scores[RANDOM]['finetune'])} | - | - | - | - |"
    )
    if PIXELS in scores:
        lines.append(
            f"| {PIXELS} (logistic regression; its fine-tune column: on the same labelled images) | - | - | - | - "
            f"| {fmt(scores[PIXELS]['knn'])} | {fmt(scores[PIXELS]['linear'])} | {fmt(scores[PIXELS]['finetune'])} "
            "| - | - | - | - |"
        )
    return "\n".join(lines)


def marked_block(marker: str) -> re.Pattern:
    """The text between `<!-- marker:start -->` and `<!-- marker:end -->`: groups (start line, block, end line)."""
    return re.compile(rf"(<!-- {marker}:start -->\n)(.*?)(<!-- {marker}:end -->)", re.S)


def record(marker: str, block: str, files=(RESULTS, DOCS_PAGE)) -> None:
    """Replace the text between `<!-- marker:start -->` and `<!-- marker:end -->` in each file that has them."""
    for path in files:
        text = path.read_text()
        pattern = marked_block(marker)
        if pattern.search(text):
            # atomic: an interrupted write must not leave a README cut in half
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(3), text))
            os.replace(tmp, path)
            print(f"recorded in {path}")


# ----------------------------------------------------------------------------------------------------------------
# Kong & Zhang's few-image pretraining
# ----------------------------------------------------------------------------------------------------------------


def few_image_dataset(work: Path, count: int, seed: int = 0) -> Path:
    """`count` training images drawn from `seed`, each repeated so that the set has as many rows as the whole
    training split: every run then takes the same steps per epoch, and every row its own augmentation."""
    import torch

    from hf_mim.data.sources import builtin_digits

    folder = work / f"few-{count}"
    if not folder.exists():
        train = builtin_digits("train")
        chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count].tolist()
        rows = [chosen[i % count] for i in range(len(train))]
        train.select(rows).save_to_disk(str(folder))
    return folder


def few_images(args, work: Path, log: Path) -> str:
    work = work / "few-images"
    work.mkdir(exist_ok=True)
    runs, models = {}, {}
    for count in args.few_images:
        name = f"MAE on {count} image{'s' if count > 1 else ''}"
        out = work / f"mae-few-{count}"
        if not (args.reuse and (out / "training_summary.json").exists()):
            data = few_image_dataset(work, count)
            run(
                hf_mim(
                    *("pretrain", "--dataset", str(data), "--image-size", "32", "--epochs", str(args.epochs)),
                    *("--num-workers", "0", "--output-dir", str(out)),
                ),
                log,
            )
        summary = json.loads((out / "training_summary.json").read_text())
        runs[name] = {
            "folder": str(out),
            "steps": summary["steps"],
            "epochs": summary["epochs"],
            "wall": summary["wall_time_seconds"],
            "final_loss": summary["final_loss"],
            "reconstruction": None,
        }
        models[name] = str(out)
    scores = evaluate(models, args.seeds, args, work, log)
    return table(runs, scores, args.seeds)


# ----------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=[*METHODS, PEER], choices=[*METHODS, PEER])
    parser.add_argument("--epochs", type=int, default=50, help="pretraining epochs, the same for every method")
    parser.add_argument("--tokenizer-epochs", type=int, default=20, help="epochs of BEiT's visual tokenizer")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    parser.add_argument("--labels-per-class", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=float, default=100)
    parser.add_argument("--finetune-lr", type=float, default=2.5e-3, help="base lr per 256 images")
    parser.add_argument("--few-images", type=int, nargs="+", help="instead: MAE pretrained on this many images")
    parser.add_argument("--workdir", default="outputs/bench_quality")
    parser.add_argument("--reuse", action="store_true", help="read back runs already in --workdir")
    parser.add_argument("--record", action="store_true", help="write the table into RESULTS.md and docs/evaluate.md")
    parser.add_argument("--pixels-only", action="store_true", help="only the raw-pixel row (seconds)")
    parser.add_argument("--train-peer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.train_peer:
        train_peer(Path(args.train_peer), args.epochs)
        return

    if args.pixels_only:
        pixels = pixel_scores(args.seeds, args.labels_per_class)
        print(f"| {PIXELS} | k-NN {fmt(pixels['knn'])} | logistic, every label {fmt(pixels['linear'])} "
              f"| logistic, {args.labels_per_class} labels per class {fmt(pixels['finetune'])} |")  # fmt: skip
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    began = time.perf_counter()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {__import__('torch').__version__}"
    if args.few_images:
        text = few_images(args, work, log)
        marker = "bench_quality_few_images"
        command = "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:]).replace(" --record", "")
    else:
        runs = {}
        for method in args.methods:
            extra = []
            tokenizer_wall = 0.0
            if method == "beit":
                tokenizer = pretrain("visual-tokenizer", work, args.tokenizer_epochs, log, reuse=args.reuse)
                tokenizer_wall = tokenizer["wall"]
                extra = ["--tokenizer", str(work / "visual-tokenizer")]
            runs[method] = pretrain(method, work, args.epochs, log, extra, args.reuse)
            runs[method]["wall"] += tokenizer_wall
            print(f"{method}: {runs[method]}", flush=True)
        scores = evaluate({name: r["folder"] for name, r in runs.items()}, args.seeds, args, work, log)
        scores[PIXELS] = pixel_scores(args.seeds, args.labels_per_class)
        text = table(runs, scores, args.seeds)
        marker = "bench_quality"
        command = "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:]).replace(" --record", "")
        (work / "results.json").write_text(json.dumps({"runs": runs, "scores": scores}, indent=2))
    wall = time.perf_counter() - began
    block = f"`{command.strip()}`: {machine}; {wall / 60:.0f} min in all ({time.strftime('%Y-%m-%d')})\n\n{text}"
    (work / f"{marker}.md").write_text(block + "\n")
    print(block)
    if args.record:
        record(marker, block)


if __name__ == "__main__":
    main()
