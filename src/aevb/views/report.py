"""``aevb report``: one self-contained HTML page about a trained run.

The page holds the training curves (``metrics.jsonl``), samples, reconstructions, the learned
manifold (a decoded grid of latents), the test posterior means, the KL and activity of each
latent unit, the evaluation (:meth:`aevb.runs.Run.evaluate`) and the run's configuration.
Every figure is embedded as a base64 PNG ``data:`` URI and the style sheet is inline, so the
file opens anywhere, offline, and can be mailed or archived alone.
"""

from __future__ import annotations

import html
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from aevb.conditional import is_conditional
from aevb.evaluation import ACTIVITY_THRESHOLD, Evaluation, fixed_randomness
from aevb.plots import figure_png, grid_png, interleaved
from aevb.runs import Run, load_run
from aevb.runs.run import METRICS_FILE, SUMMARY_FILE, read_history
from aevb.storage import atomic_write_text, check_output_file, make_folder
from aevb.views.latent_space import (
    GRID_QUANTILES,
    Codes,
    PrincipalPlane,
    data_uri,
    decode,
    encode_rows,
    prior_quantiles,
    test_labels,
)

__all__ = ["REPORT_FILE", "Report", "write_report"]

REPORT_FILE = "report.html"
# Decoded latents per side of the manifold grid (the paper's Fig. 4 has 20).
GRID_SIZE = 20
# Images in the samples grid, and test rows reconstructed.
NUM_SAMPLES = 64
NUM_RECONSTRUCTIONS = 16
# Rows drawn as line plots for a table run.
TABLE_SAMPLES = 8
TABLE_RECONSTRUCTIONS = 4
# Latents decoded along each principal direction for a table run.
TRAVERSAL_STEPS = 7
# Of metrics.jsonl: the per-epoch curves drawn, and their axis labels.
CURVES = {
    "elbo": "ELBO",
    "reconstruction": "reconstruction E_q log p(x|z)",
    "kl": "KL(q(z|x) ‖ p(z))",
}


@dataclass(frozen=True)
class Report:
    """A written report: its ``path``, the ``sections`` it holds (HTML ids, in order), the
    ``evaluation`` it shows and the ``seconds`` it took."""

    path: Path
    sections: tuple[str, ...]
    evaluation: Evaluation
    seconds: float


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    importance_samples: int = 1000,
    num_examples: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    which: str = "best",
    progress: bool = True,
) -> Report:
    """Write the report of the run in ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``),
    replacing it atomically. The evaluation and the latent views use the first
    ``num_examples`` test rows, with ``importance_samples`` k draws per row for log p(x);
    ``seed`` fixes every random draw. ``progress``: a line per stage (and the evaluation's
    progress bar) on stderr."""
    started = time.perf_counter()
    path = check_output_file(Path(run_dir) / REPORT_FILE if out is None else out, (".html",))

    def stage(text: str) -> None:
        if progress:
            print(f"report: {text}", file=sys.stderr, flush=True)

    stage(f"loading {run_dir}")
    run = load_run(run_dir, which=which, device=device)
    x = run.split("test", num_examples)
    labels = test_labels(run, num_examples)
    given = labels if is_conditional(run.model) else None
    stage(f"evaluating {len(x)} test rows with k = {importance_samples} importance samples")
    evaluation = run.evaluate(
        x,
        labels=given,
        importance_samples=importance_samples,
        seed=seed,
        progress=progress,
        warn=False,  # the page says it
    )
    stage("drawing the figures")
    codes = encode_rows(run, x, given)
    sections = [
        _evaluation_section(evaluation, run),
        _curves_section(run.run_dir),
        _samples_section(run, seed),
        _reconstructions_section(run, x, given),
        _manifold_section(run, codes),
        _scatter_section(run, codes, labels),
        _units_section(evaluation, codes),
        _config_section(run),
    ]
    page = _page(run, sections)
    make_folder(path.parent)
    atomic_write_text(path, page)
    return Report(path, tuple(s.id for s in sections), evaluation, time.perf_counter() - started)


@dataclass(frozen=True)
class _Section:
    id: str
    title: str
    body: str


