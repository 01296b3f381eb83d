"""Teacher rewriting against a real OpenAI-compatible HTTP server on loopback: cache, retries, checks.

The server is a small ``http.server`` app implementing ``POST /v1/chat/completions`` the way
``llamafactory-cli api`` and vLLM answer it; the client is the real ``openai`` package.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coretech.data.sft import TeacherSettings, build_sft_datasets, load_sft_config
from coretech.data.sft.teacher import TeacherRewriter, check_rewrite
from coretech.errors import CoreTechError


class TeacherServer:
    """Rewrites the draft answer in the user message; can fail the first N requests or drop codes."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.fail_first = 0
        self.status = 500
        self.mode = "prefix"  # prefix | drop_codes
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.auth.append(self.headers.get("Authorization", ""))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                if len(server.requests) <= server.fail_first:
                    self._send(server.status, {"error": {"message": "busy"}}, {"retry-after-ms": "10"})
                    return
                user = body["messages"][-1]["content"]
                draft = user.split("\n", 1)[1].split("\n", 1)[1]
                if server.mode == "drop_codes":
                    reply = draft.splitlines()[0]
                else:
                    reply = "（改写）" + draft if "：" in draft.splitlines()[0] else "(rewritten) " + draft
                self._send(
                    200,
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                )

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[TeacherServer]:
    instance = TeacherServer()
    yield instance
    instance.close()


def rewriter(server: TeacherServer, tmp_path: Path, **kwargs) -> TeacherRewriter:
    return TeacherRewriter(server.url, "teacher-model", tmp_path / "cache.jsonl", concurrency=2, **kwargs)


IPC_DRAFT = "IPC codes for drones:\nB64U10/00: Type of UAV\nG05D1/00: Control of position"
TECH_DRAFT = "Key technologies of drones:\n1. flight control\n2. swarm coordination"


def test_rewrites_are_cached_and_the_key_comes_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TEACHER_KEY", "s3cret")
    jobs = [
        ("Which IPC codes does the field of drones involve?", IPC_DRAFT, "en", "ipc", []),
        ("List the key technologies of drones.", TECH_DRAFT, "en", "tech", ["flight control", "swarm coordination"]),
    ]
    first = rewriter(server, tmp_path, api_key_env="MY_TEACHER_KEY")
    assert first.rewrite(jobs) == ["(rewritten) " + IPC_DRAFT, "(rewritten) " + TECH_DRAFT]
    assert first.stats.requested == 2 and first.stats.accepted == 2
    assert server.auth == ["Bearer s3cret"] * 2
    assert server.requests[0]["model"] == "teacher-model"
    assert len((tmp_path / "cache.jsonl").read_text(encoding="utf-8").splitlines()) == 2

    second = rewriter(server, tmp_path)
    assert second.rewrite(jobs) == ["(rewritten) " + IPC_DRAFT, "(rewritten) " + TECH_DRAFT]
    assert second.stats.cached == 2 and second.stats.requested == 0
    assert len(server.requests) == 2  # nothing new reached the server


@pytest.mark.parametrize("status", [429, 500, 503])
def test_busy_server_is_retried(server, tmp_path, status):
    server.fail_first, server.status = 2, status
    teacher = rewriter(server, tmp_path, max_retries=3)
    assert teacher.rewrite([("q", TECH_DRAFT, "en", "tech", ["flight control"])]) == ["(rewritten) " + TECH_DRAFT]
    assert len(server.requests) == 3


def test_server_that_keeps_failing_stops_the_build_and_keeps_the_cache(server, tmp_path):
    teacher = rewriter(server, tmp_path, max_retries=1)
    teacher.rewrite([("q1", TECH_DRAFT, "en", "tech", [])])
    server.fail_first = 10**6
    with pytest.raises(CoreTechError, match=r"teacher http://127\.0\.0\.1:\d+/v1: request failed after retries"):
        teacher.rewrite([("q2", IPC_DRAFT, "en", "ipc", [])])
    assert len((tmp_path / "cache.jsonl").read_text(encoding="utf-8").splitlines()) == 1


def test_rewrite_that_loses_codes_is_rejected_and_the_draft_kept(server, tmp_path):
    server.mode = "drop_codes"
    teacher = rewriter(server, tmp_path)
    assert teacher.rewrite([("q", IPC_DRAFT, "en", "ipc", [])]) == [IPC_DRAFT]
    assert teacher.stats.rejected == {"IPC codes changed": 1}


def test_check_rewrite():
    assert check_rewrite(IPC_DRAFT, "Drones: B64U10/00 (UAV types) and G05D 1/00.", "ipc") is None
    assert check_rewrite(IPC_DRAFT, "Drones: B64U10/00 and G05D1/00 and B64C39/00.", "ipc") == "IPC codes changed"
    assert check_rewrite(TECH_DRAFT, "Drones need flight control.", "tech", ["flight control", "swarm coordination"])
    assert check_rewrite(TECH_DRAFT, "  ", "tech") == "empty reply"


def test_build_with_teacher_rewrites_each_distinct_answer_once(server, tmp_path, samples, monkeypatch):
    monkeypatch.chdir(samples.parent.parent)
    config = load_sft_config(None, [samples / "key_tech_papers.csv"])
    config.glossary = [samples / "key_tech_glossary.csv"]
    config.teacher = TeacherSettings(base_url=server.url, model="teacher-model", tasks=["tech"], concurrency=2)
    report = build_sft_datasets(config, tmp_path / "out")
    records = [
        json.loads(line)
        for name in ("train", "test")
        for line in (tmp_path / "out" / "sft" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    tech = [r for r in records if r["task"] == "tech"]
    ipc = [r for r in records if r["task"] == "ipc"]
    assert tech and all(r["output"].startswith(("（改写）", "(rewritten) ")) for r in tech)
    assert ipc and not any(r["output"].startswith(("（改写）", "(rewritten) ")) for r in ipc)
    distinct = {(r["output"], r["language"]) for r in tech}
    assert report.teacher == {"requested": len(distinct), "cached": 0, "accepted": len(distinct), "rejected": {}}
    assert len(server.requests) == len(distinct) < len(tech)
    assert "## Teacher rewrites" in report.markdown()
