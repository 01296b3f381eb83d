"""Constrained decoding of IPC codes: the character rule against the evaluator's own extractor, the
token-level mask on the real tokenizer, and the real embedded model answering with and without it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from coretech.config import ConfigError
from coretech.infer.constrain import (
    OUT,
    CodeAutomaton,
    Forbidden,
    IpcLogitsProcessor,
    TokenConstraint,
    load_scheme,
    trim_unfinished_code,
)
from coretech.infer.recipe import load_predict_recipe
from coretech.ipc import extract_ipc_codes

CODES = ["G06F", "G06F16/00", "G06F16/245", "G06N", "G06N3/00", "G06N3/063", "H01M", "H01M4/00", "A61B34/30"]


@pytest.fixture(scope="module")
def automaton() -> CodeAutomaton:
    return CodeAutomaton.from_codes(CODES)


def accepts(automaton: CodeAutomaton, text: str) -> bool:
    try:
        state = automaton.feed(OUT, text)
    except Forbidden:
        return False
    return automaton.can_end(state)


@pytest.mark.parametrize(
    "text",
    [
        "G06F16/245：数据库查询",
        "IPC codes:\nG06N3/063: neural hardware\nH01M4/00",
        "G06F 16/245 and G06N",
        "G06F16",  # read as G06F16/00, which exists
        "H2O, USB3, GPT4 and 5G are not codes",
        "A61B34/30 (surgical robots)",
        "",
    ],
)
def test_texts_whose_codes_all_exist_are_accepted(automaton, text):
    assert accepts(automaton, text)
    assert all(str(code) in automaton.codes for code in extract_ipc_codes(text))


@pytest.mark.parametrize(
    "text",
    [
        "G06F17/30",  # a main group the scheme lacks
        "G06Q10/00",  # a subclass the scheme lacks
        "G06N3/064",  # a subgroup the scheme lacks
        "G06F16/245-16/248",  # a range would name G06F16/248
        "H01M 4",  # H01M4/00 exists, but the span ends at a bare main group "4"? no: that is H01M4/00
    ][:4],
)
def test_texts_with_a_code_outside_the_scheme_are_refused(automaton, text):
    assert not accepts(automaton, text)


def test_an_unfinished_code_at_the_end_is_refused_and_trimmed(automaton):
    assert not accepts(automaton, "see G06F1")  # would be read as G06F1/00
    assert not accepts(automaton, "see G06N3/06")  # would be read as G06N3/06
    assert trim_unfinished_code("IPC：G06N3/063\nG06F1", automaton) == "IPC：G06N3/063"
    assert trim_unfinished_code("IPC：G06N3/063", automaton) == "IPC：G06N3/063"


def test_random_texts_the_automaton_accepts_contain_only_scheme_codes(automaton):
    """Fuzzing against the evaluator's extractor: whatever text the rule lets through, every code the
    extractor reads in it is a scheme code (spacing, full-width forms, ranges, prefixes, noise)."""
    rng = random.Random(13)
    noise = list("ABCDEFGHXYZabc0123456789/ \t-~至到：:\n,.Ｇ０　")
    accepted = 0
    for _ in range(20000):
        parts = []
        for _ in range(rng.randint(1, 5)):
            if rng.random() < 0.4:
                code = rng.choice(CODES)
                if rng.random() < 0.3:
                    code = code.replace("/", rng.choice([" / ", " /", "/ "]))
                if rng.random() < 0.3:
                    code = code[: rng.randint(1, len(code))]
                parts.append(code)
            else:
                parts.append("".join(rng.choice(noise) for _ in range(rng.randint(1, 4))))
        text = "".join(parts)
        if accepts(automaton, text):
            accepted += 1
            assert all(str(code) in automaton.codes for code in extract_ipc_codes(text)), text
    assert accepted > 5000  # the rule is not so strict that it refuses ordinary text


def test_predict_recipe_accepts_and_strips_the_constrain_key(tmp_path):
    recipe = Path("configs/smollm2-135m/predict.yaml").read_text(encoding="utf-8")
    path = tmp_path / "predict.yaml"
    path.write_text(recipe + "constrain_codes: true\n", encoding="utf-8")
    settings = load_predict_recipe(path)
    assert settings.coretech == {"constrain_codes": True}
    assert "constrain_codes" not in settings.values
    path.write_text(recipe + "constrain_codes: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="constrain_codes must be a bool"):
        load_predict_recipe(path)


@pytest.fixture(scope="module")
def tokenizer(embedded_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model)


def test_token_mask_refuses_tokens_that_would_write_a_code_outside_the_scheme(tokenizer):
    import torch

    scheme = load_scheme()
    constraint = TokenConstraint(CodeAutomaton.from_scheme(scheme), tokenizer, [tokenizer.eos_token_id])
    processor = IpcLogitsProcessor(constraint, batch_size=1, prompt_width=0)
    so_far = tokenizer.encode("Codes: G06")
    scores = torch.zeros(1, len(tokenizer))
    processor(torch.tensor([so_far]), scores)
    allowed = {tokenizer.decode([i]) for i in torch.nonzero(scores[0] > float("-inf")).flatten().tolist()}
    subclasses = {code[3] for code in constraint.automaton.codes if code.startswith("G06")}
    assert allowed and all(text[:1] in subclasses for text in allowed), sorted(allowed)[:20]
    assert tokenizer.eos_token_id not in [tokenizer.convert_tokens_to_ids(t) for t in allowed]


def _invalid_rate(path: Path, scheme) -> tuple[int, int]:
    codes = [
        c
        for line in path.read_text(encoding="utf-8").splitlines()
        for c in extract_ipc_codes(json.loads(line)["predict"])
    ]
    return sum(1 for c in codes if not scheme.exists(c)), len(codes)
