"""Constrained IPC codes on the vLLM backend, through vLLM's (v1) custom logits-processor API.

vLLM builds logits processors itself, inside its engine process, from a class named in
``LLM(logits_processors=[...])``; each request opts in through ``SamplingParams.extra_args``. So the
class here is importable by name, and a request carries only the path of a codes file and the stop
token ids: the engine process loads the codes and the tokenizer once per file and model
(:func:`_constraint`) and runs the same :class:`~coretech.infer.constrain.AnswerTracker` per request
as the hf backend. ``AdapterLogitsProcessor`` wraps that per-request function for vLLM's persistent
batch (requests added, moved and removed between steps).

Not tested on this project's CI (no GPU); ``tests/test_infer_constrain.py`` has a ``gpu``-marked test.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coretech.infer.constrain import AnswerTracker, CodeAutomaton, TokenConstraint, constrain_row, trim_unfinished_code
from coretech.infer.vllm import VllmGenerator, build_sampling_kwargs

if TYPE_CHECKING:
    from llamafactory.data.template import Template
    from llamafactory.hparams import GeneratingArguments, ModelArguments
    from transformers import PreTrainedTokenizer

PROCESSOR = "coretech.infer.constrain_vllm.IpcCodesLogitsProcessor"
EXTRA_KEY = "coretech_ipc_codes"  # SamplingParams.extra_args: {"codes_file": ..., "stop_ids": [...]}

try:
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor
except ImportError:  # vLLM is optional; the class below is only instantiated by vLLM itself
    AdapterLogitsProcessor = object  # type: ignore[misc,assignment]


@lru_cache(maxsize=4)
def _constraint(codes_file: str, tokenizer_name: str, stop_ids: tuple[int, ...]) -> TokenConstraint:
    from transformers import AutoTokenizer

    codes = Path(codes_file).read_text(encoding="utf-8").split()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    return TokenConstraint(CodeAutomaton.from_codes(codes), tokenizer, stop_ids)


class IpcCodesLogitsProcessor(AdapterLogitsProcessor):  # type: ignore[misc,valid-type]
    """Applies the IPC constraint to the requests whose ``extra_args`` name a codes file."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self.tokenizer_name = vllm_config.model_config.tokenizer

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token is best

    def new_req_logits_processor(self, params: Any) -> Any:
        settings = (params.extra_args or {}).get(EXTRA_KEY)
        if not settings:
            return None
        constraint = _constraint(settings["codes_file"], self.tokenizer_name, tuple(settings["stop_ids"]))
        tracker = AnswerTracker(constraint)

        def constrain(output_ids: list[int], logits: Any) -> Any:
            return constrain_row(tracker, list(output_ids), logits)

        return constrain


def write_codes_file(codes: CodeAutomaton, folder: Path | None = None) -> Path:
    """The scheme's codes, one per line, for the engine process to read."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 -- kept for the engine's lifetime
        "w", suffix=".txt", prefix="coretech_ipc_codes_", dir=folder, delete=False, encoding="utf-8"
    )
    with handle:
        handle.write("\n".join(sorted(codes.codes)) + "\n")
    return Path(handle.name)


def constrained_sampling_kwargs(
    generating_args: GeneratingArguments, stop_token_ids: list[int], codes_file: Path
) -> dict[str, Any]:
    """``SamplingParams`` keywords of the plain backend plus the request's opt-in to the constraint."""
    kwargs = build_sampling_kwargs(generating_args, stop_token_ids)
    kwargs["extra_args"] = {EXTRA_KEY: {"codes_file": str(codes_file), "stop_ids": list(stop_token_ids)}}
    return kwargs


class ConstrainedVllmGenerator(VllmGenerator):
    """The vLLM backend with every IPC code held to the scheme (as ``HfGenerator(codes=...)``)."""

    def __init__(
        self,
        model_args: ModelArguments,
        tokenizer: PreTrainedTokenizer,
        template: Template,
        generating_args: GeneratingArguments,
        codes: CodeAutomaton,
    ) -> None:
        self.codes = codes
        self.codes_file = write_codes_file(codes)
        super().__init__(model_args, tokenizer, template, generating_args)

    def engine_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**kwargs, "logits_processors": [*kwargs.get("logits_processors", []), PROCESSOR]}

    def sampling_kwargs(self, generating_args: GeneratingArguments, stop_token_ids: list[int]) -> dict[str, Any]:
        return constrained_sampling_kwargs(generating_args, stop_token_ids, self.codes_file)

    def generate(self, batch: list[list[int]]) -> list[str]:
        # A code cut off by max_tokens would be read as a shorter code that may not exist.
        return [trim_unfinished_code(answer, self.codes) for answer in super().generate(batch)]
