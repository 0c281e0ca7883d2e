#!/usr/bin/env python
"""Injected faults against real ``python -m aevb.cli train`` processes, each followed by the
user's recovery, checking that nothing is lost.

Run as root from the repository root (mounting tmpfs and read-only bind mounts needs root)::

    PYTHONPATH=src python tools/faults.py --report faults.json
    PYTHONPATH=src python tools/faults.py --quick --jobs 2

Every training process trains on scikit-learn's digits with a small model, one CPU thread and
frequent checkpoints (``--checkpoint-every 1``, or 7 for the second settings), so that faults
land at start-up, mid-epoch, during checkpoint writes and during the final evaluation and
plots. Uninterrupted reference runs of each setting are trained first; every fault is drawn
from a seeded generator (``--seed``), so the plan is reproducible (the moment a signal lands
still depends on the machine's timing, which the report records).

Faults
------
``sigkill-*``
    SIGKILL at uniformly random moments of a run (some runs killed two or three times in a
    row), right after ``config.json`` appears, while a checkpoint's temporary file exists
    (during its write) and during the final evaluation and plots. Recovery: ``aevb train
    --resume RUN`` if ``config.json`` exists, else the same command again.
``sigint-*``, ``sigterm-*``
    The signal at start-up (during imports), right after ``config.json`` appears (before
    training), mid-epoch, during a checkpoint write and during the final evaluation/plots.
    Expected of the signalled process: exit 130 with its one-line message (or another clear
    one-line message), no traceback. Recovery as above.
``disk-full-*``
    The run folder on a small tmpfs, with a filler file leaving a chosen number of pages free,
    so that the disk fills at different moments (config, a checkpoint, the metrics file, the
    best checkpoint, the plots, the summary); ``rlimit-*``: RLIMIT_FSIZE with SIGXFSZ ignored
    (writes fail with EFBIG). Expected: exit 2 with one ``error:`` line naming the path, no
    traceback, the previous checkpoint intact (it loads and matches its digest). Recovery:
    the filler deleted (or no limit), then ``--resume`` (or the same command).
``read-only-*``
    The run folder behind a read-only bind mount: ``--resume`` (complete and interrupted runs)
    must stop with a clear error before training; ``evaluate`` and ``sample --out`` elsewhere
    must work; ``sample``/``reconstruct --out`` inside it and ``train --out`` inside it must
    give a clear error. Afterwards the folder must be unchanged and resume bit-identically.
``two-writers-*``
    Two ``aevb train --out SAME`` started together (different seeds), and ``--resume`` of a run
    that is still training. Expected: exactly one proceeds, the other stops with a clear
    error, and the surviving run is consistent (bit-identical to its reference), evaluable
    and resumable.

Success, for every recovered run: the final ``checkpoints/last.safetensors`` model tensors are
bit-identical to the reference run's, and so are ``best.safetensors``'s, the metrics records
(times aside) and the summary's test values; no ``.*.tmp`` file remains; every plot is a
complete PNG; no process printed a traceback.

Classification (first that applies)
-----------------------------------
``lost``
    Work lost or the folder unusable: the recovery failed, a check above failed, the previous
    checkpoint did not survive a failed write, or two writers both proceeded.
``traceback``
    A process of the fault or of the recovery printed a ``Traceback``.
``clear_error_recovered``
    The faulted command stopped with a clear error (exit 2 and an ``error:`` line) and the
    recovery restored the reference state (or, for read-only uses, the folder is unchanged
    and resumes bit-identically).
``recovered_bit_identical``
    The faulted command finished or was stopped, and the recovery ended bit-identical to the
    reference (for read-only uses that must work: they worked, the folder unchanged).

Independently of the class, a fault whose process did not behave as expected (a SIGTERM that
killed it silently, a disk-full error that does not name the path, a read-only use refused)
is listed with ``violations``; a fault is OK when its class is one of the last two and it has
no violations.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

COMMON = [
    "--latent-dim",
    "4",
    "--hidden",
    "64",
    "--batch-size",
    "32",
    "--threads",
    "1",
    "--no-progress",
]
SETTINGS = {
    # 12 epochs x 41 steps, a checkpoint after every step: ~3 s of training on one core.
    "A": ["--epochs", "12", "--checkpoint-every", "1", "--seed", "3", *COMMON],
    # Adagrad, checkpoints every 7 steps.
    "B": [
        "--epochs",
        "12",
        "--checkpoint-every",
        "7",
        "--seed",
        "5",
        "--optimizer",
        "adagrad",
        *COMMON,
    ],
    # A second writer's run (another seed) and A trained to 16 epochs.
    "A_seed4": ["--epochs", "12", "--checkpoint-every", "1", "--seed", "4", *COMMON],
    "A16": ["--epochs", "16", "--checkpoint-every", "1", "--seed", "3", *COMMON],
    # Checkpoints at epoch ends only: the metrics file and best.safetensors are written before
    # last.safetensors, so a full disk can hit each of them.
    "C": ["--epochs", "12", "--seed", "3", *COMMON],
}
TIMEOUT = 180.0
PNGS = ("curves.png", "samples.png", "reconstructions.png")
CLASSES = ("recovered_bit_identical", "clear_error_recovered", "lost", "traceback")


# ============================================================================ processes
@dataclass
class Proc:
    """One finished (or killed) process of a scenario."""

    label: str
    argv: list[str]
    rc: int | None
    out: str
    err: str
    seconds: float

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.out + self.err

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error: ")]

    @property
    def clear_error(self) -> bool:
        return self.rc == 2 and bool(self.error_lines) and not self.traceback

    def brief(self) -> dict:
        return {
            "label": self.label,
            "argv": " ".join(self.argv),
            "rc": self.rc,
            "seconds": round(self.seconds, 2),
            "stderr_tail": self.err[-1500:],
            "stdout_tail": self.out[-300:],
        }


class Launch:
    """A running ``python -m aevb.cli`` process with its output in files."""

    counter = 0
    lock = threading.Lock()

    def __init__(
        self,
        folder: Path,
        label: str,
        argv: list[str],
        cwd: Path | None = None,
        fsize: int | None = None,
    ):
        with Launch.lock:
            Launch.counter += 1
            n = Launch.counter
        self.label, self.argv = label, argv
        self.out_path = folder / f"_{n}_{label}.out"
        self.err_path = folder / f"_{n}_{label}.err"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
        env.setdefault("AEVB_OFFLINE", "1")

        def limit() -> None:
            if fsize is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

        self.piped = fsize is not None  # RLIMIT_FSIZE would cut output files short too
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aevb.cli", *argv],
                stdout=subprocess.PIPE if self.piped else out,
                stderr=subprocess.PIPE if self.piped else err,
                cwd=cwd or folder,
                env=env,
                preexec_fn=limit if fsize is not None else None,
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)

    def wait(self, timeout: float = TIMEOUT) -> Proc:
        try:
            if self.piped:
                out, err = self.process.communicate(timeout=timeout)
                self.out_path.write_bytes(out)
                self.err_path.write_bytes(err)
            else:
                self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        seconds = time.monotonic() - self.started
        return Proc(
            self.label,
            self.argv,
            self.process.returncode,
            self.out_path.read_text(errors="replace"),
            self.err_path.read_text(errors="replace"),
            seconds,
        )


def run_cli(folder: Path, label: str, argv: list[str], **kw: Any) -> Proc:
    return Launch(folder, label, argv, **kw).wait()


def wait_until(
    cond: Callable[[], bool], launch: Launch, timeout: float = 60.0, poll: float = 0.0005
) -> bool:
    """Poll ``cond`` until it holds (True) or the process ends / time runs out (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if not launch.alive():
            return cond()
        time.sleep(poll)
    return False


def tmp_files(run: Path) -> list[Path]:
    found = []
    for folder in (run, run / "checkpoints"):
        with contextlib.suppress(OSError):
            found += [
                p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")
            ]
    return found


def checkpoint_tmp(run: Path) -> bool:
    with contextlib.suppress(OSError):
        return any(
            n.startswith(".") and n.endswith(".tmp") for n in os.listdir(run / "checkpoints")
        )
    return False


def phase_of(run: Path) -> str:
    """Where a run folder says the process was when it stopped."""
    if not (run / "config.json").exists():
        return "start-up"
    if checkpoint_tmp(run) or tmp_files(run):
        return "checkpoint-write"
    if (run / "curves.png").exists():
        return "final"
    if not (run / "checkpoints/last.safetensors").exists():
        return "start-up-after-config"
    return "training"


# ============================================================================ checks
def model_tensors(path: Path, prefix: str = "model.") -> dict[str, bytes]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k).tobytes() for k in f.keys() if k.startswith(prefix)}


