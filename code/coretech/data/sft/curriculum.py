"""Difficulty of SFT samples and the easy → hard curriculum built from it.

Two scores, each a percentile in [0, 1] so they can be mixed with a weight:

* rule-based: how much an answer asks of the model — number of IPC codes or technologies, how
  deep the codes go (a subgroup is harder than a subclass) and the answer length in tokens;
* model-based, with a real causal LM: the answer's mean token loss given the question (``loss``)
  or the instruction-following difficulty (``ifd``: that loss over the loss of the answer alone,
  Li et al. 2024), i.e. how little the question helps the model produce the answer.

Both are ranked within each task and language: an IPC list and a technology list are not
comparable items, and a byte-level tokenizer splits a Chinese character into several easily
predicted tokens, so raw token counts and per-token losses differ by script, not by difficulty.
Every stage therefore holds each task and language, from its easiest to its hardest slice.

The schedule cuts the training set, sorted by difficulty, into N stages of equal size: disjoint
(stage k holds the k-th slice) or cumulative (stage k holds slices 1..k, replaying the easy ones).
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from coretech.config import ConfigError
from coretech.ipc import LEVELS, extract_ipc_codes

if TYPE_CHECKING:
    from coretech.data.sft.config import DifficultySettings
    from coretech.data.sft.qa import SftRecord

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.、)]|[-•*])\s*\S", re.MULTILINE)


@dataclass
class DifficultyFeatures:
    """Rule features of one answer; ``depth`` is the mean IPC level index (2 = subclass … 4 = subgroup)."""

    items: int
    depth: float
    tokens: int


def answer_features(output: str, task: str, count_tokens: Callable[[str], int]) -> DifficultyFeatures:
    """Features read from the answer text itself, so imported and teacher-rewritten answers score alike."""
    if task == "ipc":
        codes = extract_ipc_codes(output)
        items = len(codes)
        depth = sum(LEVELS.index(c.level) for c in codes) / items if items else 0.0
    else:
        items = len(_LIST_ITEM.findall(output))
        if items == 0:  # prose: count the items of the longest enumeration
            items = max(len(re.split(r"[、；;，,]", line)) for line in output.splitlines() or [output])
        depth = 0.0
    return DifficultyFeatures(items=items, depth=depth, tokens=count_tokens(output))


def approximate_tokens(text: str) -> int:
    """A tokenizer-free length: one per CJK character, one per other word (used without a model)."""
    return len(_CJK.findall(text)) + len(re.findall(r"[A-Za-z0-9]+|[^\sA-Za-z0-9\u3400-\u9fff]", text))


def percentile_ranks(values: Sequence[float]) -> list[float]:
    """Rank of each value in [0, 1] (ties share their mean rank; a single value gets 0.5)."""
    n = len(values)
    if n == 0:
        return []
    if n == 1:
        return [0.5]
    order = sorted(range(n), key=lambda i: values[i])
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 / (n - 1)
        for k in range(i, j + 1):
            ranks[order[k]] = mean_rank
        i = j + 1
    return ranks


def ranks_within_groups(values: Sequence[float], groups: Sequence[Hashable]) -> list[float]:
    """Percentile ranks computed separately inside each group (e.g. each task and language)."""
    ranks = [0.0] * len(values)
    for group in set(groups):
        index = [i for i, g in enumerate(groups) if g == group]
        for i, rank in zip(index, percentile_ranks([values[i] for i in index]), strict=True):
            ranks[i] = rank
    return ranks


def rule_scores(
    features: Sequence[DifficultyFeatures],
    tasks: Sequence[str],
    weights: dict[str, float],
    languages: Sequence[str] | None = None,
) -> list[float]:
    """Weighted mean of the feature percentiles, ranked within each task (and language, if given).

    Depth counts for IPC answers only. Ranking within the group keeps the scales comparable: a
    list of codes and a list of technologies are different items, and a Chinese answer costs a
    byte-level tokenizer about three times the tokens of its English twin.
    """
    groups = list(zip(tasks, languages or [""] * len(tasks), strict=True))
    scores = [0.0] * len(features)
    for name in ("items", "depth", "tokens"):
        weight = weights.get(name, 0.0)
        if weight <= 0:
            continue
        ranked = ranks_within_groups([getattr(f, name) for f in features], groups)
        for i, (task, _) in enumerate(groups):
            if name != "depth" or task == "ipc":
                scores[i] += weight * ranked[i]
    for i, (task, _) in enumerate(groups):
        total = sum(w for n, w in weights.items() if w > 0 and (n != "depth" or task == "ipc"))
        scores[i] = scores[i] / total if total else 0.0
    return scores


ModelMetric = Literal["loss", "ifd"]


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AMX or AVX512-BF16). Without it PyTorch emulates
    bfloat16 and the demo's difficulty pass took 2.8x as long as in float32 (docs/benchmarks.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: str) -> str:
    """``auto``: bfloat16 on a GPU that supports it or a CPU with native bfloat16, float32 elsewhere."""
    if dtype != "auto":
        return dtype
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_bf16() else "float32"


class ModelScorer:
    """Per-sample answer loss (and IFD) with a real causal LM, batched, on CPU or GPU.

    Prompts go through the model's chat template, as in SFT, so the loss is the one the SFT stage
    starts from. The answer-alone pass (for IFD) is computed once per distinct answer: paraphrased
    questions share their answer, which halves the cost on our data.
    """

    def __init__(self, model_path: str | Path, max_length: int = 384, dtype: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        # bfloat16 weights (not autocast, which re-casts every weight on every call): on CPUs with
        # AMX/AVX512-BF16 faster than float32, with per-answer losses within ~2%.
        self.dtype = resolve_dtype(dtype)
        torch_dtype = torch.bfloat16 if self.dtype == "bfloat16" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch_dtype).eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.body = getattr(self.model, self.model.base_model_prefix)
        self.head = self.model.get_output_embeddings()
        self.max_length = max_length
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.has_template = bool(getattr(self.tokenizer, "chat_template", None))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_ids(self, question: str) -> list[int]:
        if self.has_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        return self.tokenizer(question + "\n", add_special_tokens=True)["input_ids"]

    def answer_losses(self, pairs: Sequence[tuple[str, str]], batch_size: int = 8) -> list[float]:
        """Mean loss of each answer's tokens after its prompt; the prompt is cut from the left to fit."""
        sequences = []
        for question, answer in pairs:
            prompt = self._prompt_ids(question)
            target = self.tokenizer(answer, add_special_tokens=False)["input_ids"][: self.max_length - 1]
            prompt = prompt[-max(1, self.max_length - len(target)) :]
            sequences.append((prompt, target))
        losses = [math.nan] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: -sum(map(len, sequences[i])))
        torch = self.torch
        from tqdm import tqdm

        starts = range(0, len(order), batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="difficulty (model)", unit="batch", disable=len(starts) < 2):
                batch = order[start : start + batch_size]
                width = max(len(sequences[i][0]) + len(sequences[i][1]) for i in batch)
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                for row, i in enumerate(batch):
                    prompt, target = sequences[i]
                    full = prompt + target
                    ids[row, : len(full)] = torch.tensor(full)
                    mask[row, : len(full)] = 1
                    labels[row, len(prompt) : len(full)] = torch.tensor(target)
                ids, mask, labels = ids.to(self.device), mask.to(self.device), labels.to(self.device)
                hidden = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
                # The vocabulary projection only where an answer token is predicted (not on the
                # prompt or the padding): the projection is a third of a small model's compute.
                gold = labels[:, 1:]
                where = gold != -100
                logits = self.head(hidden[:, :-1][where])
                token_loss = torch.nn.functional.cross_entropy(logits.float(), gold[where], reduction="none")
                rows = where.nonzero()[:, 0]
                sums = torch.zeros(len(batch), device=token_loss.device).index_add_(0, rows, token_loss)
                per_row = (sums / where.sum(dim=1).clamp(min=1)).tolist()
                for row, i in enumerate(batch):
                    losses[i] = per_row[row]
        return losses

    def scores(self, pairs: Sequence[tuple[str, str]], metric: ModelMetric, batch_size: int = 8) -> list[float]:
        conditional = self.answer_losses(pairs, batch_size)
        if metric == "loss":
            return conditional
        answers = sorted({answer for _, answer in pairs})
        alone = dict(zip(answers, self.answer_losses([("", a) for a in answers], batch_size), strict=True))
        return [c / max(alone[a], 1e-6) for c, (_, a) in zip(conditional, pairs, strict=True)]


