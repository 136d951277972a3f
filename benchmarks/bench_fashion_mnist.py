"""Fashion-MNIST: do hf_mim's pretrained features and fine-tuned models beat raw pixels and a ViT from scratch?

Protocol (issue 28):

- Data: Fashion-MNIST (60,000 training and 10,000 test images of clothes, 28 px grey, 10 classes), installed with
  `sudo apt-get install dataset-fashion-mnist` (the IDX files under /usr/share/datasets/fashion-mnist) and written
  once as a saved `DatasetDict` with "train" and "test" splits. Pretraining reads "train" only; every accuracy is
  measured on "test", which no pretraining and no downstream training sees. The script refuses a pretraining run
  whose summary names another split.
- Pretraining: `hf-mim pretrain --dataset DATA --method M --seed S` with no recipe flag: what a user gets
  (`--recipe auto` picks the small recipe for 28 px images; the plan it printed is in each run's log).
- Label budgets: 1% (60 images per class), 10% (600 per class) and 100% (all 60,000). Downstream seed i draws the
  labelled subset; the same subset serves every model and the raw-pixel baseline, so differences are paired.
- Protocols, all through `hf-mim evaluate` with its defaults (what a user gets): k-NN and the linear probe on frozen
  features, and fine-tuning.
- Seeds: a row of a method pretrained with several seeds pairs pretraining seed i with downstream seed i; a method
  pretrained once is evaluated with every downstream seed. The from-scratch ViT (the same architecture, freshly
  initialised from seed i) is fine-tuned with the same recipe on the same subset.
- Baselines run here: logistic regression on the 784 raw pixels (scaled to [0, 1] and standardised; its inverse
  regularisation C picked from a grid by stratified 5-fold cross-validation on the labelled subset, by one held-out
  fifth above 10,000 labels, then refit on all of it: `bench_quality.pixel_logistic`); the ViT from scratch.
  Published figures of the dataset's own benchmark are cited rows, not rerun.
- Reported: mean ± std over seeds, paired differences, and wall times. Every unit of work (a part) writes its
  result as it ends, a small JSON file in `--results-dir` (default benchmarks/results/fashion_mnist, committed with
  the repository); a later run skips the parts already there, so `--time-limit` lets the benchmark run in pieces that
  resume, on another day or another machine (each part names the machine it ran on). Two invocations share the
  parts through a lock per part, one core each; `--kinds` and `--parts 'finetune/scratch/*'` choose which parts an
  invocation starts. The results folder is bound to the data it measured (DATA.json: the IDX files' sha256); parts
  of other data are refused, never mixed in.
- Models are not committed, only figures: a part that needs a pretrained model which is not in `--workdir` (another
  machine, a wiped `outputs/`) is not run and the summary names it; `--repretrain mae-p0` pretrains it again. The
  parts measured on the old model stand only if the new one is the same model (`same_model`: `hf-mim pretrain`
  reproduces bit for bit with the same seed, code, torch build, CPU kind and thread count); otherwise they move to
  stale/, so that no row mixes two pretrainings of one seed. The ViT from scratch needs no pretrained model: its
  architecture (the pretrained models' config) is kept with the results, ARCHITECTURE.json.
  `--record` refuses to replace a recorded table with one of fewer measurements, unless `--record-fewer`.

    sudo apt-get install dataset-fashion-mnist
    python benchmarks/bench_fashion_mnist.py --time-limit 80 --record      # again until it says "complete"
    python benchmarks/bench_fashion_mnist.py --methods mae --pretrain-seeds 0 --seeds 0 --budgets 1%   # smoke
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import hashlib
import json
import os
import platform
import re
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import (  # noqa: E402,F401
    METHODS,
    PIXEL_C_GRID,
    PIXEL_SELECTION,
    hf_mim,
    marked_block,
    pixel_logistic,
    record,
    run,
)

from hf_mim.evaluation.recipes import choose_recipe  # noqa: E402
from hf_mim.evaluation.runner import EvaluateArguments  # noqa: E402

IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
#: where the parts' figures are kept: in the repository, so that the table accumulates across runs and machines
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "fashion_mnist"
INSTALL = "sudo apt-get install dataset-fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
#: label budget -> the fraction of the training images labelled, as images per class (60 and 600 of Fashion-MNIST)
BUDGETS = {"1%": 0.01, "10%": 0.1, "100%": None}


def labelled_per_class(budget: str, labels: np.ndarray) -> int | None:
    """Labelled images per class of a budget (None: every training image)."""
    fraction = BUDGETS[budget]
    return None if fraction is None else max(1, round(fraction * len(labels) / len(np.unique(labels))))


SCRATCH = "ViT from scratch"
KINDS = ("pixels", "pretrain", "frozen", "finetune")
PIXELS = "raw pixels, logistic regression"
# Cited, not rerun: the dataset's README (zalandoresearch/fashion-mnist, "Benchmark") and its scikit-learn
# benchmark site, every training label.
PUBLISHED = [
    ("LogisticRegression (scikit-learn benchmark, best setting)", 84.2),
    ("MLP 256-128-100 (README table)", 88.3),
    ("SVC (scikit-learn benchmark, best setting)", 89.7),
    ("2 conv + pooling, TensorFlow tutorial (README table)", 91.6),
    ("ResNet18 with augmentation (README table)", 94.9),
]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    _, _, ndim = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def arrays(idx_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    return read_idx(idx_dir / f"{prefix}-images-idx3-ubyte.gz"), read_idx(idx_dir / f"{prefix}-labels-idx1-ubyte.gz")


def write_dataset(idx_dir: Path, folder: Path) -> Path:
    """The IDX files as a saved DatasetDict ("train", "test"; PNG images, ClassLabel labels), written once."""
    import datasets
    from PIL import Image

    if (folder / "dataset_dict.json").exists():
        return folder
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    splits = {}
    for split in ("train", "test"):
        images, labels = arrays(idx_dir, split)
        rows = {"image": [Image.fromarray(a) for a in images], "label": labels.tolist()}
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    tmp = folder.with_name(folder.name + ".tmp")
    datasets.DatasetDict(splits).save_to_disk(str(tmp))
    os.replace(tmp, folder)
    return folder


def installed_dataset(idx_dir: Path, workdir: Path) -> Path:
    """The saved dataset of the installed IDX files (written once under `workdir`); exits in one line naming the
    install command when they are missing. For the scripts that study one checkpoint on this data."""
    if not (idx_dir / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"Fashion-MNIST is not in {idx_dir}: run `{INSTALL}`")
    return write_dataset(idx_dir, workdir / "fashion-mnist")


def subset_indices(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """The labelled subset of a budget, exactly as `hf-mim evaluate --labels-per-class N --seed S` draws it."""
    if per_class is None:
        return np.arange(len(labels))
    import datasets

    from hf_mim.data.labelled import labels_per_class_subset

    table = datasets.Dataset.from_dict({"label": labels.tolist(), "i": list(range(len(labels)))})
    return np.array(labels_per_class_subset(table, "label", per_class, seed)["i"])


# ----------------------------------------------------------------------------------------------------------------
# Parts: each writes RESULTS_DIR/<key>.json when it ends; a later run reads it back instead of redoing it
# ----------------------------------------------------------------------------------------------------------------


# the CPU's kernel kind (AVX2, AVX512) decides, with the thread count, whether a pretraining reproduces bit for bit
MACHINE = (
    f"{platform.machine()} ({__import__('torch').backends.cpu.get_cpu_capability()}), {os.cpu_count()} CPUs, "
    f"torch {__import__('torch').__version__}"
)


def data_fingerprint(idx_dir: Path) -> dict:
    """What a results folder measured: the sha256 of each IDX file. Parts measured on other files (the tests' toy
    data, a corrupted download) must never be read as Fashion-MNIST's."""
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")  # fmt: skip
    return {name: hashlib.sha256((idx_dir / name).read_bytes()).hexdigest() for name in names}


