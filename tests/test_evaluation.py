"""`hf-mim evaluate`: the protocols' numerics on hand-computed cases, the data splits, and the command end to end."""

import json
import math

import datasets
import pytest
import torch
from PIL import Image
from torch import nn

from hf_mim import MAEConfig, MAEForPreTraining
from hf_mim.data.images import ImageAugmentation
from hf_mim.data.labelled import labels_per_class_subset, load_labelled_splits
from hf_mim.data.pipeline import KeepShapeCollator, LabelledTransform, prepare_labelled
from hf_mim.evaluation.cka import linear_cka, occlusion_features, occlusion_masks
from hf_mim.evaluation.finetune import LayerDecayTrainer, layer_decay_parameter_groups, layer_id
from hf_mim.evaluation.protocols import (
    encoder_features,
    extract_features,
    knn_scores,
    linear_probe,
    load_encoder,
    load_metric,
)
from hf_mim.model_cards.card import model_card_for_folder, validate_model_card
from hf_mim.modeling.base import MIMModel

from .launch import in_process as cli
from .launch import two_processes

TINY = dict(
    image_size=16,
    patch_size=4,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=64,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=64,
    num_channels=1,
    image_mean=[0.5],
    image_std=[0.5],
)


@pytest.fixture(scope="module")
def tiny_mae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mae")
    torch.manual_seed(0)
    MAEForPreTraining(MAEConfig(**TINY)).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# k-NN
# ----------------------------------------------------------------------------------------------------------------


def test_knn_votes_match_a_hand_computed_case():
    train = torch.tensor([[1.0, 0.0], [2.0, 0.2], [0.0, 1.0], [0.1, 3.0]])  # normalised: ~e1, ~e1, e2, ~e2
    labels = torch.tensor([0, 0, 1, 2])
    test = torch.tensor([[1.0, 1.0]])
    k, temperature = 3, 0.5
    unit = train / train.norm(dim=1, keepdim=True)
    similarity = (unit @ (test / test.norm()).T).flatten()  # 0.7071, 0.7739, 0.7071, 0.7399
    top = similarity.topk(k).indices.tolist()  # 1 (label 0), 3 (label 2), then 0 or 2 tie at 0.7071
    expected = torch.zeros(3, dtype=torch.float64)
    for i in top:
        expected[labels[i]] += math.exp(float(similarity[i]) / temperature)
    scores = knn_scores(train, labels, test, num_classes=3, k=k, temperature=temperature)
    torch.testing.assert_close(scores[0].double(), expected, rtol=1e-6, atol=0)
    # every vote counts, weighted: class 0 has two neighbours among the three
    assert scores.argmax(-1).item() == 0


def test_knn_is_the_same_in_chunks_and_checks_k():
    train, labels = torch.randn(50, 8), torch.randint(0, 4, (50,))
    test = torch.randn(13, 8)
    whole = knn_scores(train, labels, test, 4, k=5)
    chunked = knn_scores(train, labels, test, 4, k=5, chunk_size=3)
    torch.testing.assert_close(whole, chunked, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"k=51 is invalid.*50"):
        knn_scores(train, labels, test, 4, k=51)
    with pytest.raises(ValueError, match="temperature"):
        knn_scores(train, labels, test, 4, temperature=0)


# ----------------------------------------------------------------------------------------------------------------
# Linear probe
# ----------------------------------------------------------------------------------------------------------------


def test_linear_probe_is_batchnorm_without_parameters_then_linear_and_learns_separable_classes():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator) * 4
    labels = torch.arange(3).repeat_interleave(40)
    features = centres[labels] + torch.randn(120, 16, generator=generator) + 100.0  # far from zero: BN's job
    test_labels = torch.arange(3).repeat(10)
    test = centres[test_labels] + torch.randn(30, 16, generator=generator) + 100.0
    probe, logits = linear_probe(features, labels, test, 3, epochs=30, batch_size=32, seed=0)
    assert isinstance(probe[0], nn.BatchNorm1d) and not probe[0].affine and list(probe[0].parameters()) == []
    assert isinstance(probe[1], nn.Linear) and not probe.training
    assert (logits.argmax(-1) == test_labels).float().mean() == 1.0
    _, again = linear_probe(features, labels, test, 3, epochs=30, batch_size=32, seed=0)
    torch.testing.assert_close(logits, again, rtol=0, atol=0)  # seeded: the same probe


