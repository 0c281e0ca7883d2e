"""The paper's experiments (Kingma & Welling 2014, §5), one function per figure.

Each ``figure*`` function trains what the figure needs with the paper's set-up
(:mod:`aevb.experiments.presets`), writes ``figureN.csv`` (every point), ``figureN.png`` and
``figureN.md`` (a summary; Figure 2 adds the dataset to the name: ``figure2-frey.*``) into
``out_dir``, and returns the rows. Training runs are ordinary aevb run folders under
``out_dir/runs``; calling a function again resumes unfinished runs and reuses finished ones
(with more ``train_samples``, a finished run is continued), so an interrupted reproduction
loses at most one epoch of any run.

* Figure 2: the lower bound (estimator B, one sample) on training and test data against the
  number of training samples evaluated, AEVB vs wake-sleep, per latent size.
* Figure 3: the marginal log-likelihood, estimated for every method by importance sampling
  with an HMC-fitted proposal (:func:`aevb.evaluation.hmc_proposal`), against training samples,
  for 1000 and 50000 training images; AEVB, wake-sleep and (for 1000) Monte Carlo EM.
* Figure 4: the 2-D latent manifolds of Frey Face and MNIST.
* Figure 5: random samples of MNIST models with 2, 5, 10 and 20 latent dimensions.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor
from tqdm.auto import tqdm

from aevb.data import Dataset, load_dataset
from aevb.errors import AevbError
from aevb.evaluation import evaluate, fixed_randomness, hmc_proposal
from aevb.experiments.presets import PRESETS, preset_config
from aevb.models import VAE
from aevb.objectives import METRICS_BATCH, METRICS_SEED
from aevb.runs import CONFIG_FILE, Run, TrainConfig, load_run, read_run, resume, train
from aevb.storage import atomic_write_text
from aevb.train import Callback, Trainer

FIGURE2_LATENT_DIMS = {"mnist": (3, 5, 10, 20, 200), "frey": (2, 5, 10, 20)}
PRESET = {"mnist": "paper-mnist", "frey": "paper-frey"}
# Defaults sized for two CPU cores; ``--full`` is the paper's 10⁸.
DEFAULT_TRAIN_SAMPLES = {"mnist": 300_000, "frey": 200_000}
FULL_TRAIN_SAMPLES = 100_000_000
METHODS = {"aevb": "sgvb-b", "wake-sleep": "wake-sleep", "mcem": "mcem"}
# Figure 2's bound on the training set is estimated on its first rows (the test set is whole).
MAX_EVAL_ROWS = 10_000
CURVE_FILE = "curve.jsonl"


def log_spaced_epochs(epochs: int, num_points: int) -> list[int]:
    """About ``num_points`` distinct epochs from 1 to ``epochs``, evenly spaced in log scale."""
    points = np.geomspace(1, max(epochs, 1), max(num_points, 1))
    return sorted({round(float(p)) for p in points} | {epochs})


def _epochs_for(train_samples: int, num_train: int) -> int:
    return max(1, math.ceil(train_samples / num_train))


def read_curve(run_dir: Path) -> list[dict]:
    """The run's curve points; where a resumed run measured an epoch twice, the last wins."""
    path = run_dir / CURVE_FILE
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list({(row["epoch"], row["split"]): row for row in rows}.values())


def _append_curve(run_dir: Path, rows: list[dict]) -> None:
    previous = (run_dir / CURVE_FILE).read_text() if (run_dir / CURVE_FILE).exists() else ""
    text = previous + "".join(json.dumps(row) + "\n" for row in rows)
    atomic_write_text(run_dir / CURVE_FILE, text)


Measure = Callable[[VAE, Tensor], float]


# Settings a reused run may differ in; any other difference is refused.
MAY_DIFFER = ("epochs", "device", "compile", "data_dir")


