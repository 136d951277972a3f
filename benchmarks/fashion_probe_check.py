"""Issue 28: is the frozen-feature probe, or the features it reads, what keeps a model level with the raw pixels?

On one pretrained checkpoint, at one label budget, for each downstream seed (the labelled draw of `hf-mim evaluate
--labels-per-class N --seed S`), the features are read once per block and pooling, exactly as `hf-mim evaluate`
reads them, and probed several ways:

- the probe `hf-mim evaluate` runs (MAE's: BatchNorm + linear, SGD, no weight decay), and the same with weight decay;
- the raw-pixel row's classifier on the same features: scikit-learn logistic regression, C picked by cross-validation
  on the labels (`bench_quality.pixel_logistic`), so the probe and the pixels get the same classifier;
- features of several blocks, or the CLS token and the patch mean, concatenated (DINO's linear evaluation reads the
  last 4 blocks' CLS tokens);

beside logistic regression on the raw pixels of the same draw. Every figure is a test accuracy (10,000 images).

    python benchmarks/fashion_probe_check.py --model outputs/bench_fashion_mnist/pretrain/mae-seed0 --budget 1%
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fashion_mnist import BUDGETS, IDX_DIR, arrays, installed_dataset, labelled_per_class, subset_indices  # noqa: E402
from bench_quality import pixel_logistic  # noqa: E402

# (name, the (block, pooling) features concatenated, the probe); block None: the last
FEATURES = {
    "mean, last block": [(None, "mean")],
    "mean, blocks 5 and 6": [(5, "mean"), (None, "mean")],
    "mean, blocks 4 to 6": [(4, "mean"), (5, "mean"), (None, "mean")],
    "mean and CLS, last block": [(None, "mean"), (None, "cls")],
}
WEIGHT_DECAYS = (1e-3, 1e-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a pretrained checkpoint folder")
    parser.add_argument("--budget", default="1%", choices=[b for b, f in BUDGETS.items() if f])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench_fashion_mnist"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = str(installed_dataset(IDX_DIR, args.workdir))
    import torch

    from hf_mim.evaluation import runner
    from hf_mim.evaluation.protocols import extract_features, knn_scores, linear_probe

    started = time.monotonic()
    per_class = labelled_per_class(args.budget, arrays(IDX_DIR, "train")[1])
    settings = runner.EvaluateArguments(model=[args.model], dataset=data)
    accelerator = runner._accelerator(settings)
    splits = runner.load_labelled_splits(data, None, "train", None, None, None, 0.2, 0)
    model = runner.load_encoder(args.model, random_init=False, seed=0)
    keys = sorted({k for ks in FEATURES.values() for k in ks}, key=str)

    def features(dataset):
        loader = runner._loader(dataset, splits, model.config, settings, accelerator)
        out = {}
        for block, pooling in keys:
            x, y, _ = extract_features(model, loader, accelerator, block, pooling)
            out[(block, pooling)] = x
        return out, y

    def accuracy(scores, labels) -> float:
        return 100 * float((scores.argmax(-1) == labels).float().mean())

    test, test_y = features(splits.test)
    pixels_train, pixels_train_y = arrays(IDX_DIR, "train")
    pixels_test, pixels_test_y = arrays(IDX_DIR, "test")
    rows: dict[str, list[float]] = {}
    for seed in args.seeds:
        index = subset_indices(pixels_train_y, per_class, seed)  # the draw of `hf-mim evaluate --seed S`
        train = splits.train.select(index)
        rows.setdefault("raw pixels, logistic regression (C tuned)", []).append(
            pixel_logistic(pixels_train[index].reshape(len(index), -1) / 255.0, pixels_train_y[index],
                           pixels_test.reshape(len(pixels_test), -1) / 255.0, pixels_test_y, seed)["accuracy"]
        )  # fmt: skip
        fit, fit_y = features(train)
        for name, parts in FEATURES.items():
            x, x_test = torch.cat([fit[k] for k in parts], 1), torch.cat([test[k] for k in parts], 1)
            _, scores = linear_probe(x, fit_y, x_test, splits.num_classes, seed=seed)
            rows.setdefault(f"{name}: hf-mim's probe", []).append(accuracy(scores, test_y))
            knn = knn_scores(x, fit_y, x_test, splits.num_classes, runner.KNN_K, runner.KNN_TEMPERATURE)
            rows.setdefault(f"{name}: k-NN", []).append(accuracy(knn, test_y))
            if name != "mean, last block":
                continue
            for decay in WEIGHT_DECAYS:
                _, scores = linear_probe(x, fit_y, x_test, splits.num_classes, weight_decay=decay, seed=seed)
                rows.setdefault(f"{name}: hf-mim's probe, weight decay {decay:g}", []).append(accuracy(scores, test_y))
            logistic = pixel_logistic(x.double().numpy(), fit_y.numpy(), x_test.double().numpy(), test_y.numpy(), seed)
            rows.setdefault(f"{name}: logistic regression (C tuned), as the pixels", []).append(logistic["accuracy"])
    pixels = rows["raw pixels, logistic regression (C tuned)"]
    print(f"{Path(args.model).name}, {args.budget} labels, seeds {args.seeds}, `{' '.join(sys.argv)}`, "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    print("| features: classifier | accuracy, mean ± std | per seed | − pixels, paired |\n|---|---|---|---|")
    for name, values in rows.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        diffs = [v - p for v, p in zip(values, pixels, strict=True)]
        diff_std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        paired = "" if values is pixels else f"{statistics.fmean(diffs):+.1f} ± {diff_std:.1f}"
        print(f"| {name} | {statistics.fmean(values):.1f} ± {std:.1f} | {', '.join(f'{v:.1f}' for v in values)} "
              f"| {paired} |")  # fmt: skip


if __name__ == "__main__":
    main()
