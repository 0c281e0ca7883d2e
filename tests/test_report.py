"""``aevb report``: one self-contained HTML file with every section, replaced atomically, for
image, conditional and table runs; and what it looks like in headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_explore import check_screenshot, full_page, start_chrome

from aevb.cli import EXIT_USER_ERROR, main
from aevb.runs import Run, load_run
from aevb.views import write_report
from aevb.views.latent_space import encode_rows
from aevb.views.report import ACTIVITY_THRESHOLD

QUICK = ["--hidden", "32", "--epochs", "2", "--batch-size", "64", "--no-progress"]
SECTIONS = (
    "evaluation",
    "curves",
    "samples",
    "reconstructions",
    "manifold",
    "latent-scatter",
    "latent-units",
    "config",
)
# k = 24: enough draws (≥ 21) for the importance-sampling diagnostics.
FAST = {"importance_samples": 24, "num_examples": 100, "progress": False}


def train(out: Path, *flags: str) -> Path:
    assert main(["train", "--out", str(out), *QUICK, *flags]) == 0
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("report")


@pytest.fixture(scope="module")
def run_dir(folder) -> Path:
    """A tiny digits run with a 2-D latent space (its manifold is a grid of prior quantiles)."""
    return train(folder / "run", "--latent-dim", "2")


@pytest.fixture(scope="module")
def report(run_dir):
    return write_report(run_dir, **FAST)


def embedded_images(page: str) -> list[str]:
    return re.findall(r"<img [^>]*src='([^']*)'", page)


def assert_self_contained(page: str) -> None:
    """No reference that would need a network or another file: every src and href is a data
    URI or an anchor in the page, and there are no scripts or style sheet links."""
    for reference in re.findall(r"(?:src|href)\s*=\s*['\"]([^'\"]*)", page):
        assert reference.startswith(("data:image/png;base64,", "#")), reference[:80]
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page
    for uri in embedded_images(page):
        png = base64.b64decode(uri.split(",", 1)[1])
        assert Image.open(io.BytesIO(png)).size > (10, 10)


def test_report_is_one_self_contained_file_with_every_section(report, run_dir):
    assert report.path == run_dir / "report.html" and report.sections == SECTIONS
    page = report.path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for section in SECTIONS:
        assert f"<section id='{section}'>" in page
    assert_self_contained(page)
    # training curves, samples, reconstructions, manifold, scatter, units
    assert len(embedded_images(page)) == 6
    assert "grid of the prior's quantiles" in page and "coloured by class" in page
    assert "active units" in page and "&quot;factory&quot;: &quot;aevb.builders:mlp&quot;" in page


def test_report_shows_the_evaluation_it_computed(report, run_dir):
    """The numbers are those of run.evaluate on the first test rows, with the same seed."""
    evaluation = report.evaluation
    assert evaluation.num_examples == 100 and evaluation.importance_samples == 24
    run = load_run(run_dir)
    again = run.evaluate(run.split("test", 100), importance_samples=24, seed=0, warn=False)
    assert again.log_likelihood == pytest.approx(evaluation.log_likelihood, abs=1e-9)
    page = report.path.read_text()
    shown = f"{evaluation.log_likelihood:.3f} ± {evaluation.log_likelihood_se:.3f} nats"
    assert shown in page
    for value in (evaluation.iwae_bound, evaluation.elbo, evaluation.elbo_a, evaluation.kl):
        assert f"{value:.3f} nats" in page
    assert f"{evaluation.bits_per_dim:.4f}" in page
    assert f"{evaluation.active_units} of 2" in page
    diagnostics = evaluation.importance_diagnostics
    assert f"median {diagnostics.ess_median:.1f} ({diagnostics.ess_median_fraction:.1%} of k)" in (
        page
    )
    assert f"worst {diagnostics.pareto_k_max:.2f}" in page


def test_infinite_pareto_k_is_shown_and_warned_about(run_dir, report, tmp_path, monkeypatch):
    """k̂ = −inf (a constant tail) and +inf (no fit) are shown as such, with the warning."""
    shown = report.evaluation
    infinite = dataclasses.replace(
        shown,
        importance_diagnostics=dataclasses.replace(
            shown.importance_diagnostics,
            pareto_k_median=-math.inf,
            pareto_k_max=math.inf,
            pareto_k_share_above=0.5,
        ),
    )
    monkeypatch.setattr(Run, "evaluate", lambda self, *args, **options: infinite)
    page = write_report(run_dir, tmp_path / "inf.html", **FAST).path.read_text()
    assert "median -inf, worst inf; 50.0% of the examples above 0.7" in page
    warnings = re.findall(r"<p class='warning'>([^<]*)</p>", page)
    assert len(warnings) == 1
    assert "50.0% of the examples have a Pareto k̂ above 0.7 (worst inf)" in warnings[0]


def test_markup_in_the_run_folder_is_shown_as_text(run_dir, tmp_path):
    markup = "<script>alert(1)</script>"
    copy = tmp_path / "<script>alert(1)<" / "script>"  # a path that ends in the markup
    shutil.copytree(run_dir, copy)
    assert str(copy).endswith(markup)
    page = write_report(copy, **FAST).path.read_text()
    assert html.escape(markup) in page and "<script" not in page
    assert_self_contained(page)


def test_flow_posterior_activity_takes_the_monte_carlo_error_off(folder):
    """An IAF posterior's means are 64-draw estimates: the activity drawn is their spread less
    their Monte Carlo error, as in the evaluation's count of active units, which it matches."""
    run_dir = train(folder / "iaf", "--posterior", "iaf", "--latent-dim", "8", "--epochs", "1")
    report = write_report(run_dir, **FAST)
    run = load_run(run_dir)
    codes = encode_rows(run, run.split("test", FAST["num_examples"]))
    assert codes.mean_errors is not None and bool((codes.mean_errors > 0).all())
    spread = codes.means.double().var(0) - codes.mean_errors.double().mean(0)
    assert torch.allclose(codes.activity.double(), spread, rtol=1e-5, atol=1e-7)
    assert int((codes.activity > ACTIVITY_THRESHOLD).sum()) == report.evaluation.active_units