def _reuse_config(run_dir: Path, config: TrainConfig) -> TrainConfig | None:
    """The config to continue the run in ``run_dir`` with (its own, with ``config``'s epochs
    and device), or ``None`` if there is no run; an error if it was made with other settings."""
    if not (run_dir / CONFIG_FILE).exists():
        return None
    saved = read_run(run_dir).config
    different = [
        f"{name} {getattr(saved, name)!r} (now {value!r})"
        for name, value in dataclasses.asdict(config).items()
        if name not in MAY_DIFFER and value is not None and getattr(saved, name) != value
    ]
    if different:
        raise AevbError(
            f"{run_dir} holds a run made with other settings: {'; '.join(different)}. Use "
            "another --out folder, or delete that run folder to start it again"
        )
    return dataclasses.replace(saved, epochs=config.epochs, device=config.device)


def _check_curve_labels(run_dir: Path, labels: dict) -> None:
    """Refuse to extend a curve measured with other settings (estimator, rows, …)."""
    for row in read_curve(run_dir)[:1]:
        changed = {k: (row.get(k), v) for k, v in labels.items() if row.get(k) != v}
        if changed:
            raise AevbError(
                f"{run_dir / CURVE_FILE} was measured with other settings "
                f"(was, now): {changed}; use another --out folder"
            )


class CurveCallback(Callback):
    """Measures ``measure(model, x)`` on each evaluation split (rows as loaded) at the epochs
    of ``schedule`` and appends the points to the run's ``curve.jsonl``, after the epoch's
    checkpoint; when training (re)starts, the checkpoint's own epoch is measured if its point
    is missing (a kill cut it short)."""

    def __init__(
        self,
        run_dir: Path,
        eval_sets: dict[str, np.ndarray],
        measure: Measure,
        schedule: set[int],
        labels: dict,
    ):
        self.run_dir, self.eval_sets, self.measure = run_dir, eval_sets, measure
        self.schedule, self.labels = schedule, labels
        self.xs: dict[str, Tensor] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        transforms = trainer.data.transforms
        self.xs = {
            split: transforms.prepare(torch.from_numpy(rows[:MAX_EVAL_ROWS])).to(trainer.device)
            for split, rows in self.eval_sets.items()
        }
        self._measure(trainer, trainer.state.history[-1] if trainer.state.history else {})

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self._measure(trainer, record)

    def _measure(self, trainer: Trainer, record: dict) -> None:
        epoch = trainer.state.epoch
        if epoch not in self.schedule:
            return
        done = {(row["epoch"], row["split"]) for row in read_curve(self.run_dir)}
        extra = {k: v for k, v in record.items() if k == "acceptance_rate"}
        rows = [
            {
                **self.labels,
                "epoch": epoch,
                "train_samples": epoch * trainer.data.num_examples,
                "split": split,
                "value": self.measure(trainer.model, x),
                "train_seconds": trainer.state.train_seconds,
                **extra,
            }
            for split, x in self.xs.items()
            if (epoch, split) not in done
        ]
        if rows:
            _append_curve(self.run_dir, rows)


def train_with_curve(
    run_dir: Path,
    config: TrainConfig,
    dataset: Dataset,
    eval_sets: dict[str, np.ndarray],
    measure: Measure,
    num_points: int,
    labels: dict,
    progress: bool,
) -> list[dict]:
    """Train (or resume, or reuse) the run in ``run_dir``, measuring ``measure(model, x)`` on
    each evaluation split at log-spaced epochs (:class:`CurveCallback`).

    Returns the run's curve: one row per (epoch, split) with ``labels`` and the cumulative
    ``train_samples`` and training seconds. A point whose measurement was cut short by a kill
    (after its epoch's checkpoint) is measured when the run resumes, from that checkpoint.
    """
    _check_curve_labels(run_dir, labels)
    reused = _reuse_config(run_dir, config)
    config = reused or config
    schedule = set(log_spaced_epochs(config.epochs, num_points))
    curve = CurveCallback(run_dir, eval_sets, measure, schedule, labels)
    if reused is not None:
        resume(
            run_dir,
            epochs=config.epochs,
            device=config.device,
            dataset=dataset,
            callbacks=[curve],
            progress=progress,
        )
    else:
        train(config, run_dir, dataset=dataset, callbacks=[curve], progress=progress)
    return read_curve(run_dir)


