"""The ``aevb`` command line: ``train``, ``evaluate``, ``sample``, ``reconstruct``, ``embed``,
``score``, ``reproduce``, ``report``, ``explore``.

Every command is a thin layer over the Python API. Problems with the user's input end with
one ``error: …`` line and exit status 2, never a traceback.
"""

from __future__ import annotations

import _thread
import argparse
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from aevb.errors import AevbError, TrainingInterrupted
from aevb.hints import command_line, resume_hint
from aevb.limits import MAX_COUNT, MAX_SEED
from aevb.storage import (
    atomic_write_text,
    check_output_file,
    check_output_folder,
    make_folder,
)

if TYPE_CHECKING:
    import numpy as np

    from aevb.evaluation import Evaluation

EXIT_USER_ERROR = 2
# Most CPU threads --threads takes.
MAX_THREADS = 4096
EXIT_INTERRUPTED = 130

THREADS_HELP = (
    "CPU threads for tensor operations (default: one per core, fewer while other programs keep "
    "the cores busy)"
)
DEVICE_HELP = "cpu, cuda or cuda:N"
AUTO_DEVICE_HELP = "auto (the first GPU if there is one, else the CPU), cpu, cuda or cuda:N"
SEED_HELP = "seed of the random draws: the same seed gives the same result"
SPLIT_HELP = "the run's data split to use"
NO_PROGRESS_HELP = "no progress bar (on a terminal) or progress lines (in a log or a pipe)"
OVERWRITE_HELP = "replace the --out file if it exists (without it, an existing file is kept)"
# Flags of ``aevb train`` that are not settings of the run.
RUN_FLAGS = ("command", "out", "resume", "no_progress", "quiet", "threads")


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {MAX_COUNT:,}], got {text}")
    return value


def _threads(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {MAX_THREADS}], got {text}")
    return value


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a path, got an empty string")
    return text


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63 - 1], got {text}")
    return value


