"""The transformers.Trainer path: `hf_mim.ImageTransform`, `hf_mim.MIMTrainer`, and `examples/run_pretraining.py`
in one process and under `accelerate launch` with two, with cards from its records."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining

import hf_mim
from hf_mim.data.sources import builtin_digits
from hf_mim.modeling.auto import METHOD_SPECS
from hf_mim.modeling.spec import TINY_VIT

from .launch import run_group

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "run_pretraining.py"
# the methods' tiny ViT as --config_overrides (the image and patch size come from the script's own flags)
TINY = ",".join(f"{k}={v}" for k, v in TINY_VIT.items() if k not in ("image_size", "patch_size"))


def tiny(method: str, **overrides):
    spec = METHOD_SPECS[method]
    return spec.config_class(**{**spec.tiny_config, **overrides})


# ---- hf_mim.ImageTransform ---------------------------------------------------------------------------------------


def test_a_labelled_dataset_becomes_the_models_inputs_and_nothing_else():
    digits = builtin_digits("test").select(range(6))  # columns: image, label
    config = tiny("mae", num_channels=1)
    batch = digits.with_transform(hf_mim.ImageTransform.from_config(config))[0:6]
    assert set(batch) == {"pixel_values", "noise"}  # the label column is left out, not passed to forward
    assert all(p.shape == (1, 32, 32) for p in batch["pixel_values"]) and all(n.shape == (16,) for n in batch["noise"])
    model = hf_mim.MAEForPreTraining(config)
    out = model(pixel_values=torch.stack(batch["pixel_values"]), noise=torch.stack(batch["noise"]))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("method", sorted(METHOD_SPECS))
def test_every_method_gets_its_per_sample_inputs_and_trains_on_them(method):
    spec = METHOD_SPECS[method]
    config = tiny(method)
    transform = hf_mim.ImageTransform.from_config(config)
    images = [Image.new("RGB", (40, 30), (40 * i, 100, 200)) for i in range(4)]
    batch = transform({"img": images, "caption": ["a"] * 4})
    drawn = spec.sample_inputs(config, (4, 4), None) if spec.sample_inputs else {}
    assert set(batch) == {"pixel_values", *drawn}, method
    for key, values in batch.items():
        assert len(values) == 4 and values[0].shape == (drawn[key].shape if key in drawn else (3, 32, 32)), key
    model = spec.pretraining_class(config)
    out = model(**{key: torch.stack(values) for key, values in batch.items()})
    assert torch.isfinite(out.loss), method


def test_draws_follow_torchs_seed_and_eval_mode_draws_nothing():
    config = tiny("simmim")
    transform = hf_mim.ImageTransform.from_config(config)
    images = {"image": [Image.new("RGB", (50, 50), (i, 2 * i, 3 * i)) for i in range(0, 250, 50)]}
    torch.manual_seed(3)
    first = transform(images)
    torch.manual_seed(3)
    again = transform(images)
    assert all(torch.equal(a, b) for a, b in zip(first["bool_masked_pos"], again["bool_masked_pos"], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first["pixel_values"], again["pixel_values"], strict=True))
    masks = torch.stack(first["bool_masked_pos"])
    assert not all(torch.equal(m, masks[0]) for m in masks)  # each image its own mask
    evaluation = hf_mim.ImageTransform.from_config(config, train=False)(images)
    assert set(evaluation) == {"pixel_values"}


def test_applied_to_a_dataset_each_sample_draws_from_seed_epoch_and_index():
    config = tiny("mae", num_channels=1)
    digits = builtin_digits("test").select(range(8))
    transform = hf_mim.ImageTransform.from_config(config, seed=5)
    train = transform.apply(digits)
    torch.manual_seed(0)
    first = train[[3, 6]]
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(torch.stack(train[[6, 3]]["noise"]), torch.stack(first["noise"][::-1]))
    assert set(first) == {"pixel_values", "noise"}
    transform.epoch = 1  # a new epoch, new draws
    assert not torch.equal(torch.stack(train[[3, 6]]["noise"]), torch.stack(first["noise"]))
    other_seed = hf_mim.ImageTransform.from_config(config, seed=6).apply(digits)
    assert not torch.equal(torch.stack(other_seed[[3, 6]]["noise"]), torch.stack(first["noise"]))


def test_mimtrainer_tells_the_transform_each_epoch_and_refuses_persistent_workers(tmp_path):
    config = tiny("mae", num_channels=1)
    transform = hf_mim.ImageTransform.from_config(config)
    train = transform.apply(builtin_digits("test").select(range(16)))
    model = hf_mim.MAEForPreTraining(config)
    epochs = []
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            epochs.append(transform.epoch)

    args = trainer_args(tmp_path, max_steps=-1, num_train_epochs=3)
    hf_mim.MIMTrainer(model=model, args=args, train_dataset=train, callbacks=[Record()]).train()
    assert epochs == [0, 0, 1, 1, 2, 2]  # 16 images, batches of 8
    persistent = trainer_args(tmp_path, dataloader_num_workers=1, dataloader_persistent_workers=True)
    with pytest.raises(ValueError, match="dataloader_persistent_workers=True is invalid"):
        hf_mim.MIMTrainer(model=model, args=persistent, train_dataset=train)


def test_an_undecodable_sample_is_replaced_by_a_good_one_and_logged(caplog):
    transform = hf_mim.ImageTransform.from_config(tiny("mae"))
    good = io.BytesIO()
    Image.new("RGB", (20, 20), (255, 0, 0)).save(good, format="PNG")
    batch = {"image": [{"bytes": good.getvalue(), "path": None}, {"bytes": b"not an image", "path": "bad.png"}]}
    with caplog.at_level(logging.WARNING, logger="hf_mim"):
        out = transform(batch)
    assert torch.equal(out["pixel_values"][0], out["pixel_values"][1])
    assert "skipped bad.png, which does not decode" in caplog.text
    with pytest.raises(ValueError, match="no image of this batch decodes"):
        transform({"image": [{"bytes": b"x", "path": None}]})


def test_a_batch_without_images_names_the_columns_and_the_trainer_setting():
    transform = hf_mim.ImageTransform.from_config(tiny("mae"))
    with pytest.raises(ValueError, match=r"columns: \['label'\].*remove_unused_columns=False"):
        transform({"label": [1, 2]})
    with pytest.raises(ValueError, match="model_type='vit'"):
        hf_mim.ImageTransform.from_config(__import__("transformers").ViTConfig())


# ---- MIMTrainer -------------------------------------------------------------------------------------------------


def trainer_args(tmp_path, **overrides):
    from transformers import TrainingArguments

    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        learning_rate=1e-3,
        weight_decay=0.05,
    )
    return TrainingArguments(**{**defaults, **overrides})


def test_a_labelled_dataset_trains_under_trainers_default_column_pruning(tmp_path):
    from transformers import Trainer

    config = tiny("mae", num_channels=1)
    args = trainer_args(tmp_path)
    assert args.remove_unused_columns  # Trainer's default
    train = hf_mim.ImageTransform.from_config(config).apply(builtin_digits("test").select(range(16)))
    result = hf_mim.MIMTrainer(model=hf_mim.MAEForPreTraining(config), args=args, train_dataset=train).train()
    assert result.global_step == 2
    # a plain Trainer prunes the image column (keeping 'label', which it treats as a label): the error says why
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        Trainer(model=hf_mim.MAEForPreTraining(config), args=args, train_dataset=train).train()


@pytest.mark.parametrize(
    "method, overrides, part",
    [
        ("adios", dict(occlusion_learning_rate=3e-4), "occlusion"),
        ("mae", dict(mask_strategy="learned", mask_model_learning_rate=3e-4), "mask_model"),
    ],
)
def test_the_adversary_learns_at_its_own_rate_and_only_matrices_decay(tmp_path, method, overrides, part):
    config = tiny(method, **overrides)
    model = AutoModelForPreTraining.from_config(config)
    trainer = hf_mim.MIMTrainer(model=model, args=trainer_args(tmp_path))
    optimizer = trainer.create_optimizer()
    adversary = {id(p) for p in getattr(model, part).parameters()}
    seen = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= adversary or not ids & adversary  # never mixed
        assert group["lr"] == (3e-4 if ids <= adversary else 1e-3)
        assert all(p.ndim >= 2 for p in group["params"]) == (group["weight_decay"] == 0.05)
        seen |= ids
    assert seen == {id(p) for p in model.parameters() if p.requires_grad}


def test_a_one_process_run_under_a_multi_process_launch_is_refused(tmp_path, monkeypatch):
    args = trainer_args(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")  # launched on 2, but these arguments formed a 1-process run
    with pytest.raises(ValueError, match="WORLD_SIZE=2 processes were launched"):
        hf_mim.MIMTrainer(model=hf_mim.MAEForPreTraining(tiny("mae")), args=args)


def test_the_final_save_writes_the_records_the_card_reads(tmp_path):
    torch.manual_seed(0)
    config = tiny("mae", num_channels=1)
    model = hf_mim.MAEForPreTraining(config)
    train = builtin_digits("train").select(range(32))
    trainer = hf_mim.MIMTrainer(
        model=model,
        args=trainer_args(tmp_path, max_steps=3),
        train_dataset=train.with_transform(hf_mim.ImageTransform.from_config(config)),
        run_info={"dataset": "32 digits"},
    )
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    summary = json.loads((out / "training_summary.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    assert summary["steps"] == state["global_step"] == 3 and summary["ranks_in_sync"] is True
    assert [step for step, _ in summary["loss_history"]] == [1, 2, 3]
    assert summary["method"] == "mae" and summary["effective_batch_size"] == 8 and summary["num_samples"] == 32
    assert summary["reconstruction"]["split"] == "train"  # no held-out set given: the training images, said so
    for picture in ("loss_curve.png", "reconstruction.png"):
        assert (out / picture).read_bytes().startswith(b"\x89PNG")
    args = json.loads((out / "training_args.json").read_text())
    assert args["learning_rate"] == 1e-3 and args["max_steps"] == 3
    card = ModelCard.load(out / "README.md").text
    assert "pretrained with `transformers.Trainer` (hf_mim's `mae` method) on 32 digits." in card
    assert "| Optimizer steps | 3 |" in card and "| Learning rate (peak) | 0.001 |" in card
    assert "![Training loss](loss_curve.png)" in card and "![Reconstructions](reconstruction.png)" in card
    assert not list(out.glob(".tmp*"))


def test_a_plain_trainer_folder_gets_its_recipe_from_trainer_state(tmp_path):
    """Trainer without MIMTrainer leaves trainer_state.json (and a pickle, training_args.bin, which is never read):
    the card built from the folder reads the state."""
    from hf_mim.model_cards.card import model_card_for_folder

    model = hf_mim.SimMIMForPreTraining(tiny("simmim"))
    model.save_pretrained(tmp_path)
    state = {
        "global_step": 40,
        "max_steps": 40,
        "epoch": 2.0,
        "log_history": [
            {"step": 20, "loss": 0.9, "learning_rate": 2e-4},
            {"step": 40, "loss": 0.5, "learning_rate": 1e-5},
            {"step": 40, "train_runtime": 12.5, "train_samples_per_second": 51.2},
        ],
    }
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    (tmp_path / "training_args.bin").write_bytes(b"\x80\x04 a pickle hf_mim must not load")
    text = model_card_for_folder(tmp_path).text
    assert "pretrained with `transformers.Trainer` (hf_mim's `simmim` method)" in text
    assert "| Optimizer steps | 40 |" in text and "| Final loss | 0.5 |" in text
    assert "| Learning rate (peak) | 0.0002 |" in text and "| Wall time | 12.5 s (51.2 images/s) |" in text


# ---- examples/run_pretraining.py ---------------------------------------------------------------------------------


def run_script(args, processes: int = 1, timeout: int = 300):
    if processes == 1:
        command = [sys.executable, str(SCRIPT)]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT)]
    result = run_group([*command, *args], timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def script_args(out, method, *extra, overrides: str | None = TINY):
    return [
        "--method",
        method,
        *(["--config_overrides", overrides] if overrides else []),
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "8",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *extra,
    ]


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory):
    """MAE and C-MAE (two models: the student and its EMA teacher), each in one process and in two."""
    root = tmp_path_factory.mktemp("script")
    runs = {}
    for method in ("mae", "cmae"):
        for processes in (1, 2):
            out = root / f"{method}-{processes}"
            log = run_script(script_args(out, method, "--max_steps", "4", "--save_steps", "2"), processes)
            runs[method, processes] = (out, log)
    return runs


@pytest.mark.parametrize("method", ["mae", "cmae"])
@pytest.mark.parametrize("processes", [1, 2])
def test_the_script_trains_saves_and_cards_each_method(script_runs, method, processes):
    out, log = script_runs[method, processes]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["num_processes"] == processes and summary["ranks_in_sync"] is True
    assert summary["steps"] == 4 and summary["effective_batch_size"] == 8 * processes
    # the recipe where the command line gave none: the small-data recipe's base lr, scaled to the batch
    base_lr = METHOD_SPECS[method].small.base_lr
    assert summary["learning_rate"] == pytest.approx(base_lr * 8 * processes / 256)
    args = json.loads((out / "training_args.json").read_text())
    assert [args["adam_beta1"], args["adam_beta2"]] == list(METHOD_SPECS[method].betas)
    assert args["lr_scheduler_type"] == "cosine" and args["weight_decay"] == 0.05 and args["warmup_steps"] == 0.05
    assert summary["dataset"].startswith("scikit-learn digits") and summary["method"] == method
    model = METHOD_SPECS[method].pretraining_class.from_pretrained(out)
    assert model.config.hidden_size == 32 and model.config.patch_size == 4
    card = ModelCard.load(out / "README.md")
    assert "| Optimizer steps | 4 |" in card.text and "![Training loss](loss_curve.png)" in card.text
    if method == "mae":
        assert summary["reconstruction"]["split"] == "test"  # held-out digits
        assert "![Reconstructions](reconstruction.png)" in card.text
    else:
        assert (out / "ema_teacher.safetensors").is_file()
        assert (out / "checkpoint-2" / "ema_teacher.safetensors").is_file()
    if processes == 2:
        assert "parameters identical on all 2 processes" in log.stderr + log.stdout


def test_two_processes_form_one_run_not_two(script_runs):
    # each process of the 2-process run saw half the data: half the steps per epoch of the 1-process run
    one = json.loads((script_runs["mae", 1][0] / "trainer_state.json").read_text())
    two = json.loads((script_runs["mae", 2][0] / "trainer_state.json").read_text())
    assert two["epoch"] == pytest.approx(2 * one["epoch"])


def test_a_run_resumes_from_its_trainer_checkpoint_bit_for_bit(script_runs, tmp_path):
    """C-MAE stopped after its step-2 checkpoint and resumed there ends with the uninterrupted run's weights and
    EMA teacher exactly: step, optimizer, schedule, teacher and every sample's draws are restored."""
    straight, _ = script_runs["cmae", 1]
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(straight / "checkpoint-2", out / "checkpoint-2")
    run_script(script_args(out, "cmae", "--max_steps", "4", "--save_steps", "2", "--resume_from_checkpoint", "latest"))
    state = json.loads((out / "trainer_state.json").read_text())
    reference = json.loads((straight / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    losses = [[h["step"], h["loss"]] for h in state["log_history"] if "loss" in h]
    assert losses == [[h["step"], h["loss"]] for h in reference["log_history"] if "loss" in h]
    for name in ("model.safetensors", "ema_teacher.safetensors"):
        resumed, uninterrupted = load_file(str(out / name)), load_file(str(straight / name))
        assert resumed.keys() == uninterrupted.keys()
        assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed), name


def test_the_script_trains_on_an_image_folder_with_bad_files(tmp_path):
    from .images import write_image_folder

    folder = write_image_folder(tmp_path / "images")
    out = tmp_path / "out"
    log = run_script(script_args(out, "simmim", "--dataset", str(folder), "--image_size", "32", "--max_steps", "3"))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 3 and summary["dataset"].endswith("(image folder)") and summary["recipe"] == "small"
    assert "does not decode" in log.stderr and (out / "reconstruction.png").is_file()
    assert summary["num_samples"] == len(list(folder.iterdir()))  # bad files included: each replaced in its batch


def load_script():
    import importlib.util

    if "run_pretraining" not in sys.modules:
        spec = importlib.util.spec_from_file_location("run_pretraining", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["run_pretraining"]


@pytest.mark.parametrize("method", sorted(set(METHOD_SPECS) - {"mae", "cmae", "simmim"}))
def test_the_script_runs_every_other_method(method, tmp_path):
    """In this process (the runs above cover launching): 2 steps of each remaining method, saved and loadable."""
    out = tmp_path / method
    extra = ["--max_steps", "2", "--max_train_samples", "64", "--save_strategy", "no", "--use_cpu", "true"]
    overrides = TINY if METHOD_SPECS[method].encoder_presets else None  # a tokenizer has no ViT to shrink
    metrics = load_script().main(script_args(out, method, *extra, overrides=overrides))
    assert metrics["epoch"] > 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["method"] == method and summary["num_samples"] == 64
    METHOD_SPECS[method].pretraining_class.from_pretrained(out)
    picture = METHOD_SPECS[method].picture
    assert picture is None or (out / picture.file).read_bytes().startswith(b"\x89PNG")


def test_the_script_writes_only_into_a_new_folder_or_its_own_runs(tmp_path):
    from hf_mim.training.run_folder import RunFolderError

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "training_args.json").write_text('{"mine": true}')  # someone's file, with a name the run writes
    args = ["--max_steps", "1", "--max_train_samples", "16", "--save_strategy", "no", "--use_cpu", "true"]
    with pytest.raises(RunFolderError, match="holds files no hf-mim run wrote"):
        load_script().main(script_args(theirs, "mae", *args))
    assert (theirs / "training_args.json").read_text() == '{"mine": true}'
    ours = tmp_path / "ours"
    load_script().main(script_args(ours, "mae", *args))
    load_script().main(script_args(ours, "mae", *args))  # a re-run into its own folder is allowed
    load_script().main(script_args(theirs, "mae", *args, "--overwrite_output_dir", "true"))
    assert json.loads((theirs / "training_args.json").read_text())["max_steps"] == 1


def test_the_script_refuses_bad_overrides_in_one_line(tmp_path):
    result = run_group(
        [sys.executable, str(SCRIPT), "--output_dir", str(tmp_path / "x"), "--config_overrides", "mask_ratio"],
        timeout=120,
    )
    assert result.returncode != 0 and "--config_overrides item 'mask_ratio' is invalid" in result.stderr


# ---- cards: the install line, the tokenizer, records carried on push -----------------------------------------------


def test_the_install_line_comes_from_where_this_hf_mim_was_installed(monkeypatch):
    from importlib import metadata

    from hf_mim.model_cards import card

    class Dist:
        def __init__(self, direct, urls=()):
            self.direct, self.metadata = direct, {"Project-URL": None}
            self.urls = list(urls)

        def read_text(self, name):
            return json.dumps(self.direct) if self.direct is not None else None

    def line(direct, urls=(), origin=(None, None)):
        dist = Dist(direct, urls)
        dist.metadata = type("M", (), {"get_all": staticmethod(lambda key: dist.urls)})()
        monkeypatch.setattr(metadata, "distribution", lambda name: dist)
        monkeypatch.setattr(card, "_git_origin", lambda folder: origin)
        card.install_command.cache_clear()
        return card.install_command()

    git = {"url": "https://github.com/o/hf_mim", "vcs_info": {"vcs": "git", "commit_id": "abc123"}}
    assert line(git) == '`pip install "hf-mim @ git+https://github.com/o/hf_mim@abc123"`'
    editable = {"url": "file:///src/hf_mim", "dir_info": {"editable": True}}
    assert line(editable, origin=("https://example.org/r.git", "def456")) == (
        '`pip install "hf-mim @ git+https://example.org/r.git@def456"`'
    )
    assert line(editable, urls=["Repository, https://example.org/repo"]) == (
        '`pip install "hf-mim @ git+https://example.org/repo"`'
    )
    # a checkout without a public origin (a local path is no use to a reader): no made-up command
    assert line(editable, origin=("/home/me/hf_mim", "def456")) == card.INSTALL_FALLBACK
    assert "pip install hf_mim" not in card.INSTALL_FALLBACK
    card.install_command.cache_clear()


def test_the_tokenizer_card_has_one_title_and_no_pipeline_task(tmp_path):
    model = hf_mim.VisualTokenizer(tiny("visual-tokenizer"))
    model.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert (
        card.text.lstrip().startswith("# Visual tokenizer\n") and "tokenizer visual tokenizer" not in card.text.lower()
    )
    assert "pipeline_tag" not in card.data.to_dict()


@pytest.fixture
def pretrain_folder(tmp_path):
    """What `hf-mim pretrain` leaves, in small: the weights, records and pictures."""
    torch.manual_seed(0)
    model = hf_mim.MAEForPreTraining(tiny("mae"))
    folder = tmp_path / "run"
    (folder).mkdir()
    (folder / "training_summary.json").write_text(json.dumps({"method": "mae", "steps": 7, "loss_history": []}))
    (folder / "training_args.json").write_text(json.dumps({"method": "mae", "output_dir": str(folder)}))
    Image.new("RGB", (4, 4)).save(folder / "loss_curve.png")
    model.save_pretrained(folder)
    return folder


def pushed_folder(model, monkeypatch) -> dict[str, bytes]:
    """What push_model would upload: the folder handed to push_folder, captured instead of sent."""
    from hf_mim import hub

    captured = {}

    def capture(folder, repo_id, **kwargs):
        captured.update({p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()})

    monkeypatch.setattr(hub, "push_folder", capture)
    model.push_to_hub("tester/x")
    return captured


def test_push_to_hub_of_a_reloaded_run_keeps_its_records_and_pictures(pretrain_folder, monkeypatch):
    model = hf_mim.MAEForPreTraining.from_pretrained(pretrain_folder)
    files = pushed_folder(model, monkeypatch)
    assert {"training_summary.json", "training_args.json", "loss_curve.png"} <= set(files)
    assert json.loads(files["training_summary.json"])["steps"] == 7


def test_records_are_not_carried_to_weights_trained_further(pretrain_folder, monkeypatch, caplog):
    model = hf_mim.MAEForPreTraining.from_pretrained(pretrain_folder)
    with torch.no_grad():
        model.vit.patch_embed.proj.weight.add_(1e-3)
    with caplog.at_level(logging.WARNING, logger="hf_mim"):
        files = pushed_folder(model, monkeypatch)
    assert "training_summary.json" not in files and "loss_curve.png" not in files
    assert "weights differ" in caplog.text


def test_a_record_linking_out_of_the_run_folder_is_refused(pretrain_folder, tmp_path, monkeypatch):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n private")
    (pretrain_folder / "masks.png").symlink_to(secret)
    model = hf_mim.MAEForPreTraining.from_pretrained(pretrain_folder)
    with pytest.raises(ValueError, match="links to .*secret.png"):
        pushed_folder(model, monkeypatch)
