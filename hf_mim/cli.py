"""`hf-mim` (also `python -m hf_mim`): command-line entry points."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
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
    _add_evaluate_parser(sub)
    _add_visualize_parser(sub)
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
    from .training.methods import (
        ENCODER_PRESETS,
        RECIPES,
        SMALL_DATASET_IMAGES,
        SMALL_IMAGE_SIZE,
        TRAINING_METHODS,
    )

    p = sub.add_parser(
        "pretrain",
        help="pretrain a model (one process, or many under `accelerate launch`)",
        description="Pretrain with Accelerate: `hf-mim pretrain` on one device, `accelerate launch -m hf_mim "
        "pretrain ...` on several (DDP; FSDP and DeepSpeed through your accelerate config). With no --dataset, "
        "trains MAE on the training split of the built-in digits in a few minutes on a CPU.",
    )
    add = p.add_argument
    add(
        "--method",
        default="mae",
        choices=sorted(TRAINING_METHODS),
        help="mae, simmim, beit (give it --tokenizer), visual-tokenizer (trains BEiT's tokenizer), rmae, cmae or "
        "adios (default: %(default)s)",
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
        help="where checkpoints and the final model go: a new or empty folder, or one an hf-mim run wrote "
        "(default: %(default)s)",
    )
    add(
        "--overwrite-output-dir",
        action="store_true",
        help="write into an --output-dir that holds files no hf-mim run wrote (they may be overwritten)",
    )
    add("--max-steps", type=int, help="optimizer steps to train; overrides --epochs")
    add(
        "--epochs",
        type=int,
        help="passes over the data (default: the method's small-data recipe's; 1 with --recipe paper)",
    )
    add("--batch-size", type=int, default=64, help="images per device per micro-step (default: %(default)s)")
    add("--grad-accum", type=int, default=1, help="micro-steps per optimizer step (default: %(default)s)")
    add(
        "--base-lr",
        type=float,
        help="learning rate per 256 images: lr = base_lr * effective batch / 256, as in MAE (default: the recipe's; "
        "paper: 1.5e-4 MAE, R-MAE and C-MAE, 1e-4 SimMIM, 1.875e-4 BEiT, 1e-3 visual-tokenizer and ADIOS; small: 1e-2, "
        "1e-3 C-MAE and ADIOS)",
    )
    add("--lr", type=float, help="absolute learning rate; overrides --base-lr")
    add("--weight-decay", type=float, default=0.05, help="AdamW weight decay on weight matrices (default: %(default)s)")
    add("--warmup-steps", type=int, help="linear warm-up steps before the cosine decay (default: 5%% of the steps)")
    add("--image-size", type=int, help="input resolution (default: 224; 32 on the built-in dataset)")
    add(
        "--patch-size",
        type=int,
        help="patch size (default: 16 from 128 px up; below, the largest that cuts the image into at least 8x8 "
        "patches, 4 at 32 px)",
    )
    add(
        "--model-size",
        choices=sorted(ENCODER_PRESETS),
        help="ViT-Ti/S/B/L encoder, or mini (6 blocks, width 128: hf_mim's size for small data) "
        "(default: the recipe's: mini for small, base for paper); not used by visual-tokenizer",
    )
    add(
        "--recipe",
        default="auto",
        choices=["auto", *RECIPES],
        help="paper: each method's published ImageNet recipe (learning rate, decoder and heads); small: hf_mim's "
        "small-data recipe (the mini encoder, a higher base lr, lighter decoders and heads, more epochs). auto "
        f"(the default) takes small when the images are at most {SMALL_IMAGE_SIZE} px a side or the dataset has "
        f"fewer than {SMALL_DATASET_IMAGES:,} images, else paper; the data's source does not matter. Flags you give "
        "override the recipe",
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
    add(
        "--num-workers",
        type=int,
        help="DataLoader worker processes per device (default: 2; 0 for the built-in digits, whose decoding is "
        "cheaper than a worker's share of the CPU)",
    )
    add("--logging-steps", type=int, default=10, help="log loss, lr and images/s every N steps (default: %(default)s)")
    add(
        "--max-non-finite-steps",
        type=int,
        default=5,
        help="stop after this many consecutive steps with a non-finite loss (default: %(default)s)",
    )


def _add_evaluate_parser(sub) -> None:
    from .evaluation.cka import DEFAULT_RATIOS, OCCLUSIONS
    from .evaluation.runner import PROTOCOLS

    p = sub.add_parser(
        "evaluate",
        help="k-NN, linear probe, fine-tuning or occlusion-invariance CKA of pretrained encoders",
        description="Evaluate one or more hf_mim checkpoints on a labelled dataset (the built-in digits by default, "
        "held out 20% for test, stratified and seeded): k-NN (cosine, temperature-weighted votes, as in DINO), a "
        "linear probe (frozen features, parameter-free BatchNorm then a linear layer, as in MAE), fine-tuning "
        "(AutoModelForImageClassification with transformers.Trainer), or linear CKA between each block's features "
        "of full and occluded images. Runs on one process or many (`accelerate launch -m hf_mim evaluate ...`). "
        "Prints a table, writes OUTPUT_DIR/evaluation.json, and merges each local model's results into its "
        "eval_results.json (the model card's model-index when pushed).",
    )
    add = p.add_argument
    add("--model", nargs="+", required=True, metavar="PATH_OR_REPO", help="checkpoint folders or Hub ids")
    add("--protocol", nargs="+", default=["knn"], choices=PROTOCOLS, help="protocols to run (default: knn)")
    add(
        "--random-init",
        action="store_true",
        help="also evaluate the first model's architecture freshly initialised (the baseline)",
    )
    add("--dataset", help="Hub dataset id, image folder, saved dataset, or 'digits' (built in, the default)")
    add("--dataset-config", help="dataset configuration name (Hub datasets)")
    add("--train-split", default="train", help="split the k-NN bank, probe and fine-tuning learn from (default: train)")
    add(
        "--test-split", help="split to report on (default: test or validation, else a held-out part of the train split)"
    )
    add("--test-size", type=float, default=0.2, help="held-out fraction when there is no test split (default: 0.2)")
    add("--image-column", help="column holding the images (default: detected)")
    add("--label-column", help="column holding the labels (default: the first ClassLabel, else 'label' ...)")
    add("--labels-per-class", type=int, help="low-label setting: train on N images of each class (seeded)")
    add("--batch-size", type=int, default=128, help="images per process for feature extraction (default: 128)")
    add("--num-workers", type=int, default=0, help="DataLoader workers per process (default: 0)")
    add("--mixed-precision", default="no", choices=["no", "fp16", "bf16"], help="autocast precision (default: no)")
    add("--pooling", choices=["cls", "mean"], help="feature pooling: CLS token or mean of patches (default: config's)")
    add("--block", type=int, help="k-NN / linear: features of this block, 1-based (default: the last)")
    add("--knn-k", type=int, default=20, help="neighbours (default: 20)")
    add("--knn-temperature", type=float, default=0.07, help="vote temperature (default: 0.07)")
    add("--linear-epochs", type=int, default=100, help="linear probe epochs (default: 100)")
    add("--linear-batch-size", type=int, default=256, help="linear probe batch size (default: 256)")
    add("--linear-lr", type=float, default=0.1, help="linear probe base lr per 256 (SGD; default: 0.1)")
    add("--finetune-epochs", type=float, default=50, help="fine-tuning epochs (default: 50)")
    add("--finetune-batch-size", type=int, default=64, help="fine-tuning batch size per process (default: 64)")
    add("--finetune-lr", type=float, default=1e-3, help="fine-tuning base lr per 256 (AdamW; default: 1e-3)")
    add("--weight-decay", type=float, default=0.05, help="fine-tuning weight decay (default: 0.05)")
    add("--layer-decay", type=float, default=1.0, help="layer-wise lr decay, e.g. 0.75 as MAE (default: 1, off)")
    add("--drop-path", type=float, help="fine-tuning stochastic depth rate (default: the config's)")
    add("--label-smoothing", type=float, default=0.1, help="fine-tuning label smoothing (default: 0.1)")
    add(
        "--crop-scale",
        type=float,
        nargs=2,
        default=[0.08, 1.0],
        metavar=("MIN", "MAX"),
        help="fine-tuning random resized crop area range (default: 0.08 1, as MAE)",
    )
    add(
        "--mask-ratios",
        type=float,
        nargs="+",
        default=list(DEFAULT_RATIOS),
        help="cka: mask ratios (default: 0.1 ... 0.9)",
    )
    add("--occlusion", default="drop", choices=OCCLUSIONS, help="cka: drop masked patches (MAE) or zero them")
    add("--cka-samples", type=int, default=1024, help="cka: test images used (default: 1024)")
    add("--output-dir", default="outputs/evaluate", help="tables, plots, fine-tuning runs (default: outputs/evaluate)")
    add(
        "--no-save-to-model",
        dest="save_to_model",
        action="store_false",
        help="do not merge results into the local model folders' eval_results.json",
    )
    add("--seed", type=int, default=0, help="seed for splits, subsets, masks, probes (default: 0)")


def _add_visualize_parser(sub) -> None:
    p = sub.add_parser(
        "visualize",
        help="write pictures of reconstructions, ADIOS masks or BEiT tokens",
        description="Write the method's picture of some images: MAE / R-MAE / SimMIM reconstruction.png (image, "
        "masked input, reconstruction, reconstruction with visible patches pasted back; normalised-pixel targets "
        "de-normalised with the visible patches' statistics), ADIOS masks.png (colour-coded masks), BEiT and the "
        "visual tokenizer tokens.png (token maps, predicted tokens, decodings).",
    )
    add = p.add_argument
    add("--model", required=True, metavar="PATH_OR_REPO", help="an hf_mim pretraining checkpoint")
    add("--images", nargs="+", metavar="PATH", help="image files or folders (default: the first images of --dataset)")
    add("--dataset", help="dataset to take images from when --images is not given (default: digits)")
    add("--num-images", type=int, default=8, help="images, one row each (default: 8)")
    add("--mask-ratio", type=float, help="override the checkpoint's mask ratio")
    add("--seed", type=int, default=0, help="seed of the masks (default: 0)")
    add("--scale", type=int, default=4, help="enlarge small images this many times (default: 4)")
    add("--output-dir", default="outputs/visualize", help="where the PNG goes (default: outputs/visualize)")


def _run_evaluate(args) -> None:
    from .evaluation.runner import EvaluateArguments, evaluate_models

    evaluate_models(
        EvaluateArguments(**{k: v for k, v in vars(args).items() if k in EvaluateArguments.__dataclass_fields__})
    )


def _run_visualize(args) -> None:
    from .evaluation.visualize import visualize

    path = visualize(
        args.model,
        args.output_dir,
        images=args.images,
        dataset=args.dataset,
        num_images=args.num_images,
        mask_ratio=args.mask_ratio,
        seed=args.seed,
        scale=args.scale,
    )
    print(f"wrote {path}")


def _run_pretrain(args) -> None:
    from .training.trainer import PretrainArguments, pretrain

    pretrain(PretrainArguments(**{k: v for k, v in vars(args).items() if k in PretrainArguments.__dataclass_fields__}))


def _run_push(args) -> None:
    from .hub import push_folder

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
    print(f"pushed {args.output_dir} to {commit.commit_url}")


def _run_convert(args) -> None:
    from .convert import convert_checkpoint

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
    model = convert_checkpoint(args.src, args.dst, **overrides)
    print(f"converted {args.src} -> {args.dst} ({model.num_parameters():,} parameters)")


COMMANDS = {
    "pretrain": _run_pretrain,
    "evaluate": _run_evaluate,
    "visualize": _run_visualize,
    "push": _run_push,
    "convert": _run_convert,
}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _version() -> str:
    from . import __version__

    return f"hf-mim {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(signal, "SIGUSR1"):
        # `kill -USR1 PID` prints every thread's Python stack to stderr and the run goes on: what a stuck rank is
        # waiting for, without a debugger on the machine.
        # Not possible where stderr is no file (a notebook, a redirected stream): the command runs without it.
        with contextlib.suppress(io.UnsupportedOperation, ValueError, AttributeError):
            faulthandler.register(signal.SIGUSR1, all_threads=True)
    from .training.trainer import TrainingError

    # One rule for every command: what a user can fix (a bad value, file, folder or dataset, a full disk, a run that
    # cannot go on) is one line on stderr and exit status 2. ValueError covers DatasetError, ConversionError,
    # CheckpointError and RunFolderError; OSError covers missing files, read-only folders and full disks.
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError, TrainingError) as err:
        print(f"hf-mim {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
