"""Device names: ``auto``, ``cpu``, ``cuda``, ``cuda:N``."""

from __future__ import annotations

import re

import torch

from aevb.errors import AevbError, ConfigError

__all__ = ["check_device_name", "resolve_device"]

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str) -> None:
    """Refuse a device name that is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AevbError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AevbError(
                f"device {name!r} requested but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device
