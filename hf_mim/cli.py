"""`hf-mim` (also `python -m hf_mim`): command-line entry points."""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-mim", description="Masked-image-modeling pretraining as Hugging Face models."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = sub.add_parser(
        "convert",
        help="convert a transformers ViTMAE / ViT folder or a facebookresearch/mae .pth into an hf_mim checkpoint",
        description="Convert a transformers ViTMAEForPreTraining folder or an official facebookresearch/mae state "
        "dict (.pth or .safetensors; encoder-only ones get a fresh decoder) into an hf_mim MAE checkpoint folder, "
        "or a transformers ViTForMaskedImageModeling folder into an hf_mim SimMIM one.",
    )
    convert.add_argument("src", help="transformers checkpoint folder, or official .pth / .safetensors file")
    convert.add_argument("dst", help="output folder (safetensors, config.json, preprocessor_config.json)")
    convert.add_argument(
        "--num-attention-heads", type=int, help="encoder heads, when the weights cannot tell (official files)"
    )
    convert.add_argument("--decoder-num-attention-heads", type=int, help="decoder heads (official files; default 16)")
    convert.add_argument("--norm-pix-loss", type=_bool, help="true/false: the target the checkpoint was trained with")
    convert.add_argument("--mask-ratio", type=float, help="mask ratio to record in the config")
    convert.add_argument("--mask-patch-size", type=int, help="SimMIM: mask patch size in pixels to record")

    _add_pretrain_parser(sub)
    push = sub.add_parser(
        "push",
        help="upload a saved model folder to the Hub with its generated model card",
        description="Upload OUTPUT_DIR (written by `hf-mim pretrain` or save_pretrained) to REPO_ID in one commit: "
        "safetensors weights, config.json with auto_map, preprocessor_config.json, the modeling code for "
        "trust_remote_code loading, the run records and pictures, and README.md (the model card, regenerated for "
        "REPO_ID unless you wrote your own, and validated before anything is sent). Checkpoints, optimizer states "
        "and pickle files are never uploaded.",
    )
    push.add_argument("output_dir", metavar="OUTPUT_DIR", help="the saved model folder")
    push.add_argument("repo_id", metavar="REPO_ID", help="'name' or 'namespace/name'")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.add_argument("--commit-message", help="commit message (default: 'Upload <class> with hf_mim')")
    push.add_argument("--license", help="Hub license id for the card (default: apache-2.0)")
    push.add_argument("--base-model", help="the Hub id these weights were fine-tuned from, for the card")
    push.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    return parser


