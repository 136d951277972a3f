"""The benchmark scripts run end to end at toy sizes, so that they cannot rot unnoticed between measurements
(bench_input_pipeline.py once did, when a signature it used changed)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from .launch import run_group

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *arguments: str, timeout: int = 600) -> str:
    # run_group: DataLoader workers of a stuck script are killed with it instead of hanging the test
    result = run_group([sys.executable, str(BENCHMARKS / script), *arguments], timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_throughput_suite_checks_parity_then_times_every_model():
    results = BENCHMARKS / "RESULTS.md"
    before = results.read_text()
    out = run(
        "bench_throughput.py",
        *("--sizes", "small", "--image-size", "64", "--batch-size", "2", "--rounds", "1", "--warmup", "1"),
        *("--variants", "fp32", "--skip-memory", "--skip-loader", "--threads", "2"),
    )
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ViT-S/16")]
    # the table is printed as it goes and again at the end
    models = {(cells[1].strip(), cells[3].strip()) for cells in rows}
    assert models == {
        ("mae", "hf_mim"),
        ("mae", "transformers"),
        ("simmim", "hf_mim"),
        ("simmim", "transformers"),
        ("beit", "hf_mim"),
        ("beit", "hf_mim+tokenizer"),
        ("beit", "transformers"),
    }
    for cells in rows:
        assert float(cells[5]) > 0  # images/s
        assert float(cells[7]) > 0  # GFLOP/image, attention included
    # same weights and masks: the fp32 losses agree before anything is timed (the script exits otherwise)
    for method in ("mae", "simmim"):
        line = next(line for line in out.splitlines() if line.startswith(f"{method} ViT-S/16: initial fp32 losses"))
        ours, theirs = line.split("hf_mim ")[1].split(",")[0], line.split("transformers ")[1]
        assert abs(float(ours) - float(theirs)) <= 1e-5
    assert results.read_text() == before  # nothing is recorded without --record


def test_attention_flops_are_counted_on_cpu():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import torch
        from bench_throughput import register_cpu_attention_flops
        from torch.utils.flop_counter import FlopCounterMode

        register_cpu_attention_flops()
        q = torch.randn(2, 4, 64, 32, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
        forward = 2 * (2 * 4 * 64 * 64 * 32) * 2  # QK^T and PV, 2 FLOPs per multiply-add
        assert counter.get_total_flops() == forward * 7 // 2  # backward: 2.5x the forward, as torch counts it
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_input_pipeline_benchmark_runs():
    out = run("bench_input_pipeline.py", "--images", "16", "--num-workers", "0", "--epochs", "1", "--model-steps", "1")
    assert "| input pipeline alone (uint8" in out and "float32 normalised in the workers" in out
    assert "loader / model:" in out
    out = run("bench_input_pipeline.py", "--per-core", "--images", "6")
    assert "| 500x375 |" in out and "| 1024x768 |" in out and "draft mode" in out


def test_gpu_check_script_parses_and_names_its_stages():
    """benchmarks/gpu_check.sh runs only on a GPU machine; here: valid bash, and the stages the issue asks for."""
    import subprocess

    script = BENCHMARKS / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for needed in ("bench_throughput.py --device cuda", "bf16+compile", "torch.distributed.run --nproc_per_node 1",
                   "--per-core", ".gpu_wheels"):  # fmt: skip
        assert needed in text, needed


def test_quality_benchmark_compares_methods_and_the_peer_with_random_init_on_held_out_digits(tmp_path):
    readme, results = BENCHMARKS.parent / "docs" / "evaluate.md", BENCHMARKS / "RESULTS.md"
    before = readme.read_text(), results.read_text()
    work = tmp_path / "bq"
    out = run(
        "bench_quality.py",
        *("--methods", "mae", "transformers-mae", "--epochs", "1", "--seeds", "0", "1"),
        *("--finetune-epochs", "1", "--workdir", str(work)),
    )
    rows = {line.split("|")[1].strip(): line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")}
    assert {"mae", "transformers-mae", "random init"} <= set(rows)
    for name in ("mae", "transformers-mae"):
        cells = [c.strip() for c in rows[name]]
        assert cells[1] == "1 (22)"  # one epoch of the 1,437 training digits at batch 64, for both
        assert 0.0 < float(cells[4]) < 2.0  # reconstruction error on the test split, for the peer too
        assert cells[7].count("±") == 1 and cells[8].count("±") == 1  # 2 seeds: mean ± std, paired difference
        assert cells[10].count("±") == 1  # paired against logistic regression on the same labelled pixels
    pixels = next(cells for name, cells in rows.items() if name.startswith("raw pixels"))
    assert all(pixels[i].count("±") == 1 for i in (5, 6, 7))
    recorded = json.loads((work / "results.json").read_text())
    assert len(recorded["scores"]["random init"]["finetune"]) == 2
    # every pretraining run read the training split only
    for name in ("mae", "transformers-mae"):
        summary = json.loads((work / name / "training_summary.json").read_text())
        assert summary["dataset"].endswith("'train' split") and summary["num_samples"] == 1437
    assert (readme.read_text(), results.read_text()) == before  # nothing is recorded without --record


def test_quality_benchmark_refuses_a_model_pretrained_on_other_data(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import pytest
        from bench_quality import read_summary

        (tmp_path / "training_summary.json").write_text(json.dumps({"dataset": "scikit-learn digits (all)"}))
        with pytest.raises(SystemExit, match="not the digits' training split"):
            read_summary(tmp_path)
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_careless_inputs_classifies_outcomes_as_the_issue_17_tally_does():
    import subprocess

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from careless_inputs import TINY, outcome

        def done(code, stderr=""):
            return subprocess.CompletedProcess([], code, "", stderr)

        assert outcome(done(0)) == "accepted"
        assert outcome(done(2, "hf-mim pretrain: error: --lr=inf is invalid: a finite number > 0")) == "clear error"
        assert outcome(done(1, "Traceback (most recent call last):\n  ...\nValueError: x")) == "traceback"
        assert outcome(done(2, "Traceback (most recent call last):\n  ...")) == "traceback"
        assert outcome(done(1, "hf-mim pretrain: error: x")) == "traceback"  # not the user-error exit status
        assert "CONFIG" in TINY  # the config travels as a file: --config takes a path
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_on_paper_hours_name_their_limit_for_8_and_64_gpus():
    out = run("on_paper.py", "--loader-per-core", "100", "--cores-per-gpu", "10", "--gpu-images-per-second", "2000")
    rows = [line for line in out.splitlines() if line.startswith("| 8 |") or line.startswith("| 64 |")]
    assert len(rows) == 3  # 8 GPUs on NVLink; 64 GPUs on each of two links
    # 1,000 images/s of loader per GPU against 2,000 of step: the loader limits, at twice the step's time
    assert all("loader" in row for row in rows) and "GFLOP per image" in out
    hours_8 = float(rows[0].split("|")[-2])
    assert hours_8 == pytest.approx(1_281_167 * 800 / 8 / 1000 / 3600, rel=0.01)


def test_throughput_suite_prices_learned_masks_and_adios_on_one_encoder():
    out = run(
        "bench_throughput.py",
        *("--adversaries", "--sizes", "small", "--image-size", "64", "--batch-size", "2", "--rounds", "1"),
        *("--warmup", "1", "--variants", "fp32", "--threads", "2"),
    )
    rows = {
        line.split("|")[3].strip(): line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ViT-S")
    }
    assert set(rows) == {"mae, random masks", "mae, learned masks", "adios-s (simclr)"}
    assert rows["mae, random masks"][-1].strip() == "+0.0%"
    assert all(float(cells[5]) > 0 for cells in rows.values())  # images/s


def test_learned_mask_benchmark_compares_three_arms_on_held_out_digits(tmp_path):
    work = tmp_path / "blm"
    results = BENCHMARKS / "RESULTS.md"
    before = results.read_text()
    out = run(
        "bench_learned_masks.py",
        *("--seeds", "0", "--epochs", "1", "--ablation-epochs", "0", "--finetune-epochs", "1"),
        *("--workdir", str(work)),
    )
    tables = [
        [line.split("|")[1:-1] for line in block.splitlines() if line.startswith("| ")] for block in out.split("\n\n")
    ]
    tables = [table for table in tables if table]
    rows = {cells[0].strip(): cells for cells in tables[0]}  # the quality table
    assert {"random", "learned, equal steps", "random, equal wall time", "random init"} <= set(rows)
    assert rows["random"][1].strip() == rows["learned, equal steps"][1].strip() == "22"  # one epoch at batch 64
    cka = {cells[0].strip(): cells for cells in tables[1]}
    assert len(cka["random init"]) == 1 + 9 and cka["learned, equal steps"][-1].count("±") == 1  # ratios 0.1-0.9
    masks = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in tables[2]}
    assert float(masks["random in their place, held-out digits"][0]) == pytest.approx(0.75, abs=0.02)
    learned = json.loads((work / "learned-0" / "config.json").read_text())
    assert learned["mask_strategy"] == "learned"
    # the equal-wall-time arm's steps follow the other two runs' seconds per step
    summaries = {
        arm: json.loads((work / arm / "training_summary.json").read_text()) for arm in ("random-0", "learned-0")
    }
    per_step = {arm: s["wall_time_seconds"] / s["steps"] for arm, s in summaries.items()}
    expected = round(22 * per_step["learned-0"] / per_step["random-0"])
    assert json.loads((work / "random-wall-0" / "training_summary.json").read_text())["steps"] == expected
    assert results.read_text() == before


def test_fingerprint_finds_the_same_code_identical_and_a_changed_card_different(tmp_path):
    import subprocess

    first, second = tmp_path / "first.json", tmp_path / "second.json"
    run("fingerprint.py", "--methods", "simmim", "--steps", "2", "--out", str(first))
    out = run("fingerprint.py", "--methods", "simmim", "--steps", "2", "--out", str(second), "--compare", str(first))
    assert "differs: nothing" in out and out.count("identical") == 2  # the training run, the tiny config's card
    recorded = json.loads(first.read_text())
    recorded["simmim"]["cards_and_pictures"]["tiny"]["card_sha256"] = "0" * 64  # as if the card had changed
    first.write_text(json.dumps(recorded))
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "fingerprint.py"), "--methods", "simmim", "--steps", "2"]
        + ["--out", str(second), "--compare", str(first)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1 and "simmim: card and pictures, tiny" in result.stdout


def _fashion_module():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_fashion_mnist

        return bench_fashion_mnist
    finally:
        sys.path.remove(str(BENCHMARKS))


def _write_idx(folder: Path, per_class: int = 6, test_per_class: int = 3) -> None:
    """Fashion-MNIST's four IDX files, with `per_class` 28 px images of each class: class c is bright in row band c."""
    import gzip
    import struct

    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), count)
        images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 3] = 250
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", *images.shape) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", len(labels)) + labels.tobytes())


