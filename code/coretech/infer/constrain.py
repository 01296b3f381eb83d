"""Constrained decoding of IPC codes: wherever a model writes a code, only codes of the scheme can come out.

The constraint is defined by the evaluator's own reading of a code (``coretech.ipc.extract_ipc_codes``):
a *code span* starts where that extractor could start one (a section letter ``A``-``H`` not after a
letter, digit or ``/``) and lasts while the text is still code-shaped (``G06F``, ``G06F 16``,
``G06F16/02`` …). Inside a span a character that keeps it code-shaped must keep it a prefix of a
canonical code of the scheme, and the span may only end (by any other character, or the end of the
answer) where the extractor would read a code that is in the scheme. So every code the evaluator
finds in a constrained answer is in the scheme, by construction.

:class:`CodeAutomaton` is that rule as a character automaton over canonical prefixes (a set of
strings: the 75k-code WIPO scheme has about 400k prefixes). :class:`TokenConstraint` lifts it to a
tokenizer's vocabulary: outside a span the allowed tokens are two precomputed masks (one per
boundary state), so most decoding steps cost one tensor addition; inside a span only the model's
``TOP_K`` best tokens are checked character by character (the full vocabulary only when none of
them fits). Greedy decoding is therefore exact; sampling inside a span draws from the allowed
tokens among the top ``TOP_K``.

Deliberately stricter than the extractor in rare shapes the answers never use: no range (``-``,
``~``, ``至``, ``到``) or letter right after a subgroup, no unfinished subgroup (``G06F16/0``) at the
end of a span, no byte-fragment token (half of a multi-byte character) inside a span. A code cut
off by ``max_new_tokens`` is removed from the answer (:func:`trim_unfinished_code`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coretech.errors import CoreTechError
from coretech.ipc import IpcScheme, SchemeError
from coretech.ipc import load_scheme as load_ipc_scheme

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizer

# Model's best tokens checked inside a code span before falling back to the whole vocabulary.
TOP_K = 64
_WORD = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/")  # extractor's look-behind
_ALNUM = _WORD - {"/"}
_SPACE = set(" \t\u00a0")
_RANGE = set("-–—~至到")
_SECTIONS = set("ABCDEFGH")
_UPPER = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = set("0123456789")
_FRAGMENT = "\ufffd"  # what a byte-level tokenizer decodes half a UTF-8 character to

# State: (phase, prefix, count, boundary). Phases: "out" (boundary: may a span start here?),
# "head" (section..subclass letters), "sp1" (spaces after a subclass), "main" (main-group digits),
# "sp2" (spaces after them), "slash" (after "/" and spaces), "sub" (subgroup digits, count of them),
# "after" (spaces after a finished subgroup, where a range separator is refused).
State = tuple[str, str, int, bool]
OUT: State = ("out", "", 0, True)
_OUT_WORD: State = ("out", "", 0, False)


class Forbidden(Exception):
    """A character that would make the extractor read a code outside the scheme."""


@dataclass(frozen=True)
class CodeAutomaton:
    """The scheme's canonical codes as prefix sets, and the character rule of the module docstring."""

    prefixes: frozenset[str]
    codes: frozenset[str]  # canonical codes (subclasses, G06F16/00, G06F16/245, ...)

    @classmethod
    def from_codes(cls, codes: Iterable[str]) -> CodeAutomaton:
        """Codes at subclass depth or deeper (sections and classes are never read as codes in text)."""
        kept = {c for c in codes if len(c) >= 4}
        prefixes = {code[:i] for code in kept for i in range(1, len(code) + 1)}
        return cls(frozenset(prefixes), frozenset(kept))

    @classmethod
    def from_scheme(cls, scheme: IpcScheme) -> CodeAutomaton:
        return cls.from_codes(scheme.entries)

    def _main_ok(self, prefix: str) -> bool:
        return f"{prefix}/00" in self.codes  # the extractor reads G06F16 as G06F16/00

    def _end(self, state: State) -> None:
        """Check that the span of ``state`` may end here (the extractor's reading is in the scheme)."""
        phase, prefix, count, _ = state
        if phase == "head":
            if len(prefix) == 4 and prefix not in self.codes:
                raise Forbidden(prefix)
        elif phase == "sp1":
            if prefix not in self.codes:
                raise Forbidden(prefix)
        elif phase in {"main", "sp2", "slash"}:
            if not self._main_ok(prefix.rstrip("/")):
                raise Forbidden(prefix)
        elif phase == "sub" and (count < 2 or prefix not in self.codes):
            raise Forbidden(prefix)

    def step(self, state: State, char: str) -> State:
        """The state after ``char`` (NFKC-normalised); raises Forbidden."""
        phase, prefix, count, boundary = state
        if phase == "out":
            if boundary and char in _SECTIONS:
                return ("head", char, 0, False)
            return ("out", "", 0, char not in _WORD)
        if char == _FRAGMENT:
            raise Forbidden(prefix)
        if phase == "head":
            if len(prefix) < 3:
                if char in _DIGITS:  # H2 may still become H2O: only a subclass letter is checked
                    return ("head", prefix + char, 0, False)
                return self.step(_OUT_WORD, char)  # not code-shaped any more: no code here
            if len(prefix) == 3:
                if char in _UPPER:
                    if prefix + char not in self.prefixes:
                        raise Forbidden(prefix + char)
                    return ("head", prefix + char, 0, False)
                return self.step(_OUT_WORD, char)
            # a complete subclass
            if char in _DIGITS:
                return self._digit(prefix, char, "main")
            if char in _SPACE:
                # After "G06F " the extractor reads G06F whatever follows, unless digits continue it.
                self._end(state)
                return ("sp1", prefix, 1, False)
            if char in _ALNUM:
                return self.step(_OUT_WORD, char)  # G06Fx: not a code
            self._end(state)
            return self.step(_OUT_WORD, char)
        if phase == "sp1":
            if char in _DIGITS:
                return self._digit(prefix, char, "main")
            if char in _SPACE and count < 3:
                return ("sp1", prefix, count + 1, False)
            self._end(state)
            return self.step(OUT, char)
        if phase == "main":
            if char in _DIGITS:
                return self._digit(prefix, char, "main")
            if char == "/":
                return self._slash(prefix)
            if char in _SPACE:
                return ("sp2", prefix, 0, False)
            if char in _ALNUM:
                return self.step(_OUT_WORD, char)  # G06F16a: not a code
            self._end(state)
            return self.step(_OUT_WORD, char)
        if phase == "sp2":
            if char == "/":
                return self._slash(prefix)
            if char in _SPACE:
                return state
            self._end(state)
            return self.step(OUT, char)
        if phase == "slash":
            if char in _DIGITS:
                return self._digit(prefix, char, "sub", 1)
            if char in _SPACE:
                return state
            self._end(state)
            return self.step(OUT, char)
        if phase == "sub":
            if char in _DIGITS:
                return self._digit(prefix, char, "sub", count + 1)
            if char in _ALNUM or char == "/" or char in _RANGE:
                raise Forbidden(prefix + char)
            self._end(state)
            if char in _SPACE:
                return ("after", prefix, 0, False)
            return self.step(_OUT_WORD, char)
        # "after": spaces behind a finished subgroup
        if char in _RANGE:
            raise Forbidden(prefix + char)
        if char in _SPACE:
            return state
        return self.step(OUT, char)

    def _digit(self, prefix: str, char: str, phase: str, count: int = 0) -> State:
        if prefix + char not in self.prefixes:
            raise Forbidden(prefix + char)
        return (phase, prefix + char, count, False)

    def _slash(self, prefix: str) -> State:
        if prefix + "/" not in self.prefixes:
            raise Forbidden(prefix + "/")
        return ("slash", prefix + "/", 0, False)

    def feed(self, state: State, text: str) -> State:
        for char in unicodedata.normalize("NFKC", text):
            state = self.step(state, char)
        return state

    def can_end(self, state: State) -> bool:
        try:
            self._end(state)
        except Forbidden:
            return False
        return True

    def allows(self, state: State, text: str) -> bool:
        try:
            self.feed(state, text)
        except Forbidden:
            return False
        return True

    def span_start(self, text: str) -> int | None:
        """Where (in ``text``) the unfinished span at its end starts; None when the text may end here."""
        state, start = OUT, 0
        for index, original in enumerate(text):
            for char in unicodedata.normalize("NFKC", original):
                before = state
                try:
                    state = self.step(state, char)
                except Forbidden:
                    state = OUT  # not produced under the constraint; scanning goes on
                if before[0] == "out" and state[0] != "out":
                    start = index
        if self.can_end(state):
            return None
        return start