def _add_pretrain_parser(sub) -> None:
    from .training.methods import ENCODER_PRESETS, TRAINING_METHODS

    p = sub.add_parser(
        "pretrain",
        help="pretrain a model (one process, or many under `accelerate launch`)",
        description="Pretrain with Accelerate: `hf-mim pretrain` on one device, `accelerate launch -m hf_mim "
        "pretrain ...` on several (DDP; FSDP and DeepSpeed through your accelerate config). With no --dataset, "
        "trains a ViT-Ti on the built-in digits dataset in a few minutes on a CPU.",
    )
    add = p.add_argument
    add(
        "--method",
        default="mae",
        choices=sorted(TRAINING_METHODS),
        help="mae, simmim, beit (give it --tokenizer), or visual-tokenizer (trains BEiT's tokenizer) "
        "(default: %(default)s)",
    )
    add(
        "--dataset",
        help="Hub dataset id, local image folder, folder written by save_to_disk, or 'digits' (built in, the default)",
    )
    add("--dataset-config", help="dataset configuration name (Hub datasets)")
    add("--split", default="train", help="split to train on (default: %(default)s)")
    add("--image-column", help="column holding the images (default: the first Image column, else 'image'/'img')")
    add(
        "--output-dir",
        default="outputs/pretrain",
        help="where checkpoints and the final model go (default: %(default)s)",
    )
    add("--max-steps", type=int, help="optimizer steps to train; overrides --epochs")
    add("--epochs", type=int, help="passes over the data (default: 8 on the built-in dataset, else 1)")
    add("--batch-size", type=int, default=64, help="images per device per micro-step (default: %(default)s)")
    add("--grad-accum", type=int, default=1, help="micro-steps per optimizer step (default: %(default)s)")
    add(
        "--base-lr",
        type=float,
        help="learning rate per 256 images: lr = base_lr * effective batch / 256, as in "
        "MAE (default: the method's paper recipe, 1.5e-4 for MAE, 1e-4 SimMIM, 1.875e-4 BEiT, 1e-3 visual-tokenizer; "
        "1e-2 on the built-in dataset)",
    )
    add("--lr", type=float, help="absolute learning rate; overrides --base-lr")
    add("--weight-decay", type=float, default=0.05, help="AdamW weight decay on weight matrices (default: %(default)s)")
    add("--warmup-steps", type=int, help="linear warm-up steps before the cosine decay (default: 5%% of the steps)")
    add("--image-size", type=int, help="input resolution (default: 224; 32 on the built-in dataset)")
    add("--patch-size", type=int, help="patch size (default: 16; 4 on the built-in dataset)")
    add(
        "--model-size",
        choices=sorted(ENCODER_PRESETS),
        help="ViT-Ti/S/B/L encoder with the paper's heads "
        "(default: base; tiny on the built-in dataset, MAE with a 2-block, 256-wide decoder); "
        "not used by visual-tokenizer",
    )
    add(
        "--tokenizer",
        metavar="PATH_OR_REPO",
        help="--method beit: a trained visual tokenizer (a folder written by --method visual-tokenizer, or a Hub id); "
        "without it BEiT uses a random frozen tokenizer, for smoke tests only",
    )
    add("--config", help='JSON file of config field overrides, applied last (e.g. {"mask_ratio": 0.6})')
    add(
        "--mixed-precision",
        default="no",
        choices=["no", "fp16", "bf16"],
        help="autocast precision (default: %(default)s)",
    )
    add("--gradient-checkpointing", action="store_true", help="recompute activations in backward to save memory")
    add("--compile", action="store_true", help="torch.compile the model")
    add(
        "--seed",
        type=int,
        default=0,
        help="seed for weights, data order, augmentation and masks (default: %(default)s)",
    )
    add("--checkpointing-steps", type=int, help="write OUTPUT_DIR/checkpoints/step-N every N steps")
    add("--checkpoints-total-limit", type=int, help="keep only the newest N checkpoints (default: keep all)")
    add("--resume-from-checkpoint", help="a checkpoint folder, or 'latest' (the newest complete one in OUTPUT_DIR)")
    add("--push-to-hub", metavar="REPO_ID", help="push the final model to this Hub repository")
    add("--report-to", default="none", choices=["none", "tensorboard", "wandb"], help="tracker (default: %(default)s)")
    add("--num-workers", type=int, default=2, help="DataLoader worker processes per device (default: %(default)s)")
    add("--logging-steps", type=int, default=10, help="log loss, lr and images/s every N steps (default: %(default)s)")
    add(
        "--max-non-finite-steps",
        type=int,
        default=5,
        help="stop after this many consecutive steps with a non-finite loss (default: %(default)s)",
    )


def _run_pretrain(args) -> int:
    from .training.data import DatasetError
    from .training.trainer import PretrainArguments, TrainingError, pretrain

    fields = {k: v for k, v in vars(args).items() if k in PretrainArguments.__dataclass_fields__}
    try:
        pretrain(PretrainArguments(**fields))
    except (DatasetError, TrainingError, ValueError, FileNotFoundError) as err:
        print(f"hf-mim pretrain: error: {err}", file=sys.stderr)
        return 2
    return 0


def _version() -> str:
    from . import __version__

    return f"hf-mim {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(signal, "SIGUSR1"):
        # `kill -USR1 PID` prints every thread's Python stack to stderr and the run goes on: what a stuck rank is
        # waiting for, without a debugger on the machine.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    if args.command == "push":
        from .hub import push_folder

        try:
            commit = push_folder(
                args.output_dir,
                args.repo_id,
                token=args.token,
                private=args.private or None,
                revision=args.revision,
                commit_message=args.commit_message,
                license=args.license,
                base_model=args.base_model,
            )
        except ValueError as err:
            print(f"hf-mim push: error: {err}", file=sys.stderr)
            return 2
        print(f"pushed {args.output_dir} to {commit.commit_url}")
        return 0
    if args.command == "convert":
        from .convert import ConversionError, convert_checkpoint

        overrides = {
            field: value
            for field, value in (
                ("num_attention_heads", args.num_attention_heads),
                ("decoder_num_attention_heads", args.decoder_num_attention_heads),
                ("norm_pix_loss", args.norm_pix_loss),
                ("mask_ratio", args.mask_ratio),
                ("mask_patch_size", args.mask_patch_size),
            )
            if value is not None
        }
        try:
            model = convert_checkpoint(args.src, args.dst, **overrides)
        except (ConversionError, FileNotFoundError, ValueError) as err:
            print(f"hf-mim convert: error: {err}", file=sys.stderr)
            return 2
        print(f"converted {args.src} -> {args.dst} ({model.num_parameters():,} parameters)")
        return 0
    if args.command == "pretrain":
        return _run_pretrain(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
