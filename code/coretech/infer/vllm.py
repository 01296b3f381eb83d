"""The vLLM backend: offline batch generation with tensor parallelism over the node's GPUs.

vLLM is an optional GPU dependency (``requirements-gpu.txt``), so it is imported only when this
backend runs; without it the user gets one line with the install command. The engine and sampling
arguments are built by pure functions mirroring LLaMA-Factory's ``VllmEngine`` (so
``llamafactory-cli chat`` with the same recipe behaves the same), which lets tests check them on
machines without vLLM or a GPU.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from coretech.errors import CoreTechError

if TYPE_CHECKING:
    from llamafactory.data.template import Template
    from llamafactory.hparams import GeneratingArguments, ModelArguments
    from transformers import PreTrainedTokenizer

INSTALL_COMMAND = "pip install -r requirements-gpu.txt"
MISSING_VLLM = f"the vllm backend needs vLLM, which is not installed: run `{INSTALL_COMMAND}` on a GPU machine"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def build_engine_kwargs(model_args: ModelArguments, device_count: int) -> dict[str, Any]:
    """``vllm.LLM`` keywords from a recipe: tensor parallel over every visible GPU by default (as
    LLaMA-Factory does), with ``vllm_config`` overriding any of them (e.g. ``tensor_parallel_size``)."""
    adapters = model_args.adapter_name_or_path or []
    if len(adapters) > 1:
        raise CoreTechError("the vllm backend takes one LoRA adapter; merge the others first (llamafactory-cli export)")
    kwargs: dict[str, Any] = {
        "model": model_args.model_name_or_path,
        "trust_remote_code": model_args.trust_remote_code,
        "download_dir": model_args.cache_dir,
        "dtype": model_args.infer_dtype,
        "max_model_len": model_args.vllm_maxlen,
        "tensor_parallel_size": max(device_count, 1),
        "gpu_memory_utilization": model_args.vllm_gpu_util,
        "enforce_eager": model_args.vllm_enforce_eager,
        "disable_log_stats": True,
        "enable_lora": bool(adapters),
    }
    if adapters:
        kwargs["max_lora_rank"] = model_args.vllm_max_lora_rank
    if isinstance(model_args.vllm_config, dict):
        kwargs.update(model_args.vllm_config)
    return kwargs


def build_sampling_kwargs(generating_args: GeneratingArguments, stop_token_ids: list[int]) -> dict[str, Any]:
    """``vllm.SamplingParams`` keywords. Unlike LLaMA-Factory's engine, ``do_sample: false`` means
    temperature 0 (greedy) here, so a predict recipe decodes the same way on both backends."""
    args = generating_args.to_dict()
    greedy = not args["do_sample"] or not args["temperature"]
    max_tokens = args.get("max_new_tokens") or args.get("max_length")
    return {
        "n": 1,
        "temperature": 0.0 if greedy else args["temperature"],
        "top_p": 1.0 if greedy else (args["top_p"] or 1.0),  # vLLM requires top_p > 0
        "top_k": -1 if greedy else (args["top_k"] or -1),  # -1: no top-k cut
        "repetition_penalty": args["repetition_penalty"] or 1.0,
        "max_tokens": max_tokens,
        "stop_token_ids": list(stop_token_ids),
        "skip_special_tokens": args["skip_special_tokens"],
    }


class VllmGenerator:
    """A vLLM engine that turns batches of prompt token ids into answer strings."""

    name = "vllm"

    def __init__(
        self,
        model_args: ModelArguments,
        tokenizer: PreTrainedTokenizer,
        template: Template,
        generating_args: GeneratingArguments,
    ) -> None:
        if not vllm_available():
            raise CoreTechError(MISSING_VLLM)
        import torch
        import vllm
        from vllm.lora.request import LoRARequest

        self.llm = vllm.LLM(**build_engine_kwargs(model_args, torch.cuda.device_count()))
        stop_token_ids = template.get_stop_token_ids(tokenizer)
        self.sampling = vllm.SamplingParams(**build_sampling_kwargs(generating_args, stop_token_ids))
        adapters = model_args.adapter_name_or_path or []
        self.lora = LoRARequest("default", 1, adapters[0]) if adapters else None

    def generate(self, batch: list[list[int]]) -> list[str]:
        prompts = [{"prompt_token_ids": ids} for ids in batch]
        outputs = self.llm.generate(prompts, self.sampling, lora_request=self.lora, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]
