"""The transformers backend: batched, left-padded generation on CPU or GPU, with an optional LoRA.

It is the backend that always works (the CPU demo, tests, machines without vLLM) and the reference
the vLLM backend is compared against, so its decoding follows LLaMA-Factory's own HF chat engine:
greedy unless ``do_sample``, generation stops at the template's stop tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coretech.errors import CoreTechError

if TYPE_CHECKING:
    from llamafactory.data.template import Template
    from llamafactory.hparams import GeneratingArguments, ModelArguments
    from transformers import PreTrainedTokenizer

    from coretech.infer.constrain import CodeAutomaton


def generation_kwargs(
    generating_args: GeneratingArguments, stop_token_ids: list[int], pad_token_id: int
) -> dict[str, Any]:
    """``model.generate`` keywords from the recipe, as LLaMA-Factory's HF engine derives them: sampling
    keys are dropped when decoding is greedy (transformers warns about them otherwise)."""
    kwargs = generating_args.to_dict(obey_generation_config=True)
    if not kwargs.get("temperature"):
        kwargs["do_sample"] = False
    if not kwargs["do_sample"]:
        for key in ("temperature", "top_p", "top_k"):
            kwargs.pop(key, None)
    kwargs["eos_token_id"] = list(stop_token_ids)
    kwargs["pad_token_id"] = pad_token_id
    return kwargs


def _torch_dtype(infer_dtype: str, on_gpu: bool) -> Any:
    import torch

    if infer_dtype != "auto":
        return getattr(torch, infer_dtype)
    if not on_gpu:
        return torch.float32  # half precision on CPU is slower, and bf16 kernels are missing on many CPUs
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class HfGenerator:
    """A loaded model that turns batches of prompt token ids into answer strings."""

    name = "hf"

    def __init__(
        self,
        model_args: ModelArguments,
        tokenizer: PreTrainedTokenizer,
        template: Template,
        generating_args: GeneratingArguments,
        codes: CodeAutomaton | None = None,
    ) -> None:
        """``codes``: constrain every IPC code the model writes to the scheme's (``coretech.infer.constrain``)."""
        import torch
        from transformers import AutoModelForCausalLM

        on_gpu = torch.cuda.is_available()
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_args.model_name_or_path,
                dtype=_torch_dtype(model_args.infer_dtype, on_gpu),
                trust_remote_code=model_args.trust_remote_code,
                device_map="auto" if on_gpu else None,
            )
        except OSError as exc:
            raise CoreTechError(f"{model_args.model_name_or_path}: cannot load the model ({exc})") from None
        for adapter in model_args.adapter_name_or_path or []:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, adapter)
            except (OSError, ValueError) as exc:
                raise CoreTechError(f"{adapter}: cannot load the LoRA adapter ({exc})") from None
            # Merged weights generate as fast as the base model; adapters stack like LLaMA-Factory's.
            model = model.merge_and_unload()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stop_token_ids = template.get_stop_token_ids(tokenizer)
        self.pad_token_id = tokenizer.pad_token_id
        self.skip_special_tokens = generating_args.skip_special_tokens
        self.kwargs = generation_kwargs(generating_args, self.stop_token_ids, self.pad_token_id)
        self.constraint = None
        if codes is not None:
            from coretech.infer.constrain import TokenConstraint

            self.constraint = TokenConstraint(codes, tokenizer, self.stop_token_ids)

    def generate(self, batch: list[list[int]]) -> list[str]:
        import torch

        width = max(len(ids) for ids in batch)
        # Left padding keeps every prompt's last token at the same position, where generation starts.
        input_ids = [[self.pad_token_id] * (width - len(ids)) + ids for ids in batch]
        attention_mask = [[0] * (width - len(ids)) + [1] * len(ids) for ids in batch]
        device = self.model.device
        extra: dict[str, Any] = {}
        if self.constraint is not None:
            from transformers import LogitsProcessorList

            from coretech.infer.constrain import IpcLogitsProcessor

            extra["logits_processor"] = LogitsProcessorList([IpcLogitsProcessor(self.constraint, len(batch), width)])
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=torch.tensor(input_ids, device=device),
                attention_mask=torch.tensor(attention_mask, device=device),
                **self.kwargs,
                **extra,
            )
        answers = []
        for row in output[:, width:].tolist():
            # Everything after the first stop token is padding from the batch's longer answers.
            end = next((i for i, token in enumerate(row) if token in self.stop_token_ids), len(row))
            answers.append(self.tokenizer.decode(row[:end], skip_special_tokens=self.skip_special_tokens))
        if self.constraint is not None:
            from coretech.infer.constrain import trim_unfinished_code

            # A code cut off by max_new_tokens would be read as a shorter code that may not exist.
            answers = [trim_unfinished_code(answer, self.constraint.automaton) for answer in answers]
        return answers
