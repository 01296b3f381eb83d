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
from coretech.ipc.default import config_root, default_scheme, load_scheme, resolve_scheme_paths
from coretech.ipc.scheme import IpcEntry, IpcScheme, SchemeError, UnknownIpcCode

__all__ = [
    "LEVELS",
    "InvalidIpcCode",
    "IpcCode",
    "IpcEntry",
    "IpcScheme",
    "Level",
    "SchemeError",
    "UnknownIpcCode",
    "canonical_ipc",
    "config_root",
    "default_scheme",
    "extract_ipc_codes",
    "load_scheme",
    "parse_ipc",
    "resolve_scheme_paths",
]
