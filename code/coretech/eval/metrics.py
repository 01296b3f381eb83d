"""The numbers: IPC and key-technology precision/recall/F1, invalid-code rate, ROUGE/BLEU and CIs.

Every score here is computed from per-answer counts (true positives, predicted, reference), so the
same counts give micro averages (sum the counts, then divide: large answers weigh more), macro
averages (score each answer, then average: every question weighs the same) and bootstrap
confidence intervals (resample answers, recompute). ROUGE and BLEU follow LLaMA-Factory's
``ComputeSimilarity`` (llamafactory/train/sft/metric.py) line for line so our numbers agree with
``predict_rouge-l`` / ``predict_bleu-4`` of ``llamafactory-cli train --do_predict``, except that we
report them on the 0-1 scale of the F1 columns (LLaMA-Factory's value is ours times 100).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from coretech.eval.tech import DEFAULT_FUZZY_THRESHOLD, match_technologies, normalise_technology
from coretech.ipc import LEVELS, IpcCode, IpcScheme, Level

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95

Counts = tuple[int, int, int]  # (true positives, predicted, reference)


def precision_recall_f1(tp: float, n_pred: float, n_ref: float) -> tuple[float, float, float]:
    """P, R, F1 from counts; an empty prediction has precision 0 (it answered nothing right)."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _f1_array(tp: np.ndarray, n_pred: np.ndarray, n_ref: np.ndarray) -> np.ndarray:
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp, dtype=float), where=n_pred > 0)
    recall = np.divide(tp, n_ref, out=np.zeros_like(tp, dtype=float), where=n_ref > 0)
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)


def score_counts(
    counts: Sequence[Counts],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, float | int | None]:
    """Micro and macro P/R/F1 over answers, with percentile bootstrap CIs on both F1s.

    Only answers whose reference has something to find belong in ``counts``; ``n`` is how many
    there are, so a reader always sees what the averages stand on.
    """
    n = len(counts)
    keys = ("precision", "recall", "f1", "macro_precision", "macro_recall", "macro_f1")
    ci_keys = ("f1_ci_low", "f1_ci_high", "macro_f1_ci_low", "macro_f1_ci_high")
    if n == 0:
        return {"n": 0, **dict.fromkeys(keys + ci_keys)}
    table = np.asarray(counts, dtype=float)
    tp, n_pred, n_ref = table[:, 0], table[:, 1], table[:, 2]
    micro = [float(x) for x in precision_recall_f1(tp.sum(), n_pred.sum(), n_ref.sum())]
    per_answer = np.array([precision_recall_f1(*row) for row in table])
    result: dict[str, float | int | None] = {
        "n": n,
        "precision": micro[0],
        "recall": micro[1],
        "f1": micro[2],
        "macro_precision": float(per_answer[:, 0].mean()),
        "macro_recall": float(per_answer[:, 1].mean()),
        "macro_f1": float(per_answer[:, 2].mean()),
    }
    # Resample answers (not codes): answers are the independent units of the test set.
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(resamples, n))
    micro_f1 = _f1_array(tp[index].sum(axis=1), n_pred[index].sum(axis=1), n_ref[index].sum(axis=1))
    macro_f1 = per_answer[:, 2][index].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    for name, samples in (("f1", micro_f1), ("macro_f1", macro_f1)):
        low, high = np.percentile(samples, [tail, 100 - tail])
        result[f"{name}_ci_low"] = float(low)
        result[f"{name}_ci_high"] = float(high)
    return result


# --- IPC ---------------------------------------------------------------------------------------


def ipc_level_counts(predicted: Sequence[IpcCode], reference: Sequence[IpcCode], level: Level) -> Counts | None:
    """Counts of one answer at one level; None when the reference has no code that deep.

    Codes are cut to the level and compared as sets, so ``G06N3/08`` and ``G06N3/04`` are one
    main group (``G06N3/00``) and two subgroups. A level the reference does not reach is not
    scored: a reference of only ``G06F`` says nothing about main groups.
    """
    ref = {str(c) for c in (code.truncate(level) for code in reference) if c is not None}
    if not ref:
        return None
    pred = {str(c) for c in (code.truncate(level) for code in predicted) if c is not None}
    return len(pred & ref), len(pred), len(ref)


