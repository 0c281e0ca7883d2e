"""The run-folder layer: config.json edited or corrupted, the run's data changed, two writers in
one folder. Keeps the issue's findings 4 (config.json with ``data`` missing or of the wrong
type, non-integers where integers belong, a huge ``hidden``, a wrong shape: raw TypeErrors),
5 (the run's data file changed width), 11 (two ``aevb train`` into one ``--out``: a run lost or
mixed) and 17 (an edited ``val_fraction`` silently changed the split on ``--resume``; other
data of the same width scored without a warning) as regression tests, with a property-based
fuzzer of the config reader."""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import QUICK, cli, copy_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aevb.errors import AevbError
from aevb.runs import CONFIG_FILE, load_run, resume
from aevb.storage import RunLock

ARGS = ["--epochs", "1", *QUICK]


def _edit(run: Path, change) -> None:
    values = json.loads((run / CONFIG_FILE).read_text())
    change(values)
    (run / CONFIG_FILE).write_text(json.dumps(values))


def _set(path: str, value):
    """An edit that sets the JSON value at ``path`` (keys separated by dots)."""

    def change(values):
        *parents, last = path.split(".")
        for key in parents:
            values = values[key]
        values[last] = value

    return change


def _delete(path: str):
    def change(values):
        *parents, last = path.split(".")
        for key in parents:
            values = values[key]
        del values[last]

    return change


EDITS = {
    "data-missing": (_delete("data"), "'data' is missing"),
    "data-a-string": (_set("data", "digits"), "'data' is missing or not an object"),
    "format-2": (_set("format", 2), "another version of aevb"),
    "latent-dim-4.5": (_set("train.latent_dim", 4.5), "latent_dim must be an integer"),
    "batch-size-1.5": (_set("train.batch_size", 1.5), "batch_size must be an integer"),
    "hidden-1e12-float": (_set("train.hidden", [1e12]), "hidden must be a list of integers"),
    "seed-2**64": (_set("train.seed", 2**64), "seed must be at most"),
    "unknown-setting": (_set("train.speed", 3), "unknown training settings"),
    "model-hidden-10**12": (_set("model.arguments.hidden", [10**12]), "memory"),
    "model-data-shape-negative": (_set("model.arguments.data_shape", [1, -8, 8]), "positive"),
    "factory-os-system": (_set("model.factory", "os:system"), "is not a model factory"),
    "factory-missing-module": (_set("model.factory", "nowhere.at_all:f"), "cannot import"),
    "factory-a-number": (_set("model.factory", 5), "'factory' (a string"),
    "event-shape-2-d": (_set("data.event_shape", [8, 8]), "event_shape must be a list"),
    "event-shape-other": (_set("data.event_shape", [1, 9, 8]), "9, 8"),
    "num-train-string": (_set("data.num_train", "many"), "num_train"),
    "fingerprints-missing": (_delete("data.fingerprints"), "fingerprints"),
    "transform-bad-mean": (
        _set("data.transforms", [{"kind": "standardize", "mean": ["a"], "scale": [1]}]),
        "standardisation needs lists",
    ),
    "transform-unknown": (_set("data.transforms", [{"kind": "rotate"}]), "unknown data transform"),
    "custom-model-yes": (_set("custom_model", "yes"), "custom_model"),
    "learning-rate-edited": (_set("train.lr", 0.5), "train.lr: 0.001 in the checkpoint, 0.5 now"),
}


@pytest.mark.parametrize("name", EDITS)
def test_an_edited_or_corrupt_config_is_one_clear_error(trained, tmp_path, name):
    """``aevb evaluate`` and ``aevb train --resume`` of a run whose config.json was damaged
    or edited: one ``error:`` line naming the problem, exit 2, never a traceback."""
    change, expected = EDITS[name]
    run = copy_run(trained, tmp_path)
    _edit(run, change)
    for command in (["evaluate", run, "--importance-samples", "2"], ["train", "--resume", run]):
        outcome = cli(*command, "--no-progress")
        assert outcome.clear_error, (command, outcome.err)
        assert expected in outcome.err, (command, outcome.err)


