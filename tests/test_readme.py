"""The README's code blocks run as printed, in order, in a fresh folder — a new user's first
hour — with the few scale-downs in ``SMALLER`` so that the whole README runs in about a minute.

Shell blocks run line by line through ``bash`` (a line ending in ``\\`` continues); Python
blocks run in one namespace, in order, as a user pasting them into one session would. The
set-up block's install steps are not repeated (this test runs inside the installed
environment); its ``aevb train`` is run, and its second command must be the one CI runs.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Each scale-down must match somewhere, so a README edit that drops one fails here rather than
# leaving a rule that no longer does anything. Nothing else is changed.
SMALLER = {
    "--epochs 3": "--epochs 1",
    "--importance-samples 5000": "--importance-samples 20",
    "--importance-samples 1000": "--importance-samples 20",
    "epochs=20": "epochs=2",
    "epochs=100": "epochs=3",
    "importance_samples=1000": "importance_samples=20",
    "importance_samples=5000": "importance_samples=20",
    "num_draws=200": "num_draws=10",
}
# Commands that take their size from defaults rather than flags get it appended.
APPENDED = {
    "aevb report ": " --importance-samples 20 --num-examples 100",
    "aevb explore ": " --no-browser",
}


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, its text and the README line it starts on."""

    language: str
    text: str
    line: int


def code_blocks(markdown: str) -> list[Block]:
    blocks, language, lines, start = [], None, [], 0
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.startswith("```"):
            if language is None:
                language, lines, start = line[3:].strip(), [], number
            else:
                blocks.append(Block(language, "\n".join(lines), start))
                language = None
        elif language is not None:
            lines.append(line)
    assert language is None, "an unclosed code block in README.md"
    return blocks


def shell_commands(text: str) -> list[str]:
    """The block's commands: continuation lines joined, comments after two spaces dropped."""
    joined = re.sub(r"\\\n\s*", "", text)
    commands = []
    for line in joined.splitlines():
        command = re.split(r"\s{2,}#", line)[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def smaller(text: str, used: set[str]) -> str:
    for long, short in SMALLER.items():
        if long in text:
            used.add(long)
            text = text.replace(long, short)
    for start, extra in APPENDED.items():
        if text.startswith(start):
            text += extra
    return text


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["AEVB_OFFLINE"] = "1"
    return env


def _run(command: str, cwd: Path, env: dict[str, str], where: str) -> None:
    started = time.perf_counter()
    _run_one(command, cwd, env, where)
    print(f"{time.perf_counter() - started:6.1f} s  {command}")


def _run_one(command: str, cwd: Path, env: dict[str, str], where: str) -> None:
    if command.startswith("aevb explore "):
        _serve_once(command, cwd, env, where)
        return
    done = subprocess.run(
        command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{where}: `{command}` failed:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, f"{where}: `{command}`:\n{done.stderr}"


def _serve_once(command: str, cwd: Path, env: dict[str, str], where: str) -> None:
    """``aevb explore`` serves until stopped: fetch its page once, then Ctrl-C it."""
    with subprocess.Popen(
        shlex.split(command),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as server:
        try:
            seen = []
            for line in server.stdout:
                seen.append(line)
                url = re.search(r"http://127\.0\.0\.1:\d+/", line)
                if url:
                    with urllib.request.urlopen(url.group(0), timeout=60) as page:
                        assert page.status == 200 and b"<html" in page.read().lower()
                    break
            else:
                pytest.fail(f"{where}: `{command}` printed no address:\n{''.join(seen)}")
        finally:
            os.killpg(server.pid, signal.SIGINT)
            server.communicate(timeout=60)
    assert server.returncode == 0, f"{where}: `{command}` ended with {server.returncode}"


def test_the_set_up_is_two_commands_and_the_second_is_what_ci_runs():
    setup = code_blocks(README.read_text())[0]
    install, tests = setup.text.splitlines()
    assert install.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    assert install.endswith("&& aevb train")
    # It must work in a new terminal: the environment is activated first.
    assert tests == ". .venv/bin/activate && python -m pytest -q"
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("python -m pytest -q")


def test_the_readme_runs_as_printed_in_order(tmp_path, monkeypatch, data_dir):
    """Needs the real MNIST files (the README trains on MNIST): ``data_dir`` skips without."""
    blocks = code_blocks(README.read_text())
    env, used, namespace = _environment(), set(), {"__name__": "readme"}
    env["AEVB_DATA_DIR"] = str(data_dir)
    monkeypatch.setenv("AEVB_DATA_DIR", str(data_dir))  # the Python blocks read it too
    monkeypatch.chdir(tmp_path)  # the Python blocks' relative paths, as the shell's
    setup, *rest = blocks
    for step in setup.text.splitlines()[0].split(" && "):
        if step.startswith("aevb "):
            _run(step, tmp_path, env, f"README.md:{setup.line}")
    for block in rest:
        where = f"README.md:{block.line}"
        if block.language == "bash":
            for command in shell_commands(block.text):
                _run(smaller(command, used), tmp_path, env, where)
        elif block.language == "python":
            exec(compile(smaller(block.text, used), where, "exec"), namespace)
        else:
            pytest.fail(f"{where}: a ```{block.language} block this test does not know")
    assert used == set(SMALLER), f"scale-downs that no longer match: {set(SMALLER) - used}"
    # What the blocks promise is there.
    for written in ("runs/mnist/report.html", "samples.png", "rec.png", "threes.png"):
        assert (tmp_path / written).stat().st_size > 0, written
    assert math.isfinite(namespace["result"].log_likelihood)
    assert namespace["images"].shape == (16, 1, 8, 8)
    assert (namespace["anomaly_score"].shape,) == ((len(namespace["X"]),),)
