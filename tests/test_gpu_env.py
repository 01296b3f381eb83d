"""The GPU set and the vLLM environment: checked on a CPU where possible, on a GPU where not (marker ``gpu``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from coretech.errors import CoreTechError
from coretech.infer.gpu_env import (
    GPU_REQUIREMENTS,
    PyPIUnreachable,
    build_probe_env,
    probe_vllm_tokenizer,
    read_pins,
    resolution_problems,
    resolve_requirements,
)
from coretech.infer.vllm import SUPPORTED_VLLM, check_vllm_environment, vllm_available

CPU_REQUIREMENTS = GPU_REQUIREMENTS.parent / "requirements.txt"


def _pypi_reachable() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "vllm"], capture_output=True, text=True, check=False
    )
    return done.returncode == 0 and "vllm" in done.stdout


def test_gpu_set_is_the_cpu_set_plus_vllm_with_the_same_llamafactory_stack() -> None:
    cpu, gpu = read_pins(CPU_REQUIREMENTS), read_pins(GPU_REQUIREMENTS)
    assert set(cpu) <= set(gpu), f"GPU set lacks {sorted(set(cpu) - set(gpu))}"
    # The training stack is the same on both sets: the project's code sees one transformers and one LLaMA-Factory.
    for name in ("llamafactory", "transformers", "peft", "trl", "accelerate", "datasets", "deepspeed", "gradio"):
        assert gpu[name] == cpu[name], name
    assert gpu["vllm"] in SUPPORTED_VLLM
    assert gpu["torchaudio"].split(".")[:2] == gpu["torch"].split(".")[:2]


def test_read_pins_rejects_a_range_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "req.txt"
    path.write_text("# comment\nvllm==0.23.0\ntorch>=2.11\n", encoding="utf-8")
    with pytest.raises(CoreTechError, match=r"req\.txt:3: not an exact pin"):
        read_pins(path)


def test_resolution_problems_name_every_difference() -> None:
    pins = {"a": "1", "b": "2", "c": "3"}
    resolved = {"a": "1", "b": "2.1", "d": "4"}
    assert resolution_problems(pins, resolved) == [
        "b: pinned 2, resolved 2.1",
        "d: resolved 4 but not pinned",
        "c: pinned 3 but not installed",
    ]
    assert resolution_problems(pins, dict(pins)) == []


@pytest.mark.skipif(vllm_available(), reason="this environment has vLLM")
def test_check_without_vllm_names_the_install_command(embedded_model: Path) -> None:
    problems = check_vllm_environment(str(embedded_model))
    assert len(problems) == 1 and "requirements-gpu.txt" in problems[0]


@pytest.mark.slow
def test_gpu_set_resolves_to_exactly_its_pins() -> None:
    if not _pypi_reachable():
        pytest.skip("PyPI is unreachable: the GPU set cannot be resolved here")
    try:
        resolved = resolve_requirements(GPU_REQUIREMENTS)
    except PyPIUnreachable as error:
        pytest.skip(str(error))
    assert resolution_problems(read_pins(GPU_REQUIREMENTS), resolved) == []


@pytest.mark.slow
def test_pinned_vllm_builds_its_tokenizer_for_the_embedded_model(embedded_model: Path) -> None:
    """The call that fails with vLLM 0.11 + transformers 5.6, made by the pinned vLLM on this CPU."""
    if not _pypi_reachable():
        pytest.skip("PyPI is unreachable: the pinned vLLM wheel cannot be fetched")
    python = build_probe_env()
    assert probe_vllm_tokenizer(python, embedded_model) == []
    assert probe_vllm_tokenizer(python, embedded_model / "missing")[0].startswith(f"{embedded_model / 'missing'}: ")


def _needs_cuda_and_vllm() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not vllm_available():
        pytest.skip("needs the GPU set (make install-gpu)")


@pytest.mark.gpu
def test_vllm_environment_is_complete_on_the_gpu_node(embedded_model: Path) -> None:
    _needs_cuda_and_vllm()
    assert check_vllm_environment(str(embedded_model)) == []


@pytest.mark.gpu
def test_two_vllm_engines_in_one_process_when_the_first_is_closed(embedded_model: Path, repo_root: Path) -> None:
    """The pipeline predicts several models in one process: each engine must give its memory back."""
    _needs_cuda_and_vllm()
    import torch

    from coretech.infer.prompts import load_tokenizer_and_template
    from coretech.infer.recipe import load_predict_recipe
    from coretech.infer.vllm import VllmGenerator

    recipe = load_predict_recipe(repo_root / "configs" / "smollm2-135m" / "predict.yaml")
    model_args = recipe.model_args(str(embedded_model), None)
    model_args.vllm_gpu_util = 0.6  # two engines at 0.6 cannot coexist: the second starts only after close()
    data_args = recipe.data_args(None)
    tokenizer, template = load_tokenizer_and_template(model_args, data_args)
    prompt = [tokenizer.encode("What is IPC class G06F?")]
    free_before = torch.cuda.mem_get_info()[0]
    answers = []
    for _ in range(2):
        generator = VllmGenerator(model_args, tokenizer, template, recipe.generating_args())
        answers.append(generator.generate(prompt)[0])
        generator.close()
        generator.close()  # idempotent
    assert all(isinstance(a, str) and a for a in answers)
    assert answers[0] == answers[1]  # greedy decoding: the same model gives the same answer
    assert torch.cuda.mem_get_info()[0] > 0.8 * free_before


def test_shell_scripts_parse(repo_root: Path) -> None:
    for script in ("configs/launch/slurm.sbatch", "benchmarks/gpu_check.sh"):
        done = subprocess.run(["bash", "-n", str(repo_root / script)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{script}: {done.stderr}"


def test_slurm_script_finds_its_checkout_from_elsewhere_and_creates_logs(tmp_path: Path, repo_root: Path) -> None:
    """Outside Slurm the script still resolves the checkout from its own location and writes its log there."""
    checkout = tmp_path / "checkout"
    (checkout / "configs" / "launch").mkdir(parents=True)
    (checkout / "configs" / "pipelines").mkdir()
    (checkout / "pyproject.toml").write_text("")
    script = checkout / "configs" / "launch" / "slurm.sbatch"
    script.write_text((repo_root / "configs" / "launch" / "slurm.sbatch").read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "MASTER_ADDR": "127.0.0.1", "PYTHON": sys.executable, "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(script)], cwd=elsewhere, env=env, capture_output=True, text=True, check=False)
    assert f"repository: {checkout}" in done.stdout
    log = checkout / "logs" / "coretech-local.out"
    for _ in range(50):  # tee (a process substitution) may still be writing when bash exits
        if log.exists() and "srun" in log.read_text():
            break
        time.sleep(0.1)
    assert log.read_text().startswith(f"repository: {checkout}")
    assert not (elsewhere / "logs").exists()
    # No srun outside Slurm: the script stops there rather than running the pipeline without its nodes.
    assert done.returncode != 0