def elbo_measure(model: VAE, x: Tensor) -> float:
    """The ELBO by estimator B with one sample per datapoint (nats per example)."""
    return evaluate(model, x, 1, batch_size=METRICS_BATCH, seed=METRICS_SEED).elbo


def marginal_likelihood_measure(importance_samples: int = 1000) -> Measure:
    """log p(x) by importance sampling from an HMC-fitted proposal (nats per example)."""
    proposal = hmc_proposal()

    def measure(model: VAE, x: Tensor) -> float:
        result = evaluate(model, x, importance_samples, seed=METRICS_SEED, proposal=proposal)
        return result.log_likelihood

    return measure


def _load(
    name: str, data_dir: str | None, progress: bool, train_rows: int | None = None
) -> Dataset:
    """The dataset with no validation split (as in the paper), optionally only its first
    ``train_rows`` training images (for quick looks and tests; the dataset is then named
    ``{name}-n{rows}``, and so are its run folders)."""
    if name not in PRESET:
        raise AevbError(f"the paper's experiments use mnist or frey, not {name!r}")
    data = load_dataset(name, data_dir, val_fraction=0.0, progress=progress)
    if train_rows is not None and train_rows < len(data.train):
        data = dataclasses.replace(
            data, name=f"{name}-n{train_rows}", train=data.train[:train_rows]
        )
    return data


def _lr_override(lr: float | None) -> dict:
    return {} if lr is None else {"lr": lr}


def _lr_suffix(lr: float | None, preset: str) -> str:
    """Run folders with a step size other than the preset's carry it in their name."""
    return "" if lr is None or lr == PRESETS[preset]["lr"] else f"-lr{lr:g}"


def _run_dir(out_dir: Path, data: Dataset, latent_dim: int, method: str) -> Path:
    """``runs/{dataset}-z{N_z}-{method}`` (the dataset's name says if it was cut)."""
    return out_dir / "runs" / f"{data.name}-z{latent_dim}-{method}"


def _announce(message: str, progress: bool) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    text = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