def stored_json(path: Path):
    """A file of the results folder, read; one that is not JSON (a hand edit, a merge conflict) stops the run in one
    line naming it, instead of a traceback."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        message = f"{path} is not JSON ({err}): restore it from git, or move it away to run that part again"
        raise SystemExit(message) from None


class Parts:
    """Units of work that survive the process: `get(key, compute)` returns the stored result, or computes and
    stores it. Past the deadline, or while another invocation holds the part's lock (two invocations can share the
    work, one core each), it computes nothing and notes the part as pending."""

    def __init__(self, results: Path, time_limit_min: float | None, log: Path, data: dict | None = None):
        """`data`: the fingerprint of what the parts measure (`data_fingerprint`); the folder keeps it in DATA.json
        and a folder holding another one is refused."""
        self.results = results
        self.results.mkdir(parents=True, exist_ok=True)
        if data is not None:
            bound = self.results / "DATA.json"
            if not bound.exists():
                tmp = bound.with_name(bound.name + ".tmp")
                tmp.write_text(json.dumps(data, indent=2) + "\n")
                os.replace(tmp, bound)
            elif stored_json(bound) != data:
                raise SystemExit(
                    f"{self.results} holds parts measured on other data than these IDX files (its DATA.json): "
                    "pass another --results-dir"
                )
        self.deadline = None if time_limit_min is None else time.monotonic() + 60 * time_limit_min
        self.log = log
        self.pending: list[str] = []
        self.missing: dict[str, Path] = {}  # parts not run because the model they need is not here
        self.kinds: tuple[str, ...] | None = None  # the kinds of part (a key's first word) it may start; None: any
        self.patterns: tuple[str, ...] | None = None  # shell patterns of the keys it may start; None: any
        self.keys: set[str] = set()  # every key asked for: the plan, against which the patterns are checked
        self.reading = False  # `reread`: start nothing, read what is stored now

    def reread(self) -> None:
        """From now on start nothing and only read what is stored, noting the rest as pending: for the table, which
        must show the parts another invocation stored while this one ran (it held them then, so `get` gave None)."""
        self.reading = True
        self.pending, self.missing = [], {}

    def path(self, key: str) -> Path:
        return self.results / f"{key.replace('/', '__')}.json"

    def get(self, key: str, compute, *arguments, stamp: str | None = None, needs: Path | None = None) -> dict | None:
        """`stamp`: what the part's figures depend on besides its key (the downstream settings it ran with). A stored
        part with another stamp is stale, from before a recipe changed: it is moved to results/stale/ (kept, never
        read) and computed again, so that a table never mixes two recipes under one heading. `needs`: a file the
        computation depends on (a pretrained model's training_summary.json, written last; ARCHITECTURE.json); while
        it is absent the part is not run and is noted in `missing`."""
        self.keys.add(key)
        path = self.path(key)
        if path.exists():
            stored = stored_json(path)
            if stamp is None or stored.get("stamp") == stamp:
                return stored
            if self.reading:  # set aside by the computing pass only
                self.pending.append(key)
                return None
            stale = self._keep_aside(path)
            print(f"[stale] {key}: ran with {stored.get('stamp')!r}, now {stamp!r}; kept as {stale}", flush=True)
        if self.reading:
            self.pending.append(key)
            if needs is not None and not needs.exists():
                self.missing[key] = needs
            return None
        late = self.deadline is not None and time.monotonic() > self.deadline
        chosen = self.patterns is None or any(fnmatch.fnmatchcase(key, p) for p in self.patterns)
        if late or not chosen or (self.kinds is not None and key.split("/")[0] not in self.kinds):
            self.pending.append(key)
            return None
        if needs is not None and not needs.exists():
            self.pending.append(key)
            self.missing[key] = needs
            return None
        lock = path.with_name(path.name + ".lock")
        if not self._lock(lock):
            self.pending.append(key)
            return None
        try:
            print(f"[part] {key}", flush=True)
            began = time.perf_counter()
            value = compute(*arguments)
            value["wall_s"] = round(time.perf_counter() - began, 1)
            value["machine"] = MACHINE
            if stamp is not None:
                value["stamp"] = stamp
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(value, indent=2))
            os.replace(tmp, path)
            return value
        finally:
            lock.unlink(missing_ok=True)

    def set_aside(self, pretraining: str) -> Path | None:
        """Move the stored part of one pretraining ("mae-p0") to stale/, so that it is pretrained again. The parts
        measured on its model stay where they are until the new pretraining is stored (`settle`)."""
        name, seed = split_pretraining(pretraining)
        path = self.path(f"pretrain/{name}/seed{seed}")
        return self._keep_aside(path) if path.exists() else None

    def settle(self, pretraining: str, new: dict) -> tuple[list[Path], list[Path]]:
        """Before a new pretraining's part is stored: the parts measured on a model of that pretraining (its frozen
        and fine-tuning parts) stand if the new model is the one they measured, the last one set aside
        (`same_model`); otherwise they move to stale/, so that no row pairs two pretrainings of one seed.
        Returns (kept, moved)."""
        name, seed = split_pretraining(pretraining)
        measured = sorted(self.results.glob(f"*__{name}-p{seed}__*.json"))
        earlier = sorted((self.results / "stale").glob(f"pretrain__{name}__seed{seed}.*.json"))
        if measured and earlier and same_model(stored_json(earlier[-1]), new):
            return measured, []
        return [], [self._keep_aside(path) for path in measured]

    def _keep_aside(self, path: Path) -> Path:
        """Move a stored part to stale/, where it is kept and never read."""
        stale = self.results / "stale" / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.json"
        stale.parent.mkdir(exist_ok=True)
        os.replace(path, stale)
        return stale

    @staticmethod
    def _lock(lock: Path) -> bool:
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    os.kill(int(lock.read_text() or 0), 0)
                    return False  # another invocation is computing this part
                except (ProcessLookupError, ValueError):
                    lock.unlink(missing_ok=True)  # its holder died: take the part over
                    continue
                except PermissionError:
                    return False
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return True
        return False


def split_pretraining(pretraining: str) -> tuple[str, str]:
    """METHOD-pSEED ("mae-p0") -> (METHOD, SEED)."""
    name, _, seed = pretraining.rpartition("-p")
    if not name or not seed.isdigit():
        raise SystemExit(f"--repretrain {pretraining!r}: expected METHOD-pSEED, such as mae-p0")
    return name, seed


def same_model(earlier: dict, new: dict) -> bool:
    """Whether two pretraining parts made the same model. By the weights' sha256 where both parts have it; parts
    from before it was recorded have the final loss, at full precision: after thousands of steps two different
    models do not agree to the last bit of a float32. A run reproduces bit for bit only on the same code, torch
    build, CPU kind and torch thread count (the part's `hardware`): `hf-mim pretrain` seeds every random draw."""
    if earlier.get("weights_sha256") and new.get("weights_sha256"):
        return earlier["weights_sha256"] == new["weights_sha256"]
    return (earlier.get("steps"), earlier.get("final_loss")) == (new.get("steps"), new.get("final_loss"))


def recipe_stamp(kind: str, num_labelled: int) -> str:
    """The settings a `frozen` or `finetune` part gets from `hf-mim evaluate`'s defaults for Fashion-MNIST's 28 px
    images (the small downstream recipe) with `num_labelled` training images: its stamp (`Parts.get`)."""
    recipe, _ = choose_recipe("auto", 28)
    probe = f"{recipe.name} recipe, probes on {recipe.probe_pooling}"
    if kind == "frozen":
        return probe
    epochs = recipe.epochs_for(num_labelled, EvaluateArguments.finetune_batch_size)
    lo, hi = recipe.crop_scale
    return (
        f"{probe}; fine-tune {epochs:g} epochs, lr {recipe.finetune_lr:g}, crop {lo:g}-{hi:g}, label smoothing "
        f"{recipe.label_smoothing:g}, weight decay {recipe.weight_decay:g}, layer decay {recipe.layer_decay:g}, "
        f"drop path {recipe.drop_path}"
    )


def evaluate_flags(per_class: int | None, seed: int, out: Path) -> list[str]:
    """`hf-mim evaluate`'s flags of one budget and seed: nothing else, so every recipe setting is the default."""
    budget = ["--labels-per-class", str(per_class)] if per_class else []
    return [*budget, "--seed", str(seed), "--no-save-to-model", "--output-dir", str(out)]


def evaluate_part(model: str, protocols: list[str], per_class: int | None, seed: int, out: Path, log: Path) -> dict:
    cmd = hf_mim("evaluate", "--model", model, "--dataset", str(DATA), "--protocol", *protocols,
                 *evaluate_flags(per_class, seed, out))  # fmt: skip
    run(cmd, log)
    rows = json.loads((out / "evaluation.json").read_text())["results"]
    return {row["protocol"]: 100 * row["value"] for row in rows} | {"command": " ".join(cmd[2:])}


def weights_sha256(folder: Path) -> str:
    """One sha256 over a saved model's weight files (one file, or the shards of a large model), in name order."""
    digest = hashlib.sha256()
    for shard in sorted(folder.glob("*.safetensors")):
        with shard.open("rb") as f:  # in blocks: a large model's shards need not fit in memory at once
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def pretrain_part(method: str, seed: int, work: Path, log: Path, extra: list[str]) -> dict:
    out = work / "pretrain" / f"{method}-seed{seed}"
    if not (out / "training_summary.json").exists():
        run(
            hf_mim(
                *("pretrain", "--method", method, "--dataset", str(DATA), "--seed", str(seed)),
                *extra,
                *("--output-dir", str(out)),
            ),
            log,
        )
    summary = json.loads((out / "training_summary.json").read_text())
    run_args = json.loads((out / "training_args.json").read_text())
    # the held-out guarantee: the run read this benchmark's data, its training split, all 60,000 images of it
    read = Path(run_args.get("dataset") or "").resolve(), run_args.get("split"), summary.get("num_samples")
    if read != (DATA.resolve(), "train", len(arrays(IDX, "train")[1])):
        raise SystemExit(f"{out} was pretrained on {read}, not Fashion-MNIST's training split")
    return {
        "folder": str(out),
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "pretrain_wall_s": summary["wall_time_seconds"],
        "final_loss": summary["final_loss"],
        "weights_sha256": weights_sha256(out),
        "hardware": summary.get("hardware"),
    }


#: keys of a config.json that say nothing about the architecture (the classes it names, their code, versions)
NOT_ARCHITECTURE = ("architectures", "auto_map", "transformers_version", "dtype", "torch_dtype", "_name_or_path")


def arch(config: dict) -> dict:
    """A config.json's architecture: everything but NOT_ARCHITECTURE."""
    return {k: v for k, v in config.items() if k not in NOT_ARCHITECTURE}


def architecture(results: Path, folders: list[str]) -> Path | None:
    """The from-scratch ViT's architecture: ARCHITECTURE.json in the results folder, the config of the benchmark's
    pretrained models, kept beside the figures so that the scratch rows need no pretrained model on the machine that
    runs them. Written from the first pretrained model here when it is missing (None while there is none); a model
    here of another architecture stops the run, as its scratch rows would no longer be its baseline."""
    path = results / "ARCHITECTURE.json"
    configs = [Path(f) / "config.json" for f in folders if (Path(f) / "training_summary.json").exists()]

    if not path.exists():
        if not configs:
            return None
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(configs[0].read_text())
        os.replace(tmp, path)
    kept = stored_json(path)
    for config in configs:
        config_dict = json.loads(config.read_text())
        if config_dict.get("model_type") == kept.get("model_type") and arch(config_dict) != arch(kept):
            raise SystemExit(
                f"{config.parent} is not of the architecture the ViT from scratch was built from ({path}): its "
                "scratch rows are no baseline for it. Set them and ARCHITECTURE.json aside (or use another "
                "--results-dir)"
            )
    return path


def scratch_model(architecture: Path, seed: int, work: Path) -> str:
    """The benchmark's architecture (`architecture`), freshly initialised from `seed` and saved: the ViT from
    scratch."""
    import torch
    from transformers import AutoConfig, AutoModel

    from hf_mim import modeling  # noqa: F401  (registers the Auto classes)

    out = work / "scratch" / f"seed{seed}"
    cached = out / "config.json"
    # built again where the workdir holds one of another architecture (ARCHITECTURE.json written anew since)
    if not cached.exists() or arch(json.loads(cached.read_text())) != arch(stored_json(architecture)):
        torch.manual_seed(seed)
        AutoModel.from_config(AutoConfig.from_pretrained(str(architecture))).save_pretrained(out)
    return str(out)


def scratch_part(architecture: Path, seed: int, work: Path, per_class: int | None, out: Path, log: Path) -> dict:
    folder = scratch_model(architecture, seed, work)
    return evaluate_part(folder, ["knn", "linear", "finetune"], per_class, seed, out, log)


# ----------------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float]) -> str:
    if not values:
        return "not run"
    if len(values) == 1:  # one measurement has no spread: "± 0.0" would claim one
        return f"{values[0]:.1f} (1)"
    mean, std = mean_std(values)
    return f"{mean:.1f} ± {std:.1f} ({len(values)})"


# a measured cell of the table, "84.7 ± 0.3 (3)" or "91.0 (1)": the count in brackets
MEASURED_CELL = re.compile(r"(?<=\| )\d+\.\d(?: ± \d+\.\d)? \((\d+)\)(?= \|)")


def measurements(block: str) -> int:
    """How many measurements a table holds: the counts of its measured cells, summed."""
    return sum(int(n) for n in MEASURED_CELL.findall(block))


def check_record(block: str, files, marker: str = "bench_fashion_mnist") -> None:
    """Refuse to record a table holding fewer measurements than the one already recorded. A results folder that
    lacks the parts a recorded table was made from (another --results-dir, a checkout without them) would otherwise
    replace weeks of measurements with a near-empty table; the parts, not the table, are what resumes."""
    for path in files:
        found = marked_block(marker).search(path.read_text()) if path.exists() else None
        held, new = (measurements(found.group(2)), measurements(block)) if found else (0, 0)
        if new < held:
            raise SystemExit(
                f"--record refused: {path} holds a table of {held} measurements and the parts in --results-dir make "
                f"one of {new}. Run where the parts are (--results-dir), or pass --record-fewer to replace it anyway."
            )


def reproducing_command(argv: list[str]) -> str:
    """The command that renders the same table: the invocation without its flags about recording."""
    kept = [a for a in argv if a not in ("--record", "--record-fewer")]
    return " ".join(["python benchmarks/bench_fashion_mnist.py", *kept])


def paired(a: dict[int, float], b: dict[int | None, float]) -> str:
    """mean ± std of a - b over the seeds both have, and whether the mean exceeds twice the larger of the two rows'
    standard deviations (bench_quality.py's test). A baseline under the seed None (a fit that draws nothing, such
    as the pixels' on every label) is one figure that pairs with every seed of a."""
    if None in b:
        b = dict.fromkeys(a, b[None])
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "-"
    diffs = [a[s] - b[s] for s in seeds]
    if len(diffs) == 1:
        return f"{diffs[0]:+.1f} (1 seed)"
    mean, std = mean_std(diffs)
    bar = 2 * max(mean_std([a[s] for s in seeds])[1], mean_std([b[s] for s in seeds])[1])
    # the bar is the rows' spread, not the differences' (which pairing shrinks): shown, so that a reader can check
    verdict = "" if len(seeds) < 2 else (f" ✓ > 2σ = {bar:.1f}" if mean > bar else f" ✗ ≤ 2σ = {bar:.1f}")
    return f"{mean:+.1f} ± {std:.1f}{verdict}"


def tables(rows: dict[str, dict], budgets) -> str:
    """rows: {name: {(budget, protocol): {seed: accuracy}}} -> the accuracy table and the paired comparisons."""
    protocols = ("knn", "linear", "finetune")
    head = "| model |" + "".join(f" {b} {p} |" for b in budgets for p in ("k-NN", "linear", "fine-tune"))
    lines = [head, "|---|" + "---|" * (3 * len(budgets))]
    for name, cells in rows.items():
        lines.append(
            f"| {name} |"
            + "".join(f" {fmt(list(cells.get((b, p), {}).values()))} |" for b in budgets for p in protocols)
        )
    pixels = rows.get(PIXELS, {})
    scratch = rows.get(SCRATCH, {})
    head2 = "| model |" + "".join(
        f" {b} linear − pixels | {b} fine-tune − scratch | {b} fine-tune − linear |" for b in budgets
    )
    lines += ["", head2, "|---|" + "---|" * (3 * len(budgets))]
    for name, cells in rows.items():
        if name in (PIXELS, SCRATCH):
            continue
        cols = []
        for b in budgets:
            cols.append(paired(cells.get((b, "linear"), {}), pixels.get((b, "linear"), {})))
            cols.append(paired(cells.get((b, "finetune"), {}), scratch.get((b, "finetune"), {})))
            cols.append(paired(cells.get((b, "finetune"), {}), cells.get((b, "linear"), {})))
        lines.append(f"| {name} |" + "".join(f" {c} |" for c in cols))
    return "\n".join(lines)


DATA = Path()  # set in main
IDX = IDX_DIR  # set in main


def main() -> None:
    global DATA, IDX
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--pretrain-seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining seeds of MAE and --best"
    )
    parser.add_argument("--best", default="adios", help="the other method pretrained with every --pretrain-seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="downstream seeds (label draws)")
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--idx-dir", type=Path, default=IDX_DIR, help="where the IDX files are (default: %(default)s)")
    parser.add_argument(
        "--workdir", type=Path, default=Path("outputs/bench_fashion_mnist"),
        help="the data, models and logs (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR,
        help="the parts' figures, one JSON file each, kept across runs and machines (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--repretrain", nargs="+", default=[], metavar="METHOD-pSEED",
        help="pretrain these again (e.g. mae-p0) when their model is gone: their stored parts move to stale/ first",
    )  # fmt: skip
    parser.add_argument("--time-limit", type=float, help="minutes: start no new part after this; run again to resume")
    parser.add_argument(
        "--kinds", nargs="+", default=list(KINDS), choices=KINDS,
        help="which kinds of part this invocation may start (it reads every stored one): e.g. one invocation "
        "pretrains while another evaluates what is pretrained",
    )  # fmt: skip
    parser.add_argument(
        "--parts", nargs="+", metavar="PATTERN",
        help="start only the parts whose key matches one of these shell patterns (it reads every stored one), e.g. "
        "'finetune/scratch/*' to run the ViT from scratch first; keys: pixels/BUDGET/seedS, pretrain/METHOD/seedS, "
        "frozen|finetune/METHOD-pSEED/BUDGET/seedS, finetune/scratch/BUDGET/seedS",
    )  # fmt: skip
    parser.add_argument("--record", action="store_true", help="write the tables into RESULTS.md and the README")
    parser.add_argument(
        "--record-fewer", action="store_true",
        help="let --record replace a recorded table that holds more measurements than the parts in --results-dir give",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    missing = [p.name for p in (args.idx_dir / "train-images-idx3-ubyte.gz", args.idx_dir / "t10k-labels-idx1-ubyte.gz")
               if not p.exists()]  # fmt: skip
    if missing:
        raise SystemExit(f"Fashion-MNIST is not in {args.idx_dir} ({', '.join(missing)} missing): run `{INSTALL}`")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    DATA, IDX = write_dataset(args.idx_dir, work / "fashion-mnist"), args.idx_dir
    parts = Parts(args.results_dir, args.time_limit, log, data=data_fingerprint(args.idx_dir))
    parts.kinds = tuple(args.kinds)
    parts.patterns = tuple(args.parts) if args.parts else None
    for pretraining in args.repretrain:
        name, seed = split_pretraining(pretraining)
        folder = work / "pretrain" / f"{name}-seed{seed}"  # where pretrain_part writes it
        if (folder / "training_summary.json").exists():
            raise SystemExit(f"--repretrain {pretraining}: its model is in {folder}; nothing to pretrain again")
        stale = parts.set_aside(pretraining)
        if stale is not None:
            print(f"[repretrain] {pretraining}: its part kept as {stale}", flush=True)
    began = time.perf_counter()

    # loaded once for both passes of `collect`; a labelled subset is copied out only when its fit runs (every
    # label: 376 MB of float64)
    train_x, train_y = arrays(args.idx_dir, "train")
    test_x, test_y = arrays(args.idx_dir, "test")
    train_x = train_x.reshape(len(train_x), -1) / 255.0
    test_x = test_x.reshape(len(test_x), -1) / 255.0

    def fit_pixels(index, seed: int) -> dict:
        return pixel_logistic(train_x[index], train_y[index], test_x, test_y, seed)

    def collect() -> tuple[dict, dict, dict]:
        """Every part of the plan: computed where this invocation may (`Parts.get`), else read; the rows, the
        wall time per row and the pretrainings."""
        rows: dict[str, dict] = {PIXELS: {}}
        walls: dict[str, float] = {PIXELS: 0.0}

        def put(name, budget, protocol, seed, value, wall):
            rows.setdefault(name, {}).setdefault((budget, protocol), {})[seed] = value
            walls[name] = walls.get(name, 0.0) + wall

        # raw pixels: cheap, and the bar every other row must clear
        for budget in args.budgets:
            # every labelled image: the seed draws nothing, one fit stands for every seed
            for seed in args.seeds if BUDGETS[budget] else args.seeds[:1]:
                index = subset_indices(train_y, labelled_per_class(budget, train_y), seed)
                key = f"pixels/{budget}/seed{seed}"
                result = parts.get(key, fit_pixels, index, seed, stamp=PIXEL_SELECTION)
                if result:  # the fit on every label draws nothing: stored under no seed (`paired` pairs it with each)
                    drawn = seed if BUDGETS[budget] else None
                    put(PIXELS, budget, "linear", drawn, result["accuracy"], result["wall_s"])

        def pretrain_and_settle(method: str, seed: int, extra: list[str]) -> dict:
            """Pretrain, then settle the parts measured on an earlier model of this pretraining (`Parts.settle`)
            before the new part is stored."""
            info = pretrain_part(method, seed, work, log, extra)
            kept, moved = parts.settle(f"{method}-p{seed}", info)
            if kept:
                print(f"[repretrain] {method}-p{seed} made the model its {len(kept)} stored parts measured (final loss "
                      f"{info['final_loss']!r}): they stand", flush=True)  # fmt: skip
            if moved:
                print(f"[repretrain] {method}-p{seed} is another model than its {len(moved)} stored parts measured: "
                      f"kept in {moved[0].parent}, measured again", flush=True)  # fmt: skip
            return info

        # pretraining: MAE and --best with every pretraining seed, the other methods with the first
        runs: dict[str, list[tuple[int, dict]]] = {}
        order = ["mae", args.best] + [m for m in args.methods if m not in ("mae", args.best)]
        for method in [m for m in order if m in args.methods]:
            seeds = args.pretrain_seeds if method in ("mae", args.best) else args.pretrain_seeds[:1]
            for seed in seeds:
                extra = []
                if method == "beit":
                    tok = parts.get(
                        f"pretrain/visual-tokenizer/seed{seed}", pretrain_and_settle, "visual-tokenizer", seed, []
                    )
                    if tok is None:
                        continue
                    extra = ["--tokenizer", tok["folder"]]
                needs = Path(extra[1]) / "training_summary.json" if extra else None  # a whole model, not a started one
                info = parts.get(f"pretrain/{method}/seed{seed}", pretrain_and_settle, method, seed, extra, needs=needs)
                if info is not None:
                    runs.setdefault(method, []).append((seed, info))
                    walls[method] = walls.get(method, 0.0) + info["pretrain_wall_s"]

        def downstream_seeds(method: str) -> list[tuple[int, int]]:
            # by the plan, not by what has run so far: a part's key must mean the same in every invocation
            if method in ("mae", args.best) and len(args.pretrain_seeds) > 1:  # pretraining seed i, downstream seed i
                return list(zip(args.pretrain_seeds, args.seeds, strict=False))
            return [(args.pretrain_seeds[0], s) for s in args.seeds]

        # the ViT from scratch is MAE's architecture (another method's where MAE is not run), kept with the results
        folders_run = [info["folder"] for infos in runs.values() for _, info in infos[:1]]
        arch = architecture(args.results_dir, folders_run) or args.results_dir / "ARCHITECTURE.json"
        # frozen features first (cheap), budget by budget; fine-tuning after, the 100% budget last (the dearest)
        for kind in ("frozen", "finetune"):
            for budget in args.budgets:
                labelled = labelled_per_class(budget, train_y)
                stamp = recipe_stamp(kind, labelled * len(np.unique(train_y)) if labelled else len(train_y))
                for method, infos in runs.items():
                    folders = dict(infos)
                    for pseed, seed in downstream_seeds(method):
                        if pseed not in folders:
                            continue
                        name = "mae" if method == "mae" else method
                        key = f"{kind}/{method}-p{pseed}/{budget}/seed{seed}"
                        protocols = ["knn", "linear"] if kind == "frozen" else ["finetune"]
                        out = work / "eval" / key.replace("/", "-")
                        folder = folders[pseed]["folder"]
                        result = parts.get(
                            key, evaluate_part, folder, protocols, labelled, seed, out, log,
                            stamp=stamp, needs=Path(folder) / "training_summary.json",
                        )  # fmt: skip
                        if result:
                            for protocol in protocols:
                                put(name, budget, protocol, seed, result[protocol], result["wall_s"] / len(protocols))
                if kind == "finetune":
                    for seed in args.seeds:
                        key = f"finetune/scratch/{budget}/seed{seed}"
                        out = work / "eval" / key.replace("/", "-")
                        result = parts.get(
                            key, scratch_part, arch, seed, work, labelled, out, log, stamp=stamp, needs=arch
                        )
                        if result:
                            for protocol in ("knn", "linear", "finetune"):
                                put(SCRATCH, budget, protocol, seed, result[protocol], result["wall_s"] / 3)
        return rows, walls, runs

    collect()
    unmatched = [p for p in parts.patterns or () if not any(fnmatch.fnmatchcase(k, p) for k in parts.keys)]
    if unmatched:  # a typo must not pass for a finished run
        raise SystemExit(
            f"--parts {' '.join(unmatched)} matches no part of this plan; its keys are: {', '.join(sorted(parts.keys))}"
        )
    # the table reads every part again: one another invocation held (and so pending above) may be stored now
    parts.reread()
    rows, walls, runs = collect()

    order_rows = {PIXELS: rows.pop(PIXELS)}
    if SCRATCH in rows:
        order_rows[SCRATCH] = rows.pop(SCRATCH)
    order_rows.update(rows)
    names = {m: f"{m} ({len(runs[m])} pretraining seed{'s' if len(runs[m]) > 1 else ''})" for m in runs}
    named = {names.get(k, k): v for k, v in order_rows.items()}
    text = tables(named, args.budgets)
    pretrained = [
        f"| {m} | {infos[0][1]['epochs']} ({infos[0][1]['steps']}) | "
        + ", ".join(f"{i['pretrain_wall_s']:.0f}" for _, i in infos)
        + " | "
        + ", ".join(f"{i['final_loss']:.4f}" for _, i in infos)
        + " |"
        for m, infos in runs.items()
    ]
    text += "\n\n| pretrained | epochs (steps) | wall per seed (s) | final loss per seed |\n|---|---|---|---|\n"
    text += "\n".join(pretrained)
    text += "\n\nWall time, every part of a row summed (s): " + ", ".join(
        f"{names.get(k, k)} {v:.0f}" for k, v in walls.items()
    )
    text += "\n\nPublished, every training label (cited, not rerun): " + "; ".join(f"{n} {v}" for n, v in PUBLISHED)
    machines = sorted({v["machine"] for v in map(json.loads, map(Path.read_text, args.results_dir.glob("*__*.json")))
                       if "machine" in v})  # fmt: skip
    if machines:
        text += "\n\nParts measured on: " + "; ".join(machines)
    status = (
        "complete"
        if not parts.pending
        else f"partial: {len(parts.pending)} parts not yet run (first: {parts.pending[0]}); run it again to resume"
    )
    if parts.missing:
        gone = sorted({str(p.parent if p.name == "training_summary.json" else p) for p in parts.missing.values()})
        status += (
            f"; {len(parts.missing)} of them need a model that is not here ({', '.join(gone)}): pretrain it again "
            "with --repretrain METHOD-pSEED (its stored parts stand if it makes the same model, else move to stale/)"
        )
    command = reproducing_command(sys.argv[1:])
    block = (
        f"`{command.strip()}`: {MACHINE}; this invocation {(time.perf_counter() - began) / 60:.0f} min "
        f"({time.strftime('%Y-%m-%d')}); {status}\n\n{text}"
    )
    (work / "bench_fashion_mnist.md").write_text(block + "\n")
    print(block)
    if args.record:
        files = (Path(__file__).with_name("RESULTS.md"), Path(__file__).resolve().parents[1] / "README.md")
        if not args.record_fewer:
            check_record(block, files)
        record("bench_fashion_mnist", block, files=files)
    print(status)


if __name__ == "__main__":
    main()