# ----------------------------------------------------------------------------------------------------------------
# CKA
# ----------------------------------------------------------------------------------------------------------------


def _cka_oracle(x, y):
    """CKA through HSIC with the centring matrix H: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)), K = XX^T."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l_ = x.double() @ x.double().T, y.double() @ y.double().T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h)

    return float(hsic(k, l_) / torch.sqrt(hsic(k, k) * hsic(l_, l_)))


@pytest.mark.parametrize("n, p, q", [(10, 30, 20), (60, 5, 7)])  # both of linear_cka's routes
def test_linear_cka_matches_the_hsic_formula_and_its_invariances(n, p, q):
    x, y = torch.randn(n, p), torch.randn(n, q)
    assert linear_cka(x, y) == pytest.approx(_cka_oracle(x, y), abs=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    rotation, _ = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x.double() @ rotation + 5.0) == pytest.approx(1.0, abs=1e-10)
    # not invariant to an anisotropic scaling
    assert linear_cka(x, x * torch.linspace(0.01, 10, p)) < 0.99


def test_linear_cka_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same n"):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match="at least 2"):
        linear_cka(torch.randn(1, 3), torch.randn(1, 3))


def _identity_encoder():
    """An encoder whose blocks add nothing (attention and MLP outputs zeroed): every token stays its own
    embedding, so occlusion cannot change the visible tokens' features."""
    model = MIMModel(MAEConfig(**TINY)).eval()
    with torch.no_grad():
        for block in model.vit.blocks:
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
            block.mlp.fc2.weight.zero_()
            block.mlp.fc2.bias.zero_()
    return model


@pytest.mark.parametrize("occlusion", ["drop", "zero"])
def test_occlusion_cka_is_one_when_blocks_do_not_mix_tokens(occlusion):
    """With token-wise blocks, the features of the visible patches are the same whether the others are there or
    not: CKA must be 1 at every ratio and block. Features pooled over mismatched positions would not be."""
    from hf_mim.evaluation.cka import cka_table

    model = _identity_encoder()
    pixels = torch.randn(12, 1, 16, 16)
    full, occluded = occlusion_features(model, pixels, torch.arange(12), (0.25, 0.75), occlusion, "mean", seed=0)
    assert full.shape == occluded.shape == (3, 2, 12, 32)
    torch.testing.assert_close(full, occluded, rtol=1e-5, atol=1e-5)
    table = cka_table(full, occluded)
    torch.testing.assert_close(table, torch.ones(2, 3, dtype=table.dtype), rtol=0, atol=1e-6)
    # a real encoder mixes tokens: occluding more changes the features more
    real = MIMModel(MAEConfig(**TINY)).eval()
    full, occluded = occlusion_features(real, pixels, torch.arange(12), (0.25, 0.75), occlusion, "mean", seed=0)
    table = cka_table(full, occluded)
    assert (table[0, -1] > table[1, -1]).item() and (table < 1 - 1e-4).all()


def test_occlusion_masks_depend_on_the_image_index_only():
    ids_a, mask_a = occlusion_masks(torch.tensor([3, 7, 9]), 16, 0, 0.5, seed=1)
    ids_b, mask_b = occlusion_masks(torch.tensor([9, 3]), 16, 0, 0.5, seed=1)
    assert torch.equal(mask_a[2], mask_b[0]) and torch.equal(mask_a[0], mask_b[1])
    assert mask_a.sum(dim=1).tolist() == [8, 8, 8]  # exactly the ratio
    _, other_ratio_slot = occlusion_masks(torch.tensor([3]), 16, 1, 0.5, seed=1)
    assert not torch.equal(other_ratio_slot[0], mask_a[0])


# ----------------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------------


def test_encoder_features_are_the_pooled_normed_block_outputs(tiny_mae):
    model = load_encoder(tiny_mae)
    assert isinstance(model, MIMModel) and not model.training
    pixels = torch.randn(4, 1, 16, 16)
    out = model(pixels, output_hidden_states=True)
    torch.testing.assert_close(encoder_features(model, pixels, None, "cls"), out.last_hidden_state[:, 0])
    torch.testing.assert_close(encoder_features(model, pixels, 3, "cls"), out.last_hidden_state[:, 0])
    second = model.vit.norm(out.hidden_states[2])
    torch.testing.assert_close(encoder_features(model, pixels, 2, "mean"), second[:, 1:].mean(dim=1))
    with pytest.raises(ValueError, match=r"block=4 is invalid: allowed 1 to 3"):
        encoder_features(model, pixels, 4, "cls")
    with pytest.raises(ValueError, match="pooling='max'"):
        encoder_features(model, pixels, None, "max")


