"""The command-line plumbing every tutorial script shares; none of it is about aevb.

A script's ``main`` calls :func:`start` first and :meth:`Setup.finish` last, and writes each
figure with :func:`save`. The scripts run as ``python docs/tutorials/<name>.py``, which puts
this folder on ``sys.path``; so does aevb when it imports a script again to rebuild a model
from a factory the script defines (:class:`aevb.ModelSpec` records the script's file).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures go to files; no display needed
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

FIGURES = Path(__file__).resolve().parent / "figures"  # the figures the pages show


@dataclass(frozen=True)
class Setup:
    """Where one run of a tutorial script writes, and at which scale."""

    small: bool  # --small: the CI scale, which writes nothing outside ``out``
    out: Path  # run folders and other files
    figures: Path  # FIGURES at the tutorial's scale, ``out / "figures"`` with --small
    started: float = field(default_factory=time.perf_counter)

    @property
    def scale_name(self) -> str:
        """``"small"`` or ``"full"``, for the printed results."""
        return "small" if self.small else "full"

    def finish(self) -> int:
        """Print where the figures are and the time taken; the exit status (0)."""
        print(f"figures in {self.figures}; {time.perf_counter() - self.started:.0f} s in all")
        return 0


def start(name: str, doc: str, argv: list[str] | None = None) -> Setup:
    """Parse ``--small`` and ``--out DIR`` from ``argv`` (the command line if None), make the
    folders (a new temporary ``out`` without ``--out``), limit torch to one thread and print
    the start line: ``name``, the scale and the first line of the script's docstring ``doc``."""
    title = doc.strip().splitlines()[0]
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=title)
    parser.add_argument("--small", action="store_true", help="CI scale (seconds)")
    parser.add_argument(
        "--out", type=Path, help="folder for the runs and other files (with --small: figures too)"
    )
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix=f"aevb-{name}-"))
    setup = Setup(small=args.small, out=out, figures=out / "figures" if args.small else FIGURES)
    for folder in (setup.out, setup.figures):
        folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # small networks run fastest on one thread; the cores are shared
    what = title.removeprefix("Tutorial: ").rstrip(".")
    print(f"{name} ({setup.scale_name} scale): {what} → {out}")
    return setup


def save(figure: Figure, path: Path) -> None:
    """Lay out a figure, write it as a PNG at 100 dpi and close it."""
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
