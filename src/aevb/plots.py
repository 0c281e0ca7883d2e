"""Figures: image grids of samples and reconstructions, and training curves (PNG files).

Uses matplotlib's object API (``Figure``) rather than pyplot, so no display or global
backend state is involved. Each PNG is rendered in memory and written atomically
(:func:`aevb.storage.atomic_write_bytes`), so a kill or a full disk never leaves half a file.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from aevb.conditional import is_conditional
from aevb.evaluation import fixed_randomness
from aevb.models import VAE
from aevb.storage import atomic_write_bytes


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> None:
    """Write ``figure`` as a PNG to ``path``, atomically."""
    atomic_write_bytes(path, figure_png(figure, dpi))


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    """``figure`` rendered as PNG bytes, in memory."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images (N, C, H, W) into one (rows·(H+pad) − pad, cols·(W+pad) − pad) array for
    grey images (C = 1), or the same with 3 colour channels last (C = 3); padding at 1.0."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, C, H, W) images with 1 or 3 channels, got {images.shape}")
    n, channels, height, width = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.ones(
        (nrows * (height + pad) - pad, ncols * (width + pad) - pad, channels), dtype=np.float32
    )
    for index, image in enumerate(images):
        r, c = divmod(index, ncols)
        top, left = r * (height + pad), c * (width + pad)
        grid[top : top + height, left : left + width] = image.transpose(1, 2, 0)
    return grid[..., 0] if channels == 1 else grid


