"""Train/test split grouped by normalised domain, across all sources.

Paraphrases of one domain share their answer; if one phrasing were trained on and another tested,
the test would measure recall of a seen answer, not generalisation to an unseen field. So the unit
of the split is the domain, normalised so that ``人工智能领域``, ``人工智能`` and (through the
glossary) ``artificial intelligence`` are one group, whichever table or file they come from.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

_SUFFIXES = re.compile(r"(?:技术领域|领域|行业|产业|technical field|field|industry|sector|domain)$")
_NOISE = re.compile(r"[\W_]+", re.UNICODE)


class HasDomain(Protocol):
    domain: str


R = TypeVar("R", bound=HasDomain)


def normalise_domain(domain: str, aliases: dict[str, str] | None = None) -> str:
    """The split key of a domain: NFKC, case-folded, without spaces, punctuation and 领域/field suffixes.

    ``aliases`` maps other names (English glossary names) to the name they stand for; both sides
    are normalised first, so the mapping is insensitive to case and spacing.
    """
    key = _normalise(domain)
    if aliases:
        table = {_normalise(k): _normalise(v) for k, v in aliases.items()}
        key = table.get(key, key)
    return key


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().strip()
    text = re.sub(r"^(?:the )?field of ", "", text)
    text = _SUFFIXES.sub("", text.strip())
    return _NOISE.sub("", text)


@dataclass
class DomainSplit:
    """The outcome of :func:`split_by_domain`: records per side and the domain keys on each side."""

    train: list = field(default_factory=list)
    test: list = field(default_factory=list)
    train_domains: list[str] = field(default_factory=list)
    test_domains: list[str] = field(default_factory=list)


def split_by_domain(
    records: Sequence[R], test_share: float, seed: int, aliases: dict[str, str] | None = None
) -> DomainSplit:
    """Put whole domains on the test side, in a seeded random order, until ``test_share`` of the records.

    Domains are first sorted by key, then shuffled with ``seed``: the result depends only on the
    data and the seed, not on input order. With two or more domains and ``0 < test_share < 1`` each
    side gets at least one domain. Records keep their input order within each side.
    """
    keys = [normalise_domain(record.domain, aliases) for record in records]
    return split_by_group(records, keys, test_share, seed)


def split_by_group(records: Sequence[R], keys: Sequence[str], test_share: float, seed: int) -> DomainSplit:
    """Put whole groups (one key each) on the test side, in a seeded random order, until ``test_share``
    of the records; the order depends on the keys and the seed only, never on the input order."""
    if not 0 <= test_share < 1:
        raise ValueError(f"test_share must be in [0, 1), got {test_share}")
    sizes: Counter = Counter(keys)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)  # noqa: S311 -- a seeded split, not cryptography
    target = test_share * len(records)
    test_keys: set[str] = set()
    taken = 0
    for key in order:
        if taken >= target or len(test_keys) + 1 >= len(order):
            break
        # Skip a group that would overshoot by more than it fills, unless nothing is taken yet.
        if test_keys and taken + sizes[key] - target > target - taken:
            continue
        test_keys.add(key)
        taken += sizes[key]
    split = DomainSplit()
    by_side: dict[bool, list] = defaultdict(list)
    for record, key in zip(records, keys, strict=True):
        by_side[key in test_keys].append(record)
    split.train, split.test = by_side[False], by_side[True]
    split.test_domains = sorted(test_keys)
    split.train_domains = sorted(set(sizes) - test_keys)
    return split