def test_random_init_is_the_same_architecture_with_new_weights(tiny_mae):
    trained, fresh = load_encoder(tiny_mae), load_encoder(tiny_mae, random_init=True, seed=3)
    assert trained.config.to_dict() == fresh.config.to_dict()
    assert not torch.equal(trained.vit.blocks[0].attn.qkv.weight, fresh.vit.blocks[0].attn.qkv.weight)
    again = load_encoder(tiny_mae, random_init=True, seed=3)
    assert torch.equal(fresh.vit.blocks[0].attn.qkv.weight, again.vit.blocks[0].attn.qkv.weight)


def test_other_libraries_checkpoints_are_refused_with_a_hint(tmp_path):
    from transformers import ViTMAEConfig

    ViTMAEConfig(image_size=16, patch_size=4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type 'vit_mae'.*hf-mim convert"):
        load_encoder(tmp_path)


def _digits_like(n_per_class=6, classes=3, bad=()):
    generator = torch.Generator().manual_seed(0)
    images, labels = [], []
    for c in range(classes):
        for _ in range(n_per_class):
            pixels = (torch.rand(8, 8, generator=generator) * 60 + 60 * c).to(torch.uint8).numpy()
            images.append(Image.fromarray(pixels, mode="L"))
            labels.append(c)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{i}" for i in range(classes)])}
    )
    data = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    if bad:
        data = data.cast_column("image", datasets.Image(decode=False))
        rows = data.to_list()
        for i in bad:
            rows[i]["image"] = {"bytes": b"not an image", "path": None}
        data = datasets.Dataset.from_list(rows, features=data.features)
    return data


def test_extract_features_match_the_model_and_drop_undecodable_images(tiny_mae):
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    model = load_encoder(tiny_mae)
    data = _digits_like(bad=(4,))
    config = model.config
    transform = ImageAugmentation(config.image_size, config.image_mean, config.image_std, 1, train=False)
    prepared = prepare_labelled(data, LabelledTransform("image", "label", transform))
    loader = DataLoader(prepared, batch_size=5, collate_fn=KeepShapeCollator((1, 16, 16)))
    accelerator = Accelerator(cpu=True)
    features, labels, skipped = extract_features(model, accelerator.prepare_data_loader(loader), accelerator)
    assert skipped == 1 and features.shape == (17, 32)
    good = [i for i in range(18) if i != 4]
    assert labels.tolist() == [data[i]["label"] for i in good]
    pixels = torch.stack([prepared[i]["pixel_values"] for i in good])
    with torch.no_grad():
        torch.testing.assert_close(features, model(pixels).pooler_output)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def test_builtin_digits_are_evaluated_on_their_own_test_split_whatever_the_seed():
    splits = load_labelled_splits(None, seed=0)
    assert (len(splits.train), len(splits.test), splits.num_classes) == (1437, 360, 10)
    assert splits.test_split == "test" and "held out" not in splits.description
    per_class = torch.bincount(torch.tensor(splits.test["label"]), minlength=10)
    assert per_class.min() >= 35 and per_class.max() <= 37  # 20% of 174 to 183 images per class
    # the seed draws labelled subsets and fine-tuning order, never the test images
    assert load_labelled_splits(None, seed=1).test["label"] == splits.test["label"]


def test_a_dataset_without_a_test_split_is_split_stratified_and_seeded(tmp_path):
    folder = _digits_folder(tmp_path, per_class=10)
    splits = [load_labelled_splits(folder, seed=seed) for seed in (0, 0, 1)]
    assert (len(splits[0].train), len(splits[0].test)) == (24, 6)
    assert torch.bincount(torch.tensor(splits[0].test["label"])).tolist() == [2, 2, 2]
    assert splits[0].test["image"] == splits[1].test["image"] != splits[2].test["image"]
    assert "20% of 'train' held out" in splits[0].description


