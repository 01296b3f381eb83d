"""Optional teacher LLM that rewrites rendered answers into fluent prose, with a cache and retries.

Any OpenAI-compatible endpoint works (``llamafactory-cli api``, a vLLM server, a hosted API); the
key comes from an environment variable, never from a file. The teacher only rephrases: a rewrite
that loses or invents an IPC code, or drops a technology, is rejected and the rendered answer is
kept (counted in the report), so the labels stay those of the table.

Every accepted or rejected reply is appended to a JSON Lines cache keyed by the request, so a
rerun (or a build that stopped half-way) sends only what it has not sent before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coretech.errors import CoreTechError
from coretech.ipc import extract_ipc_codes

if TYPE_CHECKING:
    from coretech.data.sft.config import TeacherSettings
    from coretech.data.sft.qa import SftRecord

SYSTEM_PROMPT = {
    "zh": (
        "你是专利分析专家。请把给出的答案改写得更通顺、专业，但必须保留每一个IPC分类号（原样书写）"
        "和每一项技术名称，不得增加或删除分类号或技术。只输出改写后的答案。"
    ),
    "en": (
        "You are a patent analyst. Rewrite the given answer so it reads fluently and professionally. "
        "Keep every IPC code exactly as written and every technology name; do not add or remove any. "
        "Output only the rewritten answer."
    ),
}


@dataclass
class TeacherStats:
    requested: int = 0  # sent to the server
    cached: int = 0  # answered from the cache
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count

    def as_dict(self) -> dict:
        return {
            "requested": self.requested,
            "cached": self.cached,
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
        }


def check_rewrite(draft: str, rewrite: str, task: str, required_terms: Sequence[str] = ()) -> str | None:
    """Why a rewrite is unusable, or None: codes must match exactly, every listed term must survive."""
    if not rewrite.strip():
        return "empty reply"
    if task == "ipc" and {str(c) for c in extract_ipc_codes(draft)} != {str(c) for c in extract_ipc_codes(rewrite)}:
        return "IPC codes changed"
    missing = [term for term in required_terms if term and term not in rewrite]
    if missing:
        return "technology dropped"
    return None


class TeacherRewriter:
    """Rewrites answers through ``/v1/chat/completions`` with caching, retries and a few parallel requests.

    Retries (connection errors, 408/409/429/5xx, with exponential backoff and ``Retry-After``) are
    the ``openai`` client's own; after ``max_retries`` the build stops with an error naming the
    server, and the cache keeps every answer already received.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        cache_path: Path,
        api_key_env: str = "CORETECH_TEACHER_API_KEY",
        max_retries: int = 3,
        timeout_s: float = 60.0,
        temperature: float = 0.3,
        concurrency: int = 4,
    ) -> None:
        from openai import OpenAI

        # Local servers (llamafactory-cli api, vLLM without --api-key) accept any key.
        api_key = os.environ.get(api_key_env) or "EMPTY"
        self.client = OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout_s)
        self.base_url = base_url
        self.model = model
        self.temperature = temperature
        self.concurrency = max(1, concurrency)
        self.cache_path = cache_path
        self.cache = self._load_cache(cache_path)
        self.lock = threading.Lock()
        self.stats = TeacherStats()

    @staticmethod
    def _load_cache(path: Path) -> dict[str, str]:
        cache: dict[str, str] = {}
        if not path.exists():
            return cache
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    item = json.loads(line)
                    cache[item["key"]] = item["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by an interrupted run: that request is simply sent again
        return cache

    def _key(self, messages: list[dict[str, str]]) -> str:
        payload = json.dumps([self.model, self.temperature, messages], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _messages(self, question: str, draft: str, language: str) -> list[dict[str, str]]:
        system = SYSTEM_PROMPT["zh" if language == "zh" else "en"]
        label = ("问题", "答案") if language == "zh" else ("Question", "Answer")
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": f"{label[0]}：{question}\n{label[1]}：\n{draft}"},
        ]

    def _reply(self, messages: list[dict[str, str]]) -> str:
        key = self._key(messages)
        with self.lock:
            if key in self.cache:
                self.stats.cached += 1
                return self.cache[key]
        from openai import OpenAIError

        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                temperature=self.temperature,  # type: ignore[arg-type]
            )
        except OpenAIError as exc:
            raise CoreTechError(
                f"teacher {self.base_url}: request failed after retries ({type(exc).__name__}: {exc}); "
                f"answers received so far are cached in {self.cache_path}"
            ) from None
        reply = (response.choices[0].message.content or "").strip() if response.choices else ""
        with self.lock:
            self.stats.requested += 1
            self.cache[key] = reply
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")
        return reply

    def rewrite(self, jobs: Sequence[tuple[str, str, str, str, Sequence[str]]]) -> list[str]:
        """For each (question, draft, language, task, required terms) the accepted rewrite or the draft."""
        from tqdm import tqdm

        def run(job: tuple[str, str, str, str, Sequence[str]]) -> str:
            question, draft, language, task, terms = job
            reply = self._reply(self._messages(question, draft, language))
            problem = check_rewrite(draft, reply, task, terms)
            with self.lock:
                if problem:
                    self.stats.rejected[problem] += 1
                else:
                    self.stats.accepted += 1
            return draft if problem else reply

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(tqdm(pool.map(run, jobs), total=len(jobs), desc="teacher rewrites", unit="answer"))


_TECH_LINE = re.compile(r"^\d+\.\s*(?P<name>[^（(]+)", re.MULTILINE)


def apply_teacher(
    teacher: TeacherSettings | None, records: list[SftRecord], default_cache: Path
) -> dict[str, Any] | None:
    """Rewrite each distinct rendered answer once (paraphrased questions share it) through the teacher;
    ``None`` (no teacher configured) leaves the records as rendered."""
    if teacher is None:
        return None
    rewriter = TeacherRewriter(
        base_url=teacher.base_url,
        model=teacher.model,
        cache_path=teacher.cache or default_cache,
        api_key_env=teacher.api_key_env,
        max_retries=teacher.max_retries,
        timeout_s=teacher.timeout_s,
        temperature=teacher.temperature,
        concurrency=teacher.concurrency,
    )
    first: dict[tuple[str, str, str], SftRecord] = {}
    for record in records:
        if record.rendered and record.task in teacher.tasks and record.language in teacher.languages:
            first.setdefault((record.output, record.language, record.task), record)
    jobs = [
        (
            "\n".join(filter(None, [r.instruction, r.input])),
            r.output,
            r.language,
            r.task,
            [m["name"].strip() for m in _TECH_LINE.finditer(r.output)] if r.task == "tech" else [],
        )
        for r in first.values()
    ]
    rewrites = dict(zip(first, rewriter.rewrite(jobs), strict=True))
    for record in records:
        key = (record.output, record.language, record.task)
        if key in rewrites:
            record.output = rewrites[key]
    return rewriter.stats.as_dict()