def trim_unfinished_code(text: str, automaton: CodeAutomaton) -> str:
    """``text`` without a code left unfinished at its end (generation stopped by ``max_new_tokens``)."""
    start = automaton.span_start(text)
    if start is None:
        return text
    return text[:start].rstrip()


def token_strings(tokenizer: PreTrainedTokenizer) -> list[str]:
    """Each token id's text as it appears in a decoded answer (NFKC), '' for special tokens."""
    special = set(tokenizer.all_special_ids)
    size = len(tokenizer)
    return [
        "" if i in special else unicodedata.normalize("NFKC", tokenizer.decode([i], skip_special_tokens=True))
        for i in range(size)
    ]


class TokenConstraint:
    """The automaton over one tokenizer's vocabulary, built once per prediction run (about a second
    for a 50k vocabulary) and shared by every batch."""

    def __init__(self, automaton: CodeAutomaton, tokenizer: PreTrainedTokenizer, stop_token_ids: Iterable[int]) -> None:
        self.automaton = automaton
        self.tokenizer = tokenizer
        self.strings = token_strings(tokenizer)
        self.stop_ids = set(stop_token_ids)
        self._tensors: dict[tuple[bool, str], Any] = {}
        # Outside a span: which tokens are refused from a boundary / a word position.
        self.out_refused: dict[bool, list[int]] = {}
        for boundary in (True, False):
            start: State = ("out", "", 0, boundary)
            self.out_refused[boundary] = [
                i for i, text in enumerate(self.strings) if text and not self._allowed_outside(start, text)
            ]

    def refused_tensor(self, boundary: bool, device: Any) -> torch.Tensor:
        import torch

        key = (boundary, str(device))
        if key not in self._tensors:
            self._tensors[key] = torch.tensor(self.out_refused[boundary], dtype=torch.long, device=device)
        return self._tensors[key]

    def _allowed_outside(self, start: State, text: str) -> bool:
        if _FRAGMENT in text:
            # Half a character: what it completes to is unknown, so no code character may come with it.
            return not any(char in _WORD for char in text)
        return self.automaton.allows(start, text)

    def allowed(self, state: State, token_id: int) -> bool:
        if token_id in self.stop_ids:
            return self.automaton.can_end(state)
        if token_id >= len(self.strings):
            return False  # padding rows of the embedding matrix: never real text
        text = self.strings[token_id]
        if not text:
            return state[0] == "out" or self.automaton.can_end(state)
        return self.automaton.allows(state, text)

    def allowed_in_span(self, state: State, ranked: Iterable[int]) -> list[int]:
        """Allowed ids among ``ranked`` (the model's best first); the whole vocabulary when none is."""
        found = [i for i in ranked if self.allowed(state, i)]
        if found:
            return found
        return [i for i in range(len(self.strings)) if self.allowed(state, i)] or sorted(self.stop_ids)


