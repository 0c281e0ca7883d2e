"""Checkpoints: tensors in safetensors, everything else as JSON in its metadata; atomic writes.

Nothing here unpickles: safetensors holds raw tensors only, so loading a checkpoint never
executes code from the file. A checkpoint is one file, so replacing it is one atomic rename
and a crash mid-write leaves the previous checkpoint intact. safetensors checks the header but
not the tensor bytes, so a SHA-256 of names, dtypes, shapes and bytes is stored beside the
metadata and checked on load: a changed byte anywhere is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from aevb.errors import AevbError

_METADATA_KEY = "aevb"
_DIGEST_KEY = "aevb-sha256"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (all or nothing)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: dict) -> None:
    """Atomically write ``tensors`` (moved to CPU) and JSON-serialisable ``metadata``."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    header = {_METADATA_KEY: json.dumps(metadata), _DIGEST_KEY: _digest(cpu)}
    atomic_write_bytes(path, save(cpu, metadata=header))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`; a damaged file is refused."""
    path = Path(path)
    if not path.is_file():
        raise AevbError(f"checkpoint {path} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata()
            metadata = json.loads(header[_METADATA_KEY])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
        raise AevbError(
            f"checkpoint {path} is truncated, corrupt or not an aevb checkpoint ({error})"
        ) from error
    if _DIGEST_KEY in header and header[_DIGEST_KEY] != _digest(tensors):
        raise AevbError(
            f"checkpoint {path} does not match its SHA-256: its tensors were changed after it "
            "was written (corruption or tampering); it is not used"
        )
    return tensors, metadata


def _digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    sha = hashlib.sha256()
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
