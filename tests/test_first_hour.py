"""A new user's first hour: ``--version``, help texts, output files that are not silently
replaced, readable logs, evaluation progress, the thread count on a busy machine, file modes,
a labelled reconstruction grid, and hints in the words of the face used (CLI or Python)."""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import aevb
from aevb import cli
from aevb.cli import EXIT_USER_ERROR, build_parser, command_parsers, main
from aevb.data.transforms import choose_transforms
from aevb.errors import AevbError, ConfigError, DataError
from aevb.hints import command_line
from aevb.plots import LABEL_MARGIN, grid_pixels, interleaved, reconstructions_png
from aevb.progress import ProgressLines
from aevb.runs import TrainConfig, load_run, train
from aevb.storage import atomic_write_bytes

QUICK = ["--latent-dim", "4", "--hidden", "32", "--batch-size", "64"]


def aevb_process(*args: object, **options) -> subprocess.CompletedProcess:
    """``python -m aevb ARGS`` in a fresh process; stdout and stderr are pipes, not a
    terminal."""
    return subprocess.run(
        [sys.executable, "-m", "aevb", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        **options,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run of a small model on digits, trained for one epoch."""
    folder = tmp_path_factory.mktemp("first-hour") / "run"
    assert main(["train", "--epochs", "1", "--out", str(folder), "--no-progress", *QUICK]) == 0
    return folder


# ----------------------------------------------------------------------------- 1. --version
def test_version_comes_from_the_installed_metadata(capsys):
    assert aevb.__version__ == importlib.metadata.version("aevb")
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"aevb {aevb.__version__}\n"


def test_python_m_aevb_version():
    done = aevb_process("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"aevb {aevb.__version__}"


# ----------------------------------------------------------------------------- 2. help texts
def test_every_option_of_every_command_has_a_help():
    parsers = list(command_parsers(build_parser()))
    assert {"aevb sample", "aevb reproduce figure3", "aevb reproduce pca"} <= dict(parsers).keys()
    for name, parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            assert action.help and action.help.strip(), f"{name} {action.option_strings[0]}"


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("sample", ["number of samples (default: 64)", "(default: samples.png in the current"]),
        ("reconstruct", ["number of images (default: 16)", "(default: test)"]),
        ("evaluate", ["(default: 5000)", "(default: best)"]),
        ("score", ["(default: 1000)", "(default: cpu)"]),
    ],
)
def test_help_shows_the_defaults_as_train_does(command, shown):
    parser = dict(command_parsers(build_parser()))[f"aevb {command}"]
    text = " ".join(parser.format_help().split())
    for part in shown:
        assert part in text, part
    assert "(default " not in text  # one form: "(default: X)"


# ----------------------------------------------------------------------------- 3. --overwrite
@pytest.mark.parametrize("command", ["sample", "reconstruct", "embed", "score"])
def test_an_existing_output_file_is_kept_unless_overwrite(run_dir, tmp_path, capsys, command):
    out = tmp_path / ("out.png" if command in ("sample", "reconstruct") else "out.csv")
    out.write_text("the user's own file")
    args = [command, str(run_dir), "--out", str(out)]
    if command in ("embed", "score"):
        table = tmp_path / "rows.npy"
        np.save(table, np.ones((3, 1, 8, 8), np.float32))  # digits' rows
        args += ["--data", str(table)]
    capsys.readouterr()
    assert main(args) == EXIT_USER_ERROR
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [
        f"error: {out} exists; pass --overwrite to replace it, or choose another --out"
    ]
    assert out.read_text() == "the user's own file"
    assert main([*args, "--overwrite"]) == 0
    assert str(out) in capsys.readouterr().out
    assert out.read_bytes() != b"the user's own file"


def test_sample_writes_samples_png_in_the_current_folder_by_default(
    run_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(run_dir), "--num", "4"]) == 0
    assert "to samples.png" in capsys.readouterr().out
    assert (tmp_path / "samples.png").is_file()


# ----------------------------------------------------------------------------- 4. logs
def test_training_into_a_log_writes_plain_epoch_lines(tmp_path):
    """stderr a pipe, as in ``aevb train > log 2>&1``: no progress-bar redraws, a line per
    epoch (it was about 92 KB of redraws for the default run)."""
    done = aevb_process("train", "--epochs", "5", "--out", tmp_path / "run", *QUICK)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and len(done.stderr.encode()) < 5000, done.stderr
    epochs = [line for line in done.stderr.splitlines() if line.startswith("train: ")]
    assert len(epochs) == 5 and "epoch 5, train_elbo" in epochs[-1], done.stderr
    assert "(100%)" in epochs[-1]


def test_progress_lines_are_sparse_and_end_with_a_last_line():
    out = io.StringIO()
    lines = ProgressLines(1000, "evaluate", "draw", unit_scale=True, file=out)
    for _ in range(10):
        lines.update(100)
    lines.close()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]
    assert out.getvalue().startswith("evaluate: 1.00k/1.00k draws (100%), ")
    often = io.StringIO()
    lines = ProgressLines(10, "train", "step", interval=0, file=often)
    for _ in range(10):
        lines.update()
    lines.close()  # nothing new since the last line: no repeat
    assert len(often.getvalue().splitlines()) == 10 and "\r" not in often.getvalue()


# ----------------------------------------------------------------------------- 5. evaluation
def test_run_evaluate_reports_progress_and_the_same_numbers(run_dir, capsys):
    run = load_run(run_dir)
    x = run.split("test", 50)
    capsys.readouterr()
    quiet = run.evaluate(x, importance_samples=30, progress=False, warn=False).to_dict()
    assert capsys.readouterr().err == ""
    shown = run.evaluate(x, importance_samples=30, warn=False).to_dict()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("evaluate: 1.50k/1.50k draws (100%)")
    quiet.pop("seconds"), shown.pop("seconds")
    assert quiet == shown


def test_cli_evaluate_reports_progress_in_a_log(run_dir):
    done = aevb_process("evaluate", run_dir, "--importance-samples", "20", "--num-examples", "40")
    assert done.returncode == 0, done.stderr
    assert "evaluate: 800/800 draws (100%)" in done.stderr and "\r" not in done.stderr
    quiet = aevb_process("evaluate", run_dir, "--importance-samples", "2", "--no-progress")
    assert "evaluate:" not in quiet.stderr


# ----------------------------------------------------------------------------- 6. threads
@pytest.mark.parametrize(
    ("load", "threads", "chosen"), [(0.1, 2, 2), (2.6, 2, 1), (5.0, 4, 1), (1.2, 4, 3)]
)
def test_threads_are_lowered_on_a_busy_machine(monkeypatch, load, threads, chosen):
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(cli.os, "cpu_count", lambda: threads)
    got, notice = cli._threads_for_a_busy_machine(threads, None)
    assert got == chosen
    assert (notice is None) == (chosen == threads)
    if notice:
        assert f"computing on {chosen} CPU thread" in notice and "--threads N" in notice


def test_a_busy_load_average_alone_is_not_enough(monkeypatch):
    """The load average still holds a command that just ended: while the cores are idle now,
    the default stays."""
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    start = time.monotonic() - 1
    before = cli._CpuSample(clock=start, machine=0.0, own=0.0)
    # one second later: 0.3 CPU seconds busy on the machine, 0.2 of them this process's
    monkeypatch.setattr(cli, "_cpu_sample", lambda: cli._CpuSample(start + 1, 0.3, 0.2))
    assert cli._threads_for_a_busy_machine(2, before) == (2, None)
    monkeypatch.setattr(cli, "_cpu_sample", lambda: cli._CpuSample(start + 1, 1.9, 0.2))
    assert cli._threads_for_a_busy_machine(2, before)[0] == 1


# ----------------------------------------------------------------------------- 7. file modes
@pytest.fixture
def umask():
    """Set the process's umask for a test, restored afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_writes_follow_the_umask_of_the_moment(tmp_path, umask, mask):
    umask(mask)
    atomic_write_bytes(tmp_path / "f", b"x")
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~mask


def test_every_file_of_a_run_follows_the_umask(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; os.umask(0o027); from aevb.cli import console; "
            f"sys.argv = ['aevb', 'train', '--epochs', '1', '--out', {str(run)!r}, "
            f"'--no-progress', '--no-tensorboard', *{QUICK!r}]; console()",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.json", "last.safetensors", "best.safetensors", "samples.png"} <= names
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o640, path


# ----------------------------------------------------------------------------- 8. reconstructions
def test_reconstruction_rows_are_labelled():
    originals, rebuilt = torch.zeros(10, 1, 8, 8), torch.ones(10, 1, 8, 8)
    png = Image.open(io.BytesIO(reconstructions_png(originals, rebuilt, ncols=4)))
    bare = grid_pixels(interleaved(originals, rebuilt, 4), 4)
    assert png.size == (LABEL_MARGIN + bare.shape[1], bare.shape[0])
    pixels = np.asarray(png.convert("L"))
    assert (pixels[:, LABEL_MARGIN:] == bare).all()  # the grid itself, untouched
    rows = 6  # three pairs of rows: data, reconstruction
    band = bare.shape[0] / rows
    for row in range(rows):  # each row's label: dark text in the margin beside it
        margin = pixels[int(row * band) : int((row + 1) * band), :LABEL_MARGIN]
        assert (margin < 128).any(), row
    data, reconstruction = (
        (pixels[int(row * band) : int((row + 1) * band), :LABEL_MARGIN] < 128).any(0).sum()
        for row in (0, 1)
    )
    assert reconstruction > 2 * data  # the labels alternate: "data", then "reconstruction"


# ----------------------------------------------------------------------------- 9. hints
def test_an_existing_run_folder_hints_at_resuming_in_the_faces_words(run_dir, capsys):
    config = TrainConfig(dataset="digits", latent_dim=4, hidden=(32,), epochs=1)
    with pytest.raises(AevbError) as error:
        train(config, run_dir, progress=False)
    assert f"aevb.resume({str(run_dir)!r})" in str(error.value)
    assert "--resume" not in str(error.value)
    assert main(["train", "--out", str(run_dir), "--no-progress", *QUICK]) == EXIT_USER_ERROR
    assert f"continue it with aevb train --resume {run_dir} " in capsys.readouterr().err


def test_settings_are_named_as_the_user_gave_them():
    with pytest.raises(ConfigError, match="use posterior='diagonal' with prior='vamp'"):
        TrainConfig(posterior="iaf", prior="vamp")
    with command_line(), pytest.raises(ConfigError, match="use --posterior diagonal with --prior"):
        TrainConfig(posterior="iaf", prior="vamp")


def test_data_and_training_messages_name_settings_in_the_faces_words():
    grey = np.full((4, 3), 0.5, dtype=np.float32)
    choose = dict(name="t", binary_data=False, is_image=False, binary_likelihood=True)
    with pytest.raises(ConfigError, match=r"or standardize=False$"):
        choose_transforms(grey, binarize="dynamic", standardize=True, **choose)
    with command_line(), pytest.raises(ConfigError, match=r"or --no-standardize$"):
        choose_transforms(grey, binarize="dynamic", standardize=True, **choose)
    with pytest.raises(DataError, match=r"\(binarize: dynamic, static or threshold\)"):
        choose_transforms(grey, binarize="none", standardize=False, **choose)
    with pytest.raises(DataError, match=r"use likelihood='gaussian-learned'$"):
        choose_transforms(grey * 4, binarize=None, standardize=None, **choose)


# ----------------------------------------------------------------------------- 10. quiet
def test_train_quiet_prints_only_the_run_folder(tmp_path):
    done = aevb_process("train", "--epochs", "1", "--out", tmp_path / "run", "--quiet", *QUICK)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"run folder: {tmp_path / 'run'}\n"
    assert "train:" not in done.stderr  # no progress either
    assert (tmp_path / "run" / "summary.json").is_file()


# ----------------------------------------------------------------------------- 11. warnings
def test_run_evaluate_warns_from_python_when_the_estimate_cannot_be_trusted(run_dir):
    """The one-epoch model with k = 21 draws (a 5-draw tail fit, seed 0): 14% of 50 test rows
    have k̂ above 0.7, far over the 1% that makes an estimate unreliable, and Python users are
    told so as the command's users are; with k = 100 none is (k̂ at most 0.69), and nothing is
    said."""
    run = load_run(run_dir)
    x = run.split("test", 50)
    with pytest.warns(UserWarning, match="Pareto k̂ above") as caught:
        result = run.evaluate(x, importance_samples=21, progress=False)
    assert not result.importance_diagnostics.reliable
    assert [str(w.message) for w in caught] == [result.importance_diagnostics.warning()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.evaluate(x, importance_samples=21, progress=False, warn=False)
        assert run.evaluate(
            x, importance_samples=100, progress=False
        ).importance_diagnostics.reliable
