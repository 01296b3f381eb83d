"""Exact and near-duplicate detection for corpus building: MinHash signatures and an on-disk index.

Signatures are datasketch's MinHashes (its affine32 scheme, computed on numpy arrays) over token
n-grams (the token ids are computed anyway to count tokens, so shingling them costs nothing extra
and works the same for Chinese and English). The band layout comes from datasketch's
``MinHashLSH`` for the configured threshold. The index itself lives in SQLite on disk instead of
datasketch's in-memory dict: an in-memory LSH index costs a few kilobytes per document, which at
millions of documents is the largest thing in the process, while SQLite keeps memory at its page
cache however large the corpus grows.

Every index row carries the integer id of the document that added it. Ids grow with the build's
position (source, shard, record), so an interrupted build rolls the index back to the last
finished shard with one ``DELETE ... WHERE doc >= ?``.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_NGRAM_BASE = np.uint64(0x100000001B3)  # FNV-64 prime: spreads token ids over 64 bits
# MurmurHash3's 32-bit finaliser (shifts and multipliers), the pre-mix of datasketch's affine32 scheme
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
_SIGNATURE_BLOCK = 4096  # shingles per block: 4096 x num_perm x 4 bytes = 2 MB at 128 permutations


@dataclass
class DedupConfig:
    """Exact (hash of the cleaned text) and near (MinHash LSH) deduplication settings."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.8  # estimated Jaccard similarity of token n-gram sets at which a document is a copy
    num_perm: int = 128
    ngram: int = 5  # tokens per shingle
    sample: int = 8  # keep 1 in `sample` shingles, chosen by hash (same choice in every document)
    min_sampled_shingles: int = 64  # documents with fewer shingles than this × sample use all of them

    def check(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold: must be between 0 and 1 (exclusive)")
        if not 16 <= self.num_perm <= 1024:
            raise ValueError("num_perm: use 16 to 1024 permutations")
        if self.ngram < 1 or self.sample < 1 or self.min_sampled_shingles < 1:
            raise ValueError("ngram, sample and min_sampled_shingles must be at least 1")


def _identity(value: int) -> int:
    return value


def exact_hash(text: str) -> int:
    """A signed 64-bit digest of the text: SQLite's integer key, so lookups stay on one B-tree."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class MinHasher:
    """Signatures and LSH band keys for documents given as token ids."""

    def __init__(self, config: DedupConfig) -> None:
        self.config = config
        lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self.bands, self.rows = lsh.b, lsh.r
        # datasketch's permutations (seed 1), so signatures are datasketch's affine32 MinHashes
        self._a, self._b = MinHash(num_perm=config.num_perm, seed=1, hashfunc=_identity, scheme="affine32").permutations

    def shingles(self, token_ids: Sequence[int]) -> np.ndarray:
        """32-bit hashes of the token n-grams, thinned by consistent sampling.

        Sampling keeps a shingle when its hash falls in 1/``sample`` of the hash space, so two
        documents keep the same subset of the shingles they share and their Jaccard similarity is
        preserved in expectation while MinHash (the costly step) sees a fraction of the input.
        """
        ids = np.asarray(token_ids, dtype=np.uint64)
        n = self.config.ngram
        if len(ids) < n:
            n = max(1, len(ids))
        count = len(ids) - n + 1
        if count <= 0:
            return np.zeros(1, dtype=np.uint32)
        with np.errstate(over="ignore"):
            hashes = np.full(count, 0xCBF29CE484222325, dtype=np.uint64)
            for j in range(n):
                hashes = (hashes ^ ids[j : j + count]) * _NGRAM_BASE
            hashes ^= hashes >> np.uint64(29)
            hashes = (hashes * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
            hashes ^= hashes >> np.uint64(32)
        if self.config.sample > 1 and count >= self.config.sample * self.config.min_sampled_shingles:
            hashes = hashes[(hashes >> np.uint64(40)) % np.uint64(self.config.sample) == 0]
        # repeated shingles are left in: they cannot change a minimum, and sorting them out costs more
        return (hashes & np.uint64(0xFFFFFFFF)).astype(np.uint32)

    def signature(self, token_ids: Sequence[int]) -> np.ndarray:
        """datasketch's ``affine32`` MinHash of the shingles, computed on the array directly.

        ``MinHash.update_batch`` hashes its input one Python object at a time before its numpy
        step; that loop was a quarter of the signature's cost. This is the same arithmetic (its
        MurmurHash3 pre-mix, then its permutations ``a * h + b`` wrapping at 32 bits, then the
        minimum), over row blocks so a huge document never builds a huge matrix; a unit test
        checks it value for value against datasketch.
        """
        hashes = self.shingles(token_ids)
        with np.errstate(over="ignore"):
            hashes = hashes ^ (hashes >> _FMIX32[0])
            hashes = hashes * _FMIX32[1]
            hashes = hashes ^ (hashes >> _FMIX32[2])
            hashes = hashes * _FMIX32[3]
            hashes = hashes ^ (hashes >> _FMIX32[4])
            result = np.full(self.config.num_perm, 0xFFFFFFFF, dtype=np.uint32)
            for start in range(0, len(hashes), _SIGNATURE_BLOCK):
                block = hashes[start : start + _SIGNATURE_BLOCK, None] * self._a + self._b
                np.minimum(result, block.min(axis=0), out=result)
        return result.astype("<u4", copy=False)

    def band_keys(self, signature: np.ndarray) -> list[int]:
        """One signed 64-bit key per band; the band number is hashed in so bands never collide."""
        keys = []
        for band in range(self.bands):
            chunk = signature[band * self.rows : (band + 1) * self.rows].tobytes()
            digest = hashlib.blake2b(chunk, digest_size=8, person=band.to_bytes(2, "little")).digest()
            keys.append(int.from_bytes(digest, "little", signed=True))
        return keys


def similarity(a: bytes, b: bytes) -> float:
    """Estimated Jaccard similarity of two stored signatures (the share of equal MinHash values)."""
    return float(np.mean(np.frombuffer(a, dtype="<u4") == np.frombuffer(b, dtype="<u4")))


class DedupIndex:
    """Seen documents on disk: exact hashes, LSH band keys and signatures, keyed by document id."""

    def __init__(self, path: Path, threshold: float, cache_mb: int = 64) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.threshold = threshold
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(f"PRAGMA cache_size=-{int(cache_mb) * 1024}")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS docs(doc INTEGER PRIMARY KEY, name TEXT NOT NULL, sig BLOB);
            CREATE TABLE IF NOT EXISTS exact(hash INTEGER PRIMARY KEY, doc INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS lsh(key INTEGER NOT NULL, doc INTEGER NOT NULL,
                                           PRIMARY KEY(key, doc)) WITHOUT ROWID;
            """
        )
        self.db.commit()

    def rollback(self, first_doc: int) -> None:
        """Forget every document with id >= first_doc (the shards an interrupted build did not finish)."""
        for table in ("docs", "exact", "lsh"):
            self.db.execute(f"DELETE FROM {table} WHERE doc >= ?", (first_doc,))  # noqa: S608 (fixed names)
        self.db.commit()

    def add_name(self, doc: int, name: str, signature: bytes | None = None) -> None:
        self.db.execute("INSERT OR REPLACE INTO docs(doc, name, sig) VALUES (?, ?, ?)", (doc, name, signature))

    def exact_duplicate_of(self, text_hash: int, doc: int) -> str | None:
        """The name of an earlier document with the same hash; otherwise record this one and return None."""
        cursor = self.db.execute("INSERT OR IGNORE INTO exact(hash, doc) VALUES (?, ?)", (text_hash, doc))
        if cursor.rowcount == 1:
            return None
        row = self.db.execute(
            "SELECT docs.name FROM exact LEFT JOIN docs ON docs.doc = exact.doc WHERE exact.hash = ?",
            (text_hash,),
        ).fetchone()
        return row[0] if row and row[0] else "an earlier document"

    def near_duplicate_of(self, keys: list[int], signature: bytes) -> str | None:
        """The name of an earlier document sharing a band whose signature is similar enough, else None.

        LSH candidates are confirmed against the stored signature, which removes most of the band
        collisions of documents below the threshold.
        """
        marks = ",".join("?" * len(keys))
        rows = self.db.execute(
            f"SELECT docs.name, docs.sig FROM docs WHERE docs.doc IN "  # noqa: S608 (placeholders only)
            f"(SELECT DISTINCT doc FROM lsh WHERE key IN ({marks}))",
            keys,
        ).fetchall()
        for name, other in rows:
            if other is not None and similarity(signature, other) >= self.threshold:
                return name
        return None

    def add_near(self, doc: int, keys: list[int]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO lsh(key, doc) VALUES (?, ?)", [(k, doc) for k in keys])

    def commit(self) -> None:
        self.db.commit()

    def close(self) -> None:
        self.db.close()
