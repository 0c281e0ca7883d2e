"""The ``aevb`` command line: ``train``, ``sample`` and ``reconstruct``.

Every command is a thin layer over the Python API. Problems with the user's input end with
one ``error: …`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from aevb.errors import AevbError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# Settings that may change when a run is resumed; any other flag is refused with --resume.
RESUMABLE = ("epochs", "device")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from aevb.data import DATASETS
    from aevb.models import LIKELIHOODS
    from aevb.networks import ACTIVATIONS, INITIALISATIONS
    from aevb.objectives import OBJECTIVES
    from aevb.training import BINARIZATIONS, OPTIMIZERS

    parser = argparse.ArgumentParser(
        prog="aevb", description="Auto-Encoding Variational Bayes: train and use VAEs."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Defaults are None here and come from TrainConfig, so that --resume can tell which flags
    # the user actually gave.
    train = commands.add_parser("train", help="fit a VAE by AEVB and write a run folder")
    add = train.add_argument
    add(
        "--dataset",
        help=f"one of {', '.join(DATASETS)}, or a .npy/.npz/.csv file "
        "(default: digits, bundled with scikit-learn)",
    )
    add(
        "--data-dir",
        help="folder holding the dataset files (or set AEVB_DATA_DIR); read without network access",
    )
    add(
        "--binarize",
        choices=BINARIZATIONS,
        help="how to make grey images binary "
        "(default: dynamic for the Bernoulli likelihood, none otherwise)",
    )
    add("--val-fraction", type=float, help="part of the training set held out (default 0.1)")
    add("--likelihood", choices=LIKELIHOODS, help="p(x|z) (default: chosen from the data)")
    add("--likelihood-std", type=float, help="σ of the fixed Gaussian likelihood (default 0.1)")
    add(
        "--squash-mean",
        action=argparse.BooleanOptionalAction,
        help="sigmoid on the learned Gaussian's mean (default: on for data in [0, 1])",
    )
    add("--latent-dim", type=_positive_int, help="size of z (default 20)")
    add("--hidden", type=_positive_int, nargs="+", help="hidden layer sizes (default 500)")
    add("--activation", choices=sorted(ACTIVATIONS), help="default tanh, as in the paper")
    add("--init", choices=INITIALISATIONS, help="'paper' draws weights from N(0, 0.01²)")
    add("--objective", choices=sorted(OBJECTIVES), help="SGVB estimator (default sgvb-b)")
    add("--samples", type=_positive_int, help="latent samples L per datapoint (default 1)")
    add("--beta", type=float, help="weight of the KL term (default 1: the ELBO)")
    add("--beta-start", type=float, help="KL weight at step 0 of the warm-up (default 0)")
    add("--warmup-steps", type=int, help="steps of linear KL warm-up (default 0: none)")
    add("--free-bits", type=float, help="minimum KL per latent dimension, nats (default 0)")
    add("--optimizer", choices=OPTIMIZERS, help="default adam; the paper used adagrad")
    add("--lr", type=float, help="learning rate (default 1e-3)")
    add("--weight-decay", type=float, help="L2 weight decay (default 0)")
    add("--clip-grad-norm", type=float, help="clip the gradient norm at this value")
    add("--batch-size", type=_positive_int, help="minibatch size M (default 100)")
    add("--epochs", type=int, help="passes over the training set (default 50)")
    add(
        "--patience",
        type=_positive_int,
        help="stop after this many epochs without a better validation ELBO (default: never)",
    )
    add("--checkpoint-every", type=int, help="also checkpoint every N steps (default: per epoch)")
    add("--seed", type=int, help="random seed; a CPU run is repeatable bit for bit (default 0)")
    add("--device", help="auto (default), cpu, cuda or cuda:N")
    add("--out", help="run folder to create (default runs/<dataset>-<time>)")
    add(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last "
        "checkpoint (only --epochs and --device may change)",
    )
    add("--no-progress", action="store_true", help="no progress bar")

    sample = commands.add_parser("sample", help="draw images from a trained model")
    sample.add_argument("run_dir", help="a run folder written by aevb train")
    sample.add_argument("--num", type=_positive_int, default=64, help="number of samples")
    sample.add_argument("--out", default="samples.png", help="PNG file to write")
    sample.add_argument(
        "--draw", action="store_true", help="draw x ~ p(x|z) instead of showing the decoder mean"
    )
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default="cpu")

    reconstruct = commands.add_parser("reconstruct", help="reconstruct held-out images")
    reconstruct.add_argument("run_dir", help="a run folder written by aevb train")
    reconstruct.add_argument("--num", type=_positive_int, default=16, help="number of images")
    reconstruct.add_argument("--split", choices=("test", "val", "train"), default="test")
    reconstruct.add_argument("--out", default="reconstructions.png", help="PNG file to write")
    reconstruct.add_argument("--device", default="cpu")
    return parser


def _train(args: argparse.Namespace) -> int:
    from aevb.training import TrainConfig, resume, train

    given = {
        key: value
        for key, value in vars(args).items()
        if value is not None and key not in ("command", "out", "resume", "no_progress")
    }
    progress = not args.no_progress
    if args.resume:
        refused = sorted(set(given) - set(RESUMABLE))
        if refused or args.out:
            flags = ", ".join(
                "--" + k.replace("_", "-") for k in refused + (["out"] if args.out else [])
            )
            raise AevbError(f"{flags} cannot change when resuming; only --epochs and --device can")
        summary = resume(args.resume, progress=progress, **given)
        run_dir = args.resume
    else:
        config = TrainConfig(**{k: tuple(v) if k == "hidden" else v for k, v in given.items()})
        run_dir = args.out or f"runs/{Path(config.dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        summary = train(config, run_dir, progress=progress)
    print(json.dumps(summary, indent=2))
    print(f"run folder: {run_dir}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from aevb.plots import save_image_grid
    from aevb.training import load_model, read_run_config

    image_shape = _image_shape(read_run_config(args.run_dir), "sample")
    model = load_model(args.run_dir, device=args.device)
    torch.manual_seed(args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(model.sample(args.num, mean=not args.draw), image_shape, args.out)
    print(f"wrote {args.num} samples to {args.out}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from aevb.data import load_dataset
    from aevb.plots import save_reconstructions
    from aevb.training import TrainConfig, binarize_once, load_model, read_run_config

    run = read_run_config(args.run_dir)
    image_shape = _image_shape(run, "reconstruct")
    config = TrainConfig.from_dict(run["train"])
    dataset = load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction)
    split = getattr(dataset, args.split)
    if len(split) == 0:
        raise AevbError(f"the {args.split} split of {config.dataset} is empty")
    model = load_model(args.run_dir, device=args.device)
    device = next(model.parameters()).device
    x = binarize_once(split[: args.num], config.binarize).to(device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_reconstructions(x, model.reconstruct(x), image_shape, args.out)
    print(f"wrote {len(x)} reconstructions to {args.out}")
    return 0


def _image_shape(run: dict, command: str) -> tuple[int, int]:
    shape = run["data"].get("image_shape")
    if not shape or len(shape) != 2:
        raise AevbError(f"aevb {command} draws images, but this run's data are not images")
    return tuple(shape)


COMMANDS = {"train": _train, "sample": _sample, "reconstruct": _reconstruct}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aevb`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from aevb.training import TrainingInterrupted

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except TrainingInterrupted as interrupted:
        print(f"\n{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except AevbError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
