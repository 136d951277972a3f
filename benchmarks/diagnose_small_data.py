"""Issue 16's diagnosis of MAE on small data: one experiment per cause, each measured before the recipe changed.

Every experiment pretrains MAE on the training split of the built-in digits (1,437 images; the 360 test images are
never seen) with the mini encoder (6 blocks of width 128, 4 heads) at 32 px with 4 px patches, batch 64, then
reports on the test split:
- the reconstruction error: masked-pixel MSE over the pixel variance (normalised pixel space; normalised-pixel
  targets de-normalised with the visible patches' average mean and variance, as the pictures are);
- k-NN (k=20) and a linear probe on frozen features, CLS token and mean-pooled patch tokens;
- fine-tuning with 20 labels per class (100 epochs, batch 50, base lr 2.5e-3 per 256 images, drop path 0.1, crops
  of scale 0.35-1, CLS pooling), 3 seeds, mean and standard deviation.

    python benchmarks/diagnose_small_data.py --list
    python benchmarks/diagnose_small_data.py e9_pix100_dec1 random   # one or more experiments, by name
    python benchmarks/diagnose_small_data.py c5_lr1e-3_r05           # a 150-step loss probe of C-MAE or ADIOS
    python benchmarks/diagnose_small_data.py all --workdir /tmp/diag

Results are appended, one JSON line per experiment, to WORKDIR/results.jsonl. benchmarks/RESULTS.md ("MAE on small
data") holds the figures this produced on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENCODER = dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512)
DECODER = dict(
    decoder_hidden_size=128, decoder_num_hidden_layers=2, decoder_num_attention_heads=4, decoder_intermediate_size=512
)
PRETRAIN = dict(method="mae", image_size=32, patch_size=4, base_lr=1e-2, epochs=30, num_workers=0)
FINETUNE = dict(
    labels_per_class=20, epochs=100, batch_size=50, base_lr=2.5e-3, drop_path_rate=0.1, crop_scale=(0.35, 1)
)

# name: config fields over ENCODER + DECODER, pretraining arguments over PRETRAIN, fine-tuning options over FINETUNE;
# "random": the fine-tuning of an untrained copy of that experiment's architecture; "reuse": another experiment's
# pretrained model, fine-tuned differently.
EXPERIMENTS = {
    "e1_normpix": dict(cfg=dict(norm_pix_loss=True)),
    "e1_pix": dict(cfg=dict(norm_pix_loss=False)),
    "random": dict(random="e1_normpix"),
    "e2_pix100": dict(cfg=dict(norm_pix_loss=False), kw=dict(epochs=100)),
    "e3_normpix100": dict(cfg=dict(norm_pix_loss=True), kw=dict(epochs=100)),
    "e4_p8_np": dict(
        cfg=dict(norm_pix_loss=True, hidden_size=192, num_attention_heads=3, intermediate_size=768),
        kw=dict(epochs=100, patch_size=8),
    ),
    "e5_p8_pix": dict(
        cfg=dict(norm_pix_loss=False, hidden_size=192, num_attention_heads=3, intermediate_size=768),
        kw=dict(epochs=100, patch_size=8),
    ),
    "e6_p8_random": dict(random="e4_p8_np"),
    "e7_lr_paper": dict(cfg=dict(norm_pix_loss=True), kw=dict(base_lr=1.5e-4)),
    "e8_lr1e-3": dict(cfg=dict(norm_pix_loss=True), kw=dict(base_lr=1e-3)),
    "e9_pix100_dec1": dict(cfg=dict(norm_pix_loss=False, decoder_num_hidden_layers=1), kw=dict(epochs=100)),
    "e10_pix60": dict(cfg=dict(norm_pix_loss=False), kw=dict(epochs=60)),
    "e11_pix100_wd0": dict(cfg=dict(norm_pix_loss=False), kw=dict(epochs=100, weight_decay=0.0)),
    "e12_ft_llrd_mean": dict(reuse="e2_pix100", ft=dict(layer_decay=0.75, pooling="mean")),
    "e13_random_llrd_mean": dict(random="e2_pix100", ft=dict(layer_decay=0.75, pooling="mean")),
    "e14_random_mean": dict(random="e2_pix100", ft=dict(pooling="mean")),
    "e15_ft_mean": dict(reuse="e2_pix100", ft=dict(pooling="mean")),
    "e16_pix100_warm20": dict(cfg=dict(norm_pix_loss=False), kw=dict(epochs=100, warmup_steps=440)),
    "e17_pix100_lr2x": dict(cfg=dict(norm_pix_loss=False), kw=dict(epochs=100, base_lr=2e-2)),
    "e18_pix100_lr04x": dict(cfg=dict(norm_pix_loss=False), kw=dict(epochs=100, base_lr=4e-3)),
}
# Loss probes of the contrastive methods: 150 steps, the loss every 25 (C-MAE's chance level is ln 64 = 4.159).
PROBE = dict(image_size=32, patch_size=4, base_lr=1e-2, max_steps=150, num_workers=0, logging_steps=25)
CMAE = dict(projection_hidden_size=512, projection_size=128)
ADIOS = dict(projection_hidden_size=512, projection_size=128, prediction_hidden_size=256, single_mask=True)
PROBES = {
    "c0_base": dict(method="cmae", cfg=CMAE),
    "c1_m099": dict(method="cmae", cfg=dict(CMAE, ema_momentum=0.99)),
    "c2_lr1e-3": dict(method="cmae", cfg=CMAE, kw=dict(base_lr=1e-3)),
    "c3_ratio05": dict(method="cmae", cfg=dict(CMAE, mask_ratio=0.5)),
    "c5_lr1e-3_r05": dict(method="cmae", cfg=dict(CMAE, mask_ratio=0.5), kw=dict(base_lr=1e-3)),
    "a0_base": dict(method="adios", cfg=ADIOS),
    "a1_lr1e-3": dict(method="adios", cfg=ADIOS, kw=dict(base_lr=1e-3)),
}


class Experiments:
    def __init__(self, workdir: Path):
        from hf_mim.data.labelled import load_labelled_splits

        self.work = workdir
        self.splits = load_labelled_splits(None, seed=0)  # the built-in digits' fixed train / test split
        self.train_folder = workdir / "digits-train"
        if not self.train_folder.exists():
            self.splits.train.save_to_disk(str(self.train_folder))

    def tensors(self, split: str, config):
        import torch

        from hf_mim.data.images import ImageAugmentation, open_image

        transform = ImageAugmentation.from_config(config)
        data = getattr(self.splits, split)
        images = torch.stack([transform(open_image(v), None) for v in data[self.splits.image_column]])
        return images, torch.tensor(data[self.splits.label_column])

    def pretrain(self, out: Path, cfg: dict, kw: dict) -> dict:
        from hf_mim.training.trainer import PretrainArguments, pretrain

        args = dict(dataset=str(self.train_folder), output_dir=str(out), model_size="tiny", logging_steps=10)
        return pretrain(PretrainArguments(**args, **kw, config_overrides=cfg))

    def reconstruction(self, model_dir: str) -> dict:
        from transformers import AutoModelForPreTraining

        from hf_mim.model_cards.pictures import reconstruction_error

        model = AutoModelForPreTraining.from_pretrained(model_dir).eval()
        return reconstruction_error(model, self.tensors("test", model.config)[0])

    def frozen(self, model_dir: str, random_init: bool = False, seed: int = 0) -> dict:
        import torch

        from hf_mim.evaluation.protocols import encoder_features, knn_scores, linear_probe, load_encoder

        model = load_encoder(model_dir, random_init=random_init, seed=seed)
        (x_train, y_train), (x_test, y_test) = self.tensors("train", model.config), self.tensors("test", model.config)
        scores = {}
        for pooling in ("cls", "mean"):
            with torch.no_grad():
                f_train, f_test = (
                    torch.cat([encoder_features(model, x[i : i + 256], None, pooling) for i in range(0, len(x), 256)])
                    for x in (x_train, x_test)
                )
            knn = knn_scores(f_train, y_train, f_test, 10)
            scores[f"knn_{pooling}"] = (knn.argmax(-1) == y_test).float().mean().item()
            _, linear = linear_probe(f_train, y_train, f_test, 10, epochs=100, seed=seed)
            scores[f"lin_{pooling}"] = (linear.argmax(-1) == y_test).float().mean().item()
        return scores

    def finetune(self, model_dir: str, random_init: bool = False, seeds=(0, 1, 2), **options) -> dict:
        import statistics

        from hf_mim.evaluation.finetune import finetune

        logging.getLogger("transformers").setLevel(logging.ERROR)
        accuracies = []
        for seed in seeds:
            metrics = finetune(
                model_dir,
                self.splits,
                str(self.work / "finetune"),
                random_init=random_init,
                seed=seed,
                **{**FINETUNE, **options},
            )
            accuracies.append(metrics["eval_accuracy"])
        return dict(accs=accuracies, mean=statistics.fmean(accuracies), std=statistics.stdev(accuracies))

    def probe(self, name: str) -> dict:
        spec = PROBES[name]
        kw = {**PROBE, "method": spec["method"], **spec.get("kw", {})}
        summary = self.pretrain(self.work / name, {**ENCODER, **spec["cfg"]}, kw)
        return dict(loss_every_25_steps=[round(loss, 3) for _, loss in summary["loss_history"]])

    def run(self, name: str) -> dict:
        if name in PROBES:
            return self.probe(name)
        spec = EXPERIMENTS[name]
        ft = spec.get("ft", {})
        if "random" in spec:
            source = str(self.ensure(spec["random"]))
            return dict(frozen=self.frozen(source, random_init=True), ft=self.finetune(source, True, **ft), ftkw=ft)
        out = self.ensure(spec.get("reuse", name))
        summary = json.loads((out / "training_summary.json").read_text())
        return dict(
            wall=summary["wall_time_seconds"],
            steps=summary["steps"],
            ips=summary["images_per_second"],
            final_loss=summary["final_loss"],
            recon=self.reconstruction(str(out)),
            frozen=self.frozen(str(out)),
            ft=self.finetune(str(out), **ft),
            ftkw=ft,
        )

    def ensure(self, name: str) -> Path:
        """The pretrained model of experiment `name`, trained now if its folder has none."""
        out = self.work / name
        if not (out / "training_summary.json").exists():
            spec = EXPERIMENTS[name]
            self.pretrain(out, {**ENCODER, **DECODER, **spec.get("cfg", {})}, {**PRETRAIN, **spec.get("kw", {})})
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="experiments to run, or `all`")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--workdir", default="outputs/diagnose_small_data")
    args = parser.parse_args()
    if args.list or not args.names:
        for name, spec in {**EXPERIMENTS, **PROBES}.items():
            print(name, json.dumps(spec))
        return
    names = [*EXPERIMENTS, *PROBES] if args.names == ["all"] else args.names
    unknown = sorted(set(names) - set(EXPERIMENTS) - set(PROBES))
    if unknown:
        sys.exit(f"unknown experiments {unknown}; --list shows them")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    experiments = Experiments(work)
    for name in names:
        began = time.perf_counter()
        result = experiments.run(name)
        result["seconds"] = round(time.perf_counter() - began)
        with open(work / "results.jsonl", "a") as f:
            f.write(json.dumps(dict(name=name, **result)) + "\n")
        print(name, json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
