"""Writing one benchmark's section of docs/benchmarks.md, leaving the other areas' sections alone."""

from __future__ import annotations

from pathlib import Path

from coretech.files import write_text_atomic

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def replace_section(text: str, section: str, body: str) -> str:
    """``text`` with the ``section`` heading's block replaced by ``body`` (appended if missing)."""
    start = text.find(section + "\n")
    if start < 0:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "# Benchmarks\n\n") + body
    end = text.find("\n## ", start + len(section))
    rest = "" if end < 0 else text[end + 1 :]
    return text[:start] + body + ("\n" + rest if rest else "")


def write_section(section: str, body: str) -> Path:
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    current = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
    write_text_atomic(DOCS, replace_section(current, section, body))
    return DOCS