class AnswerTracker:
    """One answer's automaton state, advanced over the text decoded so far (a multi-byte character is
    consumed once all its bytes are there)."""

    def __init__(self, constraint: TokenConstraint) -> None:
        self.constraint = constraint
        self.state: State = OUT
        self.text = ""
        self.done = False

    def update(self, token_ids: list[int]) -> State:
        stops = self.constraint.stop_ids
        if any(t in stops for t in token_ids):
            self.done = True
            return self.state
        text = self.constraint.tokenizer.decode(token_ids, skip_special_tokens=True)
        stable = text.rstrip(_FRAGMENT)
        automaton = self.constraint.automaton
        if stable.startswith(self.text):
            new = stable[len(self.text) :]
        else:
            self.state, new = OUT, stable  # a tokenizer that rewrites earlier text: start over
        try:
            self.state = automaton.feed(self.state, new)
        except Forbidden:
            self.state = automaton.feed(OUT, "\n")  # cannot happen under the mask; never stall
        self.text = stable
        return self.state


def constrain_row(
    tracker: AnswerTracker, generated: list[int], scores: torch.Tensor, top_k: int = TOP_K
) -> torch.Tensor:
    """One answer's next-token scores (1-D) with refused tokens at -inf; ``generated``: its tokens so far."""
    import torch

    if tracker.done:
        return scores
    state = tracker.update(generated)
    if tracker.done:
        return scores
    constraint = tracker.constraint
    if state[0] == "out":
        index = constraint.refused_tensor(state[3], scores.device)
        scores[index[index < scores.shape[0]]] = float("-inf")
        scores[len(constraint.strings) :] = float("-inf")  # embedding padding rows: no text
        return scores
    ranked = torch.topk(scores, min(top_k, scores.shape[0])).indices.tolist()
    keep = torch.tensor(constraint.allowed_in_span(state, ranked), dtype=torch.long, device=scores.device)
    kept = scores[keep].clone()
    scores[:] = float("-inf")
    scores[keep] = kept
    return scores


class IpcLogitsProcessor:
    """A ``transformers`` logits processor for one ``generate`` call (``prompt_width``: the padded
    prompt length, where the answers start)."""

    def __init__(self, constraint: TokenConstraint, batch_size: int, prompt_width: int) -> None:
        self.trackers = [AnswerTracker(constraint) for _ in range(batch_size)]
        self.prompt_width = prompt_width

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row, generated in enumerate(input_ids[:, self.prompt_width :].tolist()):
            constrain_row(self.trackers[row], generated, scores[row])
        return scores


# Until the full WIPO scheme is the default everywhere, the sample scheme the demo's data was built from.
def load_scheme(scheme_files: Iterable[str | Path] | None = None) -> IpcScheme:
    """The IPC scheme answers are held to: ``scheme_files`` when given, else the built-in full scheme (the
    same default as ``evaluate``, so a constrained answer is valid by the scheme it is scored against)."""
    try:
        return load_ipc_scheme(list(scheme_files or []) or None)
    except SchemeError as exc:
        raise CoreTechError(str(exc)) from None
