"""What a change of code must leave as it was, fingerprinted: run it on two checkouts and compare (a refactor must
give the same bytes and floats, bit for bit).

    PYTHONPATH=/path/to/before python benchmarks/fingerprint.py --out before.json
    PYTHONPATH=. python benchmarks/fingerprint.py --out after.json --compare before.json

- training: every method's `hf-mim pretrain` on the built-in digits with its default recipe, `--steps` optimizer
  steps logged one by one: the losses, the logged metrics, the SHA-256 of the final weights and of the pictures the
  run drew, and its reconstruction error on the held-out digits;
- cards and pictures: for each method's tiny config (the before run's, read from its file, so a later change of
  `tiny_config` does not count), a model built from seed 0: the SHA-256 of its generated card's text, of each picture
  its method draws, and its reconstruction error where it has one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def training(method: str, steps: int, folder: Path) -> dict:
    from safetensors.torch import load_file

    from hf_mim.training.arguments import PretrainArguments
    from hf_mim.training.trainer import pretrain

    out = folder / method
    summary = pretrain(PretrainArguments(method=method, max_steps=steps, logging_steps=1, output_dir=str(out)))
    weights = load_file(str(out / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].float().numpy().tobytes())
    return {
        "losses": [repr(loss) for _, loss in summary["loss_history"]],
        "metrics": json.loads(json.dumps(summary["metrics_history"], default=repr)),
        "weights_sha256": digest.hexdigest(),
        # what the run drew of its held-out images: its pictures and reconstruction error
        "pictures": {path.name: _sha(path.read_bytes()) for path in sorted(out.glob("*.png"))},
        "reconstruction": json.loads(json.dumps(summary.get("reconstruction"), default=repr)),
    }


def variants(name: str, tiny: dict) -> dict[str, dict]:
    """The configs a method's card and pictures are fingerprinted on: its tiny config and the variants that change
    what they show."""
    found = {"tiny": dict(tiny)}
    if name == "mae":
        found["learned masks"] = {**tiny, "mask_strategy": "learned"}
        found["raw pixels"] = {**tiny, "norm_pix_loss": False}
    if name == "adios":
        found["single mask"] = {**tiny, "single_mask": True}
    return found


def card_and_pictures(spec, fields: dict, folder: Path) -> dict:
    import torch

    from hf_mim.model_cards.card import build_model_card
    from hf_mim.model_cards.pictures import reconstruction_error, save_method_pictures

    torch.manual_seed(0)
    model = spec.pretraining_class(spec.config_class(**fields))
    config = model.config
    config.architectures = [type(model).__name__]
    card = str(build_model_card(config, total_parameters=1000, encoder_parameters=500))
    images = torch.randn(3, config.num_channels, 32, 32, generator=torch.Generator().manual_seed(1))
    folder.mkdir(parents=True)
    files = save_method_pictures(model, images, folder, seed=3, scale=2)
    found = {"card_sha256": _sha(card.encode()), "pictures": {f: _sha((folder / f).read_bytes()) for f in files}}
    if any(picture.kind == "reconstruction" for picture in spec.pictures(config)):
        found["reconstruction_error"] = repr(reconstruction_error(model, images, seed=5)["ratio"])
    found["rng_after"] = repr(float(torch.rand(1)))  # drawing must leave the caller's RNG as it found it
    return found


def main(argv=None) -> int:
    from hf_mim.modeling.auto import METHOD_SPECS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHOD_SPECS))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", required=True, help="where to write the fingerprints (JSON)")
    parser.add_argument("--compare", help="the file of a run on other code: its configs are used, and each differing "
                        "entry is named (exit status 1 if any)")  # fmt: skip
    args = parser.parse_args(argv)
    before = json.loads(Path(args.compare).read_text()) if args.compare else {}
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.methods:
            spec = METHOD_SPECS[name]
            tiny = before.get(name, {}).get("tiny_config", spec.tiny_config)
            results[name] = {
                "tiny_config": tiny,
                "training": training(name, args.steps, Path(folder, "runs")),
                "cards_and_pictures": {
                    label: card_and_pictures(spec, fields, Path(folder, "pictures", name, label))
                    for label, fields in variants(name, tiny).items()
                },
            }
    Path(args.out).write_text(json.dumps(results, indent=1))
    if not args.compare:
        return 0
    differ = []
    for name, now in results.items():
        then = before.get(name, {})
        parts = {"training": (now["training"], then.get("training"))}
        for label, value in now["cards_and_pictures"].items():
            parts[f"card and pictures, {label}"] = (value, then.get("cards_and_pictures", {}).get(label))
        for part, (value, old) in parts.items():
            differ += [] if value == old else [f"{name}: {part}"]
            print(f"{name:17s} {part:36s} {'identical' if value == old else 'DIFFERS'}")
        losses = now["training"]["losses"]
        print(f"{name:17s} {f'last of {len(losses)} losses':36s} {losses[-1]}")
    print("differs:", differ or "nothing")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
