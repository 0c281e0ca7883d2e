"""The ``aevb`` command line: ``train``, ``evaluate``, ``sample``, ``reconstruct``, ``embed``,
``score``, ``reproduce``.

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
from typing import TYPE_CHECKING

from aevb.errors import AevbError

if TYPE_CHECKING:
    import numpy as np

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# Settings that may change when a run is resumed; any other flag is refused with --resume.
RESUMABLE = ("epochs", "device", "compile")
# Rows encoded at a time by ``aevb embed``.
EMBED_BATCH = 10_000


THREADS_HELP = "CPU threads for tensor operations (default: one per core)"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from aevb.acceleration import PRECISIONS
    from aevb.data import DATASETS
    from aevb.models import LIKELIHOODS, POSTERIORS
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
        help=f"one of {', '.join(DATASETS)}, or a .npy/.npz/.csv/.parquet file "
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
    add("--posterior", choices=POSTERIORS, help="q(z|x) covariance (default diagonal)")
    add(
        "--objective",
        choices=sorted(OBJECTIVES),
        help="sgvb-a, sgvb-b (default), iwae (with --samples k), score-function, wake-sleep "
        "(the paper's baseline) or autoencoder (plain, no KL: not a VAE)",
    )
    add("--samples", type=_positive_int, help="latent samples L (or k) per datapoint (default 1)")
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
    add(
        "--max-nonfinite-steps",
        type=_positive_int,
        help="stop with a diagnosis after this many steps with a NaN or infinite loss or "
        "gradient; each such step is skipped (default 10)",
    )
    add("--seed", type=int, help="random seed; a CPU run is repeatable bit for bit (default 0)")
    add("--device", help="auto (default), cpu, cuda or cuda:N")
    add(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="compile the training step (CUDA graphs on a GPU); default: on for CUDA, and on "
        "the CPU for runs of 20,000 steps or more. Falls back to eager with a notice",
    )
    add(
        "--precision",
        choices=PRECISIONS,
        help="bf16: networks under bfloat16 autocast (for GPUs); densities and loss stay "
        "float32 (default float32)",
    )
    add("--threads", type=_positive_int, help=THREADS_HELP)
    add("--out", help="run folder to create (default runs/<dataset>-<time>)")
    add(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last "
        "checkpoint (only --epochs, --device and --compile may change)",
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
    evaluate = commands.add_parser(
        "evaluate", help="importance-sampled log-likelihood, IWAE bound, ELBO, active units"
    )
    evaluate.add_argument("run_dir", help="a run folder written by aevb train")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test")
    evaluate.add_argument(
        "--importance-samples",
        type=_positive_int,
        default=5000,
        help="k draws from the encoder per datapoint (default 5000)",
    )
    evaluate.add_argument(
        "--iwae-samples",
        type=_positive_int,
        default=50,
        help="m of the reported IWAE bound L_m (default 50)",
    )
    evaluate.add_argument(
        "--batch-size",
        type=_positive_int,
        help="datapoints per chunk (default: sized to ~64 MiB per chunk)",
    )
    evaluate.add_argument(
        "--num-examples", type=_positive_int, help="evaluate only the first N examples of the split"
    )
    evaluate.add_argument("--float64", action="store_true", help="accumulate in float64")
    evaluate.add_argument(
        "--which",
        choices=("best", "last"),
        default="best",
        help="checkpoint to evaluate (default best)",
    )
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--threads", type=_positive_int, help=THREADS_HELP)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_table_commands(commands)
    _add_reproduce(commands)
    return parser


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
        sub.add_argument("run_dir", help="a run folder written by aevb train")
        sub.add_argument(
            "--data",
            required=True,
            help="the rows: a .csv (header row optional), .parquet or .npy file with the run's "
            "number of columns",
        )
        sub.add_argument("--out", required=True, help="CSV file to write (one line per row)")
        sub.add_argument(
            "--which",
            choices=("best", "last"),
            default="best",
            help="checkpoint to use (default best)",
        )
        sub.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
        sub.add_argument("--threads", type=_positive_int, help=THREADS_HELP)
    embed.add_argument(
        "--std", action="store_true", help="also write the posterior standard deviations"
    )
    score.add_argument(
        "--importance-samples",
        type=_positive_int,
        default=1000,
        help="k draws from the encoder per row (default 1000)",
    )
    score.add_argument("--seed", type=int, default=0)


def _add_reproduce(commands) -> None:
    from aevb.reproduce import FIGURE3_DEFAULT_TRAIN_SAMPLES, FULL_TRAIN_SAMPLES

    reproduce = commands.add_parser(
        "reproduce",
        help="regenerate one of the paper's figures (CSV, PNG and a markdown summary)",
    )
    figures = reproduce.add_subparsers(dest="figure", required=True, metavar="FIGURE")

    def figure(name: str, help: str) -> argparse.ArgumentParser:
        sub = figures.add_parser(name, help=help)
        sub.add_argument("--out", default=f"reproduce/{name}", help="output folder")
        sub.add_argument("--data-dir", help="folder holding the datasets (or AEVB_DATA_DIR)")
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
        sub.add_argument("--seed", type=int, default=0)
        if name in ("figure2", "figure3"):
            sub.add_argument(
                "--lr",
                type=float,
                help="Adagrad step size (default 0.02; the paper chose from 0.01, 0.02, 0.1)",
            )
        sub.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
        sub.add_argument("--threads", type=_positive_int, help=THREADS_HELP)
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        return sub

    def train_rows(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--train-rows",
            type=_positive_int,
            help="use only the first N training images (a quick look; default: all)",
        )

    fig2 = figure("figure2", "lower bound vs training samples, AEVB vs wake-sleep")
    train_rows(fig2)
    fig2.add_argument("--dataset", choices=("frey", "mnist"), default="frey")
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
        f"(default {FIGURE3_DEFAULT_TRAIN_SAMPLES:.0e} samples)",
    )
    fig3.add_argument(
        "--train-sizes", type=_positive_int, nargs="+", default=[1000, 50000], help="N_train"
    )
    fig3.add_argument(
        "--eval-rows", type=_positive_int, default=100, help="train and test images scored"
    )
    fig3.add_argument("--importance-samples", type=_positive_int, default=1000, help="k per image")
    train_rows(figure("figure4", "learned 2-D manifolds of Frey Face and MNIST"))
    train_rows(figure("figure5", "random samples of MNIST models with N_z = 2, 5, 10, 20"))

    def contrast(name: str, help: str, dataset: str) -> argparse.ArgumentParser:
        sub = figures.add_parser(name, help=help)
        sub.add_argument("--out", default=f"reproduce/{name}", help="output folder")
        sub.add_argument("--dataset", default=dataset, help=f"default {dataset}")
        sub.add_argument("--data-dir", help="folder holding the datasets (or AEVB_DATA_DIR)")
        sub.add_argument("--epochs", type=_positive_int, help="training epochs")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--threads", type=_positive_int, help=THREADS_HELP)
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        return sub

    ae = contrast("ae-vs-vae", "plain autoencoder vs VAE: irregular vs continuous codes", "mnist")
    ae.add_argument("--latent-dim", type=_positive_int, default=2)
    ae.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    pca = contrast("pca", "PCA and linear autoencoder vs linear VAE (probabilistic PCA)", "digits")
    pca.add_argument("--latent-dims", type=_positive_int, nargs="+", default=[2, 5, 10])


def _train(args: argparse.Namespace) -> int:
    from aevb.training import TrainConfig, resume, train

    given = {
        key: value
        for key, value in vars(args).items()
        if value is not None and key not in ("command", "out", "resume", "no_progress", "threads")
    }
    progress = not args.no_progress
    if args.resume:
        refused = sorted(set(given) - set(RESUMABLE))
        if refused or args.out:
            flags = ", ".join(
                "--" + k.replace("_", "-") for k in refused + (["out"] if args.out else [])
            )
            raise AevbError(
                f"{flags} cannot change when resuming; only --epochs, --device and --compile can"
            )
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
    from aevb.plots import save_reconstructions
    from aevb.training import load_model, load_run_split, read_run_config

    run = read_run_config(args.run_dir)
    image_shape = _image_shape(run, "reconstruct")
    model = load_model(args.run_dir, device=args.device)
    x = load_run_split(run, args.split, args.num).to(next(model.parameters()).device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_reconstructions(x, model.reconstruct(x), image_shape, args.out)
    print(f"wrote {len(x)} reconstructions to {args.out}")
    return 0


def _image_shape(run: dict, command: str) -> tuple[int, int]:
    shape = run["data"].get("image_shape")
    if not shape or len(shape) != 2:
        raise AevbError(f"aevb {command} draws images, but this run's data are not images")
    return tuple(shape)


def _evaluate(args: argparse.Namespace) -> int:
    from aevb.diagnostics import warn_if_collapsed
    from aevb.evaluation import evaluate
    from aevb.training import load_model, load_run_split, read_run_config

    run = read_run_config(args.run_dir)
    model = load_model(args.run_dir, which=args.which, device=args.device)
    x = load_run_split(run, args.split, args.num_examples).to(next(model.parameters()).device)
    result = evaluate(
        model,
        x,
        importance_samples=args.importance_samples,
        iwae_samples=args.iwae_samples,
        batch_size=args.batch_size,
        float64=args.float64,
        seed=args.seed,
        progress=not args.no_progress,
    )
    values = {
        "run_dir": str(args.run_dir),
        "split": args.split,
        "checkpoint": args.which,
        **result.to_dict(),
    }
    if args.json:
        print(json.dumps(values))
    else:
        print(_table(values))
    warn_if_collapsed(result.active_units, result.latent_dim)
    return 0


def _read_rows(args: argparse.Namespace, run: dict) -> np.ndarray:
    """All rows of ``args.data`` as (N, D) float32, checked against the run's D features."""
    from aevb.data import load_table

    x, columns = load_table(args.data)
    expected = int(run["model"]["data_dim"])
    if x.shape[1] != expected:
        named = ""
        if columns:
            named = f" ({', '.join(columns[:8])}{', …' if len(columns) > 8 else ''})"
        raise AevbError(
            f"{args.data} has {x.shape[1]} column(s){named} but the model in {args.run_dir} "
            f"was trained on {expected}; give the same columns, in the same order"
        )
    return x


