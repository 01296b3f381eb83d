"""IPC codes and schemes; imports nothing else of CoreTech."""

from coretech.ipc.codes import (
    LEVELS,
    InvalidIpcCode,
    IpcCode,
    Level,
    canonical_ipc,
    extract_ipc_codes,
    parse_ipc,
)
from coretech.ipc.scheme import IpcEntry, IpcScheme, SchemeError

__all__ = [
    "LEVELS",
    "InvalidIpcCode",
    "IpcCode",
    "IpcEntry",
    "IpcScheme",
    "Level",
    "SchemeError",
    "canonical_ipc",
    "extract_ipc_codes",
    "parse_ipc",
]
