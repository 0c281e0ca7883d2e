"""Checkpoints: tensors in safetensors, everything else as JSON in its metadata; atomic writes.

Nothing here unpickles: safetensors holds raw tensors only, so loading a checkpoint never
executes code from the file. A checkpoint is one file, so replacing it is one atomic rename
(:func:`aevb.storage.atomic_write_bytes`) and a crash mid-write leaves the previous checkpoint
intact. safetensors checks the header but not the tensor bytes, so a SHA-256 over the JSON
metadata and every tensor's name, dtype, shape and bytes is stored in the header and checked on
load: a changed byte anywhere — a weight or a learning rate in the metadata — is refused, and so
is a file without the digest. A digest guards against corruption and edits, not against someone
who recomputes it, so loaded floating-point tensors must also be finite.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from aevb.errors import AevbError
from aevb.storage import atomic_write_bytes

_METADATA_KEY = "aevb"
_DIGEST_KEY = "aevb-digest"
# The key of aevb 0.2's digest, which covered the tensors only.
_OLD_DIGEST_KEY = "aevb-sha256"


def save_checkpoint(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: dict) -> None:
    """Atomically write ``tensors`` (moved to CPU) and JSON-serialisable ``metadata``."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    text = json.dumps(metadata)
    header = {_METADATA_KEY: text, _DIGEST_KEY: _digest(cpu, text)}
    atomic_write_bytes(path, save(cpu, metadata=header))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`; a damaged, edited, unsigned or
    non-finite one is refused with an :class:`~aevb.errors.AevbError`."""
    path = Path(path)
    if not path.is_file():
        raise AevbError(f"checkpoint {path} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            text = header[_METADATA_KEY]
            metadata = json.loads(text)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise AevbError(
            f"checkpoint {path} is truncated, corrupt or not an aevb checkpoint ({error})"
        ) from error
    if _DIGEST_KEY not in header:
        older = " (written by aevb 0.2, whose digest left the metadata out)"
        raise AevbError(
            f"checkpoint {path} carries no SHA-256 of its contents"
            f"{older if _OLD_DIGEST_KEY in header else ''}, so it cannot be checked; it is not "
            "used"
        )
    if header[_DIGEST_KEY] != _digest(tensors, text):
        raise AevbError(
            f"checkpoint {path} does not match its SHA-256: its tensors or metadata were changed "
            "after it was written (corruption or tampering); it is not used"
        )
    if not isinstance(metadata, dict):
        raise AevbError(
            f"checkpoint {path} is not an aevb checkpoint (its metadata is not an object)"
        )
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise AevbError(
            f"checkpoint {path} holds NaN or infinite values ({', '.join(sorted(bad)[:4])}"
            f"{', …' if len(bad) > 4 else ''}); it is not used"
        )
    return tensors, metadata


def _digest(tensors: Mapping[str, Tensor], metadata: str) -> str:
    """SHA-256 over the metadata's JSON text, then every tensor's name, dtype, shape and
    bytes, in name order."""
    sha = hashlib.sha256()
    sha.update(f"{len(metadata)}|{metadata}|".encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        sha.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return sha.hexdigest()


def optimizer_state_to_tensors(state: dict) -> tuple[dict[str, Tensor], dict]:
    """Split an optimiser ``state_dict`` into tensors and a JSON-serialisable remainder."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state_from_tensors(tensors: Mapping[str, Tensor], rest: dict) -> dict:
    """Inverse of :func:`optimizer_state_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def prefixed(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}{name}": t for name, t in tensors.items()}


def unprefixed(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)}


def rng_state() -> dict[str, Tensor]:
    """The global torch random states (CPU and, where present, every CUDA device)."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda{index}"] = state
    return states


def set_rng_state(states: Mapping[str, Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[f"cuda{i}"] for i in range(len(states) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
