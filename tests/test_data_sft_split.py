"""The train/test split grouped by normalised domain: no domain on both sides, seeded, reproducible."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from coretech.data.sft.split import normalise_domain, split_by_domain


@dataclass
class Row:
    domain: str
    text: str = ""


ALIASES = {"artificial intelligence": "人工智能", "blockchain": "区块链"}


def corpus(domains: int = 30, per_domain: int = 6) -> list[Row]:
    rows = []
    for d in range(domains):
        for p in range(per_domain):
            # The same domain written three ways, as different sources write it.
            name = [f"领域{d}", f"领域{d}领域", f" 领域{d} "][p % 3]
            rows.append(Row(name, f"phrasing {p}"))
    rows += [Row("人工智能领域"), Row("Artificial Intelligence"), Row("the field of artificial intelligence")]
    rows += [Row("区块链"), Row("BLOCKCHAIN industry")]
    return rows


def test_normalise_domain_merges_spellings_and_aliases():
    assert normalise_domain("人工智能领域") == normalise_domain("人工智能") == normalise_domain("人工 智能。")
    assert normalise_domain("Artificial  Intelligence", ALIASES) == normalise_domain("人工智能", ALIASES)
    assert normalise_domain("the field of blockchain", ALIASES) == normalise_domain("区块链技术领域", ALIASES)
    assert normalise_domain("智能网联汽车") != normalise_domain("新能源汽车")


@pytest.mark.parametrize("seed", [0, 1, 42, 2024])
def test_no_domain_lands_on_both_sides(seed: int):
    rows = corpus()
    split = split_by_domain(rows, 0.2, seed, ALIASES)
    train_keys = {normalise_domain(r.domain, ALIASES) for r in split.train}
    test_keys = {normalise_domain(r.domain, ALIASES) for r in split.test}
    assert train_keys and test_keys
    assert not train_keys & test_keys
    assert len(split.train) + len(split.test) == len(rows)
    assert set(split.test_domains) == test_keys
    assert 0.1 <= len(split.test) / len(rows) <= 0.3


def test_split_is_reproducible_and_independent_of_input_order():
    rows = corpus()
    first = split_by_domain(rows, 0.2, 7, ALIASES)
    again = split_by_domain(rows, 0.2, 7, ALIASES)
    shuffled = list(rows)
    random.Random(3).shuffle(shuffled)
    reordered = split_by_domain(shuffled, 0.2, 7, ALIASES)
    assert first.test_domains == again.test_domains == reordered.test_domains
    assert [r.text for r in first.test] == [r.text for r in again.test]


def test_another_seed_gives_another_split():
    rows = corpus()
    test_sets = {tuple(split_by_domain(rows, 0.2, seed, ALIASES).test_domains) for seed in range(5)}
    assert len(test_sets) > 1
    assert split_by_domain(rows, 0.2, 1, ALIASES).test_domains != split_by_domain(rows, 0.2, 2, ALIASES).test_domains


def test_records_keep_their_order_within_a_side():
    rows = corpus()
    split = split_by_domain(rows, 0.25, 5, ALIASES)
    position = {id(r): i for i, r in enumerate(rows)}
    for side in (split.train, split.test):
        assert [position[id(r)] for r in side] == sorted(position[id(r)] for r in side)


def test_edge_cases():
    one = [Row("人工智能"), Row("人工智能领域")]
    assert split_by_domain(one, 0.5, 0).test == []  # one domain: nothing can be held out
    assert split_by_domain(corpus(), 0.0, 0).test == []
    with pytest.raises(ValueError, match="test_share"):
        split_by_domain(one, 1.0, 0)
