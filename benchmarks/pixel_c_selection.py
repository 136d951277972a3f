"""Issue 28: how the raw-pixel baseline's choice of C moves its score, on Fashion-MNIST's label draws.

For each draw of a label budget (the subset `hf-mim evaluate --labels-per-class N --seed S` trains on), it prints
the C that one stratified held-out fifth of the labels picks from the decade grid of then (the baseline's selection
until 2026-12-07) and its test accuracy, the C that `bench_quality.pixel_logistic` picks by stratified 5-fold
cross-validation and its test accuracy, and the test accuracy at every C of both grids (for reading only: no
baseline may pick C on the test set).

    python benchmarks/pixel_c_selection.py --budget 1%
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fashion_mnist import BUDGETS, IDX_DIR, arrays, labelled_per_class, subset_indices  # noqa: E402
from bench_quality import PIXEL_C_GRID, pixel_logistic  # noqa: E402

#: the baseline's grid until 2026-12-07, searched on one held-out fifth
HELD_OUT_GRID = (0.001, 0.01, 0.1, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="1%", choices=[b for b, f in BUDGETS.items() if f])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--idx-dir", type=Path, default=IDX_DIR, help="where the IDX files are (default: %(default)s)")
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))

    train_x, train_y = arrays(args.idx_dir, "train")
    test_x, test_y = arrays(args.idx_dir, "test")
    train_x, test_x = train_x.reshape(len(train_x), -1) / 255.0, test_x.reshape(len(test_x), -1) / 255.0
    per_class = labelled_per_class(args.budget, train_y)
    grid = " / ".join(f"{c:g}" for c in sorted({*PIXEL_C_GRID, *HELD_OUT_GRID}))
    print(f"| {args.budget} draw | held-out fifth: C, test | cross-validation: C, test | test at C = {grid} | s |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        began = time.perf_counter()
        index = subset_indices(train_y, per_class, seed)
        x, y = train_x[index], train_y[index]
        fit_x, val_x, fit_y, val_y = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
        held = {c: model(c).fit(fit_x, fit_y).score(val_x, val_y) for c in HELD_OUT_GRID}
        held_c = max(held, key=held.get)  # the first of equals: the smallest C
        test = {c: 100 * model(c).fit(x, y).score(test_x, test_y) for c in sorted({*PIXEL_C_GRID, *HELD_OUT_GRID})}
        cv = pixel_logistic(x, y, test_x, test_y, seed)
        print(
            f"| {seed} | {held_c:g}, {test[held_c]:.1f} | {cv['C']:g}, {cv['accuracy']:.1f} ({cv['selection']}) | "
            f"{' / '.join(f'{v:.1f}' for v in test.values())} | {time.perf_counter() - began:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
