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

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SCHEME = [REPO / "data/samples/ipc_scheme_en.xml", REPO / "data/samples/ipc_titles_zh.csv"]

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
        "G06F 17/30",  # spaced forms are read too
        "Ｇ０６Ｆ１７／３０",  # and full-width ones
    ],
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
    recipe = (REPO / "configs/smollm2-135m/predict.yaml").read_text(encoding="utf-8")
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


def _allowed_after(tokenizer, constraint, text, favour=()):
    """Token ids left allowed after ``text``; ``favour`` ids get the best scores (inside a code only
    the model's best TOP_K tokens are checked)."""
    import torch

    processor = IpcLogitsProcessor(constraint, batch_size=1, prompt_width=0)
    scores = torch.zeros(1, len(tokenizer))
    scores[0, list(favour)] = 10.0
    processor(torch.tensor([tokenizer.encode(text)]), scores)
    return set(torch.nonzero(scores[0] > float("-inf")).flatten().tolist())


def test_token_mask_refuses_tokens_that_would_write_a_code_outside_the_scheme(tokenizer):
    constraint = TokenConstraint(
        CodeAutomaton.from_scheme(load_scheme(SAMPLE_SCHEME)), tokenizer, [tokenizer.eos_token_id]
    )
    codes = constraint.automaton.codes
    # After "G06" a capital letter makes a subclass: only the scheme's G06 subclasses may follow.
    letters = [tokenizer.convert_tokens_to_ids(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    eos = tokenizer.eos_token_id
    allowed = _allowed_after(tokenizer, constraint, "Codes: G06", favour=[*letters, eos])
    capitals = {tokenizer.decode([i]) for i in allowed if i in letters}
    assert capitals == {code[3] for code in codes if code.startswith("G06")}
    assert eos in allowed  # "G06" alone is no code: the answer may end
    # Inside an unfinished subgroup only digits leading to a scheme code are allowed; no end.
    digits = [tokenizer.convert_tokens_to_ids(c) for c in "0123456789"]
    allowed = _allowed_after(tokenizer, constraint, "Codes: G06N3/06", favour=[*digits, eos])
    assert eos not in allowed and allowed <= set(digits)
    assert allowed and all(any(c.startswith("G06N3/06" + tokenizer.decode([i])) for c in codes) for i in allowed)


def _invalid_rate(path: Path, scheme) -> tuple[int, int]:
    codes = [
        c
        for line in path.read_text(encoding="utf-8").splitlines()
        for c in extract_ipc_codes(json.loads(line)["predict"])
    ]
    return sum(1 for c in codes if not scheme.exists(c)), len(codes)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread decodes fastest on the 2 shared cores (docs/benchmarks.md, Inference)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The base model answers the plain demo questions in prose without any code-shaped text (so its
# invalid rate is undefined); a system prompt showing the answer layout makes it write codes, one
# of the two examples (G06Q10/08) being absent from the sample scheme.
PRIMING = "You are a patent examiner. Answer with IPC codes, one per line, for example:\nH04W4/00\nG06Q10/08"


@pytest.fixture(scope="module")
def primed_demo_questions(prepared_demo_data, tmp_path_factory) -> Path:
    """The demo test split's first IPC_TASK questions, with the priming system prompt."""
    folder = tmp_path_factory.mktemp("primed")
    info = json.loads((prepared_demo_data / "dataset_info.json").read_text(encoding="utf-8"))
    test_file = prepared_demo_data / info["coretech_sft_test"]["file_name"]
    rows = [json.loads(line) for line in test_file.read_text(encoding="utf-8").splitlines()]
    ipc = [{**row, "system": PRIMING} for row in rows if row["task"] == "ipc"][:6]
    (folder / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ipc), encoding="utf-8")
    entry = dict(info["coretech_sft_test"], file_name="test.jsonl")
    (folder / "dataset_info.json").write_text(json.dumps({"primed_test": entry}), encoding="utf-8")
    return folder


def test_the_real_model_writes_only_scheme_codes_when_constrained(embedded_model, primed_demo_questions, tmp_path):
    from coretech.infer.predict import run_prediction

    recipe = tmp_path / "predict.yaml"
    text = (REPO / "configs/smollm2-135m/predict.yaml").read_text(encoding="utf-8")
    recipe.write_text(text.replace("max_new_tokens: 96", "max_new_tokens: 40"), encoding="utf-8")
    scheme = load_scheme(SAMPLE_SCHEME)
    rates = {}
    for constrained in (False, True):
        out = tmp_path / f"constrained_{constrained}.jsonl"
        run_prediction(
            model=str(embedded_model),
            adapter=None,
            dataset_dir=primed_demo_questions,
            dataset="primed_test",
            out_file=out,
            recipe=recipe,
            backend="hf",
            constrain_codes=constrained,
            scheme_files=SAMPLE_SCHEME,
        )
        rates[constrained] = _invalid_rate(out, scheme)
    invalid, total = rates[True]
    assert total > 0 and invalid == 0, rates
    invalid, total = rates[False]
    assert total > 0 and invalid > 0, rates


@pytest.mark.gpu
def test_vllm_constrained_answers_have_only_scheme_codes(embedded_model, primed_demo_questions, tmp_path):
    """The same check through vLLM's logits-processor API; needs a CUDA GPU and vLLM."""
    import torch

    from coretech.infer.predict import run_prediction
    from coretech.infer.vllm import vllm_available

    if not (torch.cuda.is_available() and vllm_available()):
        pytest.skip("needs a CUDA GPU and vLLM")
    out = tmp_path / "vllm.jsonl"
    run_prediction(
        model=str(embedded_model),
        adapter=None,
        dataset_dir=primed_demo_questions,
        dataset="primed_test",
        out_file=out,
        recipe=REPO / "configs/smollm2-135m/predict.yaml",
        backend="vllm",
        constrain_codes=True,
        scheme_files=SAMPLE_SCHEME,
    )
    invalid, total = _invalid_rate(out, load_scheme(SAMPLE_SCHEME))
    assert total > 0 and invalid == 0


def test_preflight_accepts_coretech_keys_of_a_predict_recipe_and_checks_their_type():
    from coretech.config import load_yaml
    from coretech.preflight import check_llamafactory_config

    path = REPO / "configs/smollm2-135m/predict.yaml"
    config = {**load_yaml(path), "constrain_codes": True, "retrieval_k": 5}
    assert check_llamafactory_config(config, path, "train", this_machine=False) == []
    problems = check_llamafactory_config({**config, "retrieval_k": "five"}, path, "train", this_machine=False)
    assert len(problems) == 1 and "retrieval_k must be a int" in str(problems[0])


def test_vllm_request_processor_masks_like_the_hf_one(embedded_model, tokenizer, tmp_path):
    """The per-request function vLLM's adapter calls, built from what a request carries (the codes
    file and stop ids in ``extra_args``); vLLM itself is not needed for this part."""
    import types

    import torch

    from coretech.infer.constrain_vllm import EXTRA_KEY, IpcCodesLogitsProcessor, write_codes_file

    codes = CodeAutomaton.from_scheme(load_scheme(SAMPLE_SCHEME))
    codes_file = write_codes_file(codes, tmp_path)
    assert set(codes_file.read_text(encoding="utf-8").split()) == codes.codes
    processor = object.__new__(IpcCodesLogitsProcessor)  # vLLM passes its config to __init__
    processor.tokenizer_name = str(embedded_model)
    assert processor.new_req_logits_processor(types.SimpleNamespace(extra_args=None)) is None
    settings = {"codes_file": str(codes_file), "stop_ids": [tokenizer.eos_token_id]}
    request = processor.new_req_logits_processor(types.SimpleNamespace(extra_args={EXTRA_KEY: settings}))
    digits = [tokenizer.convert_tokens_to_ids(c) for c in "0123456789"]
    logits = torch.zeros(len(tokenizer))
    logits[[*digits, tokenizer.eos_token_id]] = 10.0
    masked = request(tokenizer.encode("Codes: G06N3/06"), logits)
    allowed = set(torch.nonzero(masked > float("-inf")).flatten().tolist())
    assert allowed and allowed <= set(digits) and tokenizer.eos_token_id not in allowed
