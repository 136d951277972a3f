"""The benchmark scripts run end to end at toy sizes, so that they cannot rot unnoticed between measurements
(bench_input_pipeline.py once did, when a signature it used changed)."""

from __future__ import annotations

import json
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