# --------------------------------------------------------------------------- sections
def _evaluation_section(result: Evaluation, run: Run) -> _Section:
    conditional = is_conditional(run.model)
    rows = [
        # a conditional model's densities are of x given its class
        (name.replace("p(x)", "p(x|y)") if conditional else name, value)
        for name, value in result.rows()
    ]
    rows += [
        ("examples", f"the first {result.num_examples} test rows"),
        ("seconds", f"{result.seconds:.1f}"),
    ]
    given = " given the class y" if conditional else ""
    body = _table(rows) + (
        f"<p class='note'>Densities of the data as loaded{given} (the run's transforms "
        "included), per example.</p>"
    )
    diagnostics = result.importance_diagnostics
    warning = None if diagnostics is None else diagnostics.warning()
    if warning:
        body += f"<p class='warning'>{html.escape(warning)}.</p>"
    return _Section("evaluation", "Evaluation on the test split", body)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_shown(v) for v in value[:20]) + (", …" if len(value) > 20 else "")
    return str(value)


def _curves_section(run_dir: Path) -> _Section:
    history, skipped = read_history(run_dir / METRICS_FILE)
    title = "Training curves"
    panels = [m for m in CURVES if any(f"{s}_{m}" in r for r in history for s in ("train", "val"))]
    if not panels:
        return _Section("curves", title, f"<p>No per-epoch metrics in {METRICS_FILE}.</p>")
    figure = Figure(figsize=(4.2 * len(panels), 3.4))
    best = _read_json(run_dir / SUMMARY_FILE).get("best_epoch")
    for axes, metric in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for split, name in (("train", "train"), ("val", "validation")):
            key = f"{split}_{metric}"
            points = [(r["epoch"], r[key]) for r in history if isinstance(r.get(key), int | float)]
            if points:
                epochs, values = zip(*points, strict=True)
                axes.plot(epochs, values, marker=".", label=name)
        if isinstance(best, int) and best > 0:
            axes.axvline(best, color="grey", linestyle=":", linewidth=1, label="best epoch")
        axes.set_title(CURVES[metric], fontsize="medium")
        axes.set_xlabel("epoch")
        axes.set_ylabel("nats per example")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    note = f"<p class='note'>{skipped} unreadable line(s) of {METRICS_FILE} left out.</p>"
    return _Section(
        "curves", title, _figure_html(figure, "training curves") + (note * bool(skipped))
    )


def _samples_section(run: Run, seed: int) -> _Section:
    columns = run.model.num_classes if is_conditional(run.model) else None
    count = NUM_SAMPLES if run.is_image else TABLE_SAMPLES
    if columns:
        count = columns * max(1, count // columns)
    with fixed_randomness(seed, run.device):
        samples = run.sample(count).cpu()
    caption = "Decoder means E[x|z] at z ~ p(z)"
    if columns:
        caption += f"; a column per class (0 to {columns - 1})"
    if run.is_image:
        body = _image_html(grid_png(samples, columns, min_pixels=480), "samples")
    else:
        figure = _rows_figure([(f"sample {i + 1}", row, "-") for i, row in enumerate(samples)])
        body = _figure_html(figure, "samples")
    return _Section("samples", "Samples", body + f"<p class='note'>{caption}.</p>")


def _reconstructions_section(run: Run, x: Tensor, labels: Tensor | None) -> _Section:
    count = NUM_RECONSTRUCTIONS if run.is_image else TABLE_RECONSTRUCTIONS
    rows = x[:count]
    shown = run.transforms.inverse(run.prepare(rows)).cpu()  # as the model saw them
    rebuilt = run.reconstruct(rows, None if labels is None else labels[:count]).cpu()
    caption = "Decoder means at the posterior means of the first test rows"
    if run.is_image:
        body = _image_html(grid_png(interleaved(shown, rebuilt, 8), 8, 480), "reconstructions")
        caption += "; each row of test images (as the model saw them) above its reconstructions"
    else:
        figure = Figure(figsize=(9, 5.2))
        for axes, original, again, index in zip(
            figure.subplots(2, 2).reshape(-1), shown, rebuilt, range(count), strict=False
        ):
            axes.plot(_columns(original), original.numpy(), "-", marker=".", label="test row")
            axes.plot(_columns(again), again.numpy(), "--", marker=".", label="reconstruction")
            axes.set_title(f"test row {index}", fontsize="medium")
            axes.set_xlabel("column")
            axes.grid(alpha=0.3)
        figure.axes[0].legend(fontsize="small")
        figure.tight_layout()
        body = _figure_html(figure, "reconstructions")
    return _Section("reconstructions", "Reconstructions", body + f"<p class='note'>{caption}.</p>")


def _manifold_section(run: Run, codes: Codes) -> _Section:
    low, high = GRID_QUANTILES
    quantiles = prior_quantiles(run, torch.linspace(low, high, GRID_SIZE))  # (GRID_SIZE, L)
    # Beyond two units: the plane of the test means, ± the normal quantile of ``high`` in
    # standard deviations, so that the grid spans the same share as the prior's quantiles.
    plane = PrincipalPlane.of(codes.means) if run.model.latent_dim > 2 else None
    span = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(high)))
    if run.is_image:
        body, caption = _image_manifold(run, quantiles, plane, span)
    elif plane is None:
        body = _traversal_html(run, _prior_traversal(run, quantiles))
        caption = (
            "Decoded rows along each latent unit (the legend: its value), the other units "
            "held at their prior medians."
        )
    else:
        body = _traversal_html(run, _plane_traversal(plane, span))
        caption = (
            "Decoded rows along each principal direction of the test posterior means (the "
            "legend: the offset in standard deviations of the means), the other held at "
            "their mean."
        )
    if is_conditional(run.model):
        caption += " All decoded as class 0."
    return _Section("manifold", "Learned manifold", body + f"<p class='note'>{caption}</p>")


