"""The token-budgeted mix: each source's share of documents, drawn by a seeded hash so that a rerun
keeps the same ones, written to ``cpt/mixed`` (a fully kept shard is hard-linked, not copied)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from coretech.data.cpt.report import MixReport, SourceReport
from coretech.data.cpt.settings import CptCorpusConfig
from coretech.data.cpt.shards import _read_json, _ShardWriter
from coretech.errors import CoreTechError
from coretech.files import atomic_open, fingerprint, write_json_atomic


def token_budgets(config: CptCorpusConfig, available: dict[str, int]) -> dict[str, int | None]:
    """Token budget per source: absolute tokens, or ratios of total_tokens (or of the largest mix)."""
    sources = config.sources()
    ratios = {name: s.ratio for name, s in sources.items() if s.ratio is not None}
    if not ratios:
        return {name: s.tokens for name, s in sources.items()}
    weight = sum(ratios.values())
    shares = {name: r / weight for name, r in ratios.items()}
    total = config.total_tokens
    if total is None:  # the largest mix: the source with the fewest tokens per share is taken whole
        total = min(available[name] / share for name, share in shares.items())
    return {name: round(total * share) for name, share in shares.items()}


def mix_corpus(
    config: CptCorpusConfig,
    root: Path,
    state: Path,
    tmp: Path,
    fingerprints: dict[str, str],
    reports: dict[str, SourceReport],
) -> dict[str, MixReport]:
    """Write (or resume) the mix under ``root/mixed``; only the budgets and the seed decide what is taken."""
    budgets = token_budgets(config, {name: r.tokens for name, r in reports.items()})
    mixed_dir, state_dir = root / "mixed", state / "mix"
    mix_fingerprint = fingerprint(fingerprints, budgets, config.seed)
    if _read_json(state_dir / "fingerprint.json") != mix_fingerprint:
        shutil.rmtree(mixed_dir, ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True)
        write_json_atomic(state_dir / "fingerprint.json", mix_fingerprint)
    mixed_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, MixReport] = {}
    for name, report in reports.items():
        budget = budgets[name]
        mix = result[name] = MixReport(budget=budget)
        share = 1.0 if budget is None or budget >= report.tokens else budget / max(report.tokens, 1)
        for shard_file in sorted((root / name).glob("part-*.jsonl")):
            number = int(shard_file.stem.split("-")[1])
            marker_path = state_dir / f"{name}-{number:05d}.json"
            marker = _read_json(marker_path)
            if marker is None:
                target = mixed_dir / f"{name}-{number:05d}.jsonl"
                source_marker = state / name / f"shard-{number:05d}.json"
                marker = _mix_shard(
                    config.seed, name, shard_file, source_marker, target, tmp, share, budget, mix.tokens
                )
                write_json_atomic(marker_path, marker)
            mix.entries += marker["entries"]
            mix.tokens += marker["tokens"]
            mix.left_out += marker["left_out"]
    if not any(m.entries for m in result.values()):
        raise CoreTechError(
            f"{root / 'stats.md'}: the mixed corpus is empty: every record was dropped or the budgets are 0"
        )
    return result


def _mix_shard(
    seed: int,
    name: str,
    source: Path,
    source_marker: Path,
    target: Path,
    tmp: Path,
    share: float,
    budget: int | None,
    taken: int,
) -> dict[str, int]:
    """Copy one shard's share of documents into the mix; a fully kept shard is hard-linked."""
    target.unlink(missing_ok=True)
    if share >= 1.0:
        marker = _read_json(source_marker)
        try:
            os.link(source, target)
        except OSError:  # no hard links here: copy, under the final name only once complete
            with atomic_open(target, "wb", tmp_dir=tmp) as handle, source.open("rb") as original:
                shutil.copyfileobj(original, handle)
        return {"entries": marker["kept"], "tokens": marker["tokens"], "left_out": 0}
    assert budget is not None
    writer = _ShardWriter(tmp, target)
    entries = tokens = left_out = 0
    threshold = int(share * 2**64)
    try:
        with source.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                record = json.loads(line)
                key = f"{seed}:{name}:{source.name}:{number}".encode()
                draw = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
                if draw < threshold and taken + tokens + record["tokens"] <= budget:
                    writer.write(line)
                    entries += 1
                    tokens += record["tokens"]
                else:
                    left_out += 1
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return {"entries": entries, "tokens": tokens, "left_out": left_out}
