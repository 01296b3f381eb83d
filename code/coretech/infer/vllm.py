"""The vLLM backend: offline batch generation with tensor parallelism over the node's GPUs.

vLLM is an optional GPU dependency (``requirements-gpu.txt``), so it is imported only when this
backend runs; without it the user gets one line with the install command. The engine and sampling
arguments are built by pure functions mirroring LLaMA-Factory's ``VllmEngine`` (so
``llamafactory-cli chat`` with the same recipe behaves the same), which lets tests check them on
machines without vLLM or a GPU.

``check_vllm_environment`` is the pre-flight for pipelines whose prediction uses vLLM: it imports vLLM and
builds its tokenizer for the model it will serve, the step that fails at engine start when vLLM and
transformers do not fit together (vLLM <= 0.11 with transformers 5.x), before days of training rather
than after them. It needs no GPU.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
from typing import TYPE_CHECKING, Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from coretech.errors import CoreTechError
from coretech.log import get_logger

if TYPE_CHECKING:
    from llamafactory.data.template import Template
    from llamafactory.hparams import GeneratingArguments, ModelArguments
    from transformers import PreTrainedTokenizer

INSTALL_COMMAND = "pip install -r requirements-gpu.txt"  # the complete GPU set; `make install-gpu` runs it
# The vLLM versions this project runs: 0.23.x is the newest line that accepts transformers 5.6 (LLaMA-Factory
# 0.9.5's ceiling) and starlette < 1 (gradio 5.50's ceiling); <= 0.11 breaks on transformers 5 tokenizers,
# 0.12-0.18 require transformers < 5 (requirements-gpu.txt and docs/inference.md have the evidence).
SUPPORTED_VLLM = SpecifierSet(">=0.23.0,<0.24")
# LLaMA-Factory 0.9.5 refuses vllm > 0.11.0 unless this is set; its chat/api/webui need it with our vLLM.
LLAMAFACTORY_VLLM_ENV = {"DISABLE_VERSION_CHECK": "1"}
_PROBE_TEXT = "IPC G06F 16/00: 数据检索 data retrieval"

log = get_logger(__name__)
MISSING_VLLM = f"the vllm backend needs vLLM, which is not installed: run `{INSTALL_COMMAND}` on a GPU machine"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _build_vllm_tokenizer(model: str, trust_remote_code: bool) -> Any:
    """vLLM's own tokenizer factory, the call its engine makes at start, plus its caching proxy."""
    try:
        from vllm.tokenizers import get_tokenizer  # vLLM >= 0.12
    except ImportError:
        from vllm.transformers_utils.tokenizer import get_tokenizer  # vLLM <= 0.11: caches inside
    tokenizer = get_tokenizer(model, trust_remote_code=trust_remote_code)
    try:
        from vllm.tokenizers.hf import get_cached_tokenizer
    except ImportError:
        return tokenizer
    if not type(tokenizer).__name__.startswith("Cached"):
        tokenizer = get_cached_tokenizer(tokenizer)  # what the engine's input processor wraps it in
    return tokenizer


def check_vllm_environment(model: str, trust_remote_code: bool = False) -> list[str]:
    """Problems that would stop a vLLM engine for ``model`` (a local folder or a cached hub id); empty when fine.

    Checks, without a GPU: vLLM is installed and importable, its version is in ``SUPPORTED_VLLM``, and its
    tokenizer factory builds a tokenizer for ``model`` that round-trips a sample text. Each problem is one
    line naming the model and the fix.
    """
    if not vllm_available():
        return [f"vLLM is not installed in this environment ({MISSING_VLLM})"]
    try:
        version = Version(importlib.metadata.version("vllm"))
    except importlib.metadata.PackageNotFoundError:
        return [f"vLLM is importable but has no package metadata; reinstall it with `{INSTALL_COMMAND}`"]
    if version not in SUPPORTED_VLLM:
        return [f"vLLM {version} is not a supported version ({SUPPORTED_VLLM}); run `{INSTALL_COMMAND}`"]
    try:
        tokenizer = _build_vllm_tokenizer(model, trust_remote_code)
        ids = tokenizer.encode(_PROBE_TEXT, add_special_tokens=False)
        text = tokenizer.decode(ids)
        special = tokenizer.all_special_ids
    except Exception as error:  # any failure here is the failure the engine would hit at start
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return [f"{model}: vLLM {version} cannot build its tokenizer: {type(error).__name__}: {first}"]
    problems = []
    if text.strip() != _PROBE_TEXT:
        problems.append(f"{model}: vLLM {version}'s tokenizer does not round-trip text: {text!r}")
    if not isinstance(special, list):
        problems.append(f"{model}: vLLM {version}'s tokenizer has no list of special token ids")
    return problems


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

        self.llm = vllm.LLM(**self.engine_kwargs(build_engine_kwargs(model_args, torch.cuda.device_count())))
        stop_token_ids = template.get_stop_token_ids(tokenizer)
        self.sampling = vllm.SamplingParams(**self.sampling_kwargs(generating_args, stop_token_ids))
        adapters = model_args.adapter_name_or_path or []
        self.lora = LoRARequest("default", 1, adapters[0]) if adapters else None

    def engine_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``vllm.LLM`` keywords; a subclass adds its own (the constrained backend its logits processor)."""
        return kwargs

    def sampling_kwargs(self, generating_args: GeneratingArguments, stop_token_ids: list[int]) -> dict[str, Any]:
        """``SamplingParams`` keywords; a subclass adds its own per-request settings."""
        return build_sampling_kwargs(generating_args, stop_token_ids)

    def generate(self, batch: list[list[int]]) -> list[str]:
        prompts = [{"prompt_token_ids": ids} for ids in batch]
        outputs = self.llm.generate(prompts, self.sampling, lora_request=self.lora, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]

    def close(self) -> None:
        """Shut the engine down and give its GPU memory back, so the next model of the same run can start.

        A pipeline predicts several models in one process; each engine reserves ``gpu_memory_utilization`` of
        every GPU, so without this the second engine finds no free memory. Idempotent.
        """
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()  # stops the engine-core process and its workers (vLLM V1)
        del llm, engine
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except ImportError:  # a vLLM without these helpers has nothing of ours to tear down
            pass
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info()
            log.info("vLLM engine closed: %.1f of %.1f GiB free on GPU 0", free / 2**30, total / 2**30)