def _image_manifold(
    run: Run, quantiles: Tensor, plane: PrincipalPlane | None, span: float
) -> tuple[str, str]:
    """The decoded grid of latents (HTML) and its caption."""
    low, high = GRID_QUANTILES
    if run.model.latent_dim == 1:
        z = quantiles
        caption = (
            f"Decoder means at the prior's quantiles {low:g} to {high:g} of the latent unit z₁, "
            "left to right."
        )
    elif plane is None:
        a, b = torch.meshgrid(quantiles[:, 0], quantiles[:, 1].flip(0), indexing="xy")
        z = torch.stack((a.reshape(-1), b.reshape(-1)), 1)
        caption = (
            f"Decoder means over a {GRID_SIZE}×{GRID_SIZE} grid of the prior's quantiles "
            f"{low:g} to {high:g} of each latent unit (the paper's Fig. 4); z₁ runs left to "
            "right, z₂ bottom to top."
        )
    else:
        z = plane.grid(GRID_SIZE, span)
        shares = " and ".join(f"{100 * s:.0f}%" for s in plane.explained)
        caption = (
            f"Decoder means over a {GRID_SIZE}×{GRID_SIZE} grid in the plane of the two "
            f"principal directions of the test posterior means (holding {shares} of their "
            f"variance), ±{span:.2f} standard deviations of the means along each, centred at "
            "their mean; the first direction runs left to right, the second bottom to top."
        )
    png = grid_png(decode(run, z), GRID_SIZE, min_pixels=800)
    return _image_html(png, "learned manifold"), caption


def _prior_traversal(run: Run, values: Tensor) -> list[tuple[str, Tensor, Tensor]]:
    """Per latent unit: (name, its values (steps,), latents (steps, latent_dim)) along the
    prior quantiles ``values`` (GRID_SIZE, latent_dim), the other units at their medians."""
    steps = values[torch.linspace(0, len(values) - 1, TRAVERSAL_STEPS).round().long()]
    median = prior_quantiles(run, torch.tensor([0.5]))[0]
    axes = []
    for unit in range(values.shape[1]):
        z = median.repeat(TRAVERSAL_STEPS, 1)
        z[:, unit] = steps[:, unit]
        axes.append((f"z{unit + 1}", steps[:, unit], z))
    return axes


def _plane_traversal(plane: PrincipalPlane, span: float) -> list[tuple[str, Tensor, Tensor]]:
    """Per principal direction: (name, offsets in standard deviations, latents)."""
    offsets = torch.linspace(-span, span, TRAVERSAL_STEPS)
    return [
        (f"principal direction {i + 1}", offsets, plane.center + (offsets * scale)[:, None] * d)
        for i, (d, scale) in enumerate(zip(plane.directions, plane.scales, strict=True))
    ]


