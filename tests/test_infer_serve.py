"""``coretech chat`` / ``coretech api``: resolved recipes, and the real OpenAI-compatible server on
loopback with the embedded model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from llamafactory.hparams.parser import _INFER_ARGS, _TRAIN_ARGS, HfArgumentParser

from coretech.config import ConfigError
from coretech.errors import CoreTechError
from coretech.infer.serve import build_serve_command, resolve_serve_recipe
from coretech.infer.vllm import vllm_available
from coretech.launch import child_environment

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
    pytest.importorskip("coretech.pipeline").resolve_run_model  # noqa: B018
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
            pytest.fail(f"llamafactory-cli api exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"llamafactory-cli api not ready after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory, embedded_model: Path, repo_root: Path) -> Iterator[str]:
    """`llamafactory-cli api` serving the embedded model on a loopback port; yields its /v1 URL."""
    workdir = tmp_path_factory.mktemp("api")
    port = _free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("API_PORT", str(port))
        patch.delenv("API_HOST", raising=False)
        patch.delenv("API_KEY", raising=False)
        command = build_serve_command(
            "api",
            recipe=repo_root / "configs/smollm2-135m/api.yaml",
            overrides=[f"model_name_or_path={embedded_model}", "max_new_tokens=16"],
            workdir=workdir,
        )
    assert command.env == {"API_HOST": "127.0.0.1", "API_PORT": str(port)}  # loopback unless asked otherwise
    log = workdir / "api.log"
    with log.open("wb") as sink:
        # One torch thread: on 2 shared cores it decodes several times faster (docs/benchmarks.md).
        env = child_environment({**command.env, "OMP_NUM_THREADS": "1"})
        server = subprocess.Popen(command.argv, env=env, stdout=sink, stderr=sink)
    try:
        _wait_until_ready(f"http://127.0.0.1:{port}/v1/models", server, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


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
