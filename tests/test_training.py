"""`hf-mim pretrain` end to end: tiny models, a few steps each."""

import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining

from hf_mim import MAEForPreTraining
from hf_mim.modeling.auto import METHOD_SPECS
from hf_mim.training.arguments import PretrainArguments, choose_recipe, resolve_defaults
from hf_mim.training.trainer import TrainingError, pretrain

from .images import BAD, write_image_folder
from .launch import (
    hf_mim_command,
    killed_after_checkpoint,
    run_group,
    two_machines,
    two_processes,
    two_processes_counting_ddp_at_teardown,
)
from .tiny_runs import METHOD_MODELS, TINY_FLAGS, TINY_MODEL, tiny_args


def run_cli(args, env=None, timeout=300):
    return hf_mim_command("pretrain", args, env=env, timeout=timeout)


def run_two_processes(args, timeout=300):
    return two_processes("pretrain", args, timeout=timeout)


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.fixture
def tiny_config_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_MODEL))
    return str(path)


def test_a_hung_run_is_killed_with_its_detached_children_and_their_stacks_reported(tmp_path):
    """The harness itself: a launcher whose worker sits in a session of its own (as torchrun's do) and both hang;
    the test fails in bounded time, with the worker's stack, and no process is left behind."""
    pids = tmp_path / "pids"
    script = f"""
import faulthandler, os, signal, subprocess, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)
code = "import faulthandler, signal, time; faulthandler.register(signal.SIGUSR1, all_threads=True); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
time.sleep(600)
"""
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not finish in 3s") as failure:
        run_group([sys.executable, "-c", script], timeout=3)
    assert str(failure.value).count("most recent call first") == 2  # both processes' faulthandler stacks
    assert time.monotonic() - start < 30
    for pid in map(int, pids.read_text().split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid


def test_cli_default_run_on_the_builtin_dataset(tmp_path):
    out = tmp_path / "default"
    run = run_cli(["--output-dir", str(out), "--max-steps", "2", "--batch-size", "16", "--num-workers", "0"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "done: 2 steps" in run.stdout
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "training_args.json",
        "training_summary.json",
        "README.md",  # the model card, with the run's recipe and pictures
        "loss_curve.png",
        "reconstruction.png",
        "mae.py",  # remote code, for loading without hf_mim
    ):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "| Optimizer steps | 2 |" in card and "![Reconstructions](reconstruction.png)" in card
    model = AutoModelForPreTraining.from_pretrained(out)
    assert isinstance(model, MAEForPreTraining)
    # the small-data recipe: the mini encoder at 32 px, 4 px patches, MAE's 1 x 128 decoder, pixel targets
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.image_size) == (128, 6, 32)
    assert (model.config.patch_size, model.config.decoder_hidden_size, model.config.norm_pix_loss) == (4, 128, False)
    assert model.config.decoder_num_hidden_layers == 1
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["dataset"].startswith("scikit-learn digits") and summary["num_samples"] == 1437  # train split
    assert summary["recipe"] == "small" and summary["reconstruction"]["split"] == "test"
    assert "| Recipe | small-data" in card and "| Reconstruction error |" in card
    assert summary["steps"] == 2 and summary["effective_batch_size"] == 16
    assert summary["dataset_id"] is None  # not a Hub dataset: the card's metadata names no `datasets`
    assert summary["learning_rate"] == pytest.approx(1e-2 * 16 / 256)  # base lr scaled by batch / 256
    assert json.loads((out / "training_args.json").read_text())["max_steps"] == 2


@pytest.mark.parametrize(
    ("image_size", "images", "recipe"),
    [
        (32, 10**6, "small"),
        (64, 10**6, "small"),
        (96, 49_999, "small"),
        (96, 50_000, "paper"),
        (224, 1_281_167, "paper"),
    ],
)
def test_auto_recipe_is_small_for_small_images_or_small_datasets(image_size, images, recipe):
    assert choose_recipe(PretrainArguments(image_size=image_size), images) == recipe
    assert choose_recipe(PretrainArguments(image_size=image_size, recipe="paper"), images) == "paper"


@pytest.mark.parametrize(
    ("method", "epochs", "base_lr", "fields"),
    [
        ("mae", 100, 1e-2, {"norm_pix_loss": False, "decoder_num_hidden_layers": 1}),
        ("rmae", 50, 1e-2, {"norm_pix_loss": False, "decoder_num_hidden_layers": 1}),
        ("cmae", 50, 1e-3, {"mask_ratio": 0.5}),
        ("adios", 50, 1e-3, {"single_mask": True}),
        ("visual-tokenizer", 20, 1e-2, {"vocab_size": 512}),
    ],
)
def test_the_small_recipe_sets_epochs_rate_and_fields_that_explicit_flags_override(method, epochs, base_lr, fields):
    """Issue 16: every method's small recipe runs for a stated number of epochs (it used to fall back to 1)."""
    args = resolve_defaults(PretrainArguments(method=method), 1437)
    assert (args.recipe, args.model_size, args.epochs) == ("small", "mini", epochs)
    assert args.base_lr == base_lr
    assert fields.items() <= args.config_overrides.items()
    first = next(iter(fields))
    mine = resolve_defaults(
        PretrainArguments(method=method, epochs=3, base_lr=0.5, config_overrides={first: "mine"}), 1437
    )
    assert (mine.epochs, mine.base_lr, mine.config_overrides[first]) == (3, 0.5, "mine")
    assert resolve_defaults(PretrainArguments(method=method, max_steps=7), 1437).epochs is None


def test_the_small_recipe_length_follows_the_dataset_size():
    """Issue 28: the small recipe's 100 MAE epochs were set on 1,437 digits; on 60,000 images they would be 93,800
    steps. Above the method's budget of images seen (its small `Recipe.max_images`, else SMALL_RECIPE_IMAGES), the
    epochs are cut, and the plan says so."""
    from hf_mim.training.presets import SMALL_RECIPE_IMAGES

    digits = resolve_defaults(PretrainArguments(method="mae"), 1437)
    assert digits.epochs == 100 and digits.reasons["epochs"] == "the small recipe's"
    # MAE's own budget (measured on Fashion-MNIST: 20 epochs), the shared one for a method without its own
    fashion = resolve_defaults(PretrainArguments(method="mae", image_size=28), 60_000)
    assert fashion.epochs == 20
    assert "cut to 20" in fashion.reasons["epochs"]
    assert "1,200,000 images (60,000 per epoch)" in fashion.reasons["epochs"]
    for method in ("simmim", "rmae"):
        other = resolve_defaults(PretrainArguments(method=method, image_size=28), 60_000)
        assert other.epochs == SMALL_RECIPE_IMAGES // 60_000 == 10, method
        assert f"{SMALL_RECIPE_IMAGES:,} images" in other.reasons["epochs"]
    huge = resolve_defaults(PretrainArguments(method="mae", image_size=28), 10 * 1_200_000)
    assert huge.epochs == 1
    assert resolve_defaults(PretrainArguments(method="mae", image_size=28, epochs=40), 60_000).epochs == 40
    # --help names each budget from the specs, so it cannot drift from them
    help_text = next(f for f in dataclasses.fields(PretrainArguments) if f.name == "epochs").metadata["help"]
    assert "mae: 1,200,000" in help_text and f"else {SMALL_RECIPE_IMAGES:,}" in help_text


@pytest.mark.parametrize("method", sorted(METHOD_SPECS))
def test_every_small_recipe_builds_a_valid_config_at_every_small_image_size(method):
    """Issue 28: SimMIM's small recipe set 8 px mask squares, which do not tile the 7x7 grid of Fashion-MNIST's
    28 px images: a user's plain `hf-mim pretrain --method simmim` stopped with a config error. Every recipe must
    build a config for the image sizes the small recipe serves (the patch size chosen as a run chooses it)."""
    from hf_mim.training.arguments import build_config

    spec = METHOD_SPECS[method]
    # the sizes a run picks from data of 28 to 64 px (multiples of 4), and a few given by --image-size
    for image_size in (8, 14, 21, *range(28, 65, 4)):
        args = resolve_defaults(PretrainArguments(method=method, image_size=image_size), 60_000)
        assert args.recipe == "small"
        config = build_config(args, spec)
        assert (config.image_size, config.patch_size) == (image_size, args.patch_size)
    # a geometry that --config (here a caller's overrides) sets over the flags is the one the recipe's rules fit
    args = resolve_defaults(PretrainArguments(method=method, image_size=28, config_overrides={"patch_size": 7}), 1437)
    assert build_config(args, spec).patch_size == 7


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_the_small_recipe_caps_the_base_lr_of_encoders_deeper_than_mini(size):
    """Issue 28: from MAE's small-recipe base lr of 1e-2 (set on the 6-block mini) a 12-block ViT-Ti pretrained to
    features below random initialisation; at 1.5e-3 it fine-tuned to 92.8 on the digits. A deeper encoder takes the
    cap, the plan says why, a rate already below it (C-MAE's 1e-3) and a rate the user gives are kept."""
    from hf_mim.training.presets import SMALL_RECIPE_DEEP_MAX_BASE_LR

    deep = resolve_defaults(PretrainArguments(method="mae", model_size=size), 1437)
    assert deep.base_lr == SMALL_RECIPE_DEEP_MAX_BASE_LR < 1e-2
    assert "capped" in deep.reasons["base_lr"] and "12-block" in deep.reasons["base_lr"]
    assert resolve_defaults(PretrainArguments(method="mae", model_size="mini"), 1437).base_lr == 1e-2
    assert resolve_defaults(PretrainArguments(method="cmae", model_size=size), 1437).base_lr == 1e-3
    assert resolve_defaults(PretrainArguments(method="mae", model_size=size, base_lr=5e-3), 1437).base_lr == 5e-3
    # the paper recipe's rates were published for these encoders: untouched
    paper = resolve_defaults(PretrainArguments(method="mae", model_size=size, recipe="paper"), 1437)
    assert paper.base_lr == 1.5e-4 and "capped" not in paper.reasons["base_lr"]


def test_the_deep_encoder_lr_cap_reads_the_depth_that_config_gives(tmp_path):
    """The cap follows the encoder the run builds, not only the preset's name: mini deepened to 12 blocks through
    --config (a file) or a caller's overrides takes it, ViT-Ti cut to 6 blocks does not."""
    from hf_mim.training.presets import SMALL_RECIPE_DEEP_MAX_BASE_LR

    deeper = tmp_path / "deeper.json"
    deeper.write_text(json.dumps({"num_hidden_layers": 12}))
    by_file = resolve_defaults(PretrainArguments(method="mae", model_size="mini", config=str(deeper)), 1437)
    assert by_file.base_lr == SMALL_RECIPE_DEEP_MAX_BASE_LR and "(--config)" in by_file.reasons["base_lr"]
    by_overrides = resolve_defaults(
        PretrainArguments(method="mae", model_size="mini", config_overrides={"num_hidden_layers": 8}), 1437
    )
    assert by_overrides.base_lr == SMALL_RECIPE_DEEP_MAX_BASE_LR
    shallower = tmp_path / "shallower.json"
    shallower.write_text(json.dumps({"num_hidden_layers": 6}))
    cut = resolve_defaults(PretrainArguments(method="mae", model_size="tiny", config=str(shallower)), 1437)
    assert cut.base_lr == 1e-2


def test_a_folder_of_small_images_gets_the_small_recipe_whatever_its_source(tmp_path):
    """Issue 16: a user's own small images used to get the ImageNet recipe (lr 3.75e-5 at batch 64, MAE's 8 x 512
    decoder); the scale of the run decides, and what the user gives still wins."""
    folder = write_image_folder(tmp_path / "images", with_bad=False)
    common = dict(dataset=str(folder), image_size=32, batch_size=4, max_steps=1, config_overrides={})
    small = pretrain(tiny_args(tmp_path, output_dir=str(tmp_path / "small"), **common))
    config = json.loads((tmp_path / "small" / "config.json").read_text())
    assert summary_recipe(small) == ("small", "mini") and small["learning_rate"] == pytest.approx(1e-2 * 4 / 256)
    assert (config["patch_size"], config["hidden_size"], config["decoder_hidden_size"]) == (4, 128, 128)
    assert config["norm_pix_loss"] is False
    paper = pretrain(
        tiny_args(tmp_path, output_dir=str(tmp_path / "paper"), recipe="paper", model_size="mini", **common)
    )
    config = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert summary_recipe(paper) == ("paper", "mini") and paper["learning_rate"] == pytest.approx(1.5e-4 * 4 / 256)
    assert (config["decoder_hidden_size"], config["decoder_num_hidden_layers"], config["norm_pix_loss"]) == (
        512,
        8,
        True,
    )
    mine = pretrain(
        tiny_args(
            tmp_path,
            output_dir=str(tmp_path / "mine"),
            base_lr=1e-3,
            **{**common, "config_overrides": {"norm_pix_loss": True}},
        )
    )
    assert mine["learning_rate"] == pytest.approx(1e-3 * 4 / 256)
    assert json.loads((tmp_path / "mine" / "config.json").read_text())["norm_pix_loss"] is True


def summary_recipe(summary: dict) -> tuple[str, str]:
    return summary["recipe"], summary["model_size"]


def test_pretraining_on_the_builtin_data_never_reads_a_test_image(tmp_path, monkeypatch):
    from hf_mim.data import sources as data
    from hf_mim.training import trainer

    seen = {}
    real = trainer.prepare_dataset
    monkeypatch.setattr(trainer, "prepare_dataset", lambda raw, *a: seen.setdefault("raw", raw) and real(raw, *a))
    pretrain(tiny_args(tmp_path, max_steps=1))

    def pixels(dataset):
        return {bytes(image.tobytes()) for image in dataset["image"]}

    test = pixels(data.builtin_digits("test"))
    assert len(seen["raw"]) == 1437 and not pixels(seen["raw"]) & test


# weights; an EMA codebook; an EMA teacher; a second optimizer and its schedule (ADIOS's occlusion model, MAE's mask
# model)
@pytest.mark.parametrize("method", ["mae", "visual-tokenizer", "cmae", "adios", "mae+learned"])
def test_kill_and_resume_ends_with_the_same_weights(tmp_path, method):
    flags = [
        *method_flags(tmp_path, method),
        "--max-steps",
        "6",
        "--batch-size",
        "8",
        "--checkpointing-steps",
        "2",
    ]
    # the uninterrupted run loads with 2 worker processes, the interrupted one in the main process: the data (and so
    # the weights) must not depend on that either
    straight = run_cli(["--output-dir", str(tmp_path / "a"), *flags, "--num-workers", "2"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = killed_after_checkpoint(4, ["--output-dir", str(tmp_path / "b"), *flags])
    assert killed.returncode != 0 and not (tmp_path / "b" / "model.safetensors").exists()
    resumed = run_cli(["--output-dir", str(tmp_path / "b"), *flags, "--resume-from-checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step-4" in resumed.stderr
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    if method == "cmae":  # the teacher was restored too
        teachers = [load_file(str(tmp_path / d / "ema_teacher.safetensors")) for d in "ab"]
        assert_same_weights(*teachers)
    summaries = [json.loads((tmp_path / d / "training_summary.json").read_text()) for d in "ab"]
    assert summaries[0]["loss_history"] == summaries[1]["loss_history"]


def test_truncated_newest_checkpoint_is_skipped(tmp_path, caplog):
    args = dict(max_steps=6, checkpointing_steps=2)
    pretrain(tiny_args(tmp_path, output_dir=str(tmp_path / "a"), **args))
    pretrain(tiny_args(tmp_path, output_dir=str(tmp_path / "b"), **args))
    newest = tmp_path / "b" / "checkpoints" / "step-6"
    weights_file = newest / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])  # a copy that stopped early
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-4")  # and the previous one is gone too
    with caplog.at_level(logging.WARNING):
        summary = pretrain(tiny_args(tmp_path, output_dir=str(tmp_path / "b"), resume_from_checkpoint="latest", **args))
    assert "skipping checkpoint" in caplog.text and "step-6" in caplog.text
    assert summary["resumed_from"].endswith("step-2")
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_checkpoints_are_complete_and_limited(tmp_path):
    pretrain(tiny_args(tmp_path, max_steps=6, checkpointing_steps=1, checkpoints_total_limit=2))
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-5", "step-6"]  # no temporary folders left
    state = json.loads((root / "step-6" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["batches_in_epoch"] >= 1
    manifest = json.loads((root / "step-6" / "manifest.json").read_text())
    assert {"model.safetensors", "optimizer.bin", "trainer_state.json"} <= set(manifest)


def test_folder_of_bad_images_trains_to_the_end_and_reports_them(tmp_path):
    folder = write_image_folder(tmp_path / "images", copies=2)
    # one whole epoch (26 files in batches of 2), so that every bad file is met
    summary = pretrain(tiny_args(tmp_path, dataset=str(folder), batch_size=2, max_steps=None, epochs=1))
    assert summary["num_samples"] == 26 and summary["steps"] == 13
    assert set(summary["skipped_images"]) == set(BAD)
    assert all(summary["skipped_images"][name] for name in BAD)  # each with its reason
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, monkeypatch, caplog, precision):
    original = MAEForPreTraining.forward_loss
    calls = {"n": 0}

    def loss_with_a_nan(self, *args):
        calls["n"] += 1
        value = original(self, *args)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(MAEForPreTraining, "forward_loss", loss_with_a_nan)
    updates = {"n": 0}
    real_step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        updates["n"] += 1
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    with caplog.at_level(logging.WARNING):
        summary = pretrain(tiny_args(tmp_path, max_steps=4, mixed_precision=precision))
    assert summary["non_finite_steps"] == [2] and summary["steps"] == 4 and summary["mixed_precision"] == precision
    assert updates["n"] == 3  # every step but the skipped one updated the weights
    assert "step 2: non-finite loss" in caplog.text
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run").values())

    monkeypatch.setattr(MAEForPreTraining, "forward_loss", lambda self, *args: original(self, *args) * float("inf"))
    with pytest.raises(TrainingError, match="3 consecutive steps with a non-finite loss"):
        pretrain(
            tiny_args(
                tmp_path,
                output_dir=str(tmp_path / "bad"),
                max_steps=10,
                max_non_finite_steps=3,
                mixed_precision=precision,
            )
        )


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    summary = pretrain(tiny_args(tmp_path, batch_size=4, grad_accum=2, max_steps=3))
    assert summary["steps"] == 3 and summary["effective_batch_size"] == 8


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "0"], "--batch-size=0 is invalid"),
        (["--dataset", "./missing/folder"], "dataset path not found: ./missing/folder"),
        (["--max-steps", "-1"], "--max-steps=-1 is invalid"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, flags, message):
    run = run_cli(["--output-dir", str(tmp_path / "x"), *flags])
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr


def test_help_documents_every_flag():
    run = subprocess.run([sys.executable, "-m", "hf_mim", "pretrain", "--help"], capture_output=True, text=True)
    assert run.returncode == 0
    for flag in (
        "--method",
        "--dataset",
        "--dataset-config",
        "--split",
        "--image-column",
        "--output-dir",
        "--max-steps",
        "--epochs",
        "--batch-size",
        "--grad-accum",
        "--base-lr",
        "--lr",
        "--weight-decay",
        "--warmup-steps",
        "--image-size",
        "--patch-size",
        "--model-size",
        "--config",
        "--mixed-precision",
        "--gradient-checkpointing",
        "--compile",
        "--seed",
        "--checkpointing-steps",
        "--resume-from-checkpoint",
        "--push-to-hub",
        "--report-to",
        "--num-workers",
    ):
        assert flag in run.stdout, flag


@pytest.mark.parametrize("command", ["pretrain", "evaluate", "visualize", "push", "convert"])
def test_help_shows_each_default_once(command):
    """A default appears once per flag, and only where there is one: argparse's ArgumentDefaultsHelpFormatter (what
    HfArgumentParser uses) appended "(default: None)" and a second "(default: ...)" to helps that give their own."""
    from hf_mim.cli import build_parser

    subcommands = build_parser()._subparsers._group_actions[0].choices
    text = subcommands[command].format_help()
    flags = [action for action in subcommands[command]._actions if action.option_strings]
    assert "(default: None)" not in text
    for action in flags:
        shown = subcommands[command].formatter_class("x")._get_help_string(action)
        assert shown.count("(default:") <= 1, shown
    negations = [a for a in flags if any(o.startswith("--no") for o in a.option_strings) and a.const is False]
    for negation in negations:
        positive = next(a for a in flags if a.dest == negation.dest and a is not negation)
        assert negation.help == positive.help  # as HfArgumentParser builds them ...
        rendered = subcommands[command].formatter_class("x")._get_help_string(negation)
        assert rendered != positive.help and f"--{negation.dest.replace('_', '-')}" in rendered  # ... not as shown


def test_two_processes_survive_bad_images(tmp_path, tiny_config_file):
    folder = write_image_folder(tmp_path / "images", copies=2)  # 26 files, 4 of them unreadable
    run = run_two_processes(
        ["--dataset", str(folder), "--output-dir", str(tmp_path / "two"), *TINY_FLAGS, "--config", tiny_config_file]
        + ["--batch-size", "1", "--epochs", "1"]
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "training_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["ranks_in_sync"] is True and summary["steps"] == 13
    assert set(summary["skipped_images"]) == set(BAD)  # gathered from both ranks


def test_compiled_training_saves_a_loadable_model(tmp_path):
    pretrain(tiny_args(tmp_path, max_steps=2, compile=True))
    model, info = AutoModelForPreTraining.from_pretrained(tmp_path / "run", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert_same_weights(model.state_dict(), weights(tmp_path / "run"))


def test_resume_with_other_settings_is_refused(tmp_path):
    pretrain(tiny_args(tmp_path, max_steps=4, checkpointing_steps=2))
    with pytest.raises(ValueError, match=r"batch_size=8 but this run has batch_size=4; the data position"):
        pretrain(tiny_args(tmp_path, max_steps=4, batch_size=4, resume_from_checkpoint="latest"))


def test_report_to_needs_its_package(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("tensorboard") else real(name, *a)
    )
    with pytest.raises(ValueError, match="needs the tensorboard package"):
        pretrain(tiny_args(tmp_path, report_to="tensorboard"))


def test_each_epoch_draws_new_order_and_augmentations(tmp_path, monkeypatch):
    from hf_mim.data import pipeline
    from hf_mim.data import sources as data

    seen = []
    real = pipeline.sample_generator
    monkeypatch.setattr(
        pipeline, "sample_generator", lambda seed, epoch, index: seen.append((epoch, index)) or real(seed, epoch, index)
    )
    digits = data.builtin_digits().select(range(16))
    monkeypatch.setattr(data, "builtin_digits", lambda split="train": digits)
    pretrain(tiny_args(tmp_path, max_steps=None, epochs=2, batch_size=8))  # num_workers=0: the spy sees every call
    orders = {e: [i for ep, i in seen if ep == e] for e in (0, 1)}
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(16))
    assert orders[0] != orders[1]


def test_resume_in_a_later_epoch_continues_that_epochs_order(tmp_path, monkeypatch):
    from hf_mim.data import sources as data

    digits = data.builtin_digits().select(range(16))
    monkeypatch.setattr(data, "builtin_digits", lambda split="train": digits)
    args = dict(max_steps=7, checkpointing_steps=3, batch_size=4)  # 4 steps an epoch: step 3 is in epoch 0,
    pretrain(tiny_args(tmp_path, output_dir=str(tmp_path / "a"), **args))  # step 6 in the middle of epoch 1
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-6", tmp_path / "b" / "checkpoints" / "step-6")
    summary = pretrain(tiny_args(tmp_path, output_dir=str(tmp_path / "b"), resume_from_checkpoint="latest", **args))
    assert summary["resumed_from"].endswith("step-6") and summary["steps"] == 7
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


# ----------------------------------------------------------------------------------------------------------------
# Every method through the same pipeline
# ----------------------------------------------------------------------------------------------------------------


def method_flags(tmp_path, method):
    """The flags of a tiny run of `method`; "mae+learned": MAE with learned masks."""
    method, _, strategy = method.partition("+")
    path = tmp_path / f"{method}.json"
    path.write_text(json.dumps(METHOD_MODELS[method]))
    return [
        "--method",
        method,
        *TINY_FLAGS,
        "--config",
        str(path),
        *(["--mask-strategy", strategy] if strategy else []),
    ]


@pytest.mark.parametrize("method", sorted(set(METHOD_MODELS) - {"cmae", "adios"}))  # C-MAE, ADIOS: see below
def test_each_method_trains_on_the_builtin_data_and_its_loss_falls(tmp_path, method):
    args = tiny_args(
        tmp_path,
        method=method,
        max_steps=40,
        batch_size=32,
        logging_steps=5,
        base_lr=2e-2,
        config_overrides=dict(METHOD_MODELS[method]),
    )
    summary = pretrain(args)
    losses = [loss for _, loss in summary["loss_history"]]
    assert len(losses) == 8 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses
    model = AutoModelForPreTraining.from_pretrained(tmp_path / "run") if method != "visual-tokenizer" else None
    if model is not None:
        assert type(model).__name__.lower().startswith(method)
    expected_metrics = {
        "rmae": {"consistency_loss", "autoencoding_loss"},
        "beit": {"accuracy"},
        "visual-tokenizer": {"perplexity", "codebook_usage", "reconstruction_loss", "quantization_loss"},
    }.get(method, set())
    assert set(summary["final_metrics"]) == expected_metrics


@pytest.mark.parametrize("method", ["mae", "simmim", "beit", "adios", "mae+learned"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, method):
    flags = [*method_flags(tmp_path, method), "--max-steps", "3"]
    single = run_cli(["--output-dir", str(tmp_path / "one"), *flags, "--batch-size", "16"])
    assert single.returncode == 0, single.stderr[-3000:]
    double = run_two_processes(["--output-dir", str(tmp_path / "two"), *flags, "--batch-size", "8"])
    assert double.returncode == 0, double.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two", processes=2)


def assert_same_run(one_dir, other_dir, processes: int):
    """`other_dir`'s run, on `processes` processes, took the steps and ended with the weights of `one_dir`'s, on one
    process with the same global batch."""
    summary = json.loads((other_dir / "training_summary.json").read_text())
    assert summary["num_processes"] == processes and summary["ranks_in_sync"] is True
    one = json.loads((one_dir / "training_summary.json").read_text())
    assert summary["effective_batch_size"] == one["effective_batch_size"]
    for (s1, l1), (s2, l2) in zip(one["loss_history"], summary["loss_history"], strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-5)
    one_weights, other_weights = weights(one_dir), weights(other_dir)
    for name in [k for k in one_weights if k.endswith("attn.qkv.bias")]:
        # The key bias has an exactly zero gradient (softmax ignores a shift shared by all keys): AdamW normalises
        # the rounding noise that stands in for it into steps of about lr, different for any change of summation
        # order. Compare the query and value biases only.
        width = one_weights[name].shape[0] // 3
        for w in (one_weights, other_weights):
            w[name] = torch.cat([w[name][:width], w[name][2 * width :]])
    assert_same_weights(one_weights, other_weights, atol=1e-4)


def test_two_machines_match_one_process_with_the_same_global_batch(tmp_path):
    """Multi-node as on a cluster (one `accelerate launch` per machine, --machine_rank 0 and 1, rendezvous at the
    main machine's address), both machines on this host over gloo: one run, the one-process run's weights."""
    flags = [*method_flags(tmp_path, "mae"), "--max-steps", "3"]
    single = run_cli(["--output-dir", str(tmp_path / "one"), *flags, "--batch-size", "16"])
    assert single.returncode == 0, single.stderr[-3000:]
    launches = two_machines("pretrain", ["--output-dir", str(tmp_path / "two"), *flags, "--batch-size", "8"])
    for rank, launch in enumerate(launches):
        assert launch.returncode == 0, (rank, launch.stderr[-3000:])
    assert "done: 3 steps" in launches[0].stdout and "done:" not in launches[1].stdout  # one main process
    assert_same_run(tmp_path / "one", tmp_path / "two", processes=2)


@pytest.mark.parametrize("streaming", [False, True])
def test_no_ddp_wrapper_outlives_the_teardown(tmp_path, streaming):
    """The hang of pytorch#56297 comes back as soon as any name keeps the DDP model past `end_training` (issue 20's
    first streaming code kept the tuple `accelerator.prepare` returned, and 1 two-process run of the suite hung)."""
    flags = [
        *method_flags(tmp_path, "mae"),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--output-dir",
        str(tmp_path / "o"),
    ]
    run = two_processes_counting_ddp_at_teardown(flags + (["--streaming"] if streaming else []), tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("DDP wrappers alive at teardown: 0") == 2, run.stdout[-2000:]


def test_tokenizer_then_beit_on_two_processes(tmp_path):
    """The visual tokenizer trains on 2 processes with one codebook on both ranks (buffers are part of the
    ranks_in_sync check), then BEiT trains on its tokens; the checkpoint carries the trained tokenizer."""
    tokenizer_dir = tmp_path / "tokenizer"
    run = run_two_processes(
        ["--output-dir", str(tokenizer_dir), *method_flags(tmp_path, "visual-tokenizer"), "--max-steps", "4"]
        + ["--batch-size", "8"]
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tokenizer_dir / "training_summary.json").read_text())
    assert summary["ranks_in_sync"] is True and summary["num_processes"] == 2
    assert summary["final_metrics"]["perplexity"] > 1.0
    tokenizer = weights(tokenizer_dir)
    assert tokenizer["quantizer.initialized"].item() is True

    flags = [*method_flags(tmp_path, "beit"), "--max-steps", "2", "--batch-size", "8"]
    beit_config = json.loads((tmp_path / "beit.json").read_text())
    del beit_config["vocab_size"]  # taken from the tokenizer
    (tmp_path / "beit.json").write_text(json.dumps(beit_config))
    run = run_cli(["--output-dir", str(tmp_path / "beit"), *flags, "--tokenizer", str(tokenizer_dir)])
    assert run.returncode == 0, run.stderr[-3000:]
    config = json.loads((tmp_path / "beit" / "config.json").read_text())
    vocabulary = METHOD_SPECS["visual-tokenizer"].tiny_config["vocab_size"]  # the tokenizer's, not BEiT's own
    assert vocabulary != METHOD_SPECS["beit"].config_class().vocab_size
    assert config["vocab_size"] == vocabulary and config["tokenizer_name_or_path"] == str(tokenizer_dir)
    beit = weights(tmp_path / "beit")
    for key, value in tokenizer.items():
        assert torch.equal(beit[f"tokenizer.{key}"], value), key  # frozen through training


def test_gumbel_temperature_follows_optimizer_steps_under_accumulation(tmp_path):
    overrides = dict(METHOD_MODELS["visual-tokenizer"], quantizer="gumbel", gumbel_anneal_steps=8)
    pretrain(tiny_args(tmp_path, method="visual-tokenizer", max_steps=4, grad_accum=2, config_overrides=overrides))
    temperature = weights(tmp_path / "run")["quantizer.temperature"].item()
    expected = 0.0625 + 0.5 * (1 - 0.0625) * (1 + torch.cos(torch.tensor(torch.pi * 4 / 8)).item())
    assert temperature == pytest.approx(expected, abs=1e-6)  # 4 optimizer steps, not 8 micro-steps


def test_unknown_config_fields_and_misplaced_tokenizer_are_refused(tmp_path):
    with pytest.raises(
        ValueError, match=r"--config sets \['decoder_hidden_size', .*\], which SimMIMConfig does not have"
    ):
        pretrain(tiny_args(tmp_path, method="simmim"))  # TINY_MODEL carries MAE's decoder fields
    run = run_cli(["--output-dir", str(tmp_path / "x"), "--tokenizer", "some/tokenizer"])
    assert run.returncode == 2 and "--tokenizer='some/tokenizer' is invalid: only used with --method beit" in run.stderr


def test_logged_metrics_are_means_over_micro_steps(tmp_path):
    """Under gradient accumulation a metric is averaged over the step's micro-batches, like the loss: a usage
    fraction stays a fraction."""
    overrides = dict(METHOD_MODELS["visual-tokenizer"], dead_code_threshold=0.0)
    summary = pretrain(
        tiny_args(tmp_path, method="visual-tokenizer", max_steps=3, grad_accum=4, config_overrides=overrides)
    )
    usages = [metrics["codebook_usage"] for _, metrics in summary["metrics_history"]]
    assert len(usages) == 3 and all(0.3 < usage <= 1.0 for usage in usages), usages


def teacher_file(folder):
    from safetensors import safe_open

    path = str(folder / "ema_teacher.safetensors")
    with safe_open(path, "pt") as f:
        return load_file(path), f.metadata()


def test_cmae_teacher_steps_with_optimizer_steps_under_accumulation(tmp_path):
    overrides = dict(METHOD_MODELS["cmae"])
    pretrain(tiny_args(tmp_path, method="cmae", max_steps=3, grad_accum=2, config_overrides=overrides))
    teacher, metadata = teacher_file(tmp_path / "run")
    assert metadata["num_updates"] == "3" and metadata["total_steps"] == "3"  # not 6 micro-steps


def test_cmae_teacher_on_two_processes_moves_and_stays_identical(tmp_path):
    run = run_two_processes(
        ["--output-dir", str(tmp_path / "two"), *method_flags(tmp_path, "cmae"), "--max-steps", "3"]
        + ["--batch-size", "8", "--checkpointing-steps", "1"]
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "training_summary.json").read_text())
    assert summary["ranks_in_sync"] is True  # parameters, buffers and the teacher's tensors, on both ranks
    teacher, metadata = teacher_file(tmp_path / "two")
    assert metadata["num_updates"] == "3"
    # the teacher after its first update, from the step-1 checkpoint (extra state 0 is the scheduler)
    states = json.loads((tmp_path / "two" / "checkpoints" / "step-1" / "hf_mim_state.json").read_text())
    tensors = load_file(str(tmp_path / "two" / "checkpoints" / "step-1" / "hf_mim_state.safetensors"))
    first = {"num_updates": states[1]["num_updates"]}
    first["module"] = {k: tensors[ref["__tensor__"]] for k, ref in states[1]["module"].items()}
    assert first["num_updates"] == 1 and first["module"].keys() == teacher.keys()
    key = "vit.patch_embed.proj.weight"
    assert not torch.equal(first["module"][key], teacher[key])  # it kept moving with the student
    assert not torch.equal(teacher[key], weights(tmp_path / "two")[key])  # but, at momentum 0.996, is not it


def test_cmae_learns_to_tell_images_apart_on_the_builtin_data(tmp_path):
    """Token-wise InfoNCE against the same position in the other 31 images starts at chance, ln 32 = 3.466, and
    on a 4x4 grid with 75% of each view masked falls slowly: after 200 steps it must sit clearly below chance."""
    summary = pretrain(
        tiny_args(
            tmp_path,
            method="cmae",
            max_steps=200,
            batch_size=32,
            logging_steps=25,
            base_lr=4e-2,
            config_overrides=dict(METHOD_MODELS["cmae"]),
        )
    )
    losses = [loss for _, loss in summary["loss_history"]]
    assert losses[-1] < math.log(32) - 0.05 and losses[-1] < losses[0] - 0.05, losses


def test_adios_alternates_two_optimizers_under_accumulation(tmp_path):
    """Both optimizers step once per optimizer step (not per micro-step); the occlusion model moves; its metrics are
    logged; the masks neither vanish nor cover the image."""
    overrides = dict(METHOD_MODELS["adios"])
    args = tiny_args(
        tmp_path, method="adios", max_steps=3, grad_accum=2, checkpointing_steps=1, config_overrides=overrides
    )
    summary = pretrain(args)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-3"
    for name in ("optimizer.bin", "optimizer_1.bin"):
        state = torch.load(checkpoint / name, weights_only=True)["state"]
        assert {int(s["step"]) for s in state.values()} == {3}, name
    # every scalar field of the encoder side's output, then the occlusion model's own step's
    encoder_side, occlusion_side = (
        {"similarity_loss", "mask_penalty"},
        {"occlusion_loss", "mask_area_min", "mask_area_max"},
    )
    assert set(summary["final_metrics"]) == encoder_side | occlusion_side
    assert 0.0 < summary["final_metrics"]["mask_area_min"] <= summary["final_metrics"]["mask_area_max"] < 1.0
    first, last = (load_file(str(tmp_path / "run" / "checkpoints" / f"step-{n}" / "model.safetensors")) for n in (1, 3))
    assert any(not torch.equal(first[k], last[k]) for k in first if k.startswith("occlusion."))


def test_learned_masks_train_the_mask_model_with_its_own_optimizer(tmp_path):
    """`--mask-strategy learned`: both optimizers step once per optimizer step under accumulation, the second one
    over the mask model alone; the mask model moves; the mask metrics are logged; the pictures include the learned
    masks; the saved model reloads with its mask model."""
    overrides = {**METHOD_MODELS["mae"], "mask_strategy": "learned"}
    args = tiny_args(tmp_path, max_steps=3, grad_accum=2, checkpointing_steps=1, config_overrides=overrides)
    summary = pretrain(args)
    model = AutoModelForPreTraining.from_pretrained(tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-3"
    states = {
        name: torch.load(checkpoint / name, weights_only=True)["state"] for name in ("optimizer.bin", "optimizer_1.bin")
    }
    for name, state in states.items():
        assert {int(s["step"]) for s in state.values()} == {3}, name
    assert len(states["optimizer_1.bin"]) == len(list(model.mask_model.parameters()))
    assert len(states["optimizer.bin"]) == len(list(model.parameters())) - len(states["optimizer_1.bin"])
    metrics = summary["final_metrics"]
    assert set(metrics) == {
        *("reconstruction_loss", "mask_penalty", "mask_entropy", "mask_imbalance"),
        *("mask_foreground_overlap", "foreground_fraction"),
    }
    assert 0 < metrics["mask_entropy"] <= 1 and 0 <= metrics["mask_imbalance"] <= 1
    first, last = (load_file(str(tmp_path / "run" / "checkpoints" / f"step-{n}" / "model.safetensors")) for n in (1, 3))
    for prefix in ("mask_model.", "vit."):
        assert any(not torch.equal(first[k], last[k]) for k in first if k.startswith(prefix)), prefix
    reloaded = model.state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in last.items() if k.startswith("mask_model."))
    assert (tmp_path / "run" / "learned_masks.png").exists() and (tmp_path / "run" / "reconstruction.png").exists()
    card = (tmp_path / "run" / "README.md").read_text()
    assert "learned_masks.png" in card and "the masks are learned" in card


@pytest.mark.parametrize("repo_id", ["../x", "C:\\x", "a/b/c"])
def test_an_unsafe_push_to_hub_repo_id_fails_before_training(tmp_path, repo_id):
    run = run_cli(["--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--push-to-hub", repo_id])
    assert run.returncode == 2 and "--push-to-hub=" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "out" / "training_args.json").exists()  # refused before anything ran


@pytest.mark.parametrize(
    "method, message",
    [
        ("adios", "--mask-strategy='learned' is invalid: --method adios has none; methods that mask: "),
        ("simmim", "mask_strategy='learned' is invalid: one of ('random', 'mask_patch'"),
    ],
)
def test_mask_strategy_flag_is_checked_in_one_line(tmp_path, method, message):
    run = run_cli(
        [
            *method_flags(tmp_path, method),
            "--mask-strategy",
            "learned",
            "--max-steps",
            "1",
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith("hf-mim ")]
    assert len(lines) == 1 and message in lines[0], run.stderr[-2000:]
