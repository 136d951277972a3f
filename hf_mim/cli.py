"""`hf-mim` (also `python -m hf_mim`): command-line entry points."""

from __future__ import annotations

import argparse
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
        help="convert a transformers ViTMAE folder or a facebookresearch/mae .pth into an hf_mim checkpoint",
        description="Convert a transformers ViTMAEForPreTraining folder, or an official facebookresearch/mae state "
        "dict (.pth or .safetensors; encoder-only ones get a fresh decoder), into an hf_mim MAE checkpoint folder.",
    )
    convert.add_argument("src", help="transformers checkpoint folder, or official .pth / .safetensors file")
    convert.add_argument("dst", help="output folder (safetensors, config.json, preprocessor_config.json)")
    convert.add_argument(
        "--num-attention-heads", type=int, help="encoder heads, when the weights cannot tell (official files)"
    )
    convert.add_argument("--decoder-num-attention-heads", type=int, help="decoder heads (official files; default 16)")
    convert.add_argument("--norm-pix-loss", type=_bool, help="true/false: the target the checkpoint was trained with")
    convert.add_argument("--mask-ratio", type=float, help="mask ratio to record in the config")

    demo = sub.add_parser("demo", help="train a tiny MAE on generated images for a minute: checks an install")
    demo.add_argument(
        "--output-dir", default="outputs/mae-demo", help="where the checkpoint goes (default: %(default)s)"
    )
    demo.add_argument("--steps", type=int, default=60, help="optimizer steps (default: %(default)s)")
    demo.add_argument("--batch-size", type=int, default=32, help="images per step (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed for data, masks and weights (default: %(default)s)")
    return parser


def _version() -> str:
    from . import __version__

    return f"hf-mim {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "convert":
        from .convert import ConversionError, convert_mae_checkpoint

        overrides = {
            field: value
            for field, value in (
                ("num_attention_heads", args.num_attention_heads),
                ("decoder_num_attention_heads", args.decoder_num_attention_heads),
                ("norm_pix_loss", args.norm_pix_loss),
                ("mask_ratio", args.mask_ratio),
            )
            if value is not None
        }
        try:
            model = convert_mae_checkpoint(args.src, args.dst, **overrides)
        except (ConversionError, FileNotFoundError, ValueError) as err:
            print(f"hf-mim convert: error: {err}", file=sys.stderr)
            return 2
        print(f"converted {args.src} -> {args.dst} ({model.num_parameters():,} parameters)")
        return 0
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.output_dir, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
