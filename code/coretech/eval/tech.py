"""Key technologies in an answer: extraction from free text, normalisation and one-to-one matching.

A TECH_TASK answer lists technologies in whatever shape the model chose: ``关键技术：1. 智能芯片；
2. 类脑计算``, a markdown list with bold names and explanations, ``AI chips, neuromorphic computing
and edge computing``, or any of these wrapped in small talk. Scoring needs the list itself, so this
module owns turning such text into item names and deciding which predicted item matches which
reference item (exactly after normalisation, or fuzzily above a threshold).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from rapidfuzz import fuzz, process

# A fuzzy match needs this rapidfuzz ratio (0-100) between normalised names. 80 accepts a suffix
# such as 类脑计算 / 类脑计算技术 (ratio 80) and AI chip / AI chips (92) but not two different
# fields sharing a head word, such as 深度学习 / 强化学习 (50) or machine / deep learning (~70).
DEFAULT_FUZZY_THRESHOLD = 80.0

# Items longer than this are sentences of explanation or small talk, not technology names.
MAX_ITEM_CHARS = 80

# Circled numbers are list markers, but NFKC turns ① into a plain 1 that would stick to the item.
_CIRCLED = re.compile(r"[\u2460-\u2473\u2776-\u277f\u2780-\u2793]")
# A numbered marker at the start of a line or after a space / separator: 1. 1) 1、 (1) 一、
_NUMBERED = re.compile(r"(?:^|(?<=[\s;,、。:]))(?:\d{1,2}[.)、](?!\d)|\(\d{1,2}\)|[一二三四五六七八九十]{1,3}、)[ \t]*")
_BULLET = re.compile(r"^[ \t]*(?:[-•·+‣▪●○◦]|\*(?!\*))[ \t]*")
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]*")
_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__")
_SEPARATORS = re.compile(r"[;,、\n]|以及")
# Details after a name, "智能芯片（神经网络处理器、存算一体芯片）": not part of the name, and their
# commas must not split the list. NFKC has already made （） into ().
_BRACKETED = re.compile(r"\s*[(\[【〔][^()\[\]【】〔〕]*[)\]】〕]")
# Words that mark the part before a colon as a heading ("关键技术：", "Key technologies include:")
# rather than an item with its explanation ("智能芯片：用于加速推理").
_HEADER_WORDS = re.compile(
    r"关键技术|核心技术|主要技术|技术包括|技术有|包括|包含|如下|以下|答案|"
    r"technolog|include|following|answer",
    re.IGNORECASE,
)
_HEADER_LINE = re.compile(
    r"^\W*(?:该领域(?:的|涉及的|包含的)?)?(?:关键|核心|主要)技术\W*$|^\W*(?:key|core|main)?\s*technolog(?:y|ies)\W*$",
    re.IGNORECASE,
)
# A heading written as the start of a sentence: "Key technologies include ...", "关键技术包括……".
_LEAD_PHRASE = re.compile(
    r"^\W*(?:the\s+)?(?:key|core|main)\s+technolog(?:y|ies)\b[^,:]*?\b(?:include|includes|are|is)\s+"
    r"|^\W*(?:该领域)?(?:的|涉及的|包含的)?(?:关键|核心|主要)技术(?:主要)?(?:包括|有|为|是)",
    re.IGNORECASE,
)
_ITEM_EDGES = " \t\"'“”‘’「」『』《》`*_.。!?;:,、-—"
_LEADING_CONJUNCTION = re.compile(r"^(?:and|及|和|与)\s*", re.IGNORECASE)


def normalise_technology(name: str) -> str:
    """Matching key: full-width to half-width (NFKC), case folded, no punctuation, no whitespace.

    Punctuation and spaces are dropped rather than collapsed so that ``deep-learning``,
    ``deep learning`` and ``Deep Learning`` are one name, as are ``智能 芯片`` and ``智能芯片``.
    Symbols (``+`` in ``C++``) are kept: they carry meaning.
    """
    text = unicodedata.normalize("NFKC", name).casefold()
    return "".join(ch for ch in text if not ch.isspace() and not unicodedata.category(ch).startswith("P"))


def _clean_item(text: str) -> str:
    text = _BULLET.sub("", text).strip()
    text = text.strip(_ITEM_EDGES).strip()
    return _LEADING_CONJUNCTION.sub("", text).strip(_ITEM_EDGES).strip()


def _split_segments(text: str) -> list[tuple[str, bool]]:
    """(segment, structured) pairs: a segment starts at each line and each numbered marker;
    ``structured`` says it began with a list marker (numbered or bulleted)."""
    segments: list[tuple[str, bool]] = []
    for raw_line in text.split("\n"):
        line = _HEADING.sub("", raw_line)
        bulleted = bool(_BULLET.match(line)) and line.strip() not in {"-", "*"}
        starts = [m for m in _NUMBERED.finditer(line)]
        if not starts:
            segments.append((line, bulleted))
            continue
        if starts[0].start() > 0:
            segments.append((line[: starts[0].start()], bulleted))
        for index, marker in enumerate(starts):
            end = starts[index + 1].start() if index + 1 < len(starts) else len(line)
            segments.append((line[marker.end() : end], True))
    return segments


def _item_name(segment: str) -> list[str]:
    """Names in one structured segment: its bold spans if it has any, else the text before an
    explanation (``智能芯片：用于…``, ``AI chips - used for …``, ``智能芯片（…）``)."""
    bold = [a or b for a, b in _BOLD.findall(segment)]
    if bold:
        return [_clean_item(_BRACKETED.sub("", name)) for name in bold]
    head = re.split(r"[:：]|\s[-—–]\s|——", _BRACKETED.sub("", segment), maxsplit=1)[0]
    return [_clean_item(head)]


def _drop_header(line: str) -> str:
    """The part of an unstructured line after a heading such as ``关键技术：`` (empty for a heading line)."""
    plain = line.replace("**", "")
    if _HEADER_LINE.match(plain.strip()):
        return ""
    head, colon, tail = plain.partition(":")
    if colon and (_HEADER_WORDS.search(head) or _SEPARATORS.search(tail)):
        return tail
    return _LEAD_PHRASE.sub("", plain)


def extract_technologies(text: str) -> list[str]:
    """Technology names listed in an answer, each once (by normalised name), in order of appearance.

    When the answer has list structure (numbered items, bullets or bold names), only those items
    count: lines of small talk around a list (``以上是主要技术，希望对您有帮助``) are not
    technologies and must not cost precision. Without structure the text after any heading is
    split on 、 ； ， , ; and line breaks.
    """
    text = _CIRCLED.sub("\n1. ", text)
    text = unicodedata.normalize("NFKC", text)
    segments = _split_segments(text)

    names: list[str] = []
    structured = [seg for seg, is_item in segments if is_item or _BOLD.search(seg)]
    if structured:
        for segment in structured:
            names.extend(_item_name(segment))
    else:
        for segment, _ in segments:
            parts = _SEPARATORS.split(_BRACKETED.sub("", _drop_header(segment)))
            if len(parts) > 1:
                # "A, B and C": the last English item carries the conjunction.
                parts[-1:] = re.split(r"\s+and\s+", parts[-1], maxsplit=1)
            for part in parts:
                names.append(_clean_item(re.split(r"[:：]", part, maxsplit=1)[0]))

    result: list[str] = []
    seen: set[str] = set()
    for name in names:
        key = normalise_technology(name)
        if not key or len(name) > MAX_ITEM_CHARS or _HEADER_LINE.match(name) or key in seen:
            continue
        seen.add(key)
        result.append(name)
    return result


def match_technologies(predicted: Sequence[str], reference: Sequence[str], fuzzy_threshold: float | None = None) -> int:
    """Number of one-to-one matches between predicted and reference names.

    Exact matches on the normalised name come first; with a threshold, the remaining names are then
    paired greedily by descending rapidfuzz ratio while the ratio reaches the threshold. One
    predicted name can match only one reference name, so repeating a correct answer in two
    spellings earns one match, not two.
    """
    pred_keys = list(dict.fromkeys(normalise_technology(p) for p in predicted if normalise_technology(p)))
    ref_keys = list(dict.fromkeys(normalise_technology(r) for r in reference if normalise_technology(r)))
    exact = set(pred_keys) & set(ref_keys)
    matches = len(exact)
    if fuzzy_threshold is None:
        return matches
    rest_pred = [p for p in pred_keys if p not in exact]
    rest_ref = [r for r in ref_keys if r not in exact]
    if not rest_pred or not rest_ref:
        return matches
    scores = process.cdist(rest_pred, rest_ref, scorer=fuzz.ratio)
    pairs = sorted(
        ((scores[i, j], i, j) for i in range(len(rest_pred)) for j in range(len(rest_ref))),
        reverse=True,
    )
    used_pred: set[int] = set()
    used_ref: set[int] = set()
    for score, i, j in pairs:
        if score < fuzzy_threshold:
            break
        if i in used_pred or j in used_ref:
            continue
        used_pred.add(i)
        used_ref.add(j)
        matches += 1
    return matches