def test_fashion_mnist_benchmark_refuses_in_one_line_without_the_data(tmp_path):
    result = run_group(
        [
            sys.executable,
            str(BENCHMARKS / "bench_fashion_mnist.py"),
            "--idx-dir",
            str(tmp_path / "none"),
            "--workdir",
            str(tmp_path / "w"),
        ],  # fmt: skip
        timeout=120,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "apt-get install dataset-fashion-mnist" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


def test_fashion_mnist_data_is_the_idx_files_as_a_train_and_test_dataset(tmp_path):
    import datasets
    import numpy as np

    bench = _fashion_module()
    _write_idx(tmp_path / "idx")
    images, labels = bench.arrays(tmp_path / "idx", "train")
    assert images.shape == (60, 28, 28) and labels.tolist() == [c for c in range(10) for _ in range(6)]
    folder = bench.write_dataset(tmp_path / "idx", tmp_path / "data")
    saved = datasets.load_from_disk(str(folder))
    assert set(saved) == {"train", "test"} and len(saved["test"]) == 30
    assert saved["train"].features["label"].names[0] == "T-shirt/top"
    assert np.array_equal(np.asarray(saved["train"][7]["image"]), images[7])
    # the raw-pixel baseline separates the bands; its subset is the one hf-mim evaluate draws
    index = bench.subset_indices(labels, 5, seed=1)
    assert len(index) == 50 and np.bincount(labels[index]).tolist() == [5] * 10
    test_x, test_y = bench.arrays(tmp_path / "idx", "test")
    flat = images.reshape(60, -1) / 255.0
    result = bench.pixel_logistic(flat[index], labels[index], test_x.reshape(30, -1) / 255.0, test_y, seed=0)
    assert result["accuracy"] == 100.0 and result["C"] in bench.PIXEL_C_GRID


def test_raw_pixel_baseline_picks_c_by_cross_validation_not_one_held_out_fifth(monkeypatch):
    """The baseline's C is the grid value with the best mean accuracy over stratified folds, recomputed here fold by
    fold; a single held-out fifth of few labels picks C by chance and weakens the bar every model is held to."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    bench = _fashion_module()
    rng = np.random.default_rng(0)
    # 10 classes, 8 labels each: noisy class means, so that C matters and folds disagree with any single split
    centres = rng.normal(size=(10, 30)) * 0.6
    y, test_y = np.repeat(np.arange(10), 8), np.repeat(np.arange(10), 20)
    x, test_x = centres[y] + rng.normal(size=(80, 30)), centres[test_y] + rng.normal(size=(200, 30))
    result = bench.pixel_logistic(x, y, test_x, test_y, seed=3)
    assert result["selection"] == "5-fold cross-validation"
    folds = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=3).split(x, y))

    def fold_mean(c):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        return np.mean([model.fit(x[a], y[a]).score(x[b], y[b]) for a, b in folds])

    means = {c: fold_mean(c) for c in bench.PIXEL_C_GRID}
    assert result["C"] == max(means, key=means.get)
    refit = make_pipeline(StandardScaler(), LogisticRegression(C=result["C"], max_iter=2000)).fit(x, y)
    assert result["accuracy"] == pytest.approx(100 * refit.score(test_x, test_y))
    # with few labels per class the folds shrink to what the smallest class allows; with one label, no search
    assert bench.pixel_logistic(x[::4], y[::4], test_x, test_y, seed=0)["selection"] == "2-fold cross-validation"
    assert bench.pixel_logistic(x[::8], y[::8], test_x, test_y, seed=0)["C"] == 1.0
    # past the threshold one stratified fifth is held out (thousands of images there)
    monkeypatch.setattr(sys.modules[bench.pixel_logistic.__module__], "PIXEL_CV_MAX_LABELS", 50)
    assert bench.pixel_logistic(x, y, test_x, test_y, seed=3)["selection"] == "held-out fifth"


def test_pixel_c_selection_prints_both_selections_per_draw(tmp_path):
    _write_idx(tmp_path / "idx", per_class=50)
    out = run("pixel_c_selection.py", "--idx-dir", str(tmp_path / "idx"), "--budget", "10%", "--seeds", "0", "1")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert len(rows) == 2
    for cells in rows:
        held_c, held_acc = cells[1].split(",")
        assert float(held_c) in (0.001, 0.01, 0.1, 1.0) and 0 <= float(held_acc) <= 100
        assert "5-fold cross-validation" in cells[2]  # 5 labels per class: five folds of one each
        assert len(cells[3].split("/")) == len({*_fashion_module().PIXEL_C_GRID, 0.001, 0.01, 0.1, 1.0})  # both grids


def test_fashion_mnist_parts_resume_and_stop_at_the_time_limit(tmp_path):
    bench = _fashion_module()
    calls = []
    parts = bench.Parts(tmp_path, None, tmp_path / "log")
    assert parts.get("pixels/b", lambda: calls.append(1) or {"x": 1})["x"] == 1
    again = bench.Parts(tmp_path, None, tmp_path / "log")
    assert again.get("pixels/b", lambda: calls.append(2) or {"x": 2})["x"] == 1 and calls == [1]
    late = bench.Parts(tmp_path, -1, tmp_path / "log")  # past its deadline: it starts nothing new
    assert late.get("frozen/c", lambda: calls.append(3) or {"x": 3}) is None and late.pending == ["frozen/c"]
    assert late.get("pixels/b", lambda: {"x": 4})["x"] == 1 and calls == [1]  # what is done is still read
    other = bench.Parts(tmp_path, None, tmp_path / "log")
    other.kinds = ("pretrain",)  # an invocation that only pretrains leaves the other kinds to another
    assert other.get("frozen/c", lambda: calls.append(5) or {"x": 5}) is None and calls == [1]
    assert (
        other.get(
            "pretrain/d",
            lambda: {"x": 6},
        )["x"]
        == 6
    )


def test_fashion_mnist_parts_chosen_by_pattern_start_alone_and_the_rest_are_still_read(tmp_path):
    """`--parts 'finetune/scratch/*'` lets an operator run one row first; the parts it leaves are pending, never
    computed, and what is stored is read whatever the patterns."""
    bench = _fashion_module()
    stored = bench.Parts(tmp_path, None, tmp_path / "log")
    assert stored.get("finetune/mae-p0/100%/seed0", lambda: {"x": 1})["x"] == 1
    calls = []
    parts = bench.Parts(tmp_path, None, tmp_path / "log")
    parts.patterns = ("finetune/scratch/*",)
    assert parts.get("finetune/mae-p1/100%/seed1", lambda: calls.append("mae") or {"x": 2}) is None
    assert parts.get("finetune/scratch/100%/seed0", lambda: calls.append("scratch") or {"x": 3})["x"] == 3
    assert parts.get("finetune/mae-p0/100%/seed0", lambda: calls.append("read") or {"x": 4})["x"] == 1
    assert calls == ["scratch"] and parts.pending == ["finetune/mae-p1/100%/seed1"]
    parts.patterns = ("pixels/*", "frozen/*/1%/*")  # several patterns: any one chooses a part
    assert parts.get("frozen/mae-p0/1%/seed0", lambda: {"x": 5})["x"] == 5
    assert parts.get("frozen/mae-p0/10%/seed0", lambda: {"x": 6}) is None


def test_fashion_mnist_parts_pattern_that_matches_no_part_is_refused(tmp_path, monkeypatch):
    bench = _fashion_module()
    _write_idx(tmp_path / "idx", per_class=20, test_per_class=2)
    monkeypatch.setattr(bench, "pixel_logistic", lambda *a: {"accuracy": 70.0})
    argv = ["--idx-dir", str(tmp_path / "idx"), "--workdir", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")]
    argv += ["--methods", "mae", "--kinds", "pixels", "--budgets", "10%", "--seeds", "0"]
    monkeypatch.setattr(sys, "argv", ["bench_fashion_mnist.py", *argv, "--parts", "pixels/*", "finetune/scrach/*"])
    with pytest.raises(SystemExit, match=r"--parts finetune/scrach/\* matches no part of this plan.*pixels/10%/seed0"):
        bench.main()
    assert (tmp_path / "r" / "pixels__10%__seed0.json").exists()  # the pattern that matched ran


def test_fashion_mnist_table_shows_a_part_another_invocation_stored_while_this_one_ran(tmp_path, monkeypatch, capsys):
    """Two invocations share the parts, one core each: the one that finds a part locked must still table it when the
    other has stored it by the time the table is written."""
    bench = _fashion_module()
    _write_idx(tmp_path / "idx", per_class=20, test_per_class=2)
    results = tmp_path / "r"
    results.mkdir()
    held = results / "pixels__10%__seed0.json.lock"
    held.write_text(str(os.getpid()))  # a live process computes seed 0's part

    def pixel_logistic(*arguments):
        # while this invocation fits seed 1, the other one stores seed 0 and lets go of its lock
        (results / "pixels__10%__seed0.json").write_text(
            json.dumps({"accuracy": 50.0, "wall_s": 1.0, "machine": "x", "stamp": bench.PIXEL_SELECTION})
        )
        held.unlink()
        return {"accuracy": 70.0}

    monkeypatch.setattr(bench, "pixel_logistic", pixel_logistic)
    argv = ["--idx-dir", str(tmp_path / "idx"), "--workdir", str(tmp_path / "w"), "--results-dir", str(results)]
    argv += ["--methods", "mae", "--kinds", "pixels", "--budgets", "10%", "--seeds", "0", "1"]
    monkeypatch.setattr(sys, "argv", ["bench_fashion_mnist.py", *argv])
    bench.main()
    table = capsys.readouterr().out
    pixels = next(line for line in table.splitlines() if line.startswith(f"| {bench.PIXELS} |"))
    assert "60.0 ± 14.1 (2)" in pixels, pixels  # both draws: 50 and 70
    assert "pixels/10%/seed0" not in table  # not pending: it is stored


def test_fashion_mnist_parts_of_another_recipe_are_kept_aside_and_run_again(tmp_path):
    """A recipe that changed since a part ran (issue 28 lengthened fine-tuning) must not leave its old figures in a
    table headed by the new one: the stale part is moved to results/stale/, kept, and computed again."""
    bench = _fashion_module()
    parts = bench.Parts(tmp_path, None, tmp_path / "log")
    assert parts.get("finetune/m/1%/seed0", lambda: {"x": 1}, stamp="6 epochs")["x"] == 1
    assert parts.get("finetune/m/1%/seed0", lambda: {"x": 2}, stamp="6 epochs")["x"] == 1  # same recipe: read
    assert parts.get("finetune/m/1%/seed0", lambda: {"x": 3}, stamp="20 epochs")["x"] == 3
    (kept,) = (parts.results / "stale").iterdir()
    old = json.loads(kept.read_text())
    assert (old["x"], old["stamp"]) == (1, "6 epochs")  # the old figures, with the recipe they ran under
    assert parts.get("finetune/m/1%/seed0", lambda: {"x": 4}, stamp="20 epochs")["x"] == 3
    # the stamps follow the recipe `hf-mim evaluate` applies: the fine-tuning length is in it, per labelled set
    small = bench.choose_recipe("auto", 28)[0]
    assert f"fine-tune {small.epochs_for(6000, 64):g} epochs" in bench.recipe_stamp("finetune", 6000)
    assert bench.recipe_stamp("finetune", 600) != bench.recipe_stamp("finetune", 6000)
    assert bench.recipe_stamp("frozen", 600) == bench.recipe_stamp("frozen", 6000)


def test_fashion_mnist_table_pairs_seeds_and_marks_what_was_not_run():
    bench = _fashion_module()
    assert bench.paired({0: 80.0, 1: 82.0, 2: 81.0}, {0: 70.0, 1: 71.0, 2: 72.0}) == "+10.0 ± 1.0 ✓ > 2σ = 2.0"
    assert bench.paired({0: 80.0, 1: 70.0}, {0: 79.0, 1: 69.0}) == "+1.0 ± 0.0 ✗ ≤ 2σ = 14.1"  # a 7-point spread
    assert "✗ ≤ 2σ" in bench.paired({0: 80.0, 1: 80.2}, {0: 70.0, 1: 78.0})  # +6 against the baseline's spread
    rows = {bench.PIXELS: {("1%", "linear"): {0: 70.0, 1: 72.0}}, "mae": {("1%", "linear"): {0: 75.0, 1: 78.0}}}
    text = bench.tables(rows, ["1%"])
    assert "| mae | not run | 76.5 ± 2.1 (2) | not run |" in text
    assert "| mae | +5.5 ± 0.7" in text
    # one measurement has no spread to show, and the pixels' single fit on every label (paired with every seed)
    # is one measurement, not three that agree
    rows = {bench.PIXELS: {("100%", "linear"): {None: 84.65}},
            "mae": {("100%", "linear"): {0: 87.15}, ("100%", "finetune"): {0: 91.01}}}  # fmt: skip
    text = bench.tables(rows, ["100%"])
    assert "| raw pixels, logistic regression | not run | 84.7 (1) | not run |" in text
    assert "| mae | not run | 87.2 (1) | 91.0 (1) |" in text
    assert "| mae | +2.5 (1 seed) | - | +3.9 (1 seed) |" in text
    assert "± 0.0" not in text
    assert bench.measurements(text) == 3
    # that one fit pairs with every seed of a row measured three times
    assert bench.paired({0: 87.0, 1: 88.0, 2: 89.0}, {None: 84.0}) == "+4.0 ± 1.0 ✓ > 2σ = 2.0"


def test_fashion_mnist_record_never_replaces_a_table_with_one_of_fewer_measurements(tmp_path):
    bench = _fashion_module()
    rows = {bench.PIXELS: {("1%", "linear"): {0: 70.0, 1: 72.0}}, "mae": {("1%", "linear"): {0: 75.0, 1: 78.0}}}
    full = bench.tables(rows, ["1%"])
    rows["mae"][("1%", "linear")] = {0: 75.0}  # a workdir that lost a part
    fewer = bench.tables(rows, ["1%"])
    assert bench.measurements(full) == 4 and bench.measurements(fewer) == 3
    # the pretraining table's "20 (18740)" (epochs, steps) is not a measured cell
    assert bench.measurements("| mae | 20 (18740) | 3693 | 0.3739 |\n| x | 91.0 (1) | 80.5 ± 1.2 (3) |") == 4
    results = tmp_path / "RESULTS.md"
    results.write_text(f"intro\n<!-- bench_fashion_mnist:start -->\n{full}\n<!-- bench_fashion_mnist:end -->\n")
    before = results.read_text()
    with pytest.raises(SystemExit, match="holds a table of 4 measurements .* one of 3"):
        bench.check_record(fewer, [results])
    assert results.read_text() == before
    bench.check_record(full, [results])  # as many (or more): recorded as before
    bench.check_record(fewer, [tmp_path / "absent.md"])
    # the table names the command that renders it again, without the recording flags (and nothing of them left)
    argv = ["--methods", "mae", "--time-limit", "0", "--record", "--record-fewer"]
    assert bench.reproducing_command(argv) == "python benchmarks/bench_fashion_mnist.py --methods mae --time-limit 0"


@pytest.mark.slow
def test_fashion_mnist_benchmark_runs_and_resumes_on_toy_data(tmp_path):
    _write_idx(tmp_path / "idx", per_class=20, test_per_class=2)
    args = ["--idx-dir", str(tmp_path / "idx"), "--workdir", str(tmp_path / "w"), "--methods", "mae"]
    args += ["--results-dir", str(tmp_path / "r")]
    args += ["--pretrain-seeds", "0", "--seeds", "0", "--budgets", "10%"]  # 2 labels per class: 20, k-NN's k
    out = run("bench_fashion_mnist.py", *args, "--time-limit", "0")
    assert "partial" in out  # the pixels part ran; past the limit, nothing else started
    out = run("bench_fashion_mnist.py", *args)
    assert out.strip().endswith("complete") and "| ViT from scratch |" in out
    results = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"pixels__10%__seed0.json", "pretrain__mae__seed0.json", "frozen__mae-p0__10%__seed0.json"} <= results
    assert {"finetune__mae-p0__10%__seed0.json", "finetune__scratch__10%__seed0.json", "DATA.json"} <= results
    assert not any(name.endswith(".lock") for name in results)
    # the figures are kept, the models are not: on a machine without the model, nothing that needs it runs
    import shutil

    shutil.rmtree(tmp_path / "w" / "pretrain")
    args[args.index("--seeds") + 1] = "1"  # a new label draw: parts that need the pretrained model
    out = run("bench_fashion_mnist.py", *args)
    assert "need a model that is not here" in out and "mae-seed0" in out and "--repretrain" in out
    assert not (tmp_path / "r" / "frozen__mae-p0__10%__seed1.json").exists()
    # what needs no model still runs: the pixels, and the ViT from scratch (its architecture is with the results)
    assert (tmp_path / "r" / "pixels__10%__seed1.json").exists()
    assert (tmp_path / "r" / "finetune__scratch__10%__seed1.json").exists()
    assert (tmp_path / "r" / "frozen__mae-p0__10%__seed0.json").exists()  # what was measured stays in the table
    before = {p.name: p.read_text() for p in (tmp_path / "r").glob("*__mae-p0__*.json")}
    # pretrained again with the same seed, code and threads, the model is the same one: its parts stand
    out = run("bench_fashion_mnist.py", *args, "--repretrain", "mae-p0")
    assert out.strip().endswith("complete") and "made the model its 2 stored parts measured" in out
    after = {p.name: p.read_text() for p in (tmp_path / "r").glob("*__mae-p0__*.json")}
    assert {name: after.get(name) for name in before} == before and len(before) == 2
    assert {"frozen__mae-p0__10%__seed1.json", "finetune__mae-p0__10%__seed1.json"} <= set(after)  # the new draw ran
    stale = {p.name.split(".")[0] for p in (tmp_path / "r" / "stale").iterdir()}
    assert stale == {"pretrain__mae__seed0"}


def test_fashion_mnist_results_folder_is_bound_to_its_data(tmp_path):
    """Parts are committed with the repository and read by every later run: parts measured on other files (the toy
    IDX files of these tests) must be refused, not mixed into Fashion-MNIST's table."""
    bench = _fashion_module()
    _write_idx(tmp_path / "idx")
    toy = bench.data_fingerprint(tmp_path / "idx")
    bench.Parts(tmp_path / "r", None, tmp_path / "log", data=toy).get("pixels/1%/seed0", lambda: {"x": 1})
    assert json.loads((tmp_path / "r" / "DATA.json").read_text()) == toy
    assert bench.Parts(tmp_path / "r", None, tmp_path / "log", data=toy).get("pixels/1%/seed0", None)["x"] == 1
    other = dict(toy, **{"train-labels-idx1-ubyte.gz": "0" * 64})
    with pytest.raises(SystemExit, match="other data"):
        bench.Parts(tmp_path / "r", None, tmp_path / "log", data=other)
    # a file of the folder that is not JSON (a hand edit, a merge conflict) is named in one line
    (tmp_path / "r" / "pixels__1%__seed0.json").write_text('{"x": 1,\n<<<<<<< HEAD\n')
    with pytest.raises(SystemExit, match=r"pixels__1%__seed0.json is not JSON"):
        bench.Parts(tmp_path / "r", None, tmp_path / "log", data=toy).get("pixels/1%/seed0", None)
    (tmp_path / "r" / "DATA.json").write_text("")
    with pytest.raises(SystemExit, match="DATA.json is not JSON"):
        bench.Parts(tmp_path / "r", None, tmp_path / "log", data=toy)
    # the repository's folder is bound to the installed Fashion-MNIST: a toy run that forgot --results-dir stops
    bound = bench.RESULTS_DIR / "DATA.json"
    assert bound.exists(), "the committed results folder must name the data it measured"
    assert json.loads(bound.read_text()) != toy
    with pytest.raises(SystemExit, match="other data"):
        bench.Parts(bench.RESULTS_DIR, None, tmp_path / "log", data=toy)


def test_fashion_mnist_parts_that_need_a_missing_model_wait_and_repretraining_keeps_them_only_for_the_same_model(
    tmp_path,
):
    bench = _fashion_module()
    parts = bench.Parts(tmp_path / "r", None, tmp_path / "log")
    model = tmp_path / "mae-seed0" / "training_summary.json"
    assert parts.get("frozen/mae-p0/1%/seed0", lambda: 1 / 0, needs=model) is None  # not computed
    assert parts.pending == ["frozen/mae-p0/1%/seed0"] and parts.missing == {"frozen/mae-p0/1%/seed0": model}
    model.parent.mkdir()  # a pretraining under way: its folder exists, its summary (written last) does not
    assert parts.get("frozen/mae-p0/1%/seed0", lambda: 1 / 0, needs=model) is None
    model.write_text("{}")
    assert parts.get("frozen/mae-p0/1%/seed0", lambda: {"x": 1}, needs=model)["x"] == 1
    assert parts.path("frozen/mae-p0/1%/seed0").exists() and "machine" in json.loads(
        parts.path("frozen/mae-p0/1%/seed0").read_text()
    )
    first = {"steps": 100, "final_loss": 0.3728967010974884}
    parts.get("pretrain/mae/seed0", lambda: dict(first))
    for key in ("finetune/mae-p0/10%/seed0", "frozen/mae-p10/1%/seed0", "pretrain/mae/seed1",
                "finetune/scratch/1%/seed0", "pretrain/visual-tokenizer/seed0"):  # fmt: skip
        parts.get(key, lambda: {"x": 2})
    measured = {"frozen__mae-p0__1%__seed0.json", "finetune__mae-p0__10%__seed0.json"}
    others = {"frozen__mae-p10__1%__seed0.json", "pretrain__mae__seed1.json", "finetune__scratch__1%__seed0.json",
              "pretrain__visual-tokenizer__seed0.json"}  # fmt: skip
    # --repretrain sets the pretraining's own part aside; what was measured on it waits for the new model
    assert parts.set_aside("mae-p0").name.startswith("pretrain__mae__seed0.")
    assert {p.name for p in (tmp_path / "r").glob("*.json")} == measured | others
    assert parts.set_aside("mae-p0") is None  # nothing left to set aside
    # the same model again (same final loss to the last bit): the measured parts stand
    kept, moved = parts.settle("mae-p0", dict(first))
    assert {p.name for p in kept} == measured and moved == []
    # another model: they move to stale/, and only they
    parts.get("pretrain/mae/seed0", lambda: dict(first, weights_sha256="a" * 64))
    parts.set_aside("mae-p0")
    kept, moved = parts.settle("mae-p0", dict(first, final_loss=0.3728967010974885, weights_sha256="b" * 64))
    assert kept == [] and {p.name.split(".")[0] + ".json" for p in moved} == measured
    assert all(p.parent.name == "stale" and p.exists() for p in moved)
    assert {p.name for p in (tmp_path / "r").glob("*.json")} == others
    # parts of a pretraining whose model was never recorded cannot be vouched for
    parts.get("frozen/mae-p1/1%/seed1", lambda: {"x": 3})
    assert parts.settle("mae-p1", dict(first))[1][0].name.startswith("frozen__mae-p1__1%__seed1.")
    with pytest.raises(SystemExit, match="METHOD-pSEED"):
        parts.set_aside("mae")


def test_fashion_mnist_same_model_compares_weights_where_recorded_and_the_final_loss_otherwise(tmp_path):
    import hashlib

    bench = _fashion_module()
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    assert bench.weights_sha256(tmp_path) == hashlib.sha256(b"weights").hexdigest()
    (tmp_path / "model.safetensors").unlink()  # a large model's shards: every one counts
    for i, data in enumerate((b"shard one", b"shard two")):
        (tmp_path / f"model-0000{i + 1}-of-00002.safetensors").write_bytes(data)
    sharded = bench.weights_sha256(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"shard 2")
    assert bench.weights_sha256(tmp_path) != sharded
    old = {"steps": 18740, "final_loss": 0.3728967010974884}
    assert bench.same_model(old, dict(old, weights_sha256="a" * 64))
    assert not bench.same_model(old, dict(old, final_loss=0.37289670109748846))
    assert not bench.same_model(old, dict(old, steps=18741))
    # the weights decide where both parts have them, whatever the loss says
    assert not bench.same_model(dict(old, weights_sha256="a" * 64), dict(old, weights_sha256="b" * 64))
    assert bench.same_model(dict(old, weights_sha256="a" * 64), dict(steps=1, final_loss=9.0, weights_sha256="a" * 64))


def test_fashion_mnist_scratch_architecture_is_kept_with_the_results_and_guards_the_pairing(tmp_path):
    """The ViT from scratch needs only the benchmark's architecture, kept with the results: its rows run on a
    machine without any pretrained model; a pretrained model of another architecture stops the run."""
    bench = _fashion_module()
    results = tmp_path / "r"
    results.mkdir()
    model = tmp_path / "mae-seed0"
    assert bench.architecture(results, [str(model)]) is None  # nothing to copy it from
    model.mkdir()
    config = {"model_type": "hf_mim_mae", "hidden_size": 128, "transformers_version": "5.25.0"}
    (model / "config.json").write_text(json.dumps(config))
    assert bench.architecture(results, [str(model)]) is None  # a pretraining under way is no model yet
    (model / "training_summary.json").write_text("{}")
    path = bench.architecture(results, [str(model)])
    assert path == results / "ARCHITECTURE.json" and json.loads(path.read_text()) == config
    (model / "config.json").write_text(json.dumps(dict(config, transformers_version="6.0.0")))
    assert bench.architecture(results, [str(model)]) == path  # the same architecture, saved by another version
    other = tmp_path / "simmim-seed0"
    other.mkdir()
    (other / "training_summary.json").write_text("{}")
    (other / "config.json").write_text(json.dumps({"model_type": "hf_mim_simmim", "hidden_size": 192}))
    assert bench.architecture(results, [str(model), str(other)]) == path  # another method: not its baseline's
    (model / "config.json").write_text(json.dumps(dict(config, hidden_size=192)))
    with pytest.raises(SystemExit, match="not of the architecture"):
        bench.architecture(results, [str(model)])
    assert json.loads(path.read_text()) == config  # kept as it was


def test_fashion_mnist_scratch_vit_is_rebuilt_when_its_architecture_changes(tmp_path):
    from hf_mim import MAEConfig

    bench = _fashion_module()
    small = dict(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=16, decoder_hidden_size=8, decoder_num_hidden_layers=1,
                 decoder_num_attention_heads=2, decoder_intermediate_size=16)  # fmt: skip
    MAEConfig(**small).save_pretrained(tmp_path / "pretrained")  # a pretrained model's config.json, as copied
    arch = tmp_path / "ARCHITECTURE.json"
    arch.write_text((tmp_path / "pretrained" / "config.json").read_text())
    folder = Path(bench.scratch_model(arch, 0, tmp_path / "w"))
    written = (folder / "model.safetensors").stat().st_mtime_ns
    # reused while the architecture holds (the saved config names other classes: not the architecture)
    assert json.loads((folder / "config.json").read_text())["architectures"] != json.loads(arch.read_text()).get(
        "architectures"
    )
    bench.scratch_model(arch, 0, tmp_path / "w")
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    MAEConfig(**dict(small, hidden_size=16)).save_pretrained(tmp_path / "pretrained")
    arch.write_text((tmp_path / "pretrained" / "config.json").read_text())  # ARCHITECTURE.json written anew
    bench.scratch_model(arch, 0, tmp_path / "w")
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 16


def test_fashion_mnist_parts_are_shared_by_two_invocations_through_a_lock(tmp_path):
    import os

    bench = _fashion_module()
    parts = bench.Parts(tmp_path, None, tmp_path / "log")
    lock = parts.results / "pixels.json.lock"
    lock.write_text(str(os.getpid()))  # a live holder: the part is left to it
    assert parts.get("pixels", lambda: {"x": 1}) is None and parts.pending == ["pixels"]
    lock.write_text("999999999")  # a holder that died: its part is taken over, and the lock released
    assert parts.get("pixels", lambda: {"x": 2})["x"] == 2 and not lock.exists()