def test_labels_per_class_takes_exactly_n_of_each_class_from_the_seed():
    data = _digits_like(n_per_class=6)
    subset = labels_per_class_subset(data, "label", 4, seed=0)
    assert torch.bincount(torch.tensor(subset["label"])).tolist() == [4, 4, 4]
    assert labels_per_class_subset(data, "label", 4, seed=0)["image"] == subset["image"]
    assert labels_per_class_subset(data, "label", 4, seed=5)["image"] != subset["image"]
    with pytest.raises(ValueError, match=r"labels_per_class=7 is invalid: class 0 has only 6"):
        labels_per_class_subset(data, "label", 7)
    with pytest.raises(ValueError, match="labels_per_class=0"):
        labels_per_class_subset(data, "label", 0)


def test_a_dataset_without_labels_names_its_columns(tmp_path):
    data = datasets.Dataset.from_dict({"picture": [Image.new("L", (8, 8))] * 4}).cast_column(
        "picture", datasets.Image()
    )
    data.save_to_disk(str(tmp_path / "unlabelled"))
    from hf_mim.data.sources import DatasetError

    with pytest.raises(DatasetError, match=r"no label column; the columns are \['picture'\]"):
        load_labelled_splits(str(tmp_path / "unlabelled"))


def test_metric_loads_offline_from_the_shipped_module():
    metric = load_metric("accuracy")
    assert metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2]) == {"accuracy": 0.75}
    with pytest.raises(ValueError, match="not shipped with hf_mim"):
        load_metric("bleu")


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning
# ----------------------------------------------------------------------------------------------------------------


def test_layer_decay_groups_scale_each_layer_as_in_mae(tiny_mae):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tiny_mae, num_labels=3)
    depth, decay = 3, 0.5
    assert layer_id("vit.patch_embed.proj.weight", depth) == 0 and layer_id("vit.cls_token", depth) == 0
    assert layer_id("vit.blocks.2.mlp.fc1.weight", depth) == 3 and layer_id("classifier.weight", depth) == 4
    groups = layer_decay_parameter_groups(model, weight_decay=0.05, layer_decay=decay)
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)  # each exactly once
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert scale["vit.patch_embed.proj.weight"] == decay**4
    assert scale["vit.blocks.0.attn.qkv.weight"] == decay**3
    assert scale["vit.blocks.2.attn.qkv.weight"] == decay**1
    assert scale["classifier.weight"] == scale["vit.norm.weight"] == 1.0
    assert wd["vit.blocks.0.attn.qkv.weight"] == 0.05
    assert wd["vit.blocks.0.attn.qkv.bias"] == wd["vit.cls_token"] == wd["vit.norm.weight"] == 0.0
    with pytest.raises(ValueError, match="layer_decay=1.5"):
        layer_decay_parameter_groups(model, 0.05, 1.5)


def test_finetuning_draws_new_crops_every_epoch_and_tests_on_fixed_images():
    """A crop seeded per image would be the same in every epoch: 200 images, 200 crops learned by heart (the
    benchmark's first fine-tuning run did exactly that, 100% on its training crops, 16% on the test images)."""
    from hf_mim.data.labelled import LabelledSplits
    from hf_mim.evaluation.finetune import finetune_transforms

    data = _digits_like()
    splits = LabelledSplits(data, data, "image", "label", ["c0", "c1", "c2"], "", None, "test")
    train, test = finetune_transforms(MAEConfig(**TINY), splits, (0.2, 1.0), seed=0)
    augmented, resized = prepare_labelled(data, train), prepare_labelled(data, test)
    torch.manual_seed(1)
    first, second = augmented[0]["pixel_values"], augmented[0]["pixel_values"]
    assert not torch.equal(first, second)  # each reading (each epoch) draws a new crop
    torch.manual_seed(1)
    assert torch.equal(augmented[0]["pixel_values"], first)  # reproducible from the seed Trainer sets
    assert torch.equal(resized[0]["pixel_values"], resized[0]["pixel_values"])
    with pytest.raises(ValueError, match=r"crop_scale=\(0.5, 0.2\) is invalid"):
        finetune_transforms(MAEConfig(**TINY), splits, (0.5, 0.2))