# --- schedule --------------------------------------------------------------------------------

CurriculumMode = Literal["disjoint", "cumulative"]
StageOrder = Literal["easy_to_hard", "shuffled"]


def schedule_stages(
    difficulties: Sequence[float], stages: int, mode: CurriculumMode, order: StageOrder, seed: int
) -> list[list[int]]:
    """Indices of the records in each stage, easy → hard.

    Ties in difficulty are broken by a seeded random key, so equal scores do not fall back to input
    order (which would put one source before another). ``easy_to_hard`` keeps each stage sorted
    (train it with LLaMA-Factory's ``disable_shuffling: true``); ``shuffled`` shuffles within each
    stage with the seed.
    """
    if stages < 1:
        raise ValueError("stages must be at least 1")
    n = len(difficulties)
    rng = random.Random(seed)  # noqa: S311 -- reproducible data order, not cryptography
    tiebreak = [rng.random() for _ in range(n)]
    ranked = sorted(range(n), key=lambda i: (difficulties[i], tiebreak[i]))
    bounds = [round(k * n / stages) for k in range(stages + 1)]
    slices = [ranked[bounds[k] : bounds[k + 1]] for k in range(stages)]
    result = []
    for k in range(stages):
        members = slices[k] if mode == "disjoint" else [i for s in slices[: k + 1] for i in s]
        members = sorted(members, key=lambda i: (difficulties[i], tiebreak[i]))
        if order == "shuffled":
            random.Random(f"{seed}|stage{k + 1}").shuffle(members)  # noqa: S311 -- seeded data order
        result.append(members)
    return result


