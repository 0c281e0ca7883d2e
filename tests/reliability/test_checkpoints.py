"""The checkpoint layer: files that are truncated, flipped, edited, unsigned, non-finite, from
another run, or pickles that try to run code. Keeps the issue's findings 6 (a same-architecture
checkpoint from another optimizer crashed with ``KeyError: 'betas'``) and 16 (the digest left
the metadata out, so an edited learning rate was resumed silently, and a file without the
digest was accepted unchecked) as regression tests, with a property-based fuzzer of the
reader."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import copy_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save, save_file

from aevb.cli import main
from aevb.errors import AevbError
from aevb.runs import BEST, LAST, load_run, resume, train
from aevb.runs import run as run_module
from aevb.train import checkpoint as ckpt


def _header(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, f.metadata()


def test_an_edited_learning_rate_in_the_metadata_is_refused(trained, tmp_path, digits):
    """The tensors untouched, the learning rate inside the JSON metadata changed, the digest
    kept: the digest covers the metadata, so resuming refuses the file."""
    run = copy_run(trained, tmp_path)
    tensors, header = _header(run / LAST)
    metadata = json.loads(header["aevb"])
    metadata["optimizer"]["param_groups"][0]["lr"] = 0.5
    header["aevb"] = json.dumps(metadata)
    (run / LAST).write_bytes(save(tensors, metadata=header))
    with pytest.raises(AevbError, match="does not match its SHA-256: its tensors or metadata"):
        resume(run, epochs=2, dataset=digits, progress=False)


def test_a_checkpoint_without_its_digest_is_refused(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    for name in (LAST, BEST):
        tensors, header = _header(run / name)
        del header["aevb-digest"]
        (run / name).write_bytes(save(tensors, metadata=header))
    assert main(["evaluate", str(run), "--importance-samples", "2"]) == 2
    assert "carries no SHA-256 of its contents" in capsys.readouterr().err


def test_an_all_nan_checkpoint_is_refused_even_with_a_valid_digest(trained, tmp_path, capsys):
    """A digest is not a signature: someone can recompute it. Non-finite weights are refused
    on their own (the issue evaluated an all-NaN best.safetensors with exit 0)."""
    run = copy_run(trained, tmp_path)
    tensors, metadata = ckpt.load_checkpoint(run / BEST)
    ckpt.save_checkpoint(
        run / BEST, {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, metadata
    )
    assert main(["evaluate", str(run), "--importance-samples", "2"]) == 2
    assert "holds NaN or infinite values" in capsys.readouterr().err


def test_a_checkpoint_of_another_run_is_refused(trained, tmp_path, digits, quick_config):
    """Same architecture, trained with SGD: its last.safetensors copied into the Adam run is
    refused by the run identity it records — naming what differs — not a KeyError."""
    other = tmp_path / "sgd"
    train(
        dataclasses.replace(quick_config, epochs=1, optimizer="sgd"),
        other,
        dataset=digits,
        progress=False,
    )
    run = copy_run(trained, tmp_path)
    shutil.copy(other / LAST, run / LAST)
    with pytest.raises(AevbError, match=r"belongs to another run.*optimizer: \"sgd\""):
        resume(run, epochs=2, dataset=digits, progress=False)
    shutil.copy(other / BEST, run / BEST)
    with pytest.raises(AevbError, match="does not belong to the run"):
        load_run(run)


def test_checkpoints_being_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("not a folder")
    args = ["train", "--epochs", "1", "--latent-dim", "4", "--hidden", "32", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert "cannot write" in capsys.readouterr().err


def _checkpoint_bytes() -> tuple[bytes, dict]:
    tensors = {
        "model.w": torch.arange(6.0).reshape(2, 3),
        "rng.cpu": torch.arange(4, dtype=torch.uint8),
    }
    metadata = {"state": {"epoch": 1, "step": 10}, "optimizer": {"lr": 0.001}}
    text = json.dumps(metadata)
    header = {"aevb": text, "aevb-digest": ckpt._digest(tensors, text)}
    return save(tensors, metadata=header), metadata


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
    tail=st.binary(max_size=32),
)
def test_fuzz_checkpoint_reader(tmp_path, cut, flips, tail):
    """Any truncation, byte flips and appended bytes of a valid checkpoint: the reader
    returns the original content or raises AevbError — nothing else, never a changed
    value."""
    data, metadata = _checkpoint_bytes()
    damaged = bytearray(data[: cut % (len(data) + 1)])
    for position, mask in flips:
        if damaged:
            damaged[position % len(damaged)] ^= mask
    damaged += tail
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(bytes(damaged))
    try:
        tensors, loaded = ckpt.load_checkpoint(path)
    except AevbError:
        return
    assert loaded == metadata
    assert torch.equal(tensors["model.w"], torch.arange(6.0).reshape(2, 3))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    metadata=st.one_of(
        st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
        st.lists(st.integers(), max_size=3),
        st.integers(),
        st.none(),
    ),
    with_digest=st.booleans(),
)
def test_fuzz_checkpoint_headers(tmp_path, metadata, with_digest):
    """Well-formed safetensors files whose aevb header holds arbitrary JSON, with or without
    a (correct) digest: loaded as written, or refused with AevbError."""
    tensors = {"w": torch.ones(2)}
    text = json.dumps(metadata)
    header = {"aevb": text}
    if with_digest:
        header["aevb-digest"] = ckpt._digest(tensors, text)
    path = tmp_path / "h.safetensors"
    save_file(tensors, path, metadata=header)
    try:
        _, loaded = ckpt.load_checkpoint(path)
    except AevbError:
        return
    assert with_digest and loaded == metadata


# (.npy/.npz pickles: tests/test_data.py::test_pickles_are_never_loaded)
def test_a_pickle_planted_as_checkpoint_is_refused_without_running_it(
    tmp_path, digits, quick_config, capsys, exploit
):
    """torch.save writes pickles; one put in place of a checkpoint is not a safetensors file,
    so resume, evaluate and sample refuse it — and nothing in it runs."""
    config = dataclasses.replace(quick_config, epochs=1)
    train(config, tmp_path / "run", dataset=digits, progress=False)
    payload, marker = exploit
    for name in (LAST, "checkpoints/best.safetensors"):
        torch.save({"model.weight": payload}, tmp_path / "run" / name)
    with pytest.raises(AevbError, match="truncated, corrupt or not an aevb checkpoint"):
        resume(tmp_path / "run", dataset=digits, progress=False)
    for command in (["sample", tmp_path / "run"], ["evaluate", tmp_path / "run"]):
        assert main([str(a) for a in command]) == 2
        assert "not an aevb checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_no_code_path_unpickles():
    """The package never calls pickle, torch.load or np.load with pickles allowed."""
    package = Path(run_module.__file__).parents[1]
    source = "\n".join(p.read_text() for p in package.glob("**/*.py"))
    for forbidden in ("import pickle", "torch.load(", "allow_pickle=True"):
        assert forbidden not in source, forbidden
