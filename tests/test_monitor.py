"""Watching a run learn (issue 28): `hf-mim pretrain --eval-dataset`, early stopping, and `KNNProbeCallback` under
Trainer. Tiny models on the built-in digits, a few steps each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

import hf_mim
from hf_mim.data.sources import builtin_digits
from hf_mim.evaluation.runner import EvaluateArguments, evaluate_models
from hf_mim.training.monitor import EvalReport, KNNProbeCallback, LearningMonitor, interval_for_budget
from hf_mim.training.trainer import pretrain

from .launch import two_processes
from .test_training import run_cli
from .tiny_runs import TINY_FLAGS, TINY_MODEL, tiny_args


def _weights(folder) -> dict:
    return load_file(str(Path(folder) / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_probe_draws_a_knn_curve_and_leaves_training_as_it_was(tmp_path):
    plain = pretrain(tiny_args(tmp_path / "plain", max_steps=6))
    out = tmp_path / "watched" / "run"
    watched = pretrain(tiny_args(tmp_path / "watched", max_steps=6, eval_dataset="digits", eval_steps=2))
    # the probe draws from a forked RNG: the run trains exactly as without it
    assert watched["loss_history"] == plain["loss_history"]
    assert _same(_weights(tmp_path / "plain" / "run"), _weights(out))
    assert [step for step, _ in watched["eval_history"]] == [0, 2, 4, 6]
    for _, logs in watched["eval_history"]:
        assert 0.0 <= logs["eval_knn_accuracy"] <= 100.0 and logs["eval_reconstruction_error"] > 0  # MAE: pixels
    assert watched["eval_steps"] == 2 and watched["eval_dataset"].startswith("scikit-learn digits")
    assert watched["best_eval"]["step"] in (2, 4, 6) and watched["eval_seconds"] > 0
    with Image.open(out / "eval_curve.png") as curve:
        curve.verify()
    card = (out / "README.md").read_text()
    assert "![Held-out k-NN accuracy](eval_curve.png)" in card and "| Held-out k-NN accuracy |" in card
    # the last evaluation is `hf-mim evaluate --protocol knn` of the saved model: the same bank, queries and vote
    evaluated = evaluate_models(
        EvaluateArguments(model=[str(out)], protocol=["knn"], output_dir=str(tmp_path / "eval"), save_to_model=False)
    )
    (row,) = evaluated["results"]
    assert 100 * row["value"] == pytest.approx(watched["eval_history"][-1][1]["eval_knn_accuracy"], abs=0.3)


def _scripted(monkeypatch, accuracies: dict[int, float]) -> list[int]:
    """The probe returns `accuracies[step]`; returns the steps it was asked at."""
    asked = []

    def evaluate(self, model, step):
        asked.append(step)
        return EvalReport(step, accuracies[step])

    monkeypatch.setattr(LearningMonitor, "evaluate", evaluate)
    return asked


def test_early_stopping_stops_after_its_patience_and_saves_the_best_evaluations_weights(tmp_path, monkeypatch):
    asked = _scripted(monkeypatch, {0: 90.0, 2: 50.0, 4: 70.0, 6: 60.0, 8: 70.0, 10: 80.0})
    args = tiny_args(tmp_path, max_steps=12, eval_dataset="digits", eval_steps=2, early_stopping_patience=2)
    args.checkpointing_steps = 2
    summary = pretrain(args)
    # step 0 (untrained) is a reference, not a candidate; 6 and 8 are no better than 4: stop at 8
    assert asked == [0, 2, 4, 6, 8]
    assert summary["steps"] == 8 and summary["stopped_early_at"] == 8 and summary["best_eval"]["step"] == 4
    saved, at_best = _weights(tmp_path / "run"), load_file(str(tmp_path / "run/checkpoints/step-4/model.safetensors"))
    last = load_file(str(tmp_path / "run/checkpoints/step-8/model.safetensors"))
    assert _same(saved, at_best) and not _same(saved, last)
    assert "step 4's" in summary["saved_weights"]
    assert "| Saved weights | step 4's" in (tmp_path / "run" / "README.md").read_text()


def test_a_resumed_run_keeps_the_best_weights_of_before_the_resume(tmp_path, monkeypatch):
    _scripted(monkeypatch, {0: 10.0, 2: 50.0, 4: 70.0, 6: 60.0, 8: 65.0, 10: 60.0})
    first = tiny_args(tmp_path, max_steps=6, eval_dataset="digits", eval_steps=2, early_stopping_patience=5)
    first.checkpointing_steps = 2
    pretrain(first)
    at_best = load_file(str(tmp_path / "run/checkpoints/step-4/model.safetensors"))
    resumed = tiny_args(tmp_path, max_steps=10, eval_dataset="digits", eval_steps=2, early_stopping_patience=5)
    resumed.checkpointing_steps, resumed.resume_from_checkpoint = 2, "latest"
    summary = pretrain(resumed)
    assert summary["resumed_from"].endswith("step-6") and summary["steps"] == 10
    assert summary["best_eval"]["step"] == 4 and [s for s, _ in summary["eval_history"]] == [0, 2, 4, 6, 8, 10]
    assert _same(_weights(tmp_path / "run"), at_best)


def test_the_default_interval_keeps_the_probe_within_its_budget(tmp_path, caplog):
    # 11 evaluations of 1 s fit 5% of 2,200 steps of 0.1 s: the start, then every 220 steps to the end
    assert interval_for_budget(1.0, 0.1, 2200) == 220
    assert interval_for_budget(2.0, 0.1, 1000) == 1000  # 2.5 fit: the start and the end only
    assert interval_for_budget(0.001, 1.0, 50) == 1
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        eval_seconds, step_seconds = (10 ** (4 * torch.rand(2, generator=generator) - 2)).tolist()
        max_steps = int(torch.randint(1, 5000, (1,), generator=generator))
        interval = interval_for_budget(eval_seconds, step_seconds, max_steps)
        evaluations = 1 + math.ceil(max_steps / interval)  # the start, every `interval` steps, the end
        if evaluations > 2:  # more than the two every run makes: within the budget
            assert evaluations * eval_seconds <= 0.05 * max_steps * step_seconds + 1e-9
    summary = pretrain(tiny_args(tmp_path, max_steps=22, eval_dataset="digits", eval_max_images=100))
    chosen = summary["eval_steps"]
    assert isinstance(chosen, int) and chosen >= 1
    steps = [step for step, _ in summary["eval_history"]]
    # the start; from step 20, when the interval is chosen, every `chosen` steps; the end
    assert steps == sorted({0, *(step for step in range(20, 23) if step % chosen == 0), 22})


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eval-steps", "5"], "--eval-steps=5 is invalid: only used with --eval-dataset"),
        (["--early-stopping-patience", "2"], "--early-stopping-patience=2 is invalid: only used with --eval-dataset"),
        (["--eval-dataset", "digits", "--eval-max-images", "5"], "--eval-max-images=5 is invalid: at least 20"),
        (["--eval-dataset", "digits", "--method", "visual-tokenizer"], "has no encoder whose features a k-NN"),
        (["--eval-dataset", "./no/such/folder"], "dataset path not found: ./no/such/folder"),
    ],
)
def test_probe_flags_are_checked_in_one_line_before_training(tmp_path, flags, message):
    run = run_cli(["--output-dir", str(tmp_path / "x"), *TINY_FLAGS, "--max-steps", "2", *flags])
    assert run.returncode == 2, run.stderr[-2000:]
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_two_processes_gather_the_probes_features_as_one_process_sees_them(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_MODEL))
    flags = [*TINY_FLAGS, "--config", str(config), "--max-steps", "2", "--eval-dataset", "digits"]
    flags += ["--eval-steps", "1", "--eval-max-images", "400"]
    single = run_cli(["--output-dir", str(tmp_path / "one"), *flags, "--batch-size", "16"])
    assert single.returncode == 0, single.stderr[-3000:]
    double = two_processes("pretrain", ["--output-dir", str(tmp_path / "two"), *flags, "--batch-size", "8"])
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "training_summary.json").read_text()) for name in ("one", "two"))
    assert two["num_processes"] == 2 and [s for s, _ in two["eval_history"]] == [0, 1, 2]
    for (_, a), (_, b) in zip(one["eval_history"], two["eval_history"], strict=True):
        # 80 queries: one query decided otherwise by rounding would move the accuracy by 1.25 points
        assert a["eval_knn_accuracy"] == pytest.approx(b["eval_knn_accuracy"], abs=1.3)
        assert a["eval_reconstruction_error"] == pytest.approx(b["eval_reconstruction_error"], rel=1e-3)


def _trainer(tmp_path, callback, max_steps=6):
    config = hf_mim.MAEConfig(image_size=16, patch_size=4, **TINY_MODEL, norm_pix_loss=False)
    model = hf_mim.MAEForPreTraining(config)
    train = hf_mim.ImageTransform.from_config(config, seed=0).apply(builtin_digits("train").select(range(128)))
    args = TrainingArguments(
        str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=max_steps, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True,
    )  # fmt: skip
    return hf_mim.MIMTrainer(model=model, args=args, train_dataset=train, callbacks=[callback])


def test_under_trainer_the_callback_logs_the_curve_and_the_card_shows_it(tmp_path):
    callback = KNNProbeCallback("digits", eval_steps=2, max_images=200)
    trainer = _trainer(tmp_path, callback)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "eval_knn_accuracy" in h]
    assert [h["step"] for h in logged] == [0, 2, 4, 6]
    trainer.save_model()
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert [s for s, _ in summary["eval_history"]] == [0, 2, 4, 6] and summary["best_eval"]["step"] in (2, 4, 6)
    assert summary["eval_dataset"].startswith("scikit-learn digits")
    assert (tmp_path / "out" / "eval_curve.png").is_file()
    assert "| Held-out k-NN accuracy |" in (tmp_path / "out" / "README.md").read_text()


def test_under_trainer_early_stopping_stops_and_gives_back_the_best_weights(tmp_path, monkeypatch):
    asked = _scripted(monkeypatch, {0: 90.0, 2: 50.0, 4: 70.0, 6: 60.0, 8: 65.0, 10: 90.0})
    kept = {}

    class Snapshot(TrainerCallback):  # the weights after each step
        def on_step_end(self, args, state, control, model=None, **kwargs):
            kept[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    callback = KNNProbeCallback("digits", eval_steps=2, early_stopping_patience=2, max_images=200)
    trainer = _trainer(tmp_path, callback, max_steps=12)
    trainer.add_callback(Snapshot())
    trainer.train()
    assert asked == [0, 2, 4, 6, 8] and trainer.state.global_step == 8
    assert callback.best.step == 4 and _same(trainer.model.state_dict(), kept[4])
    assert not _same(trainer.model.state_dict(), kept[8])


def test_a_plain_trainer_runs_the_callback_too(tmp_path):
    from transformers import Trainer

    config = hf_mim.MAEConfig(image_size=16, patch_size=4, **TINY_MODEL, norm_pix_loss=False)
    train = hf_mim.ImageTransform.from_config(config, seed=0).apply(builtin_digits("train").select(range(64)))
    args = TrainingArguments(
        str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=4, save_strategy="no", report_to=[],
        use_cpu=True, remove_unused_columns=False,
    )  # fmt: skip
    trainer = Trainer(
        model=hf_mim.MAEForPreTraining(config),
        args=args,
        train_dataset=train,
        callbacks=[KNNProbeCallback("digits", eval_steps=2, max_images=100)],
    )
    trainer.train()
    assert [h["step"] for h in trainer.state.log_history if "eval_knn_accuracy" in h] == [0, 2, 4]


def test_early_stopping_is_refused_where_parameters_are_sharded(tmp_path, monkeypatch):
    from hf_mim.training import trainer

    monkeypatch.setattr(trainer, "parameters_are_sharded", lambda accelerator: True)
    args = tiny_args(tmp_path, eval_dataset="digits", early_stopping_patience=2)
    with pytest.raises(ValueError, match="--early-stopping-patience=2 is invalid under FSDP or DeepSpeed"):
        pretrain(args)
    assert not (tmp_path / "run" / "model.safetensors").exists()
