"""Issue 28's candidate causes, measured one at a time on Fashion-MNIST before any default changed.

Each candidate is one `hf-mim evaluate` invocation with one setting changed against the baseline settings of its
group, on a checkpoint pretrained by `bench_fashion_mnist.py` (or any other), at one label budget, with the given
downstream seeds. Results are parts under WORKDIR/candidates (a rerun resumes).

    python benchmarks/fashion_candidates.py --model outputs/bench_fashion_mnist/pretrain/mae-seed0 --group finetune
    python benchmarks/fashion_candidates.py --model ... --group frozen --budget 10%
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fashion_mnist import (  # noqa: E402
    BUDGETS,
    IDX_DIR,
    Parts,
    arrays,
    evaluate_flags,
    fmt,
    installed_dataset,
    labelled_per_class,
)
from bench_quality import hf_mim, run  # noqa: E402

PAPER_CROP = ("--recipe", "paper", "--crop-scale", "0.8", "1")
# (name, protocols, extra flags): one change each against the group's first line
GROUPS = {
    "frozen": [
        ("CLS token", ["knn", "linear"], ["--pooling", "cls"]),
        ("mean of patches", ["knn", "linear"], ["--pooling", "mean"]),
        ("CLS, block 4 of 6", ["knn", "linear"], ["--block", "4"]),
        ("mean, block 4 of 6", ["knn", "linear"], ["--pooling", "mean", "--block", "4"]),
        ("mean, block 5 of 6", ["knn", "linear"], ["--pooling", "mean", "--block", "5"]),
    ],
    "finetune": [
        ("paper recipe (50 epochs, lr 1e-3, crop 0.08-1)", ["finetune"], ["--recipe", "paper"]),
        ("crop 0.8-1", ["finetune"], [*PAPER_CROP]),
        ("crop 0.8-1, lr 2.5e-3", ["finetune"], [*PAPER_CROP, "--finetune-lr", "2.5e-3"]),
        ("crop 0.8-1, 100 epochs", ["finetune"], [*PAPER_CROP, "--finetune-epochs", "100"]),
        ("crop 0.8-1, layer decay 0.75", ["finetune"], [*PAPER_CROP, "--layer-decay", "0.75"]),
        ("crop 0.8-1, mean pooling", ["finetune"], [*PAPER_CROP, "--pooling", "mean"]),
        ("crop 0.8-1, no label smoothing", ["finetune"], [*PAPER_CROP, "--label-smoothing", "0"]),
    ],
    # the small recipe's length (~500 steps) was set at 1%; does a larger labelled set want more? (append only: a
    # candidate's index names its recorded parts)
    "length": [
        ("small recipe, its own length", ["finetune"], ["--recipe", "small"]),
        ("small recipe, 20 epochs", ["finetune"], ["--recipe", "small", "--finetune-epochs", "20"]),
        ("small recipe, 150 epochs", ["finetune"], ["--recipe", "small", "--finetune-epochs", "150"]),
        # with every label the small recipe's floor (5 epochs, 4,690 steps) decides the length: is it too short?
        ("small recipe, 15 epochs", ["finetune"], ["--recipe", "small", "--finetune-epochs", "15"]),
        ("small recipe, 10 epochs", ["finetune"], ["--recipe", "small", "--finetune-epochs", "10"]),
    ],
    # with every label the training loss ends level with the test loss (0.659 and 0.669 at 10 epochs): the model
    # underfits, so does a larger step fit it sooner than more steps?
    "lr": [
        ("small recipe, 10 epochs", ["finetune"], ["--recipe", "small", "--finetune-epochs", "10"]),
        ("small recipe, 10 epochs, lr 5e-3", ["finetune"],
         ["--recipe", "small", "--finetune-epochs", "10", "--finetune-lr", "5e-3"]),
    ],
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a pretrained checkpoint folder")
    parser.add_argument("--group", choices=list(GROUPS), required=True)
    parser.add_argument("--only", nargs="+", type=int, help="run only these candidates (0-based, in GROUPS order)")
    parser.add_argument("--budget", default="1%", choices=list(BUDGETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench_fashion_mnist"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = installed_dataset(IDX_DIR, args.workdir)
    work = args.workdir / "candidates"
    parts = Parts(work, None, work / "log.txt")
    model_name = Path(args.model).name
    labelled = labelled_per_class(args.budget, arrays(IDX_DIR, "train")[1])
    lines = ["| candidate | protocol | accuracy, mean ± std (seeds) | per seed | wall per seed (s) |"]
    lines.append("|---|---|---|---|---|")
    for i, (name, protocols, flags) in enumerate(GROUPS[args.group]):
        if args.only and i not in args.only:
            continue
        per_seed: dict[str, list[float]] = {p: [] for p in protocols}
        walls = []
        for seed in args.seeds:
            key = f"{model_name}/{args.group}{i}/{args.budget}/seed{seed}"
            out = work / "eval" / key.replace("/", "-")

            def compute(seed=seed, out=out, flags=flags, protocols=protocols):
                cmd = hf_mim("evaluate", "--model", args.model, "--dataset", str(data), "--protocol", *protocols,
                             *evaluate_flags(labelled, seed, out), *flags)  # fmt: skip
                run(cmd, work / "log.txt")
                rows = json.loads((out / "evaluation.json").read_text())["results"]
                return {r["protocol"]: 100 * r["value"] for r in rows} | {"command": " ".join(cmd[2:])}

            result = parts.get(key, compute)
            if result is None:  # another invocation holds it
                continue
            walls.append(result["wall_s"])
            for p in protocols:
                per_seed[p].append(result[p])
        for p, values in per_seed.items():
            if not values:
                continue
            lines.append(
                f"| {name} | {p} | {fmt(values)} "
                f"| {', '.join(f'{v:.1f}' for v in values)} | {statistics.fmean(walls):.0f} |"
            )
    print(f"{model_name}, {args.budget} labels, `{' '.join(sys.argv)}`")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