def plot_stage_histogram(path: Path, stage_scores: Sequence[float], all_scores: Sequence[float], title: str) -> None:
    """One PNG per stage: the stage's difficulties over the whole training set's, on the same bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from coretech.files import atomic_open

    bins = [i / 20 for i in range(21)]
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    axes.hist(list(all_scores), bins=bins, color="#cccccc", label=f"all training samples ({len(all_scores)})")
    axes.hist(list(stage_scores), bins=bins, color="#1f77b4", alpha=0.85, label=f"this stage ({len(stage_scores)})")
    axes.set_xlabel("difficulty (0 = easiest, 1 = hardest)")
    axes.set_ylabel("samples")
    axes.set_title(title)
    axes.set_xlim(0, 1)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)


def score_difficulty(settings: DifficultySettings, train: list[SftRecord]) -> dict[str, Any]:
    """Fill each training record's rule, model and combined difficulty; return a summary for the report."""
    scorer = None
    started = time.perf_counter()
    if settings.model is not None:
        from coretech.errors import CoreTechError
        from coretech.models import check_model_reference

        try:
            check_model_reference(str(settings.model), "difficulty model")  # a local path: never a hub lookup
            scorer = ModelScorer(settings.model, max_length=settings.max_length, dtype=settings.dtype)
        except (OSError, ValueError, CoreTechError) as exc:  # missing folder, uncached hub id, invalid repo name
            raise ConfigError(
                f"difficulty.model: cannot load {settings.model!r} as a model folder or cached hub model "
                f"({str(exc).splitlines()[0]}); for the embedded model run `coretech prepare model` first"
            ) from None
    count = scorer.count_tokens if scorer else approximate_tokens
    features = [answer_features(r.output, r.task, count) for r in train]
    groups = [(r.task, r.language) for r in train]
    rule = rule_scores(features, [r.task for r in train], settings.rule_weights, [r.language for r in train])
    model_raw: list[float] | None = None
    keys: list[Any] = []
    if scorer is not None:
        # Paraphrased questions share one answer; with ``per: answer`` the model scores each distinct
        # answer once (with its first question), which divides the cost by the number of phrasings.
        keys = [(r.output, r.language) if settings.per == "answer" else i for i, r in enumerate(train)]
        first: dict[Any, SftRecord] = {}
        for key, record in zip(keys, train, strict=True):
            first.setdefault(key, record)
        pairs = [("\n".join(filter(None, [r.instruction, r.input])), r.output) for r in first.values()]
        by_key = dict(zip(first, scorer.scores(pairs, settings.metric, settings.batch_size), strict=True))
        model_raw = [by_key[key] for key in keys]
    # Per-token loss is ranked within each task and language too: byte-level tokenizers split a
    # Chinese character into predictable pieces, so raw losses are not comparable across scripts.
    model_rank = ranks_within_groups(model_raw, groups) if model_raw else None
    weight = settings.model_weight if model_rank else 0.0
    for i, record in enumerate(train):
        record.difficulty_rule = round(rule[i], 4)
        record.difficulty_model = round(model_raw[i], 4) if model_raw else None
        model_part = model_rank[i] if model_rank else 0.0
        record.difficulty = round((1 - weight) * rule[i] + weight * model_part, 4)
    if scorer is not None:
        description = (
            f"{1 - weight:.2f} × rule percentile + {weight:.2f} × {settings.metric} percentile "
            f"({settings.model}), ranked within task and language"
        )
    else:
        description = "rule-based only, ranked within task and language (set difficulty.model for the model score)"
    summary = {
        "description": description,
        "metric": settings.metric if scorer else None,
        "model": settings.model if scorer else None,
        "dtype": scorer.dtype if scorer else None,
        "model_weight": weight,
        "model_scored": len(set(keys)),
        "rule_weights": settings.rule_weights,
        "token_counter": "model tokenizer" if scorer else "approximate (CJK characters + words)",
        "seconds": round(time.perf_counter() - started, 2),
    }
    return summary
