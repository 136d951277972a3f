"""`hf-mim` (also `python -m hf_mim`): command-line entry points.

Each subcommand's flags are generated from its arguments dataclass (`PretrainArguments`, `EvaluateArguments`, ...)
by transformers' `HfArgumentParser`, from each field's type, default and `metadata["help"]`: a default or a help
text lives in one place. Flags take dashes or underscores (`--max-steps`, `--max_steps`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import io
import signal
import sys
from dataclasses import dataclass

from .errors import USER_ERRORS, one_line


@dataclass(frozen=True)
class Command:
    help: str
    description: str
    arguments: str  # "module:Dataclass", imported when the parser is built
    run: str  # "module:function", called with the dataclass


COMMANDS = {
    "pretrain": Command(
        help="pretrain a model (one process, or many under `accelerate launch`)",
        description="Pretrain with Accelerate: `hf-mim pretrain` on one device, `accelerate launch -m hf_mim "
        "pretrain ...` on several (DDP; FSDP and DeepSpeed through your accelerate config). With no --dataset, "
        "trains MAE on the training split of the built-in digits in a few minutes on a CPU.",
        arguments="hf_mim.training.arguments:PretrainArguments",
        run="hf_mim.training.trainer:pretrain",
    ),
    "evaluate": Command(
        help="k-NN, linear probe, fine-tuning or occlusion-invariance CKA of pretrained encoders",
        description="Evaluate one or more hf_mim checkpoints on a labelled dataset (the built-in digits by default, "
        "held out 20% for test, stratified and seeded): k-NN (cosine, temperature-weighted votes, as in DINO), a "
        "linear probe (frozen features, parameter-free BatchNorm then a linear layer, as in MAE), fine-tuning "
        "(AutoModelForImageClassification with transformers.Trainer), or linear CKA between each block's features "
        "of full and occluded images. Runs on one process or many (`accelerate launch -m hf_mim evaluate ...`). "
        "Prints a table, writes OUTPUT_DIR/evaluation.json, and merges each local model's results into its "
        "eval_results.json (the model card's model-index when pushed).",
        arguments="hf_mim.evaluation.runner:EvaluateArguments",
        run="hf_mim.evaluation.runner:evaluate_models",
    ),
    "visualize": Command(
        help="write the method's picture: reconstructions, ADIOS masks, BEiT tokens, ...",
        description="Write the picture each method declares (its MethodSpec.picture) of some images: MAE / R-MAE / "
        "SimMIM reconstruction.png (image, masked input, reconstruction, reconstruction with visible patches "
        "pasted back), ADIOS masks.png (colour-coded masks), BEiT and the visual tokenizer tokens.png (token maps, "
        "predicted tokens, decodings), MAE with learned masks also learned_masks.png (scores, a learned and a random "
        "mask), or the panels a method draws itself.",
        arguments="hf_mim.evaluation.visualize:VisualizeArguments",
        run="hf_mim.cli:_run_visualize",
    ),
    "push": Command(
        help="upload a saved model folder to the Hub with its generated model card",
        description="Upload OUTPUT_DIR (written by `hf-mim pretrain` or save_pretrained) to REPO_ID in one commit: "
        "safetensors weights, config.json with auto_map, preprocessor_config.json, the modeling code for "
        "trust_remote_code loading, the run records and pictures, and README.md (the model card, regenerated for "
        "REPO_ID unless you wrote your own, and validated before anything is sent). Checkpoints, optimizer states "
        "and pickle files are never uploaded.",
        arguments="hf_mim.hub:PushArguments",
        run="hf_mim.cli:_run_push",
    ),
    "convert": Command(
        help="convert a transformers ViTMAE / ViT folder or a facebookresearch/mae .pth into an hf_mim checkpoint",
        description="Convert a transformers ViTMAEForPreTraining folder or an official facebookresearch/mae state "
        "dict (.pth or .safetensors; encoder-only ones get a fresh decoder) into an hf_mim MAE checkpoint folder, "
        "or a transformers ViTForMaskedImageModeling folder into an hf_mim SimMIM one.",
        arguments="hf_mim.convert:ConvertArguments",
        run="hf_mim.cli:_run_convert",
    ),
    "export": Command(
        help="write an hf_mim model as transformers' own ViTModel / ViTMAEForPreTraining (no hf_mim, no remote code)",
        description="Write SRC (an hf_mim model folder or Hub id) into DST as transformers' own classes: an MAE with "
        "its decoder as ViTMAEForPreTraining, any other method's plain-ViT encoder as ViTModel (pooler_output: the "
        "CLS token), with its image processor. DST loads with transformers alone, without trust_remote_code. A "
        "model transformers' ViT cannot hold (LayerScale, relative position bias: BEiT; the visual tokenizer) is "
        "refused in one line.",
        arguments="hf_mim.export:ExportArguments",
        run="hf_mim.cli:_run_export",
    ),
}


def _load(reference: str):
    import importlib

    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def _parser_class():
    from transformers import HfArgumentParser

    class DataclassParser(HfArgumentParser):
        """transformers' `HfArgumentParser`, plus two field metadata keys of ours: `"positional": True` (a
        positional argument: `hf-mim push OUTPUT_DIR REPO_ID`) and `"cli": False` (a field for Python callers
        only)."""

        @staticmethod
        def _parse_dataclass_field(parser, field: dataclasses.Field):
            if field.metadata.get("cli", True) is False:
                return
            if field.metadata.get("positional"):
                kwargs = {k: v for k, v in field.metadata.items() if k != "positional"}
                parser.add_argument(field.name, type=str, **kwargs)
                return
            HfArgumentParser._parse_dataclass_field(parser, field)

    return DataclassParser


class HelpFormatter(argparse.HelpFormatter):
    """Each flag's help as its field writes it: "(default: X)" is added only where the help names no default of its
    own and there is one to show (argparse's ArgumentDefaultsHelpFormatter, which HfArgumentParser uses, appends it
    to every flag, "(default: None)" and a second "(default: ...)" included); a `--no-X` flag that HfArgumentParser
    adds for a boolean field defaulting to True says it turns `--X` off rather than repeating its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if isinstance(action, argparse._StoreFalseAction) and any(o.startswith("--no") for o in action.option_strings):
            return f"turn --{action.dest.replace('_', '-')} off"
        shown = action.default not in (None, argparse.SUPPRESS, [], ()) and action.option_strings
        if shown and "default" not in help_text and "%(default)" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-mim", description="Masked-image-modeling pretraining as Hugging Face models."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_parser_class())
    for name, command in COMMANDS.items():
        sub.add_parser(
            name,
            help=command.help,
            description=command.description,
            dataclass_types=[_load(command.arguments)],
            formatter_class=HelpFormatter,
        )
    return parser