def grid_png(images: np.ndarray | Tensor, ncols: int | None = None, min_pixels: int = 400) -> bytes:
    """Images (N, C, H, W), values in [0, 1] (clipped), as one grid PNG: grey for C = 1, RGB
    for C = 3. Each image pixel becomes a k×k block (nearest neighbour), k chosen so the longer
    side is at least ``min_pixels`` pixels (k = 1 for 0)."""
    buffer = io.BytesIO()
    Image.fromarray(grid_pixels(images, ncols, min_pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def grid_pixels(
    images: np.ndarray | Tensor, ncols: int | None = None, min_pixels: int = 400
) -> np.ndarray:
    """:func:`grid_png`'s pixels: uint8 (height, width) for grey images, (height, width, 3)
    for colour."""
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    grid = np.clip(image_grid(images, ncols), 0.0, 1.0)
    k = max(1, math.ceil(min_pixels / max(grid.shape[:2])))
    return np.round(grid * 255).astype(np.uint8).repeat(k, 0).repeat(k, 1)


def save_image_grid(
    images: np.ndarray | Tensor,
    path: str | Path,
    ncols: int | None = None,
    min_pixels: int = 400,
) -> None:
    """Write images (N, C, H, W) as a grid PNG (:func:`grid_png`) to ``path``, atomically."""
    atomic_write_bytes(path, grid_png(images, ncols, min_pixels))


# The rows of a reconstruction grid, in turn, as its margin names them.
RECONSTRUCTION_ROWS = ("data", "reconstruction")
# Width of the margin that names the rows, in pixels, and the size of its text, in points.
LABEL_MARGIN = 120
LABEL_FONT_SIZE = 10


def save_reconstructions(
    originals: Tensor, reconstructions: Tensor, path: str | Path, ncols: int = 8
) -> None:
    """Write :func:`reconstructions_png` to ``path``, atomically."""
    atomic_write_bytes(path, reconstructions_png(originals, reconstructions, ncols))


def reconstructions_png(originals: Tensor, reconstructions: Tensor, ncols: int = 8) -> bytes:
    """Rows of ``ncols`` originals (N, C, H, W), each above a row of their reconstructions
    (:func:`interleaved`), with a left margin naming each row ``data`` or ``reconstruction``
    (:func:`labelled_grid_png`)."""
    pairs = interleaved(originals, reconstructions, ncols)
    labels = list(RECONSTRUCTION_ROWS) * (len(pairs) // (2 * ncols))
    return labelled_grid_png(pairs, labels, ncols)


def labelled_grid_png(
    images: np.ndarray | Tensor, row_labels: Sequence[str], ncols: int, min_pixels: int = 400
) -> bytes:
    """:func:`grid_png` of images (N, C, H, W) in rows of ``ncols``, with a white margin of
    :data:`LABEL_MARGIN` pixels on the left naming each row (``row_labels``, one per row)."""
    pixels = grid_pixels(images, ncols, min_pixels)
    height, width = pixels.shape[:2]
    rows = len(row_labels)
    if rows != math.ceil(len(images) / ncols):
        raise ValueError(f"{rows} row labels for {math.ceil(len(images) / ncols)} rows")
    dpi = 100
    figure = Figure(figsize=((LABEL_MARGIN + width) / dpi, height / dpi), dpi=dpi)
    figure.figimage(pixels, xo=LABEL_MARGIN, yo=0, origin="upper", cmap="gray", vmin=0, vmax=255)
    image_height = images.shape[2]
    scale = height // (rows * (image_height + 1) - 1)  # PNG pixels per image pixel (pad: 1)
    for row, label in enumerate(row_labels):
        centre = (row * (image_height + 1) + image_height / 2) * scale
        figure.text(
            (LABEL_MARGIN - 8) / (LABEL_MARGIN + width),
            1 - centre / height,
            label,
            ha="right",
            va="center",
            fontsize=LABEL_FONT_SIZE,
        )
    return figure_png(figure, dpi)


def interleaved(originals: Tensor, reconstructions: Tensor, ncols: int = 8) -> Tensor:
    """Images (N, C, H, W) → rows of ``ncols`` originals each followed by a row of their
    reconstructions (a short last pair padded with blank images), as one (M, C, H, W) on the
    CPU."""
    rows = []
    for start in range(0, len(originals), ncols):
        rows += [originals[start : start + ncols], reconstructions[start : start + ncols]]
        missing = ncols - len(rows[-1])
        if missing:  # pad a short last pair of rows with blank images
            blank = torch.ones(missing, *originals.shape[1:])
            rows[-2:] = [torch.cat((row.cpu(), blank)) for row in rows[-2:]]
    return torch.cat([row.cpu() for row in rows])


METRIC_LABELS = {
    "elbo": "ELBO (nats per example)",
    "reconstruction": "reconstruction log p(x | z) (nats per example)",
}


def plot_training_curves(history: Sequence[dict], path: str | Path, metric: str = "elbo") -> None:
    """The judged ``metric`` (``elbo`` or ``reconstruction``), train and validation, against
    epoch."""
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    epochs = [record["epoch"] for record in history]
    for split, label in (("train", "train"), ("val", "validation")):
        key = f"{split}_{metric}"
        if history and key in history[0]:
            axes.plot(epochs, [r[key] for r in history], marker=".", label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel(METRIC_LABELS.get(metric, metric))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, path)


@dataclass
class ImagePanels:
    """What a run shows of a model of images, in the data's units: ``samples`` (N, C, H, W)
    (a conditional model's in ``sample_columns`` columns, one per class), and test
    ``originals`` with their ``reconstructions`` (M, C, H, W)."""

    samples: Tensor
    sample_columns: int | None
    originals: Tensor
    reconstructions: Tensor


@torch.no_grad()
def image_panels(
    model: VAE,
    test_x: Tensor,
    inverse=None,
    num_images: int = 64,
    labels: Tensor | None = None,
    num_reconstructions: int = 16,
) -> ImagePanels:
    """Samples (drawn with the fixed seed 0, leaving the global random state alone) and
    reconstructions of the first test rows ``test_x`` (model space); ``inverse`` maps model
    outputs back to the data's units (no reconstructions for no rows). A conditional model's
    samples take the classes in turn and its reconstructions the test ``labels``."""
    inverse = inverse or (lambda values: values)
    columns = None
    if is_conditional(model):
        columns = model.num_classes
        num_images = columns * max(1, num_images // columns)
    with fixed_randomness(0, test_x.device):
        samples = model.sample(num_images)
    originals = test_x[:num_reconstructions]
    if not len(originals):
        reconstructed = originals
    elif columns is not None:
        assert labels is not None
        reconstructed = model.reconstruct(originals, labels[:num_reconstructions])
    else:
        reconstructed = model.reconstruct(originals)
    return ImagePanels(inverse(samples), columns, inverse(originals), inverse(reconstructed))


def write_image_plots(
    run_dir: str | Path,
    model: VAE,
    test_x: Tensor,
    inverse=None,
    num_images: int = 64,
    labels: Tensor | None = None,
) -> None:
    """``samples.png`` and ``reconstructions.png`` in ``run_dir``, for image data (N, C, H, W)
    (:func:`image_panels`)."""
    run_dir = Path(run_dir)
    panels = image_panels(model, test_x, inverse, num_images, labels)
    save_image_grid(panels.samples, run_dir / "samples.png", ncols=panels.sample_columns)
    save_reconstructions(panels.originals, panels.reconstructions, run_dir / "reconstructions.png")


METHOD_COLOURS = {"aevb": "tab:blue", "wake-sleep": "tab:orange", "mcem": "tab:green"}


def plot_curves(
    rows: Sequence[dict],
    path: str | Path,
    panel_key: str,
    panel_title: str,
    ylabel: str,
    title: str,
) -> None:
    """The paper's Figs. 2 and 3: ``value`` against ``train_samples`` (log scale), one panel
    per value of ``panel_key``, a colour per ``method``, train solid and test dashed."""
    panels = sorted({row[panel_key] for row in rows})
    figure = Figure(figsize=(3.2 * max(len(panels), 1), 3.4))
    axes_list = figure.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for axes, panel in zip(axes_list, panels, strict=False):
        for method in dict.fromkeys(row["method"] for row in rows):
            for split, style in (("train", "-"), ("test", "--")):
                points = sorted(
                    (row["train_samples"], row["value"])
                    for row in rows
                    if row[panel_key] == panel and row["method"] == method and row["split"] == split
                )
                if points:
                    x, y = zip(*points, strict=True)
                    axes.plot(
                        x,
                        y,
                        style,
                        marker=".",
                        color=METHOD_COLOURS.get(method),
                        label=f"{method} ({split})",
                    )
        axes.set_xscale("log")
        axes.set_title(panel_title.format(panel))
        axes.set_xlabel("training samples evaluated")
        axes.grid(alpha=0.3)
    axes_list[0].set_ylabel(ylabel)
    axes_list[0].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)


def save_manifolds(
    panels: Sequence[tuple[str, np.ndarray]], grid_size: int, path: str | Path
) -> None:
    """The paper's Fig. 4: per (title, images (grid_size², C, H, W)), the decoded grid of 2-D
    latents as one image, side by side."""
    figure = Figure(figsize=(5 * len(panels), 5.4))
    axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
    for axes, (name, images) in zip(axes_list, panels, strict=True):
        axes.imshow(image_grid(images, ncols=grid_size), cmap="gray", vmin=0, vmax=1)
        axes.set_title(f"{name}: learned 2-D manifold")
        axes.set_axis_off()
    figure.tight_layout()
    save_figure(figure, path)


def save_sample_panels(panels: Sequence[tuple[str, np.ndarray]], path: str | Path) -> None:
    """The paper's Fig. 5: per (title, images (N, C, H, W)) a grid of samples, side by side."""
    figure = Figure(figsize=(3.5 * len(panels), 3.8))
    axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
    for axes, (name, images) in zip(axes_list, panels, strict=True):
        axes.imshow(np.clip(image_grid(images), 0, 1), cmap="gray", vmin=0, vmax=1)
        axes.set_title(name)
        axes.set_axis_off()
    figure.tight_layout()
    save_figure(figure, path)
