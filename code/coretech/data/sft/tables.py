"""Reading the key-technology tables, the SFT builder's own sources.

Owns the two table formats (imported alpaca / sharegpt files live in ``imports``):

* the national-office key-technology table (CSV ``question,answer``; the answer is a numbered
  hierarchy of level-1 areas and level-2 technologies with ``技术方向：`` and ``分类号：`` lines);
* the literature table (XLSX or CSV with ``领域``, ``关键核心技术``, ``IPC分类号及其描述``);

A table row becomes a :class:`KeyTechEntry` (domain, technologies, IPC codes, and the ``file:row``
it came from); QA rendering happens elsewhere. Every problem is reported with its location: rows
that cannot be read go to the ``SkipLog``, symbols that are not IPC codes to ``TableLog.invalid``.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coretech.data.records import Record, RecordError, iter_records
from coretech.data.sft.cells import (
    TableCode,
    TableLog,
    Technology,
    name_and_details,
    parse_code_cell,
    parse_technologies,
    split_top_level,
)
from coretech.data.sft.subjects import domain_from_question

__all__ = ["KeyTechEntry", "TableCode", "TableLog", "Technology", "parse_code_cell", "parse_technologies"]

OFFICE_COLUMNS = ("question", "answer")
PAPER_DOMAIN, PAPER_TECH, PAPER_IPC = "领域", "关键核心技术", "IPC分类号及其描述"
PAPER_COLUMNS = (PAPER_DOMAIN, PAPER_TECH, PAPER_IPC)


@dataclass
class KeyTechEntry:
    """One domain of one source table: what the QA renderer turns into IPC_TASK and TECH_TASK records."""

    domain: str
    source: str
    location: str
    technologies: list[Technology] = field(default_factory=list)
    codes: list[TableCode] = field(default_factory=list)  # codes not tied to one technology

    def all_codes(self) -> list[TableCode]:
        """Every code of the entry once (first description wins), technology codes included."""
        seen: dict[str, TableCode] = {}
        for item in [*self.codes, *(c for t in self.technologies for c in t.codes)]:
            seen.setdefault(str(item.code), item)
        return list(seen.values())

    def areas(self) -> list[str]:
        return list(dict.fromkeys(t.area for t in self.technologies if t.area))


# --- office table ----------------------------------------------------------------------------

_DOMAIN_SUFFIX = re.compile(r"(?:技术)?(?:领域|行业|产业)$")
_DETAIL_LINE = re.compile(r"^\s*(?P<kind>技术方向|研究方向|方向|分类号|IPC分类号|IPC分类|IPC)\s*[：:]\s*(?P<rest>.*)$")
_NUMBERED_LINE = re.compile(
    r"^\s*(?:(?P<num>\d+)(?:(?P<sub>(?:[.．]\d+)+)[.．、]?|[.．、])|[（(](?P<paren>\d+)[)）]"
    r"|(?P<cn>[一二三四五六七八九十]+)[、.．])\s*(?P<text>\S.*)$"
)


def parse_office_answer(answer: str, location: str, log: TableLog) -> tuple[list[Technology], list[TableCode]]:
    """Level-2 technologies (with their level-1 area, directions and codes) of one office answer.

    Both levels are numbered ``1.``; a numbered line is a level-1 area when the next line is a
    numbered ``1.`` (its first technology), or when it uses ``一、`` numbering; ``1.1`` style
    numbering marks level 2 explicitly. Detail lines before any technology belong to the domain.
    """
    items: list[dict[str, Any]] = []
    for offset, raw in enumerate(answer.splitlines()):
        line = unicodedata.normalize("NFKC", raw).strip() if raw.strip() else ""
        if not line:
            continue
        detail = _DETAIL_LINE.match(line)
        if detail:
            kind = "codes" if detail["kind"] in ("分类号", "IPC分类号", "IPC分类", "IPC") else "directions"
            items.append({"kind": kind, "text": detail["rest"], "offset": offset})
            continue
        numbered = _NUMBERED_LINE.match(line)
        if numbered:
            number = numbered["num"] or numbered["paren"]
            items.append(
                {
                    "kind": "numbered",
                    "number": int(number) if number else 0,
                    "explicit": 2 if numbered["sub"] else (1 if numbered["cn"] else 0),
                    "text": numbered["text"].strip(),
                    "offset": offset,
                }
            )
            continue
        log.skips.skip("unreadable line in answer", f"{location} (answer line {offset + 1})", raw.strip()[:60])
    technologies: list[Technology] = []
    domain_codes: list[TableCode] = []
    area, current = "", None
    for index, item in enumerate(items):
        if item["kind"] == "numbered":
            following = items[index + 1] if index + 1 < len(items) else None
            level = item["explicit"] or (
                1
                if following is not None
                and following["kind"] == "numbered"
                and (following["number"] == 1 or following["explicit"] == 2)
                else 2
            )
            if level == 1:
                area, current = item["text"], None
            else:
                name, details = name_and_details(item["text"])
                current = Technology(name=name, details=details, area=area)
                technologies.append(current)
            continue
        if item["kind"] == "directions":
            directions = split_top_level(item["text"], "、，,；;")
            if current is None:
                log.notes["directions outside a technology (ignored)"] += 1
            else:
                current.details.extend(d for d in directions if d not in current.details)
            continue
        codes = parse_code_cell(item["text"], f"{location} (answer line {item['offset'] + 1})", log)
        (current.codes if current is not None else domain_codes).extend(codes)
    return technologies, domain_codes


def read_office_table(path: Path, source: str, log: TableLog) -> list[KeyTechEntry]:
    """Domains of a national-office table (CSV ``question,answer``), one entry per row."""
    entries = []
    for record in _rows(path, OFFICE_COLUMNS, log):
        question = str(record.data.get("question") or "").strip()
        answer = str(record.data.get("answer") or "").strip()
        if not question or not answer:
            log.skips.skip("empty question or answer", record.location)
            continue
        domain = domain_from_question(question)
        if not domain:
            log.skips.skip("no domain found in the question", record.location, question[:60])
            continue
        technologies, codes = parse_office_answer(answer, record.location, log)
        if not technologies and not codes:
            log.skips.skip("no technologies or IPC codes in the answer", record.location)
            continue
        entries.append(KeyTechEntry(domain, source, record.location, technologies, codes))
    return _merge_same_domain(entries, log)


def read_paper_table(path: Path, source: str, log: TableLog) -> list[KeyTechEntry]:
    """Domains of a literature table (XLSX/CSV with 领域, 关键核心技术, IPC分类号及其描述).

    Spreadsheets often merge the 领域 cell over several rows; those rows arrive with an empty 领域
    and continue the domain above (counted in the notes).
    """
    entries = []
    previous: KeyTechEntry | None = None
    for record in _rows(path, PAPER_COLUMNS, log):
        domain = str(record.data.get(PAPER_DOMAIN) or "").strip()
        tech_cell = str(record.data.get(PAPER_TECH) or "").strip()
        code_cell = str(record.data.get(PAPER_IPC) or "").strip()
        if not tech_cell and not code_cell:
            log.skips.skip("no technologies and no IPC codes", record.location)
            continue
        technologies = parse_technologies(tech_cell)
        codes = parse_code_cell(code_cell, record.location, log)
        if len(technologies) == 1 and codes:
            # One technology per row: the row's codes are that technology's (per-technology questions).
            technologies[0].codes, codes = codes, []
            log.notes["literature rows giving codes per technology"] += 1
        if not domain:
            if previous is None:
                log.skips.skip(f"empty {PAPER_DOMAIN}", record.location)
                continue
            log.notes[f"rows continuing the {PAPER_DOMAIN} above (merged cell)"] += 1
            _extend(previous, technologies, codes)
            continue
        domain = _DOMAIN_SUFFIX.sub("", unicodedata.normalize("NFKC", domain)).strip() or domain
        previous = KeyTechEntry(domain, source, record.location, technologies, codes)
        entries.append(previous)
    return _merge_same_domain(entries, log)


def _extend(entry: KeyTechEntry, technologies: list[Technology], codes: list[TableCode]) -> None:
    by_name = {t.name: t for t in entry.technologies}
    for tech in technologies:
        same = by_name.get(tech.name)
        if same is None:
            entry.technologies.append(tech)
            by_name[tech.name] = tech
            continue
        known_here = {str(c.code) for c in same.codes}
        same.codes.extend(c for c in tech.codes if str(c.code) not in known_here)
    known = {str(c.code) for c in entry.all_codes()}
    entry.codes.extend(c for c in codes if str(c.code) not in known)


def merge_across_sources(entries: list[KeyTechEntry], key: Callable[[str], str], log: TableLog) -> list[KeyTechEntry]:
    """One entry per domain over all tables, so one question never gets two different answers.

    ``key`` is the split's domain normalisation, so ``智能网联汽车领域`` in one table and ``智能网联汽车``
    in another merge. The merged entry names every source (``office+papers``) and every row.
    """
    merged: dict[str, KeyTechEntry] = {}
    for entry in entries:
        name = key(entry.domain)
        first = merged.get(name)
        if first is None:
            merged[name] = KeyTechEntry(
                entry.domain, entry.source, entry.location, list(entry.technologies), list(entry.codes)
            )
            continue
        log.notes["domains merged across sources (one answer per domain)"] += 1
        if entry.source not in first.source.split("+"):
            first.source += "+" + entry.source
        first.location += "; " + entry.location
        _extend(first, entry.technologies, entry.all_codes())
    return list(merged.values())


def _merge_same_domain(entries: list[KeyTechEntry], log: TableLog) -> list[KeyTechEntry]:
    """One entry per domain and file: a table listing a domain twice means one longer answer."""
    merged: dict[str, KeyTechEntry] = {}
    for entry in entries:
        first = merged.get(entry.domain)
        if first is None:
            merged[entry.domain] = entry
            continue
        log.notes["rows merged into an earlier row of the same domain"] += 1
        _extend(first, entry.technologies, entry.all_codes())
    return list(merged.values())


def _rows(path: Path, required: tuple[str, ...], log: TableLog) -> Iterator[Record]:
    """Records of a table; a CSV the csv module cannot parse is an error naming the line."""
    iterator = iter_records(path, log.skips, required=required)
    last_line = 1
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except csv.Error as exc:
            raise RecordError(f"{path}:{last_line + 1}: unreadable CSV row ({exc})") from None
        last_line = record.line or last_line
        yield record