def _run_visualize(args) -> None:
    from .evaluation.visualize import visualize

    paths = visualize(
        args.model,
        args.output_dir,
        images=args.images,
        dataset=args.dataset,
        num_images=args.num_images,
        mask_ratio=args.mask_ratio,
        seed=args.seed,
        scale=args.scale,
    )
    for path in paths:
        print(f"wrote {path}")


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
        include=args.include,
        format=args.format,
    )
    print(f"pushed {args.output_dir} to {commit.commit_url}")


def _run_convert(args) -> None:
    from .convert import convert_checkpoint

    model = convert_checkpoint(args.src, args.dst, **args.config_overrides())
    print(f"converted {args.src} -> {args.dst} ({model.num_parameters():,} parameters)")


def _run_export(args) -> None:
    from .export import export_model

    for line in export_model(args.src, args.dst, format=args.format):
        print(line)


def _version() -> str:
    from .version import __version__

    return f"hf-mim {__version__}"


def main(argv: list[str] | None = None) -> int:
    namespace = build_parser().parse_args(argv)
    if hasattr(signal, "SIGUSR1"):
        # `kill -USR1 PID` prints every thread's Python stack to stderr and the run goes on: what a stuck rank is
        # waiting for, without a debugger on the machine.
        # Not possible where stderr is no file (a notebook, a redirected stream): the command runs without it.
        with contextlib.suppress(io.UnsupportedOperation, ValueError, AttributeError):
            faulthandler.register(signal.SIGUSR1, all_threads=True)

    command = COMMANDS[namespace.command]
    empty = _empty_values(namespace)
    if empty:
        print(
            f"hf-mim {namespace.command}: error: {empty} is empty; allowed: a path, id or value (an unset shell "
            "variable?). Leave the flag out for its default",
            file=sys.stderr,
        )
        return 2
    # One rule for every command: what a user can fix (a bad value, file, folder or dataset, a full disk, a run that
    # cannot go on) is one line on stderr and exit status 2. ValueError covers DatasetError, ConversionError,
    # CheckpointError and RunFolderError; OSError covers missing files, read-only folders and full disks.
    try:
        arguments_class = _load(command.arguments)
        given = vars(namespace)
        args = arguments_class(
            **{f.name: given[f.name] for f in dataclasses.fields(arguments_class) if f.name in given}
        )
        _load(command.run)(args)
    except (*USER_ERRORS, *_network_errors()) as err:
        message = one_line(err)
        if isinstance(err, _network_errors()) and not isinstance(err, OSError):
            from huggingface_hub import constants

            message = f"cannot reach the Hub at {constants.ENDPOINT}: {message}"
        print(f"hf-mim {namespace.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


def _empty_values(namespace: argparse.Namespace) -> str | None:
    """The first argument given as an empty or blank string (also inside a list), named as its flag: an unset shell
    variable would otherwise become the current folder, the built-in data or no value at all."""
    for name, value in vars(namespace).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            return (
                name.upper()
                if name in ("output_dir", "repo_id") and namespace.command == "push"
                else ("--" + name.replace("_", "-"))
            )
    return None


def _network_errors() -> tuple[type[BaseException], ...]:
    """huggingface_hub's transport errors (a refused connection, a timeout), which are not OSErrors: the HTTP
    library's base error, whichever library this huggingface_hub uses."""
    try:
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        return ()
    return tuple(c for c in HfHubHTTPError.__mro__[1:] if c.__name__ == "HTTPError")


if __name__ == "__main__":
    sys.exit(main())