def score_ipc(
    answers: Sequence[tuple[Sequence[IpcCode], Sequence[IpcCode]]],
    scheme: IpcScheme | None = None,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """``ipc.*`` metrics over (predicted codes, reference codes) pairs, one pair per answer.

    ``ipc.invalid_rate`` is the share of predicted symbols (each answer's distinct codes) that the
    scheme does not contain; None without a scheme, since a well-formed code cannot be called
    invented without one, and None when no code was predicted at all (a rate of nothing is not 0:
    a model that never writes a code is not one that never invents one).
    """
    result: dict[str, Any] = {"ipc.n": len(answers)}
    for level in LEVELS:
        counts = [c for pred, ref in answers if (c := ipc_level_counts(pred, ref, level)) is not None]
        for key, value in score_counts(counts, resamples=resamples, seed=seed).items():
            result[f"ipc.{level}.{key}"] = value
    result["ipc.n_unscored"] = sum(1 for _, ref in answers if not ref)
    predicted = [code for pred, _ in answers for code in pred]
    result["ipc.n_predicted_codes"] = len(predicted)
    result["ipc.answers_with_codes"] = sum(1 for pred, _ in answers if pred)  # why an F1 of 0: no code, or wrong ones
    if scheme is None:
        result["ipc.invalid_rate"] = None
        result["ipc.n_invalid_codes"] = None
    else:
        invalid = sum(1 for code in predicted if not scheme.exists(code))
        result["ipc.n_invalid_codes"] = invalid
        result["ipc.invalid_rate"] = invalid / len(predicted) if predicted else None
    return result


# --- key technologies --------------------------------------------------------------------------


def score_tech(
    answers: Sequence[tuple[Sequence[str], Sequence[str]]],
    fuzzy_threshold: float | None = None,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """``tech.*`` (exact match of normalised names) and ``tech.fuzzy.*`` (rapidfuzz ratio at the
    threshold, default DEFAULT_FUZZY_THRESHOLD) over (predicted names, reference names) pairs.

    Exact is the headline because it cannot be argued with; the fuzzy score shows how much of the
    gap is spelling (类脑计算 vs 类脑计算技术) rather than wrong technologies.
    """
    threshold = DEFAULT_FUZZY_THRESHOLD if fuzzy_threshold is None else float(fuzzy_threshold)
    result: dict[str, Any] = {"tech.n": len(answers), "tech.fuzzy_threshold": threshold}
    for prefix, mode in (("tech", None), ("tech.fuzzy", threshold)):
        counts: list[Counts] = []
        for pred, ref in answers:
            n_ref = len({normalise_technology(r) for r in ref} - {""})
            if n_ref == 0:
                continue
            n_pred = len({normalise_technology(p) for p in pred} - {""})
            counts.append((match_technologies(pred, ref, mode), n_pred, n_ref))
        scored = score_counts(counts, resamples=resamples, seed=seed)
        scored.pop("n")
        for key, value in scored.items():
            result[f"{prefix}.{key}"] = value
    result["tech.n_unscored"] = sum(1 for _, ref in answers if not any(normalise_technology(r) for r in ref))
    return result


# --- ROUGE / BLEU as LLaMA-Factory computes them ----------------------------------------------


def _quiet_jieba() -> Any:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def text_similarity(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F and BLEU-4 of one answer on LLaMA-Factory's 0-100 scale, rounded as it does.

    Same steps as ``ComputeSimilarity.__call__``: jieba words for ROUGE (rouge-chinese), characters
    for BLEU-4 with NLTK's smoothing method 3, and zeros when either side has no words.
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba = _quiet_jieba()
    hypothesis = list(jieba.cut(prediction))
    reference_words = list(jieba.cut(reference))
    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference_words).split()) == 0:
        rouge = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        rouge = Rouge().get_scores(" ".join(hypothesis), " ".join(reference_words))[0]
    scores = {key: round(value["f"] * 100, 4) for key, value in rouge.items()}
    bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3)
    scores["bleu-4"] = round(bleu * 100, 4)
    return scores


def score_text(pairs: Sequence[tuple[str, str]], progress: str | None = None) -> dict[str, float | None]:
    """Mean ROUGE-1/2/L and BLEU-4 over (prediction, reference) pairs on the 0-1 scale.

    ``progress`` names a tqdm bar: ROUGE-L is the slow part of scoring a large test set.
    """
    from tqdm import tqdm

    if not pairs:
        return {"rouge_1": None, "rouge_2": None, "rouge_l": None, "bleu_4": None}
    totals = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    for prediction, reference in tqdm(pairs, desc=progress, unit="line", leave=False, disable=progress is None):
        for key, value in text_similarity(prediction, reference).items():
            totals[key] += value
    return {key.replace("-", "_"): totals[key] / len(pairs) / 100 for key in totals}
