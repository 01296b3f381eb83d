"""What an SFT build wrote and found, as Markdown (printed by the CLI) and JSON (kept with the data)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coretech.data.records import SkipLog
from coretech.tables import markdown_table

# IPC questions train/test of the reference CoreTech-LLM release, for comparison in split.md.
REFERENCE_IPC_COUNTS = [("Paper-SFT", 138, 15), ("GovPatent-SFT", 168, 22)]
LEVELS = ("domain", "area", "technology", "imported")


def level_rows(train: list, test: list, test_phrasing: list) -> list[dict[str, Any]]:
    """Questions per level (imported records: ``imported``), task and side."""
    rows = []
    for level in LEVELS:
        row: dict[str, Any] = {"level": level}
        for side, records in (("train", train), ("test", test), ("test_phrasing", test_phrasing)):
            for task in ("ipc", "tech"):
                row[f"{task}_{side}"] = sum(
                    (r.level if r.rendered else "imported") == level and r.task == task for r in records
                )
        if any(v for k, v in row.items() if k != "level"):
            rows.append(row)
    return rows


@dataclass
class SftBuildReport:
    """What the build wrote and found; ``markdown()`` is printed by the CLI and kept in the run folder."""

    out_dir: Path
    seed: int
    split_rows: list[dict[str, Any]] = field(default_factory=list)
    level_rows: list[dict[str, Any]] = field(default_factory=list)
    split_check: dict[str, Any] = field(default_factory=dict)
    test_domains: list[str] = field(default_factory=list)
    train_domains: list[str] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    curriculum: dict[str, Any] = field(default_factory=dict)
    difficulty: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)
    skips: SkipLog = field(default_factory=SkipLog)
    invalid_symbols: list[str] = field(default_factory=list)
    missing_from_scheme: list[str] = field(default_factory=list)
    missing_codes_kept: bool = True
    untranslated: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    teacher: dict[str, Any] | None = None
    seconds: float = 0.0

    def split_table(self) -> str:
        lines = ["| Source | Task | Train | Test | Total |", "|---|---|---:|---:|---:|"]
        totals = [0, 0]
        for row in self.split_rows:
            lines.append(
                f"| {row['source']} | {row['task']} | {row['train']} | {row['test']} | {row['train'] + row['test']} |"
            )
            totals[0] += row["train"]
            totals[1] += row["test"]
        lines.append(f"| **all** | | **{totals[0]}** | **{totals[1]}** | **{sum(totals)}** |")
        return "\n".join(lines)

    def level_table(self) -> str:
        """IPC and TECH questions per level and side, beside the reference's IPC counts."""
        headers = [
            "Level",
            "IPC train",
            "IPC test",
            "IPC test (phrasing)",
            "TECH train",
            "TECH test",
            "TECH test (phrasing)",
        ]
        rows = [
            [
                r["level"],
                r["ipc_train"],
                r["ipc_test"],
                r["ipc_test_phrasing"],
                r["tech_train"],
                r["tech_test"],
                r["tech_test_phrasing"],
            ]
            for r in self.level_rows
        ]
        rows += [[f"reference {name}", train, test, "", "", "", ""] for name, train, test in REFERENCE_IPC_COUNTS]
        return markdown_table(headers, rows)

    def check_lines(self) -> list[str]:
        """The split's leak check and the two test sets, each with its protocol and n."""
        check = self.split_check
        if not check:
            return []
        joined = ", ".join(f"{kind} {count}" for kind, count in sorted(check["joined_by"].items())) or "none"
        return [
            f"- Test set `coretech_sft_test` (unseen subjects: whole groups held out): n = {check['test']}",
            f"- Test set `coretech_sft_test_phrasing` (seen subjects asked in unseen phrasings, the reference's "
            f"protocol: one phrasing of {check['phrasing_test_share']:.0%} of the training answers asked in 2+ "
            f"phrasings): n = {check['test_phrasing']}",
            f"- Groups: {check['groups']} ({check['test_groups']} on the test side); records joined by "
            f"subject/domain, answer, code set or near-duplicate answer (MinHash, Jaccard >= "
            f"{check['near_duplicate_threshold']}): {joined}",
            f"- test answers identical or near-identical to a train answer: {check['leaks']} "
            "(computed: rapidfuzz ratio >= 90 over normalised answers)",
            *(f"  - {example}" for example in check["leak_examples"]),
        ]

    def split_markdown(self, test_share: float) -> str:
        """``split.md``: sizes per source and task, per level (with the reference's), and the checks."""
        return "\n".join(
            [
                f"# SFT split (leak-free groups, seed {self.seed}, test share {test_share})",
                "",
                self.split_table(),
                "",
                "## Questions per level",
                "",
                self.level_table(),
                "",
                "## Test sets and leak check",
                "",
                *self.check_lines(),
                "",
                f"Test domains: {', '.join(self.test_domains) or 'none'}",
                "",
            ]
        )

    def markdown(self) -> str:
        out = [
            "# SFT data",
            "",
            f"Written to `{self.out_dir}` (seed {self.seed}).",
            "",
            "## Split (leak-free groups)",
        ]
        out += ["", self.split_table(), "", self.level_table(), "", *self.check_lines(), ""]
        out.append(f"Test domains ({len(self.test_domains)}): {', '.join(self.test_domains) or 'none'}")
        out += ["", "## Curriculum", ""]
        out.append(
            f"{len(self.stages)} stages, {self.curriculum.get('mode')}, order {self.curriculum.get('order')}; "
            f"difficulty: {self.difficulty.get('description', '')}"
        )
        out += [
            "",
            "| Stage | Dataset | Samples | Difficulty min | mean | max | Histogram |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for stage in self.stages:
            out.append(
                f"| {stage['stage']} | {stage['dataset']} | {stage['samples']} | {stage['min']:.3f} | "
                f"{stage['mean']:.3f} | {stage['max']:.3f} | {stage['histogram']} |"
            )
        out += ["", "## Problems found", ""]
        out.append(f"Skipped rows/records: {self.skips.total}")
        for reason, count in self.skips.counts.most_common():
            examples = "; ".join(self.skips.examples.get(reason, []))
            out.append(f"- {reason}: {count} (e.g. {examples})")
        out.append(f"Invalid IPC symbols (left out of the answers): {len(self.invalid_symbols)}")
        out += [f"- {line}" for line in self.invalid_symbols]
        kept = "kept" if self.missing_codes_kept else "left out"
        out.append(f"Well-formed codes missing from the IPC scheme ({kept}): {len(self.missing_from_scheme)}")
        out += [f"- {line}" for line in self.missing_from_scheme]
        if self.untranslated:
            terms = sorted(self.untranslated, key=lambda t: -self.untranslated[t])
            out.append(f"Terms without an English name (left in Chinese): {len(terms)}: {'、'.join(terms[:20])}")
        for note, count in sorted(self.notes.items()):
            out.append(f"- {note}: {count}")
        if self.teacher is not None:
            out += ["", "## Teacher rewrites", "", json.dumps(self.teacher, ensure_ascii=False)]
        out += ["", f"Built in {self.seconds:.1f} s."]
        return "\n".join(out) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "seed": self.seed,
            "split": self.split_rows,
            "levels": self.level_rows,
            "split_check": self.split_check,
            "test_domains": self.test_domains,
            "train_domains": self.train_domains,
            "stages": self.stages,
            "curriculum": self.curriculum,
            "difficulty": self.difficulty,
            "datasets": self.datasets,
            "skips": self.skips.as_dict(),
            "invalid_symbols": self.invalid_symbols,
            "missing_from_scheme": self.missing_from_scheme,
            "missing_codes_kept": self.missing_codes_kept,
            "untranslated": self.untranslated,
            "notes": self.notes,
            "teacher": self.teacher,
            "seconds": round(self.seconds, 2),
        }
