"""The tutorials under docs/tutorials run end to end at their CI scale (``--small``), write
their figures where they are told, and their pages include only code regions that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS_DIR = ROOT / "docs" / "tutorials"
FIGURES = TUTORIALS_DIR / "figures"

# Each tutorial is docs/tutorials/<name>.py with its page docs/tutorials/<name>.md.
TUTORIALS = (
    "mnist",
    "frey",
    "table_anomalies",
    "model_family",
    "conv_network",
    "new_prior",
    "scale_out",
)
# The folders of AEVB_DATA_DIR a tutorial reads (none: bundled or generated data).
NEEDS_DATA = {
    "mnist": ("mnist",),
    "frey": ("frey",),
    "conv_network": ("mnist",),
    "new_prior": ("mnist",),
    "scale_out": ("mnist",),
}
TIMEOUT_S = 600  # --small aims at ~25 s on two idle cores; shared machines are far slower

SNIPPET = re.compile(r'^--8<-- "([^"]+?)(?::([\w-]+))?"\s*$', re.MULTILINE)
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def figure_state() -> dict[str, tuple[int, int]]:
    """The committed figures' names with their sizes and modification times."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in FIGURES.glob("*.png")}


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs_small(name: str, tmp_path: Path, optional_data_dir: Path | None) -> None:
    data_dir = optional_data_dir
    missing = [
        folder
        for folder in NEEDS_DATA.get(name, ())
        if data_dir is None or not (data_dir / folder).is_dir()
    ]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)} in AEVB_DATA_DIR")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    if data_dir is not None:
        environment["AEVB_DATA_DIR"] = str(data_dir)
    before = figure_state()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(TUTORIALS_DIR / f"{name}.py"), "--small", "--out", str(tmp_path)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, f"{name} failed after {seconds:.0f} s:\n{done.stderr[-4000:]}"
    figures = [p for p in tmp_path.rglob("*.png") if p.stat().st_size > 0]
    assert figures, f"{name} --small wrote no figure under {tmp_path}"
    assert figure_state() == before, f"{name} --small changed docs/tutorials/figures"
    print(f"{name} --small: {seconds:.1f} s")


def included_regions(page: Path) -> list[tuple[str, str | None]]:
    """The (file, region) pairs that a page includes with pymdownx.snippets."""
    return SNIPPET.findall(page.read_text())


@pytest.mark.parametrize("name", TUTORIALS)
def test_page_includes_existing_regions_and_figures(name: str) -> None:
    page = TUTORIALS_DIR / f"{name}.md"
    includes = included_regions(page)
    assert includes, f"{page.name} includes no code"
    for file, region in includes:
        source = ROOT / file
        assert source.is_file(), f"{page.name} includes {file}, which does not exist"
        if region:
            marks = [line.strip() for line in source.read_text().splitlines()]
            start, end = f"# --8<-- [start:{region}]", f"# --8<-- [end:{region}]"
            assert marks.count(start) == 1 and marks.count(end) == 1, (
                f"{page.name}: region {region!r} of {file} is not marked once by start and end"
            )
            assert marks.index(start) < marks.index(end), (
                f"{file}: {region!r} ends before it starts"
            )
    for image in IMAGE.findall(page.read_text()):
        path = page.parent / image
        assert path.is_file(), f"{page.name} shows {image}, which does not exist"
        assert path.stat().st_size < 150_000, f"{image} is larger than 150 KB"
