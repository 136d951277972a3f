"""Frozen-feature protocols: loading an encoder, extracting features, k-NN (DINO's) and the linear probe (MAE's).

Features are extracted under Accelerate: each process encodes its shard of the data and `gather_for_metrics`
brings every feature to every process in dataset order (without the duplicates that pad the last batch), so the
k-NN and the probe see the same matrices on every process and compute the same numbers.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from .. import modeling  # noqa: F401  (registers hf_mim's classes with the Auto classes)
from ..loading import load_checked
from ..modeling.backbone import MIMConfig, pool
from ..training.optim import cosine_with_warmup

METRIC_MODULES = Path(__file__).with_name("metric_modules")
POOLINGS = ("cls", "mean")
#: DINO's k-NN: neighbours and vote temperature (`hf-mim evaluate`'s defaults, and the `--eval-dataset` probe's).
KNN_K, KNN_TEMPERATURE = 20, 0.07


def load_metric(name: str = "accuracy"):
    """An `evaluate` metric shipped with hf_mim, loaded by path: `evaluate.load("accuracy")` would fetch the
    script from the Hub, which offline machines cannot reach. The copy is the `evaluate` library's own metric."""
    import evaluate

    path = METRIC_MODULES / name
    if not path.is_dir():
        available = sorted(p.name for p in METRIC_MODULES.iterdir() if p.is_dir())
        raise ValueError(f"metric {name!r} is not shipped with hf_mim; available: {available}")
    return evaluate.load(str(path))


def load_encoder(name_or_path: str | os.PathLike, random_init: bool = False, seed: int = 0):
    """The encoder of an hf_mim checkpoint (`AutoModel`: nothing masked, deterministic in eval mode), in eval mode.

    With `random_init`, the same architecture freshly initialised from `seed`: the baseline every protocol
    compares with. Checkpoints of other libraries are refused: transformers' ViTMAEModel, for one, masks 75% of
    the patches even at evaluation (transformers #20328); convert them with `hf-mim convert` first."""
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
    if not isinstance(config, MIMConfig):
        hint = " (convert it with `hf-mim convert`)" if config.model_type in ("vit_mae", "vit") else ""
        raise ValueError(
            f"--model {name_or_path} has model_type {config.model_type!r}; allowed: an hf_mim ViT checkpoint "
            f"(model_type hf_mim_*, not the visual tokenizer){hint}"
        )
    if random_init:
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    else:
        model = load_checked(AutoModel, name_or_path)
    return model.eval()


def check_block(config: MIMConfig, block: int | None) -> None:
    depth = config.num_hidden_layers
    if block is not None and not (isinstance(block, int) and 1 <= block <= depth):
        raise ValueError(
            f"block={block!r} is invalid: allowed 1 to {depth} (the encoder's blocks), or None for the last"
        )


def encoder_features(model, pixel_values: torch.Tensor, block: int | None = None, pooling: str = "cls") -> torch.Tensor:
    """(B, D) features of an `hf_mim` encoder (`MIMModel`): the output of `block` (1-based; None: the last), put
    through the encoder's final LayerNorm as every block's output is in DINO's `get_intermediate_layers`, then
    pooled: the CLS token or the mean of the patch tokens."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is invalid: allowed {POOLINGS}")
    check_block(model.config, block)
    if block is None or block == model.config.num_hidden_layers:
        hidden = model.vit(pixel_values).last_hidden_state
    else:
        hidden_states = model.vit(pixel_values, output_hidden_states=True).hidden_states
        hidden = model.vit.norm(hidden_states[block])
    return pool(hidden, pooling)


@torch.no_grad()
def extract_features(model, loader, accelerator, block: int | None = None, pooling: str = "cls"):
    """Features and labels of every image the (prepared) loader holds, gathered from all processes in dataset
    order: (features (N, D) float32, labels (N,), skipped count), on the CPU. Undecodable images are dropped."""
    features, labels, skipped = [], [], 0
    for batch in loader:
        with accelerator.autocast():
            feats = encoder_features(model, batch["pixel_values"], block, pooling).float()
        feats, labs, valid = accelerator.gather_for_metrics((feats, batch["labels"], batch["valid"]))
        valid = valid.bool()
        skipped += int((~valid).sum())
        features.append(feats[valid].cpu())
        labels.append(labs[valid].cpu())
    return torch.cat(features), torch.cat(labels), skipped


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """DINO's weighted k-NN classifier: (N_test, num_classes) class scores.

    Features are L2-normalised; each test feature takes its `k` most cosine-similar training features, which vote
    for their labels with weight exp(similarity / temperature). Computed in chunks of test features, so memory
    stays at chunk_size x N_train."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(train_features):
        raise ValueError(f"k={k!r} is invalid: allowed 1 to the number of training images ({len(train_features)})")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is invalid: must be positive")
    train = nn.functional.normalize(train_features.double(), dim=1)
    test = nn.functional.normalize(test_features.double(), dim=1)
    scores = []
    for start in range(0, len(test), chunk_size):
        similarity = test[start : start + chunk_size] @ train.T  # (n, N_train)
        top_similarity, top_index = similarity.topk(k, dim=1)
        votes = torch.zeros(len(top_index), num_classes, dtype=torch.float64)
        votes.scatter_add_(1, train_labels[top_index], (top_similarity / temperature).exp())
        scores.append(votes)
    return torch.cat(scores).float()


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 256,
    base_lr: float = 0.1,
    weight_decay: float = 0.0,
    warmup_epochs: int = 10,
    seed: int = 0,
) -> tuple[nn.Module, torch.Tensor]:
    """MAE's linear probe on frozen features: a BatchNorm without affine parameters (it only standardises the
    features, so the probe stays linear), then a linear layer initialised at std 0.01. SGD with momentum 0.9,
    lr = base_lr * batch_size / 256 with a linear warm-up and cosine decay, per iteration.

    Deviations from MAE, both for speed: the features are computed once, from the resized images without
    augmentation, and the optimizer is SGD, not LARS (equivalent here: the probe has a single weight matrix).
    Returns the trained probe (eval mode) and the test logits (N_test, num_classes)."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs!r} and batch_size={batch_size!r} must be positive")
    generator = torch.Generator().manual_seed(seed)
    dim = train_features.shape[1]
    probe = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    with torch.no_grad():
        probe[1].weight.copy_(torch.nn.init.trunc_normal_(torch.empty(num_classes, dim), std=0.01, generator=generator))
        probe[1].bias.zero_()
    lr = base_lr * batch_size / 256
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_features) / batch_size)
    total, warmup = epochs * steps_per_epoch, min(warmup_epochs, epochs - 1) * steps_per_epoch
    scheduler = cosine_with_warmup(optimizer, warmup, total)  # pretraining's schedule, stepped per batch
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_features), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:  # a batch norm cannot standardise a single sample
                continue
            loss = nn.functional.cross_entropy(probe(train_features[index]), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    probe.eval()
    with torch.no_grad():
        return probe, probe(test_features)


__all__ = [
    "POOLINGS",
    "check_block",
    "encoder_features",
    "extract_features",
    "knn_scores",
    "linear_probe",
    "load_encoder",
    "load_metric",
]