def test_trainer_applies_the_layer_scales_along_its_schedule(tiny_mae, tmp_path):
    from transformers import AutoModelForImageClassification, TrainingArguments

    model = AutoModelForImageClassification.from_pretrained(tiny_mae, num_labels=3)
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-3, lr_scheduler_type="cosine", report_to="none", use_cpu=True
    )
    trainer = LayerDecayTrainer(model=model, args=args, layer_decay=0.5)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    for _ in range(3):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    lrs = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    head = lrs[id(model.classifier.weight)]
    assert 0 < head < 1e-3  # on the cosine
    assert lrs[id(model.vit.blocks[0].attn.qkv.weight)] == pytest.approx(head * 0.5**3, rel=1e-9)
    assert lrs[id(model.vit.patch_embed.proj.weight)] == pytest.approx(head * 0.5**4, rel=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------


def _digits_folder(tmp_path, per_class=8, classes=3):
    folder = tmp_path / "data"
    _digits_like(per_class, classes).save_to_disk(str(folder))
    return str(folder)


def test_cli_runs_knn_linear_and_cka_and_records_results_for_the_card(tiny_mae, tmp_path):
    data = _digits_folder(tmp_path, per_class=10)
    out = tmp_path / "out"
    args = ["--model", str(tiny_mae), "--dataset", data, "--protocol", "knn", "linear", "cka", "--random-init"]
    args += ["--knn-k", "5", "--linear-epochs", "5", "--mask-ratios", "0.25", "0.75", "--output-dir", str(out)]
    run = cli("evaluate", args)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| knn" in run.stdout and "| linear" in run.stdout and "random-init" in run.stdout
    summary = json.loads((out / "evaluation.json").read_text())
    rows = summary["results"]
    assert {(r["protocol"], r["model"].startswith("random-init")) for r in rows} == {
        ("knn", False),
        ("knn", True),
        ("linear", False),
        ("linear", True),
    }
    assert all(0.0 <= r["value"] <= 1.0 and r["split"] == "test" for r in rows)
    tables = summary["cka"]["tables"]
    assert len(tables) == 2 and all(len(t) == 2 and len(t[0]) == 3 for t in tables.values())
    assert (out / "cka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the model folder gets its own results (not the baseline's) and the plot; the card shows them
    recorded = json.loads((tiny_mae / "eval_results.json").read_text())["results"]
    assert sorted(r["protocol"] for r in recorded) == ["knn", "linear"]
    assert (tiny_mae / "occlusion_cka.png").exists()
    card = model_card_for_folder(tiny_mae)
    validate_model_card(card)
    assert card.data.eval_results and {r.metric_name for r in card.data.eval_results} == {
        "knn accuracy",
        "linear accuracy",
    }
    assert "occlusion_cka.png" in str(card)
    # a small-image model is probed on the mean of its patches (the small recipe), unless --pooling says otherwise
    assert "| knn (k=5, T=0.07, mean) | data | test | accuracy |" in str(card)
    # a second run replaces the same results, it does not pile them up
    assert cli("evaluate", args[:6] + ["knn", "--knn-k", "5", "--output-dir", str(out)]).returncode == 0
    again = json.loads((tiny_mae / "eval_results.json").read_text())["results"]
    assert sorted(r["protocol"] for r in again) == ["knn", "linear"]


def test_two_processes_give_the_numbers_of_one(tiny_mae, tmp_path):
    """gather_for_metrics: 2 processes, a test set that does not split evenly into their batches (11 images,
    batches of 4), the same k-NN accuracy and CKA tables as one process, bit for bit."""
    data = _digits_folder(tmp_path, per_class=9)  # 27 images: 16 train, 11 test after the 40% hold-out
    common = ["--model", str(tiny_mae), "--dataset", data, "--protocol", "knn", "cka", "--test-size", "0.4"]
    common += ["--knn-k", "3", "--batch-size", "4", "--mask-ratios", "0.5", "--no-save-to-model"]
    one = cli("evaluate", common + ["--output-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = two_processes("evaluate", common + ["--output-dir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "evaluation.json").read_text())
    b = json.loads((tmp_path / "two" / "evaluation.json").read_text())
    assert "2 process(es)" in b["hardware"]
    assert [r["value"] for r in a["results"]] == [r["value"] for r in b["results"]]
    torch.testing.assert_close(
        torch.tensor(list(a["cka"]["tables"].values())), torch.tensor(list(b["cka"]["tables"].values()))
    )


def test_cli_finetunes_with_trainer_in_the_low_label_setting(tiny_mae, tmp_path):
    data = _digits_folder(tmp_path, per_class=8)
    out = tmp_path / "out"
    args = ["--model", str(tiny_mae), "--dataset", data, "--protocol", "finetune", "--labels-per-class", "3"]
    args += ["--finetune-epochs", "2", "--finetune-batch-size", "4", "--layer-decay", "0.75"]
    args += ["--output-dir", str(out), "--no-save-to-model"]
    run = cli("evaluate", args)
    assert run.returncode == 0, run.stderr[-3000:]
    (row,) = json.loads((out / "evaluation.json").read_text())["results"]
    assert (
        row["protocol"] == "finetune" and "3 labels/class" in row["settings"] and "layer decay 0.75" in row["settings"]
    )
    assert 0.0 <= row["value"] <= 1.0
    assert (
        not (tiny_mae / "eval_results.json").exists() or "finetune" not in (tiny_mae / "eval_results.json").read_text()
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--labels-per-class", "0"], "--labels-per-class 0 is invalid"),
        (["--mask-ratios", "1.0"], "--mask-ratios [1.0] is invalid"),
        (["--layer-decay", "0"], "--layer-decay 0.0 is invalid"),
        (["--block", "9"], "block=9 is invalid: allowed 1 to 3"),
        (["--label-column", "nope"], "--label-column 'nope' is not a column"),
    ],
)
def test_cli_errors_are_one_line(tiny_mae, tmp_path, flags, message):
    data = _digits_folder(tmp_path, per_class=4)
    run = cli("evaluate", ["--model", str(tiny_mae), "--dataset", data, *flags])
    assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def test_the_downstream_recipe_follows_the_image_size_and_the_labelled_set():
    """Issue 28: ImageNet's fine-tuning recipe (crop 8-100%, 50 epochs) on 28 px images underfits; a model of small
    images gets the small-image recipe, whose length follows the number of labelled images."""
    from hf_mim.evaluation.recipes import RECIPES, choose_recipe

    small, why = choose_recipe("auto", 28)
    assert small.name == "small" and "28 px" in why and small.crop_scale == (0.8, 1.0)
    assert choose_recipe("auto", (224, 224))[0].name == "paper" and choose_recipe("paper", 28)[0].name == "paper"
    assert choose_recipe("auto", 64)[0].name == "small" and choose_recipe("auto", 65)[0].name == "paper"
    # ~target_steps optimizer steps, within [min_epochs, max_epochs]
    steps = small.target_steps
    assert [small.epochs_for(n, 64) for n in (600, 6000, 60000)] == [
        min(small.max_epochs, -(-steps // 10)),
        -(-steps // 94),
        small.min_epochs,
    ]
    assert small.epochs_for(6000, 64) == 20  # what the benchmark measured at 10% of Fashion-MNIST's labels
    assert small.epochs_for(60000, 64) == 20  # and with all of them: 5 epochs underfit (benchmarks/RESULTS.md)
    assert small.epochs_for(6000, 32, processes=2) == small.epochs_for(6000, 64)  # the global batch counts
    assert RECIPES["paper"].epochs_for(600, 64) == 50
    with pytest.raises(ValueError, match="--recipe 'big' is invalid"):
        choose_recipe("big", 28)


def test_unset_finetuning_settings_come_from_the_recipe_and_given_ones_win(tiny_mae):
    from hf_mim.evaluation.recipes import RECIPES
    from hf_mim.evaluation.runner import EvaluateArguments, finetune_settings

    args = EvaluateArguments(model=[str(tiny_mae)], finetune_lr=5e-3)
    tuned, described = finetune_settings(args, str(tiny_mae), 600)
    small = RECIPES["small"]
    assert tuned.crop_scale == list(small.crop_scale) and tuned.finetune_epochs == small.epochs_for(600, 64)
    assert tuned.finetune_lr == 5e-3 and "given: finetune_lr" in described and described.startswith("small")
    assert tuned.recipe == args.recipe == "auto"  # the request is kept, the choice is described
    assert args.crop_scale is None and args.finetune_epochs is None  # the caller's arguments are not changed
    paper, _ = finetune_settings(EvaluateArguments(model=[str(tiny_mae)], recipe="paper"), str(tiny_mae), 600)
    assert (paper.crop_scale, paper.finetune_epochs, paper.finetune_lr) == ([0.08, 1.0], 50, 1e-3)