# ------------------------------------------------------------------------------------ figure 2
def figure2(
    out_dir: str | Path,
    dataset: str = "frey",
    data_dir: str | None = None,
    latent_dims: Sequence[int] | None = None,
    train_samples: int | None = None,
    methods: Sequence[str] = ("aevb", "wake-sleep"),
    num_points: int = 12,
    train_rows: int | None = None,
    lr: float | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Lower bound vs training samples evaluated, AEVB vs wake-sleep (the paper's Fig. 2).

    ``lr`` replaces the preset's Adagrad step size (the paper chose from 0.01, 0.02, 0.1).
    """
    out_dir = Path(out_dir)
    data = _load(dataset, data_dir, progress, train_rows)
    latent_dims = tuple(latent_dims or FIGURE2_LATENT_DIMS[dataset])
    train_samples = int(train_samples or DEFAULT_TRAIN_SAMPLES[dataset])
    epochs = _epochs_for(train_samples, len(data.train))
    rows: list[dict] = []
    runs = [(d, m) for d in latent_dims for m in methods]
    for index, (latent_dim, method) in enumerate(runs, 1):
        config = preset_config(
            PRESET[dataset],
            len(data.train),
            data_dir=data_dir,
            latent_dim=latent_dim,
            objective=METHODS[method],
            epochs=epochs,
            device=device,
            seed=seed,
            **_lr_override(lr),
        )
        run_dir = _run_dir(out_dir, data, latent_dim, method + _lr_suffix(lr, PRESET[dataset]))
        message = f"figure 2 [{index}/{len(runs)}]: {dataset}, N_z = {latent_dim}, {method}"
        _announce(message, progress)
        labels = {"dataset": dataset, "method": method, "latent_dim": latent_dim}
        eval_sets = {"train": data.train, "test": data.test}
        rows += train_with_curve(
            run_dir, config, data, eval_sets, elbo_measure, num_points, labels, progress
        )
    name = f"figure2-{dataset}"
    _write_csv(out_dir / f"{name}.csv", rows)
    from aevb.plots import plot_curves

    plot_curves(
        rows,
        out_dir / f"{name}.png",
        panel_key="latent_dim",
        panel_title="$N_z$ = {}",
        ylabel=r"lower bound $\mathcal{L}$ (nats per example)",
        title=f"{dataset}: AEVB vs wake-sleep",
    )
    _write_summary(out_dir / f"{name}.md", "Figure 2", dataset, rows, "latent_dim", "lower bound")
    return rows


def _write_summary(
    path: Path, figure: str, dataset: str, rows: Sequence[dict], panel_key: str, quantity: str
) -> None:
    """A markdown table of each run's last point, and whether AEVB ends above the others."""
    final: dict[tuple, dict] = {}
    for row in rows:
        key = (row[panel_key], row["method"], row["split"])
        if key not in final or row["epoch"] > final[key]["epoch"]:
            final[key] = row
    panels = sorted({key[0] for key in final})
    methods = list(dict.fromkeys(key[1] for key in final))
    lines = [
        f"# {figure}: {dataset}",
        "",
        f"Final {quantity} (nats per example) after the last evaluated epoch, and the run's "
        "training time.",
        "",
        f"| {panel_key} | method | train samples | train | test | training seconds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for panel in panels:
        for method in methods:
            train, test = final.get((panel, method, "train")), final.get((panel, method, "test"))
            if train is None or test is None:
                continue
            lines.append(
                f"| {panel} | {method} | {train['train_samples']:,} | {train['value']:.2f} | "
                f"{test['value']:.2f} | {train['train_seconds']:.0f} |"
            )
        aevb = final.get((panel, "aevb", "test"))
        others = [
            final[(panel, m, "test")]
            for m in methods
            if m != "aevb" and (panel, m, "test") in final
        ]
        if aevb is not None and others:
            verdicts.append(
                f"- {panel_key} = {panel}: AEVB's final test {quantity}, {aevb['value']:.2f}, is "
                + ", ".join(
                    f"{'above' if aevb['value'] >= o['value'] else 'BELOW'} {o['method']}'s "
                    f"({o['value']:.2f})"
                    for o in others
                )
            )
    lines += ["", *verdicts, ""]
    atomic_write_text(path, "\n".join(lines))


# ------------------------------------------------------------------------------------ figure 3
FIGURE3_TRAIN_SIZES = (1000, 50000)
FIGURE3_DEFAULT_TRAIN_SAMPLES = 1_000_000
# The paper ran Monte Carlo EM only on the small training set: it keeps a sample per datapoint
# and is not an online algorithm.
MCEM_MAX_TRAIN = 1000


def figure3(
    out_dir: str | Path,
    data_dir: str | None = None,
    train_sizes: Sequence[int] = FIGURE3_TRAIN_SIZES,
    train_samples: int | None = None,
    methods: Sequence[str] = ("aevb", "wake-sleep", "mcem"),
    latent_dim: int = 3,
    hidden: int = 100,
    num_points: int = 6,
    eval_rows: int = 100,
    importance_samples: int = 1000,
    lr: float | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Marginal log-likelihood vs training samples on MNIST subsets (the paper's Fig. 3).

    Every method's model is scored by the same estimator: importance sampling with
    ``importance_samples`` draws from an HMC-fitted proposal, on the first ``eval_rows``
    training and test images.
    """
    out_dir = Path(out_dir)
    data = _load("mnist", data_dir, progress)
    train_samples = int(train_samples or FIGURE3_DEFAULT_TRAIN_SAMPLES)
    measure = marginal_likelihood_measure(importance_samples)
    runs = [
        (n, m) for n in train_sizes for m in methods if not (m == "mcem" and n > MCEM_MAX_TRAIN)
    ]
    too_large = [n for n in train_sizes if n > len(data.train)]
    if too_large:
        raise AevbError(f"MNIST has {len(data.train)} training images, not {too_large[0]}")
    rows: list[dict] = []
    for index, (num_train, method) in enumerate(runs, 1):
        subset = dataclasses.replace(
            data, train=data.train[:num_train], train_labels=data.train_labels[:num_train]
        )
        config = preset_config(
            "paper-mnist",
            num_train,
            data_dir=data_dir,
            latent_dim=latent_dim,
            hidden=(hidden,),
            objective=METHODS[method],
            epochs=_epochs_for(train_samples, num_train),
            device=device,
            seed=seed,
            **_lr_override(lr),
        )
        suffix = _lr_suffix(lr, "paper-mnist")
        name = f"mnist-n{num_train}-z{latent_dim}-h{hidden}-{method}{suffix}"
        run_dir = out_dir / "runs" / name
        _announce(f"figure 3 [{index}/{len(runs)}]: N_train = {num_train}, {method}", progress)
        labels = {
            "dataset": "mnist",
            "method": method,
            "num_train": num_train,
            "eval_rows": eval_rows,
            "importance_samples": importance_samples,
        }
        eval_sets = {"train": subset.train[:eval_rows], "test": data.test[:eval_rows]}
        rows += train_with_curve(
            run_dir, config, subset, eval_sets, measure, num_points, labels, progress
        )
    _write_csv(out_dir / "figure3.csv", rows)
    from aevb.plots import plot_curves

    plot_curves(
        rows,
        out_dir / "figure3.png",
        panel_key="num_train",
        panel_title="$N_{{train}}$ = {}",
        ylabel=r"marginal log-likelihood $\log p(x)$ (nats)",
        title=f"MNIST, $N_z$ = {latent_dim}: AEVB vs wake-sleep vs Monte Carlo EM",
    )
    _write_summary(out_dir / "figure3.md", "Figure 3", "mnist", rows, "num_train", "log p(x)")
    return rows


# --------------------------------------------------------------------------- figures 4 and 5
FIGURE5_LATENT_DIMS = (2, 5, 10, 20)


def _trained_model(
    out_dir: Path,
    dataset: str,
    data: Dataset,
    data_dir: str | None,
    latent_dim: int,
    train_samples: int,
    device: str,
    seed: int,
    progress: bool,
) -> Run:
    """Train (or reuse) the AEVB run ``runs/{dataset}-z{latent_dim}-aevb`` — the same folder
    Figure 2 uses — and open it with its last weights."""
    config = preset_config(
        PRESET[dataset],
        len(data.train),
        data_dir=data_dir,
        latent_dim=latent_dim,
        epochs=_epochs_for(train_samples, len(data.train)),
        device=device,
        seed=seed,
    )
    run_dir = _run_dir(out_dir, data, latent_dim, "aevb")
    labels = {"dataset": dataset, "method": "aevb", "latent_dim": latent_dim}
    eval_sets = {"train": data.train, "test": data.test}
    train_with_curve(run_dir, config, data, eval_sets, elbo_measure, 12, labels, progress)
    return load_run(run_dir, which="last", device=device)


def latent_grid(size: int, low: float = 0.05, high: float = 0.95) -> Tensor:
    """A size×size grid of 2-D latents: evenly spaced quantiles in (low, high) of each axis
    pushed through the standard normal inverse CDF (the paper's Fig. 4). (size², 2), rows
    running from top (high z₂) to bottom, columns left to right."""
    values = torch.tensor(norm.ppf(np.linspace(low, high, size)), dtype=torch.float32)
    z1, z2 = torch.meshgrid(values, values.flip(0), indexing="xy")
    return torch.stack((z1.reshape(-1), z2.reshape(-1)), dim=1)


def figure4(
    out_dir: str | Path,
    data_dir: str | None = None,
    datasets: Sequence[str] = ("frey", "mnist"),
    train_samples: int | None = None,
    grid_size: int = 20,
    train_rows: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Learned 2-D manifolds (decoder means on a grid of z), the paper's Fig. 4."""
    from aevb.plots import save_manifolds

    out_dir = Path(out_dir)
    panels, rows = [], []
    for dataset in datasets:
        data = _load(dataset, data_dir, progress, train_rows)
        samples = int(train_samples or DEFAULT_TRAIN_SAMPLES[dataset])
        _announce(f"figure 4: {dataset}, N_z = 2", progress)
        run = _trained_model(out_dir, dataset, data, data_dir, 2, samples, device, seed, progress)
        z = latent_grid(grid_size).to(run.device)
        with torch.no_grad():
            images = run.model.likelihood(z).mean.cpu().numpy()
        panels.append((dataset, images))
        for (z1, z2), image in zip(z.tolist(), images, strict=True):
            rows.append({"dataset": dataset, "z1": z1, "z2": z2, "mean_intensity": image.mean()})
    save_manifolds(panels, grid_size, out_dir / "figure4.png")
    _write_csv(out_dir / "figure4.csv", rows)
    atomic_write_text(
        out_dir / "figure4.md",
        "# Figure 4: learned 2-D manifolds\n\n"
        f"Decoder means at a {grid_size}×{grid_size} grid of z = Φ⁻¹(u), u evenly spaced in "
        f"[0.05, 0.95] per axis, for {', '.join(datasets)} (AEVB, N_z = 2, the paper's "
        "set-up). Figure: `figure4.png`; models: `runs/*-z2-aevb`.\n",
    )
    return rows


def figure5(
    out_dir: str | Path,
    data_dir: str | None = None,
    latent_dims: Sequence[int] = FIGURE5_LATENT_DIMS,
    train_samples: int | None = None,
    num_samples: int = 100,
    train_rows: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Random samples (decoder means of z ~ p(z)) from MNIST models, the paper's Fig. 5."""
    from aevb.plots import save_sample_panels

    out_dir = Path(out_dir)
    data = _load("mnist", data_dir, progress, train_rows)
    samples = int(train_samples or DEFAULT_TRAIN_SAMPLES["mnist"])
    panels, rows = [], []
    for latent_dim in latent_dims:
        _announce(f"figure 5: mnist, N_z = {latent_dim}", progress)
        run = _trained_model(
            out_dir, "mnist", data, data_dir, latent_dim, samples, device, seed, progress
        )
        with fixed_randomness(seed, run.device):
            images = run.sample(num_samples).cpu().numpy()
        panels.append((f"$N_z$ = {latent_dim}", images))
        test = run.prepare(data.test[:MAX_EVAL_ROWS])
        rows.append({"latent_dim": latent_dim, "test_elbo": elbo_measure(run.model, test)})
    save_sample_panels(panels, out_dir / "figure5.png")
    _write_csv(out_dir / "figure5.csv", rows)
    table = "".join(f"| {r['latent_dim']} | {r['test_elbo']:.2f} |\n" for r in rows)
    atomic_write_text(
        out_dir / "figure5.md",
        "# Figure 5: random MNIST samples\n\n"
        f"{num_samples} decoder means of z ~ N(0, I) per model (AEVB, the paper's set-up), "
        "in `figure5.png`.\n\n| N_z | test lower bound (nats) |\n|---:|---:|\n" + table,
    )
    return rows