@pytest.mark.parametrize(
    "content", ["not json {", "[1, 2]", "", "\x00\xff"], ids=["text", "list", "empty", "binary"]
)
def test_an_unreadable_config_is_one_clear_error(trained, tmp_path, content):
    run = copy_run(trained, tmp_path)
    (run / CONFIG_FILE).write_bytes(content.encode("latin-1"))
    outcome = cli("evaluate", run, "--importance-samples", "2", "--no-progress")
    assert outcome.clear_error and "config.json" in outcome.err, outcome.err


def test_an_edited_val_fraction_is_refused_on_resume(trained, tmp_path, digits):
    """The split would change under the run: refused, naming the split and the sizes."""
    run = copy_run(trained, tmp_path)
    _edit(run, _set("train.val_fraction", 0.2))
    with pytest.raises(AevbError, match=r"rows, but the run in .* was trained with"):
        resume(run, epochs=2, progress=False)


def _table_run(tmp_path: Path, values: np.ndarray) -> tuple[Path, Path]:
    data = tmp_path / "table.npy"
    np.save(data, values)
    run = tmp_path / "run"
    assert cli("train", "--dataset", data, *ARGS, "--out", run).status == 0
    return data, run


def test_other_data_of_the_same_shape_are_refused(tmp_path):
    """The run's data file replaced by other rows of the same width: evaluate, reconstruct
    and resume refuse it, by the fingerprint in config.json."""
    rng = np.random.default_rng(0)
    data, run = _table_run(tmp_path, rng.normal(size=(200, 5)))
    np.save(data, rng.normal(size=(200, 5)))
    for command in (["evaluate", run, "--importance-samples", "2"], ["train", "--resume", run]):
        outcome = cli(*command, "--no-progress")
        assert outcome.clear_error and "SHA-256 fingerprint differs" in outcome.err, outcome.err


def test_data_of_another_width_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    data, run = _table_run(tmp_path, rng.normal(size=(200, 5)))
    np.save(data, rng.normal(size=(200, 7)))
    outcome = cli("evaluate", run, "--importance-samples", "2", "--no-progress")
    assert outcome.clear_error and "rows of shape (7,)" in outcome.err, outcome.err


def test_a_second_lock_on_a_folder_is_refused_at_once(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(AevbError, match="in use by another aevb process"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: free again
        pass


def _start(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aevb.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_trainings_into_one_folder(tmp_path):
    """Two ``aevb train --out SAME`` started together, then a ``--resume`` while one trains:
    exactly one trains, the others are refused with one line, and the run is whole — it
    evaluates and resumes. The writer is given far more epochs than it can finish (an epoch
    on digits takes ~25 ms), so it is surely still training when the others try; it is then
    interrupted, and resumed to the end of the epoch it was in."""
    run = tmp_path / "run"
    args = ["train", "--epochs", "100000", "--seed", "1", *QUICK, "--out", run]
    first, second = _start(*args), _start(*args)
    try:
        while first.poll() is None and second.poll() is None:
            time.sleep(0.05)
        loser, writer = (first, second) if first.poll() is not None else (second, first)
        while not (run / "checkpoints" / "last.safetensors").exists():
            assert writer.poll() is None, writer.communicate()
            time.sleep(0.05)
        intruder = _start("train", "--resume", run, "--no-progress")
        for refused in (loser, intruder):
            _, err = refused.communicate(timeout=120)
            assert refused.returncode == 2 and "Traceback" not in err, err
            assert "in use by another aevb process" in err or "already holds a run" in err, err
        assert writer.poll() is None, writer.communicate()
        writer.send_signal(signal.SIGINT)
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 130 and "Traceback" not in err, err
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
                process.wait()
    epochs = len((run / "metrics.jsonl").read_text().splitlines()) + 1
    assert cli("evaluate", run, "--importance-samples", "2", "--no-progress").status == 0
    assert cli("train", "--resume", run, "--epochs", epochs, "--no-progress").status == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == epochs


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value, prefix=()):
    """Every key path into a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_the_config_reader(trained, tmp_path_factory, data):
    """Any one value of config.json replaced by any JSON value (or deleted): opening the run
    either works or raises AevbError — never another exception."""
    original = json.loads((trained / CONFIG_FILE).read_text())
    values = copy.deepcopy(original)
    paths = [p for p in _paths(values) if p]
    path = data.draw(st.sampled_from(paths))
    parent = values
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON)
    run = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(trained, run)
    (run / CONFIG_FILE).write_text(json.dumps(values))
    try:
        load_run(run)
    except AevbError:
        return