def _write_csv(path: str, header: list[str], values: np.ndarray) -> None:
    """Write (N, len(header)) ``values`` under one header line; 9 significant digits."""
    import numpy as np

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(path, values, fmt="%.9g", delimiter=",", header=",".join(header), comments="")
    except OSError as error:
        raise AevbError(f"cannot write {path}: {error}") from error


def _embed(args: argparse.Namespace) -> int:
    import torch

    from aevb.training import load_model, read_run_config

    run = read_run_config(args.run_dir)
    x = _read_rows(args, run)
    model = load_model(args.run_dir, which=args.which, device=args.device)
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), EMBED_BATCH):
            q = model.posterior(torch.from_numpy(x[start : start + EMBED_BATCH]).to(device))
            parts.append(torch.cat([q.mean, q.stddev], 1) if args.std else q.mean)
    codes = torch.cat(parts).cpu().numpy()  # (N, latent_dim), or (N, 2 latent_dim) with --std
    d = model.config.latent_dim
    header = [f"z{i}" for i in range(1, d + 1)]
    if args.std:
        header += [f"std{i}" for i in range(1, d + 1)]
    _write_csv(args.out, header, codes)
    print(f"wrote {len(codes)} codes of {d} dimensions to {args.out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from aevb.evaluation import log_likelihood_per_example
    from aevb.training import TrainConfig, binarize_once, load_model, read_run_config

    run = read_run_config(args.run_dir)
    x = _read_rows(args, run)
    model = load_model(args.run_dir, which=args.which, device=args.device)
    binarize = TrainConfig.from_dict(run["train"]).binarize
    if model.config.likelihood == "bernoulli":
        # Scored like the run's own evaluation data (aevb evaluate): binarized with the same
        # fixed seed, so the numbers are comparable.
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise AevbError(
                f"{args.data} spans [{lo:g}, {hi:g}], but the model in {args.run_dir} has a "
                "Bernoulli likelihood: its data must lie in [0, 1]"
            )
        if binarize in (None, "none") and not bool(((x == 0) | (x == 1)).all()):
            raise AevbError(
                f"{args.data} holds values other than 0 and 1, but the model in {args.run_dir} "
                "was trained on binary data without binarization: the Bernoulli log-probability "
                "of a grey value is not a log-likelihood"
            )
    rows = binarize_once(x, binarize or "none").to(next(model.parameters()).device)
    scores = log_likelihood_per_example(model, rows, args.importance_samples, args.seed)
    _write_csv(args.out, ["log_likelihood"], scores.cpu().numpy()[:, None])
    print(
        f"wrote {len(scores)} log-likelihoods (nats, k = {args.importance_samples}; mean "
        f"{float(scores.mean()):.3f}) to {args.out}"
    )
    return 0


def _table(values: dict) -> str:
    rows = [
        (
            "log-likelihood log p(x)",
            f"{values['log_likelihood']:.3f} ± "
            f"{values['log_likelihood_se']:.3f} nats (k = {values['importance_samples']})",
        ),
        (f"IWAE bound L_{values['iwae_samples']}", f"{values['iwae_bound']:.3f} nats"),
        ("ELBO (estimator B)", f"{values['elbo']:.3f} nats"),
        ("ELBO (estimator A)", f"{values['elbo_a']:.3f} nats"),
        ("reconstruction E_q log p(x|z)", f"{values['reconstruction']:.3f} nats"),
        ("KL(q(z|x) ‖ p(z))", f"{values['kl']:.3f} nats"),
        ("bits per dimension", f"{values['bits_per_dim']:.4f}"),
        ("active units", f"{values['active_units']} of {values['latent_dim']}"),
        ("examples", f"{values['num_examples']} ({values['split']} split)"),
        ("seconds", f"{values['seconds']:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _reproduce(args: argparse.Namespace) -> int:
    from aevb import reproduce

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


def _contrast(args: argparse.Namespace) -> int:
    from aevb import contrasts

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
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aevb`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    import torch

    from aevb.training import TrainingInterrupted

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)

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