def test_rerun_replaces_the_file_atomically(run_dir, tmp_path):
    out = tmp_path / "deeper" / "r.html"
    first = write_report(run_dir, out, seed=1, **FAST)
    inode, text = out.stat().st_ino, out.read_text()
    second = write_report(run_dir, out, seed=2, **FAST)
    assert second.path == first.path == out
    assert out.stat().st_ino != inode  # a new file renamed over the old one, not rewritten
    assert out.read_text() != text and second.evaluation.log_likelihood != (
        first.evaluation.log_likelihood
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.html"]  # no temporary left


def test_command_writes_the_report(run_dir, tmp_path, capsys):
    out = tmp_path / "cli.html"
    args = ["report", str(run_dir), "--out", str(out), "--importance-samples", "10"]
    assert main([*args, "--num-examples", "50"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    assert "report: evaluating 50 test rows with k = 10" in captured.err
    assert_self_contained(out.read_text())


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, run: ["report", str(d / "nowhere")], "not an aevb run folder"),
        (lambda d, run: ["report", str(run), "--out", str(d / "r.txt")], ".html"),
        (lambda d, run: ["report", str(run), "--out", str(d)], "must be a .html file"),
        (lambda d, run: ["report", str(run), "--out", str(run)], "must be a .html file"),
    ],
)
def test_command_refuses_bad_input_in_one_line(run_dir, tmp_path, capsys, make_args, message):
    assert main(make_args(tmp_path, run_dir)) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last and "Traceback" not in err


def test_conditional_run_with_more_latents(folder):
    """A conditional model: evaluated given the labels, samples a column per class, and (4
    latent units) a manifold over the principal plane of the test posterior means."""
    run_dir = train(folder / "conditional", "--conditional", "--latent-dim", "4", "--epochs", "1")
    report = write_report(run_dir, **FAST)
    page = report.path.read_text()
    assert report.sections == SECTIONS
    assert "log p(x|y)" in page and "a column per class (0 to 9)" in page
    assert "two principal directions of the test posterior means" in page
    assert "projected on their two principal directions" in page
    assert_self_contained(page)


def test_table_run_has_line_plots_instead_of_image_grids(folder):
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(300, 2))
    table = factors @ rng.normal(size=(2, 6)) + 0.1 * rng.normal(size=(300, 6))
    markup = "<img src=x onerror=alert(1)>"  # in the data's name: shown as text, not markup
    path = folder / f"{markup}.csv"
    np.savetxt(path, table, delimiter=",", header="a,b,c,d,e,f", comments="")
    run_dir = train(folder / "table", "--dataset", str(path), "--latent-dim", "3")
    report = write_report(run_dir, **FAST)
    page = report.path.read_text()
    assert html.escape(markup) in page and "<img src=x" not in page
    assert report.sections == SECTIONS
    assert "class='grid'" not in page  # no image grids
    assert "Decoded rows along each principal direction" in page
    assert "coloured by class" not in page  # a table has no labels
    assert len(embedded_images(page)) == 6
    assert_self_contained(page)


def test_report_in_a_browser(report):
    driver = start_chrome()
    try:
        driver.get(report.path.as_uri())
        loaded = driver.execute_script(
            "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"
        )
        assert loaded and len(driver.find_elements("css selector", "section")) == len(SECTIONS)
        check_screenshot(full_page(driver), "report.png")
    finally:
        driver.quit()
