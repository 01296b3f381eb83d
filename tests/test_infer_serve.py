"""``coretech chat`` / ``coretech api``: resolved recipes, and the real OpenAI-compatible server on
loopback with the embedded model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from llamafactory.hparams.parser import _INFER_ARGS, _TRAIN_ARGS, HfArgumentParser

from coretech.config import ConfigError
from coretech.errors import CoreTechError
from coretech.infer.serve import build_serve_command, resolve_serve_recipe
from coretech.infer.vllm import vllm_available

SERVER_START_TIMEOUT_S = 180


def _write_run(run: Path, model: str, adapter: str | None) -> None:
    run.mkdir(parents=True)
    manifest = {
        "stages": {
            "cpt": {"status": "done", "model": model, "adapter": None, "template": "smollm2"},
            "sft_stage3": {"status": "done", "model": model, "adapter": adapter, "template": "smollm2"},
        },
        "order": ["cpt", "sft_stage3"],
        "final_stage": "sft_stage3",
    }
    (run / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize(
    ("recipe", "arguments"),
    [
        ("smollm2-135m/predict.yaml", _TRAIN_ARGS),
        ("qwen2.5-7b/predict.yaml", _TRAIN_ARGS),
        ("smollm2-135m/chat.yaml", _INFER_ARGS),
        ("smollm2-135m/api.yaml", _INFER_ARGS),
        ("qwen2.5-7b/chat.yaml", _INFER_ARGS),
        ("qwen2.5-7b/api.yaml", _INFER_ARGS),
    ],
)
def test_inference_recipes_parse_with_llamafactory(recipe: str, arguments: list, repo_root: Path) -> None:
    """What `llamafactory-cli train|chat|api <recipe>` parses first: every key must be one of its fields."""
    values = yaml.safe_load((repo_root / "configs" / recipe).read_text(encoding="utf-8"))
    parsed = HfArgumentParser(arguments).parse_dict(values, allow_extra_keys=False)
    model_args = parsed[0]
    assert model_args.infer_backend == values["infer_backend"]
    if "qwen" in recipe:
        assert model_args.vllm_config == {"tensor_parallel_size": 4}


def test_run_model_adapter_and_overrides_go_into_the_resolved_recipe(
    tmp_path: Path, embedded_model: Path, repo_root: Path
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    run = tmp_path / "runs" / "demo"
    _write_run(run, str(embedded_model), str(adapter))
    command = build_serve_command(
        "chat",
        run=run,
        recipe=repo_root / "configs/smollm2-135m/chat.yaml",
        overrides=["max_new_tokens=32", "temperature=0.0"],
    )
    assert command.recipe == run / "serve" / "chat.yaml"
    assert command.argv[1:] == ["chat", str(command.recipe)] and command.argv[0].endswith("llamafactory-cli")
    values = yaml.safe_load(command.recipe.read_text(encoding="utf-8"))
    assert values["model_name_or_path"] == str(embedded_model)
    assert values["adapter_name_or_path"] == str(adapter)
    assert values["template"] == "smollm2"
    assert values["max_new_tokens"] == 32 and values["temperature"] == 0.0  # typed, as LLaMA-Factory's overrides

    earlier, _ = resolve_serve_recipe(
        "api", run=run, recipe=repo_root / "configs/smollm2-135m/api.yaml", stage="cpt", overrides=None
    )
    assert "adapter_name_or_path" not in earlier


def test_serve_input_errors_are_one_line(tmp_path: Path, repo_root: Path) -> None:
    chat = repo_root / "configs/smollm2-135m/chat.yaml"
    with pytest.raises(ConfigError, match=r"chat\.yaml: unknown key 'max_new_token'"):
        resolve_serve_recipe("chat", run=None, recipe=chat, stage=None, overrides=["max_new_token=5"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        resolve_serve_recipe("chat", run=None, recipe=chat, stage=None, overrides=["max_new_tokens"])
    with pytest.raises(CoreTechError, match="needs --run RUN or --recipe"):
        resolve_serve_recipe("api", run=None, recipe=None, stage=None, overrides=None)
    if not vllm_available():
        with pytest.raises(CoreTechError, match=r"pip install -r requirements-gpu\.txt.*infer_backend=huggingface"):
            resolve_serve_recipe(
                "chat", run=None, recipe=repo_root / "configs/qwen2.5-7b/chat.yaml", stage=None, overrides=None
            )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"coretech api exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"coretech api not ready after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@dataclass
class ApiProcess:
    """`coretech api` running for real: its /v1 URL, its process and its log."""

    url: str
    port: int
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def api_process(
    tmp_path_factory: pytest.TempPathFactory, embedded_model: Path, repo_root: Path
) -> Iterator[ApiProcess]:
    """`coretech api` (the CLI, as a user starts it) serving the embedded model on a free loopback port
    with a generation cap of 16 tokens."""
    workdir = tmp_path_factory.mktemp("api")
    port = _free_port()
    argv = [sys.executable, "-m", "coretech", "api", "--recipe", str(repo_root / "configs/smollm2-135m/api.yaml")]
    argv += [f"model_name_or_path={embedded_model}", "max_new_tokens=16"]
    env = {key: value for key, value in os.environ.items() if key not in ("API_HOST", "API_KEY")}
    # One torch thread: on 2 shared cores it decodes several times faster (docs/benchmarks.md).
    env.update(API_PORT=str(port), OMP_NUM_THREADS="1")
    log = workdir / "api.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(argv, env=env, stdout=sink, stderr=sink, cwd=repo_root)
    try:
        _wait_until_ready(f"http://127.0.0.1:{port}/v1/models", server, log)
        yield ApiProcess(f"http://127.0.0.1:{port}/v1", port, server, log)
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.fixture
def api_server(api_process: ApiProcess) -> str:
    if api_process.process.poll() is not None:
        pytest.skip("the module's API server was stopped by the signal test")
    return api_process.url


def test_api_server_answers_an_openai_chat_completion(api_server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=api_server, api_key="unused", timeout=120)
    response = client.chat.completions.create(
        model="coretech",
        messages=[{"role": "user", "content": "Which IPC codes does lithium battery technology involve?"}],
        max_tokens=16,
    )
    assert response.object == "chat.completion"
    (choice,) = response.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < response.usage.completion_tokens <= 16 and response.usage.prompt_tokens > 0


def test_teacher_rewriter_against_the_real_api_server(api_server: str, tmp_path: Path) -> None:
    """The SFT teacher path end to end against `llamafactory-cli api`, as a user would point it.

    A 135M model cut at 16 tokens cannot keep every code of a draft, so what matters here is the
    protocol and the bookkeeping: every draft gets a reply, every reply is either accepted (and then
    passes the same check as the build's) or rejected with a reason and the draft kept, and the
    replies are cached.
    """
    from coretech.data.sft import TeacherRewriter, check_rewrite

    draft_ipc = "IPC codes for drones:\nB64U10/00: Type of UAV\nG05D1/00: Control of position"
    draft_tech = "Key technologies of drones:\n1. flight control\n2. swarm coordination"
    jobs = [
        ("Which IPC codes does the field of drones involve?", draft_ipc, "en", "ipc", []),
        ("List the key technologies of drones.", draft_tech, "en", "tech", ["flight control"]),
    ]
    teacher = TeacherRewriter(api_server, "coretech", tmp_path / "cache.jsonl", temperature=0.0)
    outputs = teacher.rewrite(jobs)
    stats = teacher.stats
    assert stats.requested == 2 and stats.accepted + sum(stats.rejected.values()) == 2
    for (_, draft, _, task, terms), output in zip(jobs, outputs, strict=True):
        assert output == draft or check_rewrite(draft, output, task, terms) is None
    assert len((tmp_path / "cache.jsonl").read_text(encoding="utf-8").splitlines()) == 2
    again = TeacherRewriter(api_server, "coretech", tmp_path / "cache.jsonl", temperature=0.0)
    assert again.rewrite(jobs) == outputs and again.stats.cached == 2 and again.stats.requested == 0


@pytest.mark.slow
def test_chat_command_answers_in_the_terminal(embedded_model: Path, repo_root: Path) -> None:
    """`coretech chat` end to end: one question on stdin, an answer from the real model, `exit`."""
    argv = [sys.executable, "-m", "coretech", "chat", "--recipe", "configs/smollm2-135m/chat.yaml"]
    argv += [f"model_name_or_path={embedded_model}", "max_new_tokens=8"]
    question = "Which IPC codes does battery cooling involve?\nexit\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, input=question, capture_output=True, text=True, cwd=repo_root, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = done.stdout.split("Assistant:", 1)[1].split("User:", 1)[0]
    assert answer.strip()


def _chat(url: str, body: dict) -> httpx.Response:
    payload = {"model": "coretech", "messages": [{"role": "user", "content": "Write a long essay about batteries."}]}
    return httpx.post(f"{url}/chat/completions", json={**payload, **body}, timeout=300)


def test_api_enforces_the_recipe_generation_cap_on_every_request(api_server: str) -> None:
    response = _chat(api_server, {"max_tokens": 600})
    assert response.status_code == 200, response.text
    data = response.json()
    # The recipe's cap (16), not the request's 600: cut there, so it did not stop on its own first.
    assert data["usage"]["completion_tokens"] == 16 and data["choices"][0]["finish_reason"] == "length"
    lower = _chat(api_server, {"max_tokens": 4}).json()
    assert lower["usage"]["completion_tokens"] <= 4  # a client may still ask for less


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"max_tokens": -5}, 400, "max_tokens must be a positive integer, got -5"),
        ({"max_tokens": 0}, 400, "max_tokens must be a positive integer, got 0"),
        ({"max_tokens": True}, 400, "max_tokens must be a positive integer, got True"),
        ({"max_tokens": "many"}, 400, "max_tokens must be a positive integer, got 'many'"),
        ({"temperature": -1}, 400, "temperature must be a number from 0 to 2, got -1"),
        ({"temperature": "hot"}, 400, "temperature must be a number from 0 to 2, got 'hot'"),
        ({"stop": 5}, 422, None),
        ({"top_p": 5}, 400, "top_p must be a number in (0, 1], got 5"),
        ({"n": 0}, 400, "n must be an integer from 1 to 8, got 0"),
        ({"presence_penalty": 0}, 400, "presence_penalty must be a positive number"),
        ({"messages": "hello"}, 422, None),
        ({"messages": []}, 400, None),
    ],
)
def test_api_answers_a_bad_request_with_a_4xx_never_a_500(api_server: str, body: dict, status: int, detail) -> None:
    response = _chat(api_server, body)
    assert response.status_code == status, response.text
    if detail is not None:
        assert response.json()["detail"].startswith(detail)


def test_api_answers_malformed_json_with_a_4xx(api_server: str) -> None:
    response = httpx.post(
        f"{api_server}/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500


def test_sigterm_to_coretech_api_stops_the_server_and_its_children(api_process: ApiProcess) -> None:
    """Last in this file: it stops the module's server. SIGTERM as a service manager or Slurm sends it."""
    import psutil

    coretech = psutil.Process(api_process.process.pid)
    children = coretech.children(recursive=True)
    assert children, "coretech api should run the server as a child"
    started = time.monotonic()
    api_process.process.send_signal(signal.SIGTERM)
    assert api_process.process.wait(timeout=60) == 128 + signal.SIGTERM
    print(f"coretech api stopped {time.monotonic() - started:.1f} s after SIGTERM")
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after SIGTERM: {[p.pid for p in alive]}"
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", api_process.port))
    lines = [x for x in api_process.log.read_text(encoding="utf-8").splitlines() if "SIGTERM received" in x]
    assert lines == [
        f"[coretech] coretech api: SIGTERM received; stopped python -m coretech.infer.api_server "
        f"(pid {children[0].pid}) and its process group"
    ]


def test_api_command_serves_on_loopback_through_the_guarded_app(
    tmp_path: Path, embedded_model: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("API_HOST", raising=False)
    monkeypatch.setenv("API_PORT", "8123")
    command = build_serve_command(
        "api",
        recipe=repo_root / "configs/smollm2-135m/api.yaml",
        overrides=[f"model_name_or_path={embedded_model}"],
        workdir=tmp_path,
    )
    assert command.env == {"API_HOST": "127.0.0.1", "API_PORT": "8123"}  # loopback unless asked otherwise
    assert command.argv == [sys.executable, "-m", "coretech.infer.api_server", str(tmp_path / "api.yaml")]


@pytest.mark.slow
def test_sigint_to_coretech_chat_stops_the_chat_and_its_children(embedded_model: Path, repo_root: Path) -> None:
    """Ctrl-C as a terminal sends it (to coretech only: the chat runs in a session of its own)."""
    import psutil

    argv = [sys.executable, "-m", "coretech", "chat", "--recipe", "configs/smollm2-135m/chat.yaml"]
    argv += [f"model_name_or_path={embedded_model}", "max_new_tokens=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    chat = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=repo_root, env=env
    )
    try:
        seen = b""
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while b"User:" not in seen and time.monotonic() < deadline and chat.poll() is None:
            seen += os.read(chat.stdout.fileno(), 4096)  # the chat's prompt: the model is loaded
        assert b"User:" in seen, seen[-2000:]
        children = psutil.Process(chat.pid).children(recursive=True)
        assert children
        started = time.monotonic()
        chat.send_signal(signal.SIGINT)
        _, err = chat.communicate(timeout=60)
        print(f"coretech chat stopped {time.monotonic() - started:.1f} s after SIGINT")
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.wait()
    assert chat.returncode == 128 + signal.SIGINT
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after SIGINT: {[p.pid for p in alive]}"
    assert "coretech chat: SIGINT received; stopped llamafactory-cli chat" in err.decode()