def _traversal_html(run: Run, traversal: list[tuple[str, Tensor, Tensor]]) -> str:
    figure = Figure(figsize=(4.8 * len(traversal), 3.6))
    for axes, (name, steps, z) in zip(
        figure.subplots(1, len(traversal), squeeze=False)[0], traversal, strict=True
    ):
        rows = decode(run, z)
        for step, row, shade in zip(steps, rows, np.linspace(0, 1, len(rows)), strict=True):
            axes.plot(
                _columns(row), row.numpy(), marker=".", color=_viridis(shade), label=f"{step:+.2f}"
            )
        axes.set_title(f"along {name}", fontsize="medium")
        axes.set_xlabel("column")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small", ncols=2)
    figure.tight_layout()
    return _figure_html(figure, "decoded rows along the latent axes")


def _scatter_section(run: Run, codes: Codes, labels: Tensor | None) -> _Section:
    means, latent_dim = codes.means, run.model.latent_dim
    figure = Figure(figsize=(6.4, 5.2))
    axes = figure.add_subplot()
    colours = None if labels is None else labels.numpy()
    if latent_dim == 1:
        groups = (
            [means[:, 0].numpy()]
            if colours is None
            else [means[colours == c, 0].numpy() for c in np.unique(colours)]
        )
        names = None if colours is None else [f"class {c}" for c in np.unique(colours)]
        axes.hist(groups, bins=40, stacked=True, label=names)
        if names:
            axes.legend(title="class", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
        axes.set_xlabel("z₁ (posterior mean)")
        axes.set_ylabel("test rows")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        what = "Histogram of the posterior means E_q[z₁] of the test rows"
    else:
        if latent_dim == 2:
            points, names = means.numpy(), ("z₁", "z₂")
            what = "Posterior means E_q[z] of the test rows"
        else:
            plane = PrincipalPlane.of(means)
            points = plane.project(means).numpy()
            names = tuple(
                f"principal direction {i + 1} ({100 * s:.0f}% of variance)"
                for i, s in enumerate(plane.explained)
            )
            what = (
                "Posterior means E_q[z] of the test rows projected on their two principal "
                "directions (PCA)"
            )
        if colours is None:
            axes.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7)
        else:
            classes = np.unique(colours)
            cmap = "tab10" if len(classes) <= 10 else "viridis"
            scatter = axes.scatter(points[:, 0], points[:, 1], c=colours, s=6, alpha=0.8, cmap=cmap)
            if len(classes) <= 10:
                axes.legend(
                    *scatter.legend_elements(),
                    title="class",
                    fontsize="small",
                    loc="upper left",
                    bbox_to_anchor=(1.01, 1.0),
                )
            else:
                figure.colorbar(scatter, ax=axes, label="class")
        axes.set_xlabel(names[0])
        axes.set_ylabel(names[1])
    axes.grid(alpha=0.3)
    figure.tight_layout()
    coloured = ", coloured by class" if labels is not None else ""
    body = _figure_html(figure, "latent scatter") + f"<p class='note'>{what}{coloured}.</p>"
    return _Section("latent-scatter", "Latent space of the test rows", body)


def _units_section(result: Evaluation, codes: Codes) -> _Section:
    activity = codes.activity.numpy()
    units = np.arange(1, len(activity) + 1)
    active = activity > ACTIVITY_THRESHOLD
    figure = Figure(figsize=(10, 3.6))
    left, right = figure.subplots(1, 2)
    if result.kl_per_dim is not None:
        left.bar(units, result.kl_per_dim, color=np.where(active, "tab:blue", "tab:grey"))
        left.set_ylabel("KL(q(z_j|x) ‖ p(z_j)) (nats)")
        left.set_title("KL per latent unit", fontsize="medium")
    else:
        left.text(
            0.5,
            0.5,
            "no KL per unit: the KL is\nestimated jointly",
            ha="center",
            va="center",
            transform=left.transAxes,
        )
        left.set_axis_off()
    right.bar(units, np.maximum(activity, 1e-6), color=np.where(active, "tab:blue", "tab:grey"))
    right.axhline(
        ACTIVITY_THRESHOLD,
        color="tab:red",
        linestyle="--",
        linewidth=1,
        label=f"active above {ACTIVITY_THRESHOLD:g}",
    )
    right.set_yscale("log")
    right.set_ylabel("Var_x(E_q[z_j])")
    right.set_title("activity per latent unit", fontsize="medium")
    right.legend(fontsize="small")
    for axes in (left, right):
        axes.set_xlabel("latent unit j")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    body = _figure_html(figure, "KL and activity per latent unit") + (
        f"<p class='note'><b>{result.active_units} of {result.latent_dim}</b> units active "
        f"(Var_x(E_q[z_j]) &gt; {ACTIVITY_THRESHOLD:g}, Burda et al. 2015); inactive units in "
        "grey.</p>"
    )
    return _Section("latent-units", "Latent units", body)