def _label(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be a class index ≥ 0, got {text}")
    return value


def is_conditional(model: object) -> bool:
    """Whether a run's model takes class labels (imported here: torch loads lazily)."""
    from aevb.conditional import is_conditional as conditional

    return conditional(model)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per declared setting of :class:`aevb.runs.TrainConfig`, in its group, with
    its help and default from the declaration. Defaults are ``None`` here, so that ``--resume``
    can tell which flags the user gave."""
    import types
    import typing

    from aevb.runs.config import GROUPS, TrainConfig, setting_fields

    hints = typing.get_type_hints(TrainConfig)
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    for field in setting_fields():
        meta, hint = field.metadata, hints[field.name]
        default = meta["default_text"] or _shown(field.default)
        options: dict = {"help": f"{meta['help']} (default: {default})", "default": None}
        kind = hint
        if isinstance(hint, types.UnionType):  # X | None: a setting decided later if unset
            (kind,) = (a for a in typing.get_args(hint) if a is not type(None))
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options.update(type=_positive_int, nargs="+", metavar="N")
        elif meta["choices"]:
            options["choices"] = meta["choices"]
        elif field.name == "seed":
            options["type"] = _seed
        elif kind is int:
            options["type"] = _positive_int if (meta["minimum"] or 0) >= 1 else int
        elif kind is float:
            options["type"] = float
        groups[meta["group"]].add_argument("--" + field.name.replace("_", "-"), **options)


def _shown(value) -> str:
    if isinstance(value, tuple | list):
        return " ".join(map(str, value))
    return str(value)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default as ``(default: X)``, unless the help names its
    default in its own words or there is none to show (``None``, ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text, default = action.help or "", action.default
        if (
            not action.option_strings
            or "default" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: {_shown(default).replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with :class:`_HelpFormatter`; its subcommands' parsers are of
    this class too (``add_subparsers`` makes them of the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from aevb import __version__

    parser = _Parser(
        prog="aevb", description="Auto-Encoding Variational Bayes: train and use VAEs."
    )
    parser.add_argument("--version", action="version", version=f"aevb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="fit a VAE by AEVB and write a run folder")
    add_setting_flags(train)
    run = train.add_argument_group("run folder")
    run.add_argument(
        "--out", type=_path, help="run folder to create (default: runs/<dataset>-<time>)"
    )
    run.add_argument(
        "--resume",
        type=_path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint (only --epochs, --device, "
        "--compile, --divergence-guard, --workers and --tensorboard may change)",
    )
    run.add_argument("--threads", type=_threads, help=THREADS_HELP)
    run.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    run.add_argument(
        "--quiet",
        action="store_true",
        help="print only the run folder: no progress and no summary (summary.json in the run "
        "folder holds it)",
    )

    sample = commands.add_parser("sample", help="draw images from a trained model")
    sample.add_argument("run_dir", type=_path, help="a run folder written by aevb train")
    sample.add_argument("--num", type=_positive_int, default=64, help="number of samples")
    sample.add_argument(
        "--out",
        type=_path,
        default="samples.png",
        help="PNG file to write (default: samples.png in the current folder)",
    )
    sample.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    sample.add_argument(
        "--draw", action="store_true", help="draw x ~ p(x|z) instead of showing the decoder mean"
    )
    sample.add_argument(
        "--label",
        type=_label,
        help="class to draw, for a conditional model (default: the classes in turn, a column each)",
    )
    sample.add_argument("--seed", type=_seed, default=0, help=SEED_HELP)
    sample.add_argument("--device", default="cpu", help=DEVICE_HELP)

    reconstruct = commands.add_parser("reconstruct", help="reconstruct held-out images")
    reconstruct.add_argument("run_dir", type=_path, help="a run folder written by aevb train")
    reconstruct.add_argument("--num", type=_positive_int, default=16, help="number of images")
    reconstruct.add_argument(
        "--split", choices=("test", "val", "train"), default="test", help=SPLIT_HELP
    )
    reconstruct.add_argument(
        "--out",
        type=_path,
        default="reconstructions.png",
        help="PNG file to write: rows of images, each above its reconstructions (default: "
        "reconstructions.png in the current folder)",
    )
    reconstruct.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    reconstruct.add_argument("--device", default="cpu", help=DEVICE_HELP)
    evaluate = commands.add_parser(
        "evaluate", help="importance-sampled log-likelihood, IWAE bound, ELBO, active units"
    )
    evaluate.add_argument("run_dir", type=_path, help="a run folder written by aevb train")
    evaluate.add_argument(
        "--split", choices=("test", "val", "train"), default="test", help=SPLIT_HELP
    )
    evaluate.add_argument(
        "--importance-samples",
        type=_positive_int,
        default=5000,
        help="k draws from the encoder per datapoint",
    )
    evaluate.add_argument(
        "--iwae-samples", type=_positive_int, default=50, help="m of the reported IWAE bound L_m"
    )
    evaluate.add_argument(
        "--batch-size",
        type=_positive_int,
        help="datapoints per batch (default: as many as keep one draw's likelihood values for "
        "the batch near 2^22, 16 MiB of float32, on the CPU (5,349 MNIST images) and 2^24, "
        "64 MiB, on a GPU)",
    )
    evaluate.add_argument(
        "--num-examples", type=_positive_int, help="evaluate only the first N examples of the split"
    )
    evaluate.add_argument("--float64", action="store_true", help="accumulate in float64")
    evaluate.add_argument(
        "--which", choices=("best", "last"), default="best", help="checkpoint to evaluate"
    )
    evaluate.add_argument("--seed", type=_seed, default=0, help=SEED_HELP)
    evaluate.add_argument("--device", default="cpu", help=DEVICE_HELP)
    evaluate.add_argument("--threads", type=_threads, help=THREADS_HELP)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    _add_table_commands(commands)
    _add_reproduce(commands)
    _add_view_commands(commands)
    return parser


def command_parsers(
    parser: argparse.ArgumentParser, path: str = "aevb"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(command line, parser)`` for ``parser`` and every sub-command below it, depth first:
    ``("aevb", …)``, ``("aevb train", …)``, …, ``("aevb reproduce figure2", …)``."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_parsers(sub, f"{path} {name}")


def _add_table_commands(commands) -> None:
    """``aevb embed`` and ``aevb score``: use a trained model on the rows of a table."""
    embed = commands.add_parser(
        "embed", help="write the posterior means (codes) of every row of a table to a CSV file"
    )
    score = commands.add_parser(
        "score",
        help="write each row's importance-sampled log-likelihood (higher = more typical) to a "
        "CSV file",
    )
    for sub in (embed, score):
        sub.add_argument("run_dir", type=_path, help="a run folder written by aevb train")
        sub.add_argument(
            "--data",
            type=_path,
            required=True,
            help="the rows: a .csv (header row optional), .parquet or .npy file with the run's "
            "number of columns",
        )
        sub.add_argument(
            "--out", type=_path, required=True, help="CSV file to write (one line per row)"
        )
        sub.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
        sub.add_argument(
            "--which", choices=("best", "last"), default="best", help="checkpoint to use"
        )
        sub.add_argument("--device", default="cpu", help=DEVICE_HELP)
        sub.add_argument("--threads", type=_threads, help=THREADS_HELP)
    embed.add_argument(
        "--std", action="store_true", help="also write the posterior standard deviations"
    )
    score.add_argument(
        "--importance-samples",
        type=_positive_int,
        default=1000,
        help="k draws from the encoder per row",
    )
    score.add_argument("--seed", type=_seed, default=0, help=SEED_HELP)


def _add_reproduce(commands) -> None:
    from aevb.experiments.reproduce import FIGURE3_DEFAULT_TRAIN_SAMPLES, FULL_TRAIN_SAMPLES

    reproduce = commands.add_parser(
        "reproduce",
        help="regenerate one of the paper's figures (CSV, PNG and a markdown summary)",
    )
    figures = reproduce.add_subparsers(dest="figure", required=True, metavar="FIGURE")

    def figure(name: str, help: str) -> argparse.ArgumentParser:
        sub = figures.add_parser(name, help=help)
        sub.add_argument("--out", type=_path, default=f"reproduce/{name}", help="output folder")
        sub.add_argument(
            "--data-dir", type=_path, help="folder holding the datasets (or AEVB_DATA_DIR)"
        )
        length = sub.add_mutually_exclusive_group()
        length.add_argument(
            "--train-samples",
            type=_positive_int,
            help="training samples evaluated per run (defaults sized for a 2-core CPU)",
        )
        length.add_argument(
            "--full",
            action="store_true",
            help=f"the paper's {FULL_TRAIN_SAMPLES:.0e} training samples per run (GPU-scale)",
        )
        sub.add_argument("--seed", type=_seed, default=0, help=SEED_HELP)
        if name in ("figure2", "figure3"):
            sub.add_argument(
                "--lr",
                type=float,
                help="Adagrad step size (default: 0.02; the paper chose from 0.01, 0.02, 0.1)",
            )
        sub.add_argument("--device", default="auto", help=AUTO_DEVICE_HELP)
        sub.add_argument("--threads", type=_threads, help=THREADS_HELP)
        sub.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
        return sub

    def train_rows(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--train-rows",
            type=_positive_int,
            help="use only the first N training images (a quick look; default: all)",
        )

    fig2 = figure("figure2", "lower bound vs training samples, AEVB vs wake-sleep")
    train_rows(fig2)
    fig2.add_argument(
        "--dataset", choices=("frey", "mnist"), default="frey", help="the dataset of the panels"
    )
    fig2.add_argument(
        "--latent-dims",
        type=_positive_int,
        nargs="+",
        help="latent sizes, one panel each (default: the paper's, 3 5 10 20 200 for MNIST, "
        "2 5 10 20 for Frey Face)",
    )
    fig3 = figure(
        "figure3",
        f"marginal likelihood vs training samples, AEVB vs wake-sleep vs Monte Carlo EM "
        f"(default: {FIGURE3_DEFAULT_TRAIN_SAMPLES:.0e} samples)",
    )
    fig3.add_argument(
        "--train-sizes",
        type=_positive_int,
        nargs="+",
        default=[1000, 50000],
        help="N_train: training set sizes, a run of each method for each",
    )
    fig3.add_argument(
        "--eval-rows", type=_positive_int, default=100, help="train and test images scored"
    )
    fig3.add_argument(
        "--importance-samples", type=_positive_int, default=1000, help="k draws per image"
    )
    train_rows(figure("figure4", "learned 2-D manifolds of Frey Face and MNIST"))
    train_rows(figure("figure5", "random samples of MNIST models with N_z = 2, 5, 10, 20"))

    def contrast(name: str, help: str, dataset: str) -> argparse.ArgumentParser:
        sub = figures.add_parser(name, help=help)
        sub.add_argument("--out", type=_path, default=f"reproduce/{name}", help="output folder")
        sub.add_argument("--dataset", default=dataset, help="the dataset to train on")
        sub.add_argument(
            "--data-dir", type=_path, help="folder holding the datasets (or AEVB_DATA_DIR)"
        )
        sub.add_argument("--epochs", type=_positive_int, help="training epochs")
        sub.add_argument("--seed", type=_seed, default=0, help=SEED_HELP)
        sub.add_argument("--threads", type=_threads, help=THREADS_HELP)
        sub.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
        return sub

    ae = contrast("ae-vs-vae", "plain autoencoder vs VAE: irregular vs continuous codes", "mnist")
    ae.add_argument("--latent-dim", type=_positive_int, default=2, help="size of the codes")
    ae.add_argument("--device", default="auto", help=AUTO_DEVICE_HELP)
    pca = contrast("pca", "PCA and linear autoencoder vs linear VAE (probabilistic PCA)", "digits")
    pca.add_argument(
        "--latent-dims",
        type=_positive_int,
        nargs="+",
        default=[2, 5, 10],
        help="sizes of the codes, one comparison each",
    )


def _add_view_commands(commands) -> None:
    """``aevb report`` (one self-contained HTML page) and ``aevb explore`` (a local web page
    decoding the latent space live)."""
    report = commands.add_parser(
        "report",
        help="write one self-contained HTML page: curves, samples, manifold, latent space, "
        "evaluation, configuration",
    )
    report.add_argument("run_dir", type=_path, help="a run folder written by aevb train")
    report.add_argument(
        "--out", type=_path, help="HTML file to write (default: RUN_DIR/report.html)"
    )
    report.add_argument(
        "--importance-samples",
        type=_positive_int,
        default=1000,
        help="k draws from the encoder per test row for log p(x)",
    )
    report.add_argument(
        "--num-examples",
        type=_positive_int,
        default=1000,
        help="evaluate and show the first N test rows",
    )
    report.add_argument("--seed", type=_seed, default=0, help=SEED_HELP)
    report.add_argument("--device", default="cpu", help=DEVICE_HELP)
    report.add_argument("--threads", type=_threads, help=THREADS_HELP)
    report.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    explore = commands.add_parser(
        "explore", help="serve a local web page that decodes the latent space live (Ctrl-C stops)"
    )
    explore.add_argument("run_dir", type=_path, help="a run folder written by aevb train")
    explore.add_argument(
        "--port", type=int, default=0, help="port to listen on (default: 0, a free one)"
    )
    explore.add_argument(
        "--host",
        help="address to listen on (default: 127.0.0.1; another address serves the model to "
        "anyone who can reach it, without authentication)",
    )
    explore.add_argument("--device", default="cpu", help=DEVICE_HELP)
    explore.add_argument("--threads", type=_threads, help=THREADS_HELP)
    explore.add_argument("--no-browser", action="store_true", help="do not open a browser")


def _join_process_group(device: str | None, run_dir: str | None = None):
    """Under ``torchrun``, join the process group (the backend follows the run's device:
    ``device``, else the device of the run in ``run_dir``, else the default); alone, nothing.
    Returns this process's place (:class:`aevb.distributed.Distributed`)."""
    from aevb.distributed import init_from_environment, launched_by_torchrun
    from aevb.runs import TrainConfig, read_run

    if device is None and launched_by_torchrun():
        device = read_run(run_dir).config.device if run_dir else TrainConfig.device
    return init_from_environment(device or "auto")


def _train(args: argparse.Namespace) -> int:
    from aevb.runs import TrainConfig, resume, train
    from aevb.runs.config import setting_fields

    given = {
        key: value
        for key, value in vars(args).items()
        if value is not None and key not in RUN_FLAGS
    }
    parallel = _join_process_group(args.device, args.resume)
    progress = not (args.no_progress or args.quiet) and parallel.writer
    if args.resume:
        resumable = {f.name for f in setting_fields() if f.metadata["resumable"]}
        refused = sorted(set(given) - resumable)
        if refused or args.out:
            flags = ", ".join(
                "--" + k.replace("_", "-") for k in refused + (["out"] if args.out else [])
            )
            allowed = ", ".join("--" + k for k in sorted(resumable))
            raise AevbError(f"{flags} cannot change when resuming; only {allowed} can")
        run_dir = args.resume
        with _interruptible(run_dir):
            summary = resume(run_dir, progress=progress, **given)
    else:
        config = TrainConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
        )
        run_dir = args.out or f"runs/{Path(config.dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = parallel.broadcast(run_dir)  # process 0's clock names the folder
        with _interruptible(run_dir):
            summary = train(config, run_dir, progress=progress)
    if parallel.writer:
        if not args.quiet:
            print(json.dumps(summary, indent=2))
        print(f"run folder: {run_dir}")
    return 0


