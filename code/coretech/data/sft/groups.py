"""Leak-free grouping of SFT records, the held-out phrasings, and the leak check the split reports.

Two records that share any of these belong to one group, and a group is never split between train
and test (union-find over the records):

* the normalised subject (``智能芯片``, ``AI chips`` through the glossary), and the normalised domain;
* the normalised answer text;
* the set of IPC codes in the answer;
* a near-duplicate answer: MinHash LSH (datasketch) over character 3-grams, so a teacher's
  paraphrase of one answer, or an answer that differs by one code, groups with it.

Grouping is transitive on purpose: if A shares its codes with B and B its subject with C, a test
C would still measure recall of a trained A-like answer.

The phrasing test set is the reference's protocol (seen subjects, unseen phrasings): from a seeded
share of the training answers asked in two or more phrasings, one phrasing is held out of training.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH
from rapidfuzz import fuzz, process

from coretech.data.sft.split import normalise_domain, split_by_group
from coretech.ipc import extract_ipc_codes

_NOISE = re.compile(r"[\W_]+", re.UNICODE)
_TECH_SUFFIX = re.compile(r"(?<=.{2})(?:技术|technology|technologies)$")
NUM_PERM = 64


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def normalise_answer(text: str) -> str:
    """NFKC, case-folded, without whitespace, punctuation and markdown: the exact-duplicate key."""
    return _NOISE.sub("", unicodedata.normalize("NFKC", text).casefold())


def subject_key(subject: str, aliases: dict[str, str] | None = None) -> str:
    """``normalise_domain`` and a trailing 技术/technology dropped (``区块链技术`` = ``区块链``)."""
    key = normalise_domain(subject, aliases)
    return _TECH_SUFFIX.sub("", key) or key


def _shingles(text: str) -> set[bytes]:
    return {text[i : i + 3].encode() for i in range(max(1, len(text) - 2))}


def _minhash(text: str) -> MinHash:
    minhash = MinHash(num_perm=NUM_PERM, seed=1)
    minhash.update_batch(list(_shingles(text)))
    return minhash


@dataclass
class Grouping:
    """Group id per record (the smallest record index of its group) and why records were joined."""

    group_of: list[int]
    joined_by: dict[str, int]  # key kind → unions it caused (subject, domain, answer, codes, near)

    @property
    def groups(self) -> int:
        return len(set(self.group_of))


def group_records(records: Sequence, aliases: dict[str, str] | None, near_threshold: float) -> Grouping:
    """Union-find over records with ``subject``, ``domain`` and ``output``; see the module doc."""
    finder = UnionFind(len(records))
    joined: dict[str, int] = defaultdict(int)
    first: dict[tuple[str, object], int] = {}

    def join(kind: str, key: object, index: int) -> None:
        other = first.setdefault((kind, key), index)
        if other != index and finder.find(other) != finder.find(index):
            finder.union(other, index)
            joined[kind] += 1

    answers: dict[str, int] = {}
    for index, record in enumerate(records):
        join("subject", subject_key(record.subject or record.domain, aliases), index)
        join("domain", subject_key(record.domain, aliases), index)
        answer = normalise_answer(record.output)
        answers.setdefault(answer, index)
        join("answer", answer, index)
        codes = frozenset(str(c) for c in extract_ipc_codes(record.output))
        if codes:
            join("codes", codes, index)
    if near_threshold < 1 and len(answers) > 1:
        lsh = MinHashLSH(threshold=near_threshold, num_perm=NUM_PERM)
        for answer, index in answers.items():
            minhash = _minhash(answer)
            for other in lsh.query(minhash):
                if finder.find(other) != finder.find(index):
                    finder.union(other, index)
                    joined["near"] += 1
            lsh.insert(index, minhash)
    return Grouping([finder.find(i) for i in range(len(records))], dict(joined))


def leaked_answers(train: Sequence, test: Sequence, min_ratio: float = 90.0) -> list[tuple[str, str, float]]:
    """Test answers identical or near-identical to a train answer: (test answer, train answer, score).

    Computed independently of the grouping (rapidfuzz's normalised Indel ratio over the normalised
    texts, not MinHash), so the split report checks the split rather than restating it.
    """
    train_answers = sorted({normalise_answer(r.output) for r in train})
    leaks = []
    if not train_answers:
        return leaks
    for answer in sorted({normalise_answer(r.output) for r in test}):
        match = process.extractOne(answer, train_answers, scorer=fuzz.ratio, score_cutoff=min_ratio)
        if match is not None:
            leaks.append((answer, match[0], float(match[1])))
    return leaks


def hold_out_phrasings(train: list, share: float, seed: int, aliases: dict[str, str] | None) -> tuple[list, list]:
    """(train kept, held-out phrasings): one phrasing of a seeded ``share`` of the answers that are
    asked in two or more phrasings, so each held-out question's subject and answer stay trained."""
    if share <= 0:
        return train, []
    by_answer: dict[tuple, list[int]] = defaultdict(list)
    for index, record in enumerate(train):
        key = (subject_key(record.subject or record.domain, aliases), record.task, normalise_answer(record.output))
        by_answer[key].append(index)
    eligible = sorted(key for key, indices in by_answer.items() if len({_question(train[i]) for i in indices}) >= 2)
    rng = random.Random(f"{seed}|phrasing")  # noqa: S311 -- a seeded choice of held-out questions
    chosen = [key for key in eligible if rng.random() < share]
    held: set[int] = set()
    for key in chosen:
        # Only a phrasing asked once for this answer is unseen once held out.
        counts = defaultdict(int)
        for i in by_answer[key]:
            counts[_question(train[i])] += 1
        unique = [i for i in by_answer[key] if counts[_question(train[i])] == 1]
        if unique:
            held.add(rng.choice(unique))
    return [r for i, r in enumerate(train) if i not in held], [r for i, r in enumerate(train) if i in held]


def _question(record) -> str:
    return normalise_answer(f"{record.instruction}\n{record.input}")


@dataclass
class LeakFreeSplit:
    """The three sides of the SFT data and what the split found (for ``split.md``)."""

    train: list
    test: list  # unseen subjects: whole groups held out
    test_phrasing: list  # seen subjects asked in unseen phrasings: the reference's protocol
    groups: int
    test_groups: list[str]
    train_groups: list[str]
    joined_by: dict[str, int]
    leaks: list[tuple[str, str, float]]


def leak_free_split(
    records: Sequence,
    test_share: float,
    seed: int,
    aliases: dict[str, str] | None,
    near_threshold: float,
    phrasing_share: float,
) -> LeakFreeSplit:
    """Group (``group_records``), put whole groups on the test side (``split_by_group``), hold out
    phrasings of the training side, and check the result (``leaked_answers``)."""
    grouping = group_records(records, aliases, near_threshold)
    label: dict[int, str] = {}
    for record, group in zip(records, grouping.group_of, strict=True):
        key = subject_key(record.subject or record.domain, aliases)
        label[group] = min(label.get(group, key), key)
    keys = [label[g] for g in grouping.group_of]
    split = split_by_group(records, keys, test_share, seed)
    train, test_phrasing = hold_out_phrasings(split.train, phrasing_share, seed, aliases)
    return LeakFreeSplit(
        train=train,
        test=split.test,
        test_phrasing=test_phrasing,
        groups=grouping.groups,
        test_groups=split.test_domains,
        train_groups=split.train_domains,
        joined_by=grouping.joined_by,
        leaks=leaked_answers(train, split.test),
    )