def _config_section(run: Run) -> _Section:
    record = run.record.to_dict()
    summary = _read_json(run.run_dir / SUMMARY_FILE)
    settings = record["train"]
    body = (
        "<div class='settings'>"
        + "".join(
            f"<div><b>{html.escape(key)}</b> {html.escape(_shown(value))}</div>"
            for key, value in settings.items()
        )
        + "</div>"
    )
    if summary:
        body += "<h3>Training summary (summary.json)</h3>" + _table(
            [(key, _shown(value)) for key, value in summary.items()]
        )
    body += (
        "<details><summary>config.json (model and data)</summary><pre>"
        + html.escape(json.dumps({k: record[k] for k in record if k != "train"}, indent=2))
        + "</pre></details>"
    )
    return _Section("config", "Configuration", body)


# --------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def _columns(row: Tensor) -> np.ndarray:
    return np.arange(1, len(row) + 1)


def _viridis(shade: float) -> tuple[float, ...]:
    from matplotlib import colormaps

    return colormaps["viridis"](0.9 * shade)


def _rows_figure(rows: Sequence[tuple[str, Tensor, str]]) -> Figure:
    """Table rows (name, values (D,), line style) as lines over the column index."""
    figure = Figure(figsize=(8, 3.6))
    axes = figure.add_subplot()
    for name, values, style in rows:
        axes.plot(_columns(values), values.numpy(), style, marker=".", alpha=0.8, label=name)
    axes.set_xlabel("column")
    axes.set_ylabel("value")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small", ncols=2)
    figure.tight_layout()
    return figure


def _figure_html(figure: Figure, alt: str) -> str:
    png = figure_png(figure, dpi=110)
    return f"<img class='figure' alt='{html.escape(alt)}' src='{data_uri(png)}'>"


def _image_html(png: bytes, alt: str) -> str:
    return f"<img class='grid' alt='{html.escape(alt)}' src='{data_uri(png)}'>"


def _table(rows: Sequence[tuple[str, str]]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in rows
    )
    return f"<table>{cells}</table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1150px; padding: 1em 2em;
       color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
nav a { margin-right: 1em; } .note { color: #555; font-size: 0.92em; max-width: 60em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #eee;
         vertical-align: top; }
th { font-weight: 600; } td { font-variant-numeric: tabular-nums; }
div.settings { columns: 3 16em; font-size: 0.92em; margin: 0.5em 0; }
div.settings div { padding: 0.1em 0; break-inside: avoid; }
img.figure { max-width: 100%; } img.grid { image-rendering: pixelated; max-width: 100%; }
.warning { color: #8a3b00; background: #fff4e5; padding: 0.5em 0.8em; max-width: 60em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.facts span { margin-right: 1.5em; white-space: nowrap; display: inline-block; }
"""


def _page(run: Run, sections: Sequence[_Section]) -> str:
    config = run.config
    facts = [
        ("data", f"{run.record.data['name']} ({'×'.join(map(str, run.record.event_shape))})"),
        ("latent units", str(run.model.latent_dim)),
        ("likelihood", str(config.likelihood)),
        ("posterior", config.posterior),
        ("prior", config.prior),
        ("objective", config.objective),
        ("conditional", "yes" if is_conditional(run.model) else "no"),
    ]
    links = "".join(f"<a href='#{s.id}'>{html.escape(s.title)}</a>" for s in sections)
    blocks = "".join(
        f"<section id='{s.id}'><h2>{html.escape(s.title)}</h2>{s.body}</section>" for s in sections
    )
    facts_html = "".join(
        f"<span><b>{html.escape(k)}</b>: {html.escape(v)}</span>" for k, v in facts
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>aevb report: {html.escape(str(run.run_dir))}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>aevb run report</h1><p class='facts'><span><b>run</b>: "
        f"{html.escape(str(run.run_dir))}</span>{facts_html}</p>"
        f"<p class='note'>Written {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>"
        f"<nav>{links}</nav>{blocks}</body></html>\n"
    )