@contextmanager
def _interruptible(run_dir: str):
    """Turn an interruption outside the training loop (start-up, the final evaluation and
    plots) into :class:`TrainingInterrupted`, saying what ``run_dir`` holds."""
    from aevb.runs import CONFIG_FILE

    try:
        yield
    except KeyboardInterrupt as interrupt:
        signum = getattr(interrupt, "signum", signal.SIGINT)
        if (Path(run_dir) / CONFIG_FILE).exists():
            raise TrainingInterrupted(
                f"interrupted (signal {signum}) outside the training steps; {run_dir} holds "
                "every checkpoint written so far",
                run_dir,
            ) from None
        raise TrainingInterrupted(
            f"interrupted (signal {signum}) before the run folder {run_dir} was written; "
            "nothing to resume: run the command again"
        ) from None


def _open_image_run(args: argparse.Namespace, command: str):
    from aevb.runs import load_run

    run = load_run(args.run_dir, which=getattr(args, "which", "best"), device=args.device)
    if not run.is_image:
        raise AevbError(f"aevb {command} draws images, but this run's data are not images")
    return run


def _new_output_file(args: argparse.Namespace, suffixes: tuple[str, ...] = ()) -> Path:
    """``args.out``, checked to be writable (:func:`check_output_file`); an existing file is
    refused unless ``--overwrite`` was given."""
    path = check_output_file(args.out, suffixes)
    if path.exists() and not args.overwrite:
        raise AevbError(f"{path} exists; pass --overwrite to replace it, or choose another --out")
    return path


