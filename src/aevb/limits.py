"""Size limits checked before memory is allocated or data decompressed.

A setting or a file can ask for more memory than the machine has — ``--hidden 3000000`` (a
model of 77 GB to train), a 1 MB ``.npz`` that declares 2 GB of zeros — and the process would
then swap, be killed by the kernel, or run for minutes before failing. Each such request is
measured first (from a file's header, a model built on the ``meta`` device, a chunk's shape)
and refused with the limit in the message.
"""

from __future__ import annotations

import os

from aevb.errors import ConfigError

__all__ = [
    "MAX_COUNT",
    "MAX_INFLATION",
    "MAX_SEED",
    "TRAINING_COPIES",
    "available_memory",
    "check_memory",
    "format_bytes",
]

# Seeds go to torch.manual_seed, which takes 64-bit integers; kept below 2⁶³ so that they also
# fit a signed 64-bit integer everywhere they are stored.
MAX_SEED = 2**63 - 1
# Largest count (sizes, steps, samples) any setting or argument takes: a signed 32-bit integer,
# beyond which torch's size arguments, a loop or the memory give out.
MAX_COUNT = 2**31 - 1
# Copies of a model's parameters that training may hold at once: the parameters, their
# gradients, Adam's two moments, and a checkpoint being serialised (parameters and moments).
TRAINING_COPIES = 7
# Largest ratio of an .npz member's decompressed size to its compressed size that is read.
# Real data deflate 2–20× (MNIST's pixels about 6×); deflate's ceiling is about 1032×, which
# only long runs of one value reach. Such a file is refused with a hint to store it
# uncompressed (np.save / np.savez), which has no such limit.
MAX_INFLATION = 200


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation on this machine (Linux: MemAvailable
    from /proc/meminfo; elsewhere the free physical pages), or ``None`` when unknown; less
    where the process's address space is limited (``ulimit -v``, RLIMIT_AS) to less."""
    available = _machine_memory()
    room = _address_space_left()
    if room is None:
        return available
    return room if available is None else min(available, room)


def _machine_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _address_space_left() -> int | None:
    """Bytes the process may still map under its RLIMIT_AS, or ``None`` (no limit, or not
    Linux)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    except (ImportError, OSError, ValueError, StopIteration):
        return None
    return max(0, limit - size)


def format_bytes(size: float) -> str:
    """``size`` bytes in the largest unit that keeps it ≥ 1 (B, KB, MB, GB, TB, PB)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1024:
            return f"{size:.3g} {unit}"
        size /= 1024
    return f"{size:.3g} PB"


def check_memory(
    needed: int,
    what: str,
    hint: str,
    share: float = 1.0,
    error: type[Exception] = ConfigError,
) -> None:
    """Refuse ``what`` (raise ``error``) if it needs more than ``share`` of the available
    memory; ``hint`` says how to ask for less. Does nothing where the available memory is
    unknown."""
    available = available_memory()
    if available is None:
        return
    limit = int(share * available)
    if needed > limit:
        allowed = "" if share >= 1 else f"{share:.0%} of "
        raise error(
            f"{what} needs {format_bytes(needed)} of memory, more than {allowed}the "
            f"{format_bytes(available)} this machine has available; {hint}"
        )
