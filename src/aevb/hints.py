"""Messages in the words of the face the user works through: the ``aevb`` command's
(``--lr-decay 0.5``, ``aevb train --resume RUN``) or the Python API's (``lr_decay=0.5``,
``aevb.resume('RUN')``).

The command marks the time it runs (:func:`command_line`); anything else is the Python API,
whose users have no flags to pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["command_line", "resume_hint", "setting_name"]

_COMMAND_LINE: ContextVar[bool] = ContextVar("aevb_command_line", default=False)
_NO_VALUE: Any = object()


@contextmanager
def command_line() -> Iterator[None]:
    """Within this block, messages speak the ``aevb`` command's words."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def setting_name(name: str, value: Any = _NO_VALUE) -> str:
    """Setting ``name`` of :class:`aevb.TrainConfig` (set to ``value``, if given) as the user
    gives it: ``--flow-steps``, ``--posterior diagonal``, ``--no-standardize`` on the command
    line; ``flow_steps``, ``posterior='diagonal'``, ``standardize=False`` in Python."""
    if not _COMMAND_LINE.get():
        return name if value is _NO_VALUE else f"{name}={value!r}"
    flag = "--" + name.replace("_", "-")
    if value is _NO_VALUE or value is True:
        return flag
    if value is False:
        return "--no-" + flag[2:]
    return f"{flag} {value}"


def resume_hint(run_dir: str | os.PathLike) -> str:
    """What continues the run in ``run_dir``: ``aevb train --resume RUN`` on the command line
    (``torchrun … -m aevb train --resume RUN`` under torchrun), ``aevb.resume('RUN')`` in
    Python."""
    if not _COMMAND_LINE.get():
        return f"aevb.resume({os.fspath(run_dir)!r})"
    from aevb.distributed import launched_by_torchrun

    launcher = "torchrun … -m aevb" if launched_by_torchrun() else "aevb"
    return f"{launcher} train --resume {os.fspath(run_dir)}"