def _sample(args: argparse.Namespace) -> int:
    import torch

    from aevb.plots import save_image_grid

    _new_output_file(args, (".png",))
    run = _open_image_run(args, "sample")
    torch.manual_seed(args.seed)
    make_folder(Path(args.out).parent)
    samples = run.sample(args.num, mean=not args.draw, label=args.label)
    columns = None
    if is_conditional(run.model) and args.label is None:
        columns = run.model.num_classes  # a column per class
    save_image_grid(samples, args.out, ncols=columns)
    drawn = f" of class {args.label}" if args.label is not None else ""
    print(f"wrote {args.num} samples{drawn} to {args.out}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from aevb.plots import save_reconstructions

    _new_output_file(args, (".png",))
    run = _open_image_run(args, "reconstruct")
    x = run.split(args.split, args.num)
    make_folder(Path(args.out).parent)
    shown = run.transforms.inverse(run.prepare(x))  # the images as the model saw them
    labels = run.labels(args.split, args.num) if is_conditional(run.model) else None
    save_reconstructions(shown, run.reconstruct(x, labels), args.out)
    print(f"wrote {len(x)} reconstructions to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from aevb.devices import resolve_device
    from aevb.runs import load_run

    parallel = _join_process_group(args.device, args.run_dir)
    device = parallel.device(resolve_device(args.device))
    run = load_run(args.run_dir, which=args.which, device=str(device))
    x, labels = run.split(args.split, args.num_examples), None
    if is_conditional(run.model):
        labels = run.labels(args.split, args.num_examples)
    result = run.evaluate(
        x,
        labels=labels,
        importance_samples=args.importance_samples,
        iwae_samples=args.iwae_samples,
        batch_size=args.batch_size,
        float64=args.float64,
        seed=args.seed,
        progress=not args.no_progress and parallel.writer,
        parallel=parallel,
    )
    if not parallel.writer:  # every process scored its part; process 0 reports
        return 0
    values = {
        "run_dir": str(args.run_dir),
        "split": args.split,
        "checkpoint": args.which,
        **result.to_dict(),
    }
    if labels is not None:
        values["given_labels"] = True  # log p(x|y) and its bounds
        if hasattr(run.model, "classify"):
            values["classification_error"] = run.classification_error(x, labels)
    if args.json:
        print(json.dumps(values))
    else:
        print(_table(result, args.split))
    return 0


def _refuse_conditional(run, command: str) -> None:
    """A table has no labels column that aevb reads: a conditional model is refused."""
    if is_conditional(run.model):
        raise AevbError(
            f"aevb {command} reads a table without labels, but the model in {run.run_dir} is "
            f"conditional (it needs each row's class); use the Python API: aevb.load_run(RUN)."
            f"{'encode' if command == 'embed' else 'log_likelihood_per_example'}(x, labels=y)"
        )


def _read_rows(args: argparse.Namespace, run) -> np.ndarray:
    """All rows of ``args.data`` as float32, checked against the shape of the run's rows."""
    from aevb.data import load_table

    x, columns = load_table(args.data)
    expected = run.record.event_shape
    if x.shape[1:] != expected:
        named = ""
        if columns:
            named = f" ({', '.join(columns[:8])}{', …' if len(columns) > 8 else ''})"
        found = f"{x.shape[1]} column(s){named}" if x.ndim == 2 else f"rows of shape {x.shape[1:]}"
        wanted = f"{expected[0]}" if len(expected) == 1 else f"rows of shape {expected}"
        raise AevbError(
            f"{args.data} has {found} but the model in {args.run_dir} was trained on "
            f"{wanted}; give the same columns, in the same order"
        )
    return x


def _write_csv(path: str, header: list[str], values: np.ndarray) -> None:
    """Write (N, len(header)) ``values`` under one header line; 9 significant digits."""
    import io

    import numpy as np

    text = io.StringIO()
    np.savetxt(text, values, fmt="%.9g", delimiter=",", header=",".join(header), comments="")
    make_folder(Path(path).parent)
    atomic_write_text(path, text.getvalue())


def _embed(args: argparse.Namespace) -> int:
    import torch

    from aevb.runs import load_run
    from aevb.views.latent_space import encode_rows

    _new_output_file(args)
    run = load_run(args.run_dir, which=args.which, device=args.device)
    _refuse_conditional(run, "embed")
    found = encode_rows(run, _read_rows(args, run), where=args.data)
    # (N, latent_dim), or (N, 2 latent_dim) with --std
    codes = (torch.cat([found.means, found.stds], 1) if args.std else found.means).numpy()
    d = run.model.latent_dim
    header = [f"z{i}" for i in range(1, d + 1)]
    if args.std:
        header += [f"std{i}" for i in range(1, d + 1)]
    _write_csv(args.out, header, codes)
    print(f"wrote {len(codes)} codes of {d} dimensions to {args.out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from aevb.runs import load_run

    _new_output_file(args)
    run = load_run(args.run_dir, which=args.which, device=args.device)
    _refuse_conditional(run, "score")
    x = _read_rows(args, run)
    # Scored like the run's own evaluation data (aevb evaluate): the run's transforms, its
    # binarization drawn with the same fixed seed, so the numbers are comparable.
    scores = run.log_likelihood_per_example(x, args.importance_samples, args.seed, where=args.data)
    _write_csv(args.out, ["log_likelihood"], scores.cpu().numpy()[:, None])
    print(
        f"wrote {len(scores)} log-likelihoods (nats, k = {args.importance_samples}; mean "
        f"{float(scores.mean()):.3f}) to {args.out}"
    )
    return 0


def _table(result: Evaluation, split: str) -> str:
    """``aevb evaluate``'s readable table."""
    rows = [
        *result.rows(),
        ("examples", f"{result.num_examples} ({split} split)"),
        ("seconds", f"{result.seconds:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _reproduce(args: argparse.Namespace) -> int:
    from aevb.experiments import reproduce

    make_folder(check_output_folder(args.out))
    if args.figure in ("ae-vs-vae", "pca"):
        return _contrast(args)
    out = Path(args.out)
    common = {
        "data_dir": args.data_dir,
        "train_samples": reproduce.FULL_TRAIN_SAMPLES if args.full else args.train_samples,
        "device": args.device,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    if args.figure == "figure2":
        reproduce.figure2(
            out,
            dataset=args.dataset,
            latent_dims=args.latent_dims,
            train_rows=args.train_rows,
            lr=args.lr,
            **common,
        )
    elif args.figure == "figure3":
        reproduce.figure3(
            out,
            train_sizes=args.train_sizes,
            eval_rows=args.eval_rows,
            importance_samples=args.importance_samples,
            lr=args.lr,
            **common,
        )
    elif args.figure == "figure4":
        reproduce.figure4(out, train_rows=args.train_rows, **common)
    else:
        reproduce.figure5(out, train_rows=args.train_rows, **common)
    for name in sorted(out.glob(f"{args.figure}*.*")):
        print(f"wrote {name}")
    for summary in sorted(out.glob(f"{args.figure}*.md")):
        print(summary.read_text())
    return 0


def _report(args: argparse.Namespace) -> int:
    from aevb.views import write_report

    report = write_report(
        args.run_dir,
        args.out,
        importance_samples=args.importance_samples,
        num_examples=args.num_examples,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    print(f"wrote {report.path} ({report.seconds:.1f} s)")
    return 0


def _explore(args: argparse.Namespace) -> int:
    from aevb.views import serve

    serve(
        args.run_dir,
        host=args.host or "127.0.0.1",
        port=args.port,
        device=args.device,
        open_browser=not args.no_browser,
        allow_remote=args.host is not None,
    )
    return 0


def _contrast(args: argparse.Namespace) -> int:
    from aevb.experiments import contrasts

    options = {"epochs": args.epochs} if args.epochs else {}
    common = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "seed": args.seed,
        "progress": not args.no_progress,
        **options,
    }
    out = Path(args.out)
    if args.figure == "ae-vs-vae":
        contrasts.autoencoder_vs_vae(out, latent_dim=args.latent_dim, device=args.device, **common)
    else:
        contrasts.pca_vs_linear_vae(out, latent_dims=tuple(args.latent_dims), **common)
    for name in sorted(out.glob("*.*")):
        print(f"wrote {name}")
    print((out / "summary.md").read_text())
    return 0


COMMANDS = {
    "train": _train,
    "sample": _sample,
    "reconstruct": _reconstruct,
    "evaluate": _evaluate,
    "embed": _embed,
    "score": _score,
    "reproduce": _reproduce,
    "report": _report,
    "explore": _explore,
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt, so both end the same way."""

    signum = signal.SIGTERM


def _terminate(signum, frame) -> None:
    raise Terminated()


class _StartUpSignals:
    """SIGINT and SIGTERM while a command starts up (parsing, importing torch and matplotlib)
    are held, not raised, and raised by :meth:`started` once the imports are done.

    An exception raised inside an import can leave a half-initialised module behind (numpy
    without ``subtract``, then a traceback from matplotlib), or be swallowed where Python
    cannot raise (a weakref callback in importlib's module locks); a held signal ends the
    command at the first safe point instead, a second or two later.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.held: list[int] = []
        self.previous: dict[int, Any] = {}

    def hold(self) -> None:
        self.previous = {s: signal.signal(s, self._record) for s in self.SIGNALS}

    def _record(self, signum: int, frame) -> None:
        self.held.append(signum)

    def started(self) -> None:
        """From here on SIGINT raises KeyboardInterrupt and SIGTERM :class:`Terminated`; a
        signal held during start-up is raised now."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _terminate)
        if self.held:
            raise Terminated() if self.held[0] == signal.SIGTERM else KeyboardInterrupt()

    def restore(self, *, ignore: bool) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, signal.SIG_IGN if ignore else handler)


def main(argv: Sequence[str] | None = None, *, ignore_signals_after: bool = False) -> int:
    """Run one ``aevb`` command; returns the exit status.

    SIGINT and SIGTERM end any command with one line and exit status 130 (the training loop
    first finishes its step and writes a checkpoint; during start-up the signal is held until
    the imports are done); a user error with one ``error:`` line and status 2.
    ``ignore_signals_after`` (for the process's own entry point, :func:`console`) leaves both
    signals ignored once the command is done instead of restoring the handlers.
    """
    signals = _StartUpSignals() if _main_thread() else None
    previous_hook = sys.unraisablehook
    if signals is not None:
        signals.hold()
        sys.unraisablehook = partial(_redeliver_interrupts, previous_hook)
    try:
        return _main(argv, started=signals.started if signals is not None else _no_op)
    except KeyboardInterrupt as interrupt:
        signum = getattr(interrupt, "signum", signal.SIGINT)
        print(f"\ninterrupted (signal {signum}); nothing was left half-written", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        sys.unraisablehook = previous_hook
        if signals is not None:
            signals.restore(ignore=ignore_signals_after)


def _no_op() -> None:
    pass


def _redeliver_interrupts(
    previous_hook: Callable[[sys.UnraisableHookArgs], object], unraisable: sys.UnraisableHookArgs
) -> None:
    """``sys.unraisablehook`` while a command runs: a KeyboardInterrupt raised where Python
    cannot propagate it (a signal handled inside a weakref callback) is not printed and lost
    but delivered again from a timer thread, so that it lands where it ends the command
    cleanly; anything else goes to ``previous_hook``. ``interrupt_main`` calls the Python
    handler, and does nothing where the signal is ignored or default by then (``raise_signal``
    would kill the process)."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        signum = getattr(unraisable.exc_type, "signum", signal.SIGINT)
        threading.Timer(0.01, _thread.interrupt_main, (signum,)).start()
        return
    previous_hook(unraisable)


def console() -> NoReturn:
    """The ``aevb`` command and ``python -m aevb.cli``: :func:`main` on ``sys.argv``, then exit
    with its status.

    Once the command is done, SIGINT and SIGTERM are ignored: the interpreter's shutdown (a
    few hundred milliseconds with torch loaded) resets Python's handlers to the default, so a
    signal then would kill a finished command silently (exit −2/−15, no message) although its
    work is complete; ignored handlers are left as they are until the process ends.
    """
    status = main(ignore_signals_after=True)
    # CPython marks a KeyboardInterrupt as unhandled when it leaves code run by ``exec`` of a
    # string (dataclasses and torch generate functions that way), even if a caller catches
    # it, and under ``python -m`` then kills itself with SIGINT at exit (-2 instead of our
    # 130). Every string ``exec`` clears the mark first; the interrupt was handled above.
    exec("pass")
    sys.exit(status)


def _leave_together() -> None:
    """Under ``torchrun``, wait until every process is done before any leaves the process
    group. Process 0 evaluates and writes the run folder after the others' last collective
    step; a process that destroyed the group and exited while process 0 still held its
    connections once aborted in gloo's teardown (``terminate called without an active
    exception``, SIGABRT), failing a finished run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _main(argv: Sequence[str] | None, started: Callable[[], None]) -> int:
    args = build_parser().parse_args(argv)
    before = _cpu_sample()  # the machine's CPU use while torch loads: are the cores free?
    import torch

    started()

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    elif hasattr(args, "threads") and torch.get_num_threads() > 1:
        threads, notice = _threads_for_a_busy_machine(torch.get_num_threads(), before)
        if notice:
            torch.set_num_threads(threads)
            print(notice, file=sys.stderr)

    try:
        with warnings.catch_warnings(), command_line():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            status = COMMANDS[args.command](args)
        _leave_together()
        return status
    except TrainingInterrupted as interrupted:
        hint = ""
        if interrupted.run_dir:
            with command_line():
                hint = f". Continue with: {resume_hint(interrupted.run_dir)}"
        print(f"\n{interrupted}{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except AevbError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as error:
        from aevb.distributed import collective_failure

        if not collective_failure(error):
            raise
        first = (str(error).strip().splitlines() or [""])[0][:200]
        print(
            f"error: the processes of this torchrun launch could not work together ({first}); "
            "a run folder keeps its last checkpoint",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    except MemoryError:
        print(
            "error: out of memory. Ask for less: a smaller --batch-size, fewer "
            "--importance-samples or --num-examples, or stream the training data from disk "
            "(--stream)",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@dataclass(frozen=True)
class _CpuSample:
    """A moment's CPU counters: the monotonic clock, the machine's busy CPU seconds (all
    cores, from ``/proc/stat``) and this process's own CPU seconds."""

    clock: float
    machine: float
    own: float


def _cpu_sample() -> _CpuSample | None:
    """The counters now, or ``None`` where ``/proc/stat`` cannot be read (not Linux)."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = sum(ticks[3:5])  # idle and iowait; busy: user, nice, system, irq, softirq, steal
    own = os.times()
    return _CpuSample(
        time.monotonic(), (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), own.user + own.system
    )


# Shortest span over which the cores' use is measured at start-up.
CPU_SAMPLE_SECONDS = 0.2


def _threads_for_a_busy_machine(threads: int, before: _CpuSample | None) -> tuple[int, str | None]:
    """torch's default of one thread per core, lowered to the cores other programs leave free,
    with the notice that says so (``None``: ``threads`` is kept).

    torch's threads meet at a barrier in every parallel operation, so on cores that other
    programs keep busy each step waits for the slowest, descheduled thread. On a two-core
    machine shared with other jobs, the default ``aevb train`` (digits, 50 epochs) took 19-76 s
    on two threads and 11-17 s on one; two epochs of MNIST (784-500-20, batches of 100)
    220-290 s against 55 s. Other programs' use is the smaller of the 1-minute load average
    (sustained, but still counting an aevb command that has just ended) and the cores busy,
    other than by this process, while torch loaded (current, but a moment's)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return threads, None
    if before is not None and time.monotonic() - before.clock < CPU_SAMPLE_SECONDS:
        time.sleep(CPU_SAMPLE_SECONDS - (time.monotonic() - before.clock))
    after = _cpu_sample()
    others = load
    if before is not None and after is not None:
        busy = (after.machine - before.machine) - (after.own - before.own)
        others = min(load, max(0.0, busy / (after.clock - before.clock)))
    cores = os.cpu_count() or threads
    free = min(threads, max(1, round(cores - others)))
    if free == threads:
        return threads, None
    return free, (
        f"notice: other programs keep {others:.1f} of the {cores} cores busy: computing on "
        f"{free} CPU thread{'s' if free > 1 else ''}, not {threads}, which would wait on them "
        "(--threads N chooses)"
    )


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    console()