def metrics_records(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in records:
        r.pop("epoch_seconds", None)
    return records


def summary_values(path: Path) -> dict:
    values = json.loads(path.read_text())
    for key in ("train_seconds", "wall_seconds"):
        values.pop(key, None)
    return values


def complete_png(path: Path) -> bool:
    data = path.read_bytes()
    return (
        data[:8] == b"\x89PNG\r\n\x1a\n"
        and data[-12:-8] == b"\x00\x00\x00\x00"
        and data[-8:-4] == b"IEND"
    )


def compare(run: Path, ref: Path) -> list[str]:
    """What differs between a recovered run folder and its reference ([] when nothing)."""
    problems = []
    for rel in ("checkpoints/last.safetensors", "checkpoints/best.safetensors"):
        if not (run / rel).is_file():
            problems.append(f"{rel} missing")
            continue
        try:
            got, want = model_tensors(run / rel), model_tensors(ref / rel)
        except Exception as error:
            problems.append(f"{rel} unreadable ({type(error).__name__}: {error})")
            continue
        if got.keys() != want.keys():
            problems.append(f"{rel}: different tensors")
        else:
            differ = [k for k in want if got[k] != want[k]]
            if differ:
                problems.append(f"{rel}: {len(differ)} model tensors differ (e.g. {differ[0]})")
    try:
        if metrics_records(run / "metrics.jsonl") != metrics_records(ref / "metrics.jsonl"):
            problems.append("metrics.jsonl differs from the reference (times aside)")
    except (OSError, ValueError) as error:
        problems.append(f"metrics.jsonl unreadable ({error})")
    try:
        if summary_values(run / "summary.json") != summary_values(ref / "summary.json"):
            problems.append("summary.json differs from the reference (times aside)")
    except (OSError, ValueError) as error:
        problems.append(f"summary.json unreadable ({error})")
    for name in PNGS:
        if not (run / name).is_file() or not complete_png(run / name):
            problems.append(f"{name} missing or incomplete")
    leftovers = tmp_files(run)
    if leftovers:
        problems.append(f"temporary files left: {[p.name for p in leftovers]}")
    return problems


def checkpoint_intact(path: Path) -> str | None:
    """None if the checkpoint loads and matches its digest, else why not."""
    if not path.exists():
        return None
    from aevb.errors import AevbError
    from aevb.train.checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
    except AevbError as error:
        return str(error)
    return None


def folder_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ============================================================================ scenarios
@dataclass
class Fault:
    id: str
    kind: str
    run: Callable[[Fault, Path], None]
    params: dict = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # -> lost
    violations: list[str] = field(default_factory=list)
    faulted_clear_error: bool = False
    notes: dict = field(default_factory=dict)
    cls: str = ""

    def record(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc


class Harness:
    def __init__(self, work: Path, rng: random.Random):
        self.work, self.rng = work, rng
        self.refs: dict[str, Path] = {}
        self.durations: dict[str, float] = {}
        self.mounts: list[Path] = []
        self.mount_lock = threading.Lock()

    # -------------------------------------------------------------- helpers
    def train_argv(self, run: Path, settings: str) -> list[str]:
        return ["train", "--out", str(run), *SETTINGS[settings]]

    def build_references(self, jobs: int) -> None:
        folder = self.work / "refs"
        folder.mkdir(parents=True)

        def one(name: str) -> None:
            run = folder / name
            proc = run_cli(folder, f"ref-{name}", self.train_argv(run, name))
            if proc.rc != 0:
                raise SystemExit(f"reference run {name} failed (exit {proc.rc}):\n{proc.err}")
            self.refs[name] = run
            self.durations[name] = proc.seconds

        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, SETTINGS))

    def recover(
        self, fault: Fault, folder: Path, run: Path, settings: str, label: str = "recover"
    ) -> Proc:
        """The user's recovery: --resume if config.json exists, else the same command."""
        if (run / "config.json").exists():
            argv = ["train", "--resume", str(run), "--no-progress", "--threads", "1"]
        else:
            argv = self.train_argv(run, settings)
        return fault.record(run_cli(folder, label, argv))

    def finish_recovery(self, fault: Fault, folder: Path, run: Path, settings: str) -> None:
        proc = self.recover(fault, folder, run, settings)
        if proc.rc != 0:
            fault.problems.append(f"recovery exited {proc.rc}: {last_line(proc.err)}")
            return
        fault.problems += compare(run, self.refs[settings])

    def mount_tmpfs(self, where: Path, size: int) -> None:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True
        )
        with self.mount_lock:
            self.mounts.append(where)

    def mount_readonly(self, source: Path, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(source), str(where)], check=True)
        with self.mount_lock:
            self.mounts.append(where)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(where)], check=True)

    def unmount(self, where: Path) -> None:
        result = subprocess.run(["umount", str(where)], capture_output=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
        with self.mount_lock:
            if where in self.mounts:
                self.mounts.remove(where)

    def unmount_all(self) -> None:
        for where in list(reversed(self.mounts)):
            self.unmount(where)

    # -------------------------------------------------------------- SIGKILL
    def kill_random(self, fault: Fault, folder: Path) -> None:
        settings, kills = fault.params["settings"], fault.params["kill_times"]
        run = folder / "run"
        moments = []
        for i, at in enumerate(kills):
            if (run / "config.json").exists():
                argv = ["train", "--resume", str(run), "--no-progress", "--threads", "1"]
            else:
                argv = self.train_argv(run, settings)
            launch = Launch(folder, f"killed-{i + 1}", argv)
            end = time.monotonic() + at
            while launch.alive() and time.monotonic() < end:
                time.sleep(0.005)
            finished_first = not launch.alive()
            launch.signal(signal.SIGKILL)
            proc = fault.record(launch.wait())
            moments.append("after-exit" if finished_first else phase_of(run))
            if proc.rc not in (0, -signal.SIGKILL):
                fault.violations.append(f"kill {i + 1}: exit {proc.rc}: {last_line(proc.err)}")
        fault.notes["moments"] = moments
        self.finish_recovery(fault, folder, run, settings)

    def kill_at(self, fault: Fault, folder: Path) -> None:
        """SIGKILL (or another signal) when the run folder reaches a moment."""
        settings, moment = fault.params["settings"], fault.params["moment"]
        signum = fault.params.get("signal", signal.SIGKILL)
        run = folder / "run"
        launch = Launch(folder, "faulted", self.train_argv(run, settings))
        delay = fault.params.get("delay", 0.0)
        if moment == "imports":
            time.sleep(delay)
            reached = launch.alive() and not (run / "config.json").exists()
        elif moment == "config":
            reached = wait_until(lambda: (run / "config.json").exists(), launch)
        elif moment == "checkpoint-write":
            reached = wait_until(lambda: checkpoint_tmp(run), launch)
        elif moment == "mid-epoch":
            reached = wait_until(lambda: (run / "checkpoints/last.safetensors").exists(), launch)
            time.sleep(delay)
        elif moment == "final":
            reached = wait_until(lambda: (run / "curves.png").exists(), launch)
            time.sleep(delay)
        else:
            raise ValueError(moment)
        if moment not in ("mid-epoch", "final") and delay and moment != "imports":
            time.sleep(delay)
        alive = launch.alive()
        phase = phase_of(run) if alive else "after-exit"  # the folder as the signal is sent
        launch.signal(signum)
        proc = fault.record(launch.wait())
        fault.notes.update(reached=reached, phase_at_signal=phase, alive_at_signal=alive)
        if signum != signal.SIGKILL and alive:
            if proc.rc == 130 and "interrupted" in proc.err and not proc.traceback:
                pass
            elif proc.clear_error:
                fault.faulted_clear_error = True
            elif proc.rc == 0:
                pass  # it finished before the signal took effect
            elif not proc.traceback:
                fault.violations.append(
                    f"{signal.Signals(signum).name} in {phase}: exit {proc.rc} without the "
                    f"one-line message (expected 130 or a clear error): {last_line(proc.err)}"
                )
        self.finish_recovery(fault, folder, run, settings)

    # -------------------------------------------------------------- disk full
    def disk_full(self, fault: Fault, folder: Path) -> None:
        """A tmpfs with ``free_pages`` left free by a filler file, or (``fill_on``) filled
        completely as soon as that file of the run folder appears."""
        settings = fault.params["settings"]
        mnt = folder / "mnt"
        self.mount_tmpfs(mnt, 8 << 20)
        try:
            run = mnt / "run"
            trigger = fault.params.get("fill_on")
            if trigger is None:
                fill(mnt / "filler", fault.params["free_pages"])
                stat = os.statvfs(mnt)
                fault.notes["free_bytes"] = stat.f_bavail * stat.f_frsize
                self.faulted_write(fault, folder, run, settings)
            else:
                launch = Launch(folder, "faulted", self.train_argv(run, settings))
                fault.notes["filled"] = wait_until(lambda: (run / trigger).exists(), launch)
                fill(mnt / "filler2", 0)
                self.judge_failed_write(fault, launch.wait(), run)
            for filler in mnt.glob("filler*"):
                filler.unlink()
            self.finish_recovery(fault, folder, run, settings)
        finally:
            self.unmount(mnt)

    def file_limit(self, fault: Fault, folder: Path) -> None:
        settings = fault.params["settings"]
        run = folder / "run"
        self.faulted_write(fault, folder, run, settings, fsize=fault.params["fsize"])
        self.finish_recovery(fault, folder, run, settings)

    def faulted_write(
        self, fault: Fault, folder: Path, run: Path, settings: str, fsize: int | None = None
    ) -> None:
        proc = run_cli(folder, "faulted", self.train_argv(run, settings), fsize=fsize)
        self.judge_failed_write(fault, proc, run)

    def judge_failed_write(self, fault: Fault, proc: Proc, run: Path) -> None:
        fault.record(proc)
        fault.notes["failed_at"] = failed_at(proc.err)
        if proc.rc == 0:
            fault.notes["failed_at"] = "nothing (the run finished)"
            return
        if proc.clear_error:
            fault.faulted_clear_error = True
            if len(proc.error_lines) != 1:
                fault.violations.append(f"{len(proc.error_lines)} error lines")
            if str(run) not in proc.error_lines[-1] and "run" not in proc.error_lines[-1]:
                fault.violations.append(f"the error does not name the path: {proc.error_lines[-1]}")
        elif not proc.traceback:
            fault.violations.append(f"exit {proc.rc} without a clear error: {last_line(proc.err)}")
        problem = checkpoint_intact(run / "checkpoints/last.safetensors")
        if problem:
            fault.problems.append(f"the previous checkpoint did not survive: {problem}")

    # -------------------------------------------------------------- read-only
    def read_only(self, fault: Fault, folder: Path) -> None:
        settings, use = "A", fault.params["use"]
        src = folder / "run"
        if fault.params.get("partial"):
            launch = Launch(folder, "to-interrupt", self.train_argv(src, settings))
            wait_until(lambda: (src / "checkpoints/last.safetensors").exists(), launch)
            time.sleep(fault.params.get("delay", 0.5))
            launch.signal(signal.SIGINT)
            prep = fault.record(launch.wait())
            if prep.rc != 130:
                fault.notes["preparation"] = f"interrupting the run gave exit {prep.rc}"
        else:
            shutil.copytree(self.refs[settings], src)
        before = folder_hash(src)
        mnt = folder / "ro"
        self.mount_readonly(src, mnt)
        try:
            argv = {
                "resume": ["train", "--resume", str(mnt), "--no-progress", "--threads", "1"],
                "resume-more-epochs": [
                    "train",
                    "--resume",
                    str(mnt),
                    "--epochs",
                    "14",
                    "--no-progress",
                    "--threads",
                    "1",
                ],
                "evaluate": [
                    "evaluate",
                    str(mnt),
                    "--importance-samples",
                    "10",
                    "--json",
                    "--no-progress",
                ],
                "evaluate-last": [
                    "evaluate",
                    str(mnt),
                    "--which",
                    "last",
                    "--importance-samples",
                    "10",
                    "--json",
                    "--no-progress",
                ],
                "sample-inside": ["sample", str(mnt), "--out", str(mnt / "more.png")],
                "reconstruct-inside": ["reconstruct", str(mnt), "--out", str(mnt / "rec.png")],
                "sample-elsewhere": ["sample", str(mnt), "--out", str(folder / "s.png")],
                "train-inside": ["train", "--out", str(mnt / "new"), *SETTINGS[settings]],
            }[use]
            proc = fault.record(run_cli(folder, use, argv))
        finally:
            self.unmount(mnt)
        must_work = use in ("evaluate", "evaluate-last", "sample-elsewhere")
        if must_work:
            if proc.rc != 0:
                fault.violations.append(
                    f"read-only use refused: exit {proc.rc}: {last_line(proc.err)}"
                )
                fault.faulted_clear_error = proc.clear_error
        elif proc.clear_error:
            fault.faulted_clear_error = True
        elif proc.rc == 0:
            fault.violations.append("a write into a read-only folder reported success")
        elif not proc.traceback:
            fault.violations.append(f"exit {proc.rc} without a clear error: {last_line(proc.err)}")
        if use.startswith("resume") and re.search(r"safetensors|metrics\.jsonl", proc.err):
            # The first write a resume makes after training starts is a checkpoint or the
            # metrics file: failing there means it trained before noticing.
            fault.violations.append("--resume failed only after training had started")
        if folder_hash(src) != before:
            fault.problems.append("the read-only folder changed")
        self.finish_recovery(fault, folder, src, settings)

    # -------------------------------------------------------------- two writers
    def two_writers(self, fault: Fault, folder: Path) -> None:
        run = folder / "run"
        first = Launch(folder, "writer-A", self.train_argv(run, "A"))
        time.sleep(fault.params["offset"])
        second = Launch(folder, "writer-B", self.train_argv(run, "A_seed4"))
        a, b = fault.record(first.wait()), fault.record(second.wait())
        self.judge_writers(fault, folder, run, a, b, {"writer-A": "A", "writer-B": "A_seed4"})

    def resume_while_training(self, fault: Fault, folder: Path) -> None:
        run = folder / "run"
        first = Launch(folder, "training", self.train_argv(run, "A"))
        wait_until(lambda: (run / "checkpoints/last.safetensors").exists(), first)
        time.sleep(fault.params["delay"])
        alive = first.alive()
        fault.notes["first_alive_at_resume"] = alive
        # The trainer is paused (it keeps its lock) while the resumer starts up: without the
        # pause, a resumer slowed by a busy machine reached the lock after the trainer had
        # finished and, rightly, resumed the finished run, which the judge below cannot tell
        # from two writers at once.
        if alive:
            first.signal(signal.SIGSTOP)
        second = Launch(
            folder,
            "resumer",
            ["train", "--resume", str(run), "--epochs", "16", "--no-progress", "--threads", "1"],
        )
        b = second.wait()
        if alive:
            first.signal(signal.SIGCONT)
        a = first.wait()
        fault.record(a)
        fault.record(b)
        self.judge_writers(fault, folder, run, a, b, {"training": "A", "resumer": "A16"})

    def judge_writers(
        self, fault: Fault, folder: Path, run: Path, a: Proc, b: Proc, refs: dict[str, str]
    ) -> None:
        proceeded = [p for p in (a, b) if p.rc == 0]
        refused = [p for p in (a, b) if p.clear_error]
        matches = {name: not compare(run, self.refs[name]) for name in set(refs.values())}
        fault.notes["folder_matches"] = [n for n, same in matches.items() if same] or ["none"]
        if len(proceeded) == 2:
            fault.problems.append(
                "both writers proceeded into one folder (one user's run silently lost); the "
                f"folder now matches: {', '.join(fault.notes['folder_matches'])}"
            )
            return
        if len(proceeded) != 1 or len(refused) != 1:
            fault.problems.append(
                f"expected one writer to finish and one clear error; exits {a.rc} and {b.rc}"
            )
            return
        fault.faulted_clear_error = True
        survivor = refs[proceeded[0].label]
        problems = compare(run, self.refs[survivor])
        if problems:
            fault.problems += [f"the surviving run is not its reference: {p}" for p in problems]
            return
        evaluate = fault.record(
            run_cli(
                folder,
                "evaluate",
                ["evaluate", str(run), "--importance-samples", "10", "--json", "--no-progress"],
            )
        )
        if evaluate.rc != 0:
            fault.problems.append(f"the surviving run does not evaluate: {last_line(evaluate.err)}")
        resumed = self.recover(fault, folder, run, survivor, "resume-survivor")
        if resumed.rc != 0:
            fault.problems.append(f"the surviving run does not resume: {last_line(resumed.err)}")
        else:
            fault.problems += compare(run, self.refs[survivor])


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def fill(path: Path, leave_pages: int) -> None:
    """Fill the file system of ``path`` with one file, leaving ``leave_pages`` pages free."""
    stat = os.statvfs(path.parent)
    available = stat.f_bavail * stat.f_frsize
    size = max(0, available - leave_pages * 4096)
    with open(path, "wb") as f:
        if size:
            with contextlib.suppress(OSError):
                os.posix_fallocate(f.fileno(), 0, size)


FRAME = re.compile(r'File "([^"]*/aevb/[^"]*)", line \d+, in (\w+)\n\s+(.*)')


def failed_at(err: str) -> str:
    """Which write a disk-full failure hit: the file an ``error:`` line names, else the
    innermost aevb frame of the traceback above the atomic-write helpers."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    if errors:
        for name in (
            "config.json",
            "last.safetensors",
            "best.safetensors",
            "metrics.jsonl",
            "summary.json",
            "curves.png",
            "samples.png",
            "reconstructions.png",
        ):
            if name in errors[-1]:
                return name
        return errors[-1][:120]
    frames = [m for m in FRAME.finditer(err) if not m.group(1).endswith("checkpoint.py")]
    if frames:
        _, function, source = frames[-1].groups()
        return f"{function}: {source.strip()[:90]}"
    return "unknown (" + last_line(err)[:120] + ")"


# ============================================================================ plan
def plan(h: Harness, quick: bool, rng: random.Random) -> list[Fault]:
    faults: list[Fault] = []

    def add(fid: str, kind: str, fn: Callable, **params: Any) -> None:
        faults.append(Fault(fid, kind, fn, params))

    n_random = 8 if quick else 36
    for i in range(n_random):
        settings = "A" if i % 2 == 0 else "B"
        t = rng.uniform(0.05, h.durations[settings] * 1.05)
        add(
            f"sigkill-random-{i + 1:02d}",
            "sigkill",
            h.kill_random,
            settings=settings,
            kill_times=[round(t, 3)],
        )
    for i in range(2 if quick else 6):
        settings = "A" if i % 2 == 0 else "B"
        times = [round(rng.uniform(0.05, h.durations[settings]), 3) for _ in range(2 + i % 2)]
        add(
            f"sigkill-repeated-{i + 1:02d}",
            "sigkill",
            h.kill_random,
            settings=settings,
            kill_times=times,
        )
    for i in range(2 if quick else 10):
        add(
            f"sigkill-checkpoint-write-{i + 1:02d}",
            "sigkill",
            h.kill_at,
            settings="A" if i % 3 else "B",
            moment="checkpoint-write",
        )
    for i in range(1 if quick else 4):
        add(
            f"sigkill-after-config-{i + 1:02d}",
            "sigkill",
            h.kill_at,
            settings="A" if i % 2 else "C",
            moment="config",
        )
    for i in range(1 if quick else 6):
        add(
            f"sigkill-final-{i + 1:02d}",
            "sigkill",
            h.kill_at,
            settings="A" if i % 2 else "B",
            moment="final",
            delay=round(rng.uniform(0, 0.4), 3),
        )
    for signame, signum in (("sigint", signal.SIGINT), ("sigterm", signal.SIGTERM)):
        repeats = 1 if quick else 3
        for moment in ("imports", "config", "mid-epoch", "checkpoint-write", "final"):
            for i in range(repeats):
                delay = {
                    "imports": rng.uniform(0.3, 3.0),
                    "config": 0.0,
                    "mid-epoch": rng.uniform(0, 2.0),
                    "checkpoint-write": 0.0,
                    "final": rng.uniform(0, 0.4),
                }[moment]
                settings = "B" if moment == "mid-epoch" else "A"
                add(
                    f"{signame}-{moment}-{i + 1}",
                    signame,
                    h.kill_at,
                    settings=settings,
                    moment=moment,
                    signal=signum,
                    delay=round(delay, 3),
                )
            if quick and signame == "sigterm" and moment == "config":
                break

    # Disk full: pages left free on a tmpfs so that a chosen write is the first to fail.
    def pages(settings: str, name: str) -> int:
        return -(-next(h.refs[settings].rglob(name)).stat().st_size // 4096)

    last, best = pages("A", "last.safetensors"), pages("A", "best.safetensors")
    static = [
        ("A", 0, "config.json"),
        ("A", 1 + last // 2, "the first checkpoint"),
        ("A", 1 + last + last // 2, "the second step's checkpoint"),
        ("C", 1, "metrics.jsonl"),
        ("C", 2 + best // 2, "best.safetensors"),
        ("C", 2 + best + last // 2, "epoch 1's last.safetensors"),
        ("C", 2 + best + last, "epoch 2's metrics.jsonl"),
        ("C", 3 + best + last + best // 2, "epoch 2's best.safetensors"),
    ]
    dynamic = [
        ("A", "metrics.jsonl"),
        ("A", "curves.png"),
        ("A", "summary.json"),
        ("A", "samples.png"),
        ("C", "curves.png"),
        ("C", "summary.json"),
    ]
    if quick:
        static, dynamic = [static[0], static[3], static[5]], [dynamic[1]]
    for i, (settings, free, target) in enumerate(static):
        add(
            f"disk-full-{i + 1:02d}-{settings}-free{free}p",
            "disk-full",
            h.disk_full,
            settings=settings,
            free_pages=free,
            target=target,
        )
    for settings, trigger in dynamic:
        add(
            f"disk-full-fills-at-{trigger}-{settings}",
            "disk-full",
            h.disk_full,
            settings=settings,
            fill_on=trigger,
        )
    limits = [
        ("C", 200),
        ("C", 2000),
        ("C", rng.randint(2000, 37000)),
        ("C", 50000),
        ("C", rng.randint(50000, 127000)),
        ("A", rng.randint(2000, 127000)),
    ]
    for i, (settings, fsize) in enumerate(limits[: 1 if quick else 6]):
        add(
            f"rlimit-fsize-{i + 1:02d}-{settings}-{fsize}B",
            "disk-full",
            h.file_limit,
            settings=settings,
            fsize=fsize,
        )
    uses = [
        ("resume", False),
        ("resume", True),
        ("resume-more-epochs", False),
        ("evaluate", False),
        ("evaluate-last", True),
        ("sample-inside", False),
        ("reconstruct-inside", False),
        ("sample-elsewhere", False),
        ("train-inside", False),
    ]
    if quick:
        uses = [("resume", True), ("evaluate", False), ("sample-inside", False)]
    for use, partial in uses:
        add(
            f"read-only-{use}{'-interrupted' if partial else ''}",
            "read-only",
            h.read_only,
            use=use,
            partial=partial,
            delay=round(rng.uniform(0.2, 1.5), 3),
        )
    for i, offset in enumerate([0.0, 0.3, 1.5][: 1 if quick else 3]):
        add(f"two-writers-same-out-{i + 1}", "two-writers", h.two_writers, offset=offset)
    for i in range(1 if quick else 3):
        add(
            f"two-writers-resume-while-training-{i + 1}",
            "two-writers",
            h.resume_while_training,
            delay=round(rng.uniform(0.0, 1.5), 3),
        )
    return faults


def classify(fault: Fault) -> None:
    if fault.problems:
        fault.cls = "lost"
    elif any(p.traceback for p in fault.procs):
        fault.cls = "traceback"
    elif fault.faulted_clear_error:
        fault.cls = "clear_error_recovered"
    else:
        fault.cls = "recovered_bit_identical"


def execute(h: Harness, fault: Fault) -> Fault:
    folder = h.work / "faults" / fault.id
    folder.mkdir(parents=True)
    started = time.monotonic()
    try:
        fault.run(fault, folder)
    except Exception:
        fault.problems.append("harness error: " + traceback.format_exc()[-1500:])
        fault.notes["harness_error"] = True
    fault.notes["seconds"] = round(time.monotonic() - started, 1)
    classify(fault)
    return fault


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 25 faults instead of 120+")
    parser.add_argument("--jobs", type=int, default=2, help="faults run at once (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault plan")
    parser.add_argument("--report", help="write a JSON report here")
    parser.add_argument(
        "--only", help="run only faults whose id contains one of these comma-separated texts"
    )
    parser.add_argument("--workdir", help="keep the work here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the disk-full and read-only faults mount file systems")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="aevb-faults-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    harness = Harness(work, rng)
    started = time.monotonic()
    try:
        harness.build_references(args.jobs)
        print(
            "references: " + ", ".join(f"{k} {v:.1f} s" for k, v in harness.durations.items()),
            file=sys.stderr,
        )
        faults = plan(harness, args.quick, rng)
        if args.only:
            faults = [f for f in faults if any(o in f.id for o in args.only.split(","))]
        print(f"{len(faults)} faults; work folder {work}", file=sys.stderr)
        done: list[Fault] = []
        with ThreadPoolExecutor(args.jobs) as pool:
            for fault in pool.map(lambda f: execute(harness, f), faults):
                done.append(fault)
                print(
                    f"  {fault.id}: {fault.cls}{' (violations)' if fault.violations else ''}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        harness.unmount_all()
    print_summary(done)
    elapsed = time.monotonic() - started
    print(f"\n{len(done)} faults in {elapsed:.0f} s")
    if args.report:
        report = {
            "totals": dict(Counter(f.cls for f in done)),
            "by_kind": {
                k: dict(Counter(f.cls for f in done if f.kind == k))
                for k in dict.fromkeys(f.kind for f in done)
            },
            "violations": sum(bool(f.violations) for f in done),
            "seconds": round(elapsed),
            "faults": [fault_record(f) for f in done],
        }
        Path(args.report).write_text(json.dumps(report, indent=1, default=str))
        print(f"report: {args.report}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def fault_record(f: Fault) -> dict:
    ok = f.cls in ("recovered_bit_identical", "clear_error_recovered") and not f.violations
    record = {
        "id": f.id,
        "kind": f.kind,
        "class": f.cls,
        "ok": ok,
        "params": f.params,
        "notes": f.notes,
        "problems": f.problems,
        "violations": f.violations,
    }
    if not ok:
        record["processes"] = [p.brief() for p in f.procs]
    else:
        record["processes"] = [{"label": p.label, "rc": p.rc} for p in f.procs]
    for p in f.params.values():
        if callable(p):
            record["params"] = {k: v for k, v in f.params.items() if not callable(v)}
    if "signal" in f.params:
        record["params"] = {**record["params"], "signal": signal.Signals(f.params["signal"]).name}
    return record


def print_summary(faults: list[Fault]) -> None:
    kinds = list(dict.fromkeys(f.kind for f in faults))
    width = 14
    print(
        f"\n{'fault class':<{width}} "
        + " ".join(f"{c:>24}" for c in CLASSES)
        + f" {'violations':>11} {'total':>6}"
    )
    total: Counter = Counter()
    for kind in kinds:
        group = [f for f in faults if f.kind == kind]
        counts = Counter(f.cls for f in group)
        violations = sum(bool(f.violations) for f in group)
        total.update(counts)
        total["_v"] += violations
        print(
            f"{kind:<{width}} "
            + " ".join(f"{counts[c]:>24}" for c in CLASSES)
            + f" {violations:>11} {len(group):>6}"
        )
    print(
        f"{'TOTAL':<{width}} "
        + " ".join(f"{total[c]:>24}" for c in CLASSES)
        + f" {total['_v']:>11} {len(faults):>6}"
    )
    moments = Counter()
    for f in faults:
        for m in f.notes.get("moments", []):
            moments[m] += 1
        if "phase_at_signal" in f.notes:
            moments[f.notes["phase_at_signal"]] += 1
    if moments:
        print(
            "where the kills and signals landed: "
            + ", ".join(f"{k} {v}" for k, v in moments.most_common())
        )
    fills = Counter(f.notes.get("failed_at", "") for f in faults if f.kind == "disk-full")
    if fills:
        print("where the disk filled: " + ", ".join(f"{k} {v}" for k, v in fills.most_common()))
    bad = [f for f in faults if f.cls not in CLASSES[:2] or f.violations]
    if bad:
        print("\nnot OK:")
        for f in bad:
            why = (f.problems or f.violations or [""])[0]
            tb = next((last_line(p.err) for p in f.procs if p.traceback), "")
            print(f"  {f.id}: {f.cls}: {why[:160]}{' | ' + tb[:140] if tb else ''}")


if __name__ == "__main__":
    sys.exit(main())
