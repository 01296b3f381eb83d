"""One logging setup for every command: one format (``[coretech] message``), one stream (stderr).

stdout stays for what a command produces (extracted codes, tables a user pipes on); progress, decisions and
warnings go through ``logging`` so that a service manager, Slurm or a test sees them in one place.
"""

from __future__ import annotations

import logging
import sys

ROOT = "coretech"
FORMAT = "[coretech] %(message)s"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time, so pytest's capture and redirections both work."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Install the one handler on the package's root logger (idempotent); library use gets it on first log."""
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level)
    return root


def get_logger(name: str) -> logging.Logger:
    """A child of the package logger; ``name`` is the module's ``__name__``."""
    setup_logging(logging.getLogger(ROOT).level or logging.INFO)
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")
